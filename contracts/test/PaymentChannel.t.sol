// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";
import {IERC5267} from "@openzeppelin/contracts/interfaces/IERC5267.sol";
import {Vm} from "forge-std/Vm.sol";

import {TestStablecoin} from "../src/TestStablecoin.sol";
import {IPaymentChannel} from "../src/interfaces/IPaymentChannel.sol";
import {ERC1271Wallet} from "./mocks/ERC1271Wallet.sol";
import {ChannelFixture} from "./utils/ChannelFixture.sol";

/// @notice The getters of PaymentChannel beyond {IPaymentChannel}.
interface IPaymentChannelConstants is IPaymentChannel, IERC5267 {
    function VOUCHER_TYPEHASH() external view returns (bytes32);
    function CLAIM_AUTHORIZATION_TYPEHASH() external view returns (bytes32);
    function CLOSE_AUTHORIZATION_TYPEHASH() external view returns (bytes32);
    function OPEN_AUTHORIZATION_TYPEHASH() external view returns (bytes32);
}

/// @notice Refuses every native-token transfer.
contract UnitRejectingReceiver {
    receive() external payable {
        revert("no thanks");
    }
}

/// @notice Accepts native tokens, but only with far more gas than a payout forwards.
contract UnitGasGuzzler {
    bytes32 public last;

    receive() external payable {
        bytes32 h = bytes32(msg.value);
        for (uint256 i; i < 2000; ++i) {
            h = keccak256(abi.encode(h, i));
        }
        last = h;
    }
}

/// @notice An ERC-20 that can take a fee on transfers, mint a bonus to recipients (a broken
/// token) and refuse blocked recipients.
contract UnitQuirkyToken is ERC20 {
    uint256 public feeBps;
    uint256 public bonus;
    mapping(address account => bool) public blocked;

    error Blocked(address account);

    constructor() ERC20("Quirky", "QRK") {}

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    function setFeeBps(uint256 bps) external {
        feeBps = bps;
    }

    function setBonus(uint256 amount) external {
        bonus = amount;
    }

    function setBlocked(address account, bool isBlocked) external {
        blocked[account] = isBlocked;
    }

    function _update(address from, address to, uint256 value) internal override {
        if (blocked[to]) revert Blocked(to);
        if (from != address(0) && to != address(0) && feeBps != 0) {
            uint256 fee = value * feeBps / 10_000;
            super._update(from, address(0), fee);
            value -= fee;
        }
        super._update(from, to, value);
        if (from != address(0) && to != address(0) && bonus != 0) {
            super._update(address(0), to, bonus);
        }
    }
}

/// @notice Unit tests of every external function and every revert path of PaymentChannel.
/// The regressions of issue 13 (EIP-7702, ERC-1271, bombs, payee-authorised claims) are in
/// `Revocation.t.sol`; hostile tokens and wallets in `Adversarial.t.sol`.
contract PaymentChannelTest is ChannelFixture {
    uint104 internal constant MAX_DEPOSIT = type(uint104).max;

    address internal alice;
    uint256 internal aliceKey;

    function setUp() public override {
        super.setUp();
        // A payer with funds but no allowance, for the gasless opens.
        (alice, aliceKey) = makeAddrAndKey("alice");
        usd.mint(alice, FUNDS);
    }

    // ----- helpers -----

    function _badSig(bytes32 id, address signer) internal pure returns (bytes memory) {
        return abi.encodeWithSelector(IPaymentChannel.InvalidSignature.selector, id, signer);
    }

    function _notOpen(bytes32 id, IPaymentChannel.Status status)
        internal
        pure
        returns (bytes memory)
    {
        return abi.encodeWithSelector(IPaymentChannel.ChannelNotOpen.selector, id, status);
    }

    function _settleExpectRevert(IPaymentChannel.Claim memory c, bytes memory err) internal {
        vm.prank(payee);
        vm.expectRevert(err);
        channel.settle(c);
    }

    function _assertChannel(bytes32 id, uint256 deposit, uint256 paid, uint256 exitAt)
        internal
        view
    {
        IPaymentChannel.Channel memory ch = channel.getChannel(id);
        assertEq(ch.deposit, deposit, "deposit");
        assertEq(ch.paid, paid, "paid");
        assertEq(ch.exitAt, exitAt, "exitAt");
        assertEq(uint8(ch.status), uint8(IPaymentChannel.Status.Open), "open");
    }

    function _assertTombstone(bytes32 id) internal view {
        IPaymentChannel.Channel memory ch = channel.getChannel(id);
        assertEq(uint8(ch.status), uint8(IPaymentChannel.Status.Closed), "closed");
        assertEq(uint256(ch.deposit) + ch.paid + ch.exitAt, 0, "tombstone fields zero");
    }

    function _c() internal view returns (IPaymentChannelConstants) {
        return IPaymentChannelConstants(address(channel));
    }

    // =========================================================================================
    // constructor
    // =========================================================================================

    function test_constructor_revertsWhenMinZero() public {
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.ChallengePeriodOutOfBounds.selector, 0, 1, 10)
        );
        this.deployChannel(0, 10);
    }

    function test_constructor_revertsWhenMinAboveMax() public {
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.ChallengePeriodOutOfBounds.selector, 11, 1, 10)
        );
        this.deployChannel(11, 10);
    }

    function test_constructor_storesBoundsAndAcceptsMinEqualMax() public {
        IPaymentChannel c = this.deployChannel(5, 5);
        assertEq(c.minChallengePeriod(), 5);
        assertEq(c.maxChallengePeriod(), 5);
        assertEq(channel.minChallengePeriod(), MIN_PERIOD);
        assertEq(channel.maxChallengePeriod(), MAX_PERIOD);
        assertEq(channel.ERC1271_GAS_STIPEND(), 12_000);
    }

    /// External so that `expectRevert` sees the deployment's revert.
    function deployChannel(uint32 minPeriod, uint32 maxPeriod) external returns (IPaymentChannel) {
        bytes memory code = abi.encodePacked(
            vm.getCode("PaymentChannel.sol:PaymentChannel"), abi.encode(minPeriod, maxPeriod)
        );
        address deployed;
        assembly {
            deployed := create(0, add(code, 0x20), mload(code))
            if iszero(deployed) {
                returndatacopy(0, 0, returndatasize())
                revert(0, returndatasize())
            }
        }
        return IPaymentChannel(deployed);
    }

    // =========================================================================================
    // open
    // =========================================================================================

    function test_open_erc20PullsDepositAndStoresChannel() public {
        IPaymentChannel.ChannelParams memory p = _params(address(usd), session, "s");
        bytes32 id = _remember(p);
        vm.expectEmit(address(channel));
        emit IPaymentChannel.ChannelOpened(
            id, payer, payee, address(usd), session, PERIOD, "s", DEPOSIT
        );
        vm.prank(payer);
        assertEq(channel.open(p, DEPOSIT), id);
        _assertChannel(id, DEPOSIT, 0, 0);
        assertEq(usd.balanceOf(address(channel)), DEPOSIT);
        assertEq(usd.balanceOf(payer), FUNDS - DEPOSIT);
    }

    function test_open_nativeTakesMsgValue() public {
        bytes32 id = _openEth(1 ether);
        _assertChannel(id, 1 ether, 0, 0);
        assertEq(address(channel).balance, 1 ether);
    }

    function test_open_revertsWhenPayeeZero() public {
        IPaymentChannel.ChannelParams memory p = _params(address(usd), address(0), 0);
        p.payee = address(0);
        vm.prank(payer);
        vm.expectRevert(IPaymentChannel.InvalidPayee.selector);
        channel.open(p, DEPOSIT);
    }

    function test_open_revertsWhenDepositZero() public {
        IPaymentChannel.ChannelParams memory p = _params(address(usd), address(0), 0);
        vm.prank(payer);
        vm.expectRevert(IPaymentChannel.ZeroAmount.selector);
        channel.open(p, 0);
    }

    function test_open_revertsWhenDepositAboveUint104() public {
        IPaymentChannel.ChannelParams memory p = _params(address(0), address(0), 0);
        uint256 tooMuch = uint256(MAX_DEPOSIT) + 1;
        vm.deal(payer, tooMuch);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.DepositTooLarge.selector, tooMuch));
        channel.open{value: tooMuch}(p, tooMuch);
    }

    function test_open_acceptsDepositOfUint104Max() public {
        vm.deal(payer, MAX_DEPOSIT);
        bytes32 id = _open(_params(address(0), address(0), 0), MAX_DEPOSIT);
        _assertChannel(id, MAX_DEPOSIT, 0, 0);
    }

    function test_open_revertsWhenPeriodOutOfBounds() public {
        uint32[2] memory bad = [MIN_PERIOD - 1, MAX_PERIOD + 1];
        for (uint256 i; i < 2; ++i) {
            IPaymentChannel.ChannelParams memory p = _params(address(usd), address(0), 0);
            p.challengePeriod = bad[i];
            vm.prank(payer);
            vm.expectRevert(
                abi.encodeWithSelector(
                    IPaymentChannel.ChallengePeriodOutOfBounds.selector,
                    bad[i],
                    MIN_PERIOD,
                    MAX_PERIOD
                )
            );
            channel.open(p, DEPOSIT);
        }
    }

    function test_open_acceptsPeriodAtBothBounds() public {
        uint32[2] memory ok = [MIN_PERIOD, MAX_PERIOD];
        for (uint256 i; i < 2; ++i) {
            IPaymentChannel.ChannelParams memory p = _params(address(usd), address(0), bytes32(i));
            p.challengePeriod = ok[i];
            bytes32 id = _open(p, DEPOSIT);
            uint256 exitAt = _requestExit(id);
            assertEq(exitAt, block.timestamp + ok[i]);
        }
    }

    function test_open_revertsWhenNativeValueMismatch() public {
        IPaymentChannel.ChannelParams memory p = _params(address(0), address(0), 0);
        uint256[2] memory sent = [uint256(1 ether - 1), 1 ether + 1];
        for (uint256 i; i < 2; ++i) {
            vm.prank(payer);
            vm.expectRevert(
                abi.encodeWithSelector(IPaymentChannel.InvalidMsgValue.selector, sent[i], 1 ether)
            );
            channel.open{value: sent[i]}(p, 1 ether);
        }
    }

    function test_open_revertsWhenValueSentWithErc20() public {
        IPaymentChannel.ChannelParams memory p = _params(address(usd), address(0), 0);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.InvalidMsgValue.selector, 1, 0));
        channel.open{value: 1}(p, DEPOSIT);
    }

    function test_open_revertsWhenErc20AllowanceMissing() public {
        IPaymentChannel.ChannelParams memory p = _params(address(usd), address(0), 0);
        p.payer = alice;
        vm.prank(alice);
        vm.expectRevert(
            abi.encodeWithSelector(
                IERC20Errors.ERC20InsufficientAllowance.selector, address(channel), 0, DEPOSIT
            )
        );
        channel.open(p, DEPOSIT);
    }

    function test_open_revertsWhenIdReused() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.ChannelParams memory p = _p(id);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.ChannelExists.selector, id));
        channel.open(p, 1);
        // The deposit is not part of the id: another amount names the same channel.
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.ChannelExists.selector, id));
        channel.open(p, DEPOSIT);
    }

    function test_open_newSaltOpensSecondChannel() public {
        bytes32 a = _openUsd(DEPOSIT);
        bytes32 b = _open(_params(address(usd), address(0), "other"), DEPOSIT);
        assertTrue(a != b);
        _assertChannel(a, DEPOSIT, 0, 0);
        _assertChannel(b, DEPOSIT, 0, 0);
    }

    function test_open_feeOnTransferTokenCreditsWhatArrived() public {
        UnitQuirkyToken qt = new UnitQuirkyToken();
        qt.mint(payer, FUNDS);
        qt.setFeeBps(100);
        vm.prank(payer);
        qt.approve(address(channel), type(uint256).max);
        bytes32 id = _open(_params(address(qt), address(0), 0), DEPOSIT);
        _assertChannel(id, DEPOSIT * 99 / 100, 0, 0);
    }

    function test_open_revertsWhenNothingArrives() public {
        UnitQuirkyToken qt = new UnitQuirkyToken();
        qt.mint(payer, FUNDS);
        qt.setFeeBps(10_000);
        vm.prank(payer);
        qt.approve(address(channel), type(uint256).max);
        IPaymentChannel.ChannelParams memory p = _params(address(qt), address(0), 0);
        vm.prank(payer);
        vm.expectRevert(IPaymentChannel.ZeroAmount.selector);
        channel.open(p, DEPOSIT);
    }

    function test_open_revertsWhenBrokenTokenDeliversAboveUint104() public {
        UnitQuirkyToken qt = new UnitQuirkyToken();
        qt.mint(payer, FUNDS);
        qt.setBonus(uint256(MAX_DEPOSIT));
        vm.prank(payer);
        qt.approve(address(channel), type(uint256).max);
        IPaymentChannel.ChannelParams memory p = _params(address(qt), address(0), 0);
        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentChannel.DepositTooLarge.selector, uint256(MAX_DEPOSIT) + DEPOSIT
            )
        );
        channel.open(p, DEPOSIT);
    }

    // =========================================================================================
    // computeChannelId
    // =========================================================================================

    function test_computeChannelId_matchesFormulaAndBindsEveryParameter() public {
        IPaymentChannel.ChannelParams memory p = _params(address(usd), session, "x");
        bytes32 id = channel.computeChannelId(p);
        assertEq(id, keccak256(abi.encode(block.chainid, address(channel), p)));
        assertEq(_open(p, DEPOSIT), id);
        for (uint256 field; field < 6; ++field) {
            IPaymentChannel.ChannelParams memory q = _p(id);
            if (field == 0) q.payer = alice;
            if (field == 1) q.payee = alice;
            if (field == 2) q.token = address(0);
            if (field == 3) q.signer = address(0);
            if (field == 4) q.challengePeriod = PERIOD + 1;
            if (field == 5) q.salt = "y";
            assertTrue(channel.computeChannelId(q) != id);
        }
    }

    function test_computeChannelId_bindsContractAndChain() public {
        IPaymentChannel.ChannelParams memory p = _params(address(usd), address(0), 0);
        IPaymentChannel other = _deployChannel(MIN_PERIOD, MAX_PERIOD);
        bytes32 id = channel.computeChannelId(p);
        assertTrue(other.computeChannelId(p) != id);
        vm.chainId(block.chainid + 1);
        assertTrue(channel.computeChannelId(p) != id);
    }

    // =========================================================================================
    // openWithPermit
    // =========================================================================================

    function _alicePermitOpen(uint256 deposit, bytes32 salt)
        internal
        returns (
            IPaymentChannel.ChannelParams memory p,
            bytes32 id,
            uint8 v,
            bytes32 r,
            bytes32 s,
            bytes memory openSig
        )
    {
        p = _params(address(usd), address(0), salt);
        p.payer = alice;
        id = _remember(p);
        (v, r, s) = _permitSig(aliceKey, alice, deposit, block.timestamp + 1 hours);
        openSig = _openAuthSig(aliceKey, id, deposit, block.timestamp + 1 hours);
    }

    function test_openWithPermit_relayerOpensForPayer() public {
        (
            IPaymentChannel.ChannelParams memory p,
            bytes32 id,
            uint8 v,
            bytes32 r,
            bytes32 s,
            bytes memory openSig
        ) = _alicePermitOpen(DEPOSIT, 0);
        vm.prank(stranger);
        assertEq(
            channel.openWithPermit(p, DEPOSIT, block.timestamp + 1 hours, v, r, s, openSig), id
        );
        _assertChannel(id, DEPOSIT, 0, 0);
        assertEq(usd.balanceOf(alice), FUNDS - DEPOSIT);
    }

    function test_openWithPermit_acceptsDeadlineEqualToNow() public {
        IPaymentChannel.ChannelParams memory p = _params(address(usd), address(0), 0);
        p.payer = alice;
        bytes32 id = _remember(p);
        (uint8 v, bytes32 r, bytes32 s) = _permitSig(aliceKey, alice, DEPOSIT, block.timestamp);
        bytes memory openSig = _openAuthSig(aliceKey, id, DEPOSIT, block.timestamp);
        channel.openWithPermit(p, DEPOSIT, block.timestamp, v, r, s, openSig);
        _assertChannel(id, DEPOSIT, 0, 0);
    }

    function test_openWithPermit_revertsWhenFrontRunnerAltersAnything() public {
        (
            IPaymentChannel.ChannelParams memory p,,
            uint8 v,
            bytes32 r,
            bytes32 s,
            bytes memory openSig
        ) = _alicePermitOpen(DEPOSIT, 0);
        uint256 deadline = block.timestamp + 1 hours;
        for (uint256 field; field < 4; ++field) {
            IPaymentChannel.ChannelParams memory q = p;
            q = IPaymentChannel.ChannelParams(
                p.payer, p.payee, p.token, p.signer, p.challengePeriod, p.salt
            );
            if (field == 0) q.payee = stranger;
            if (field == 1) q.signer = stranger;
            if (field == 2) q.salt = "other";
            if (field == 3) q.challengePeriod = PERIOD + 1;
            bytes32 qid = channel.computeChannelId(q);
            vm.expectRevert(
                abi.encodeWithSelector(
                    IPaymentChannel.InvalidOpenAuthorization.selector, qid, alice
                )
            );
            channel.openWithPermit(q, DEPOSIT, deadline, v, r, s, openSig);
        }
        // Another deposit (the permit may allow more than the payer meant to lock).
        bytes32 id = channel.computeChannelId(p);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.InvalidOpenAuthorization.selector, id, alice)
        );
        channel.openWithPermit(p, DEPOSIT - 1, deadline, v, r, s, openSig);
        // Another deadline.
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.InvalidOpenAuthorization.selector, id, alice)
        );
        channel.openWithPermit(p, DEPOSIT, deadline + 1, v, r, s, openSig);
        assertEq(usd.balanceOf(alice), FUNDS);
    }

    function test_openWithPermit_revertsWhenOpenSignedByAnotherKey() public {
        (IPaymentChannel.ChannelParams memory p, bytes32 id, uint8 v, bytes32 r, bytes32 s,) =
            _alicePermitOpen(DEPOSIT, 0);
        bytes memory openSig = _openAuthSig(payerKey, id, DEPOSIT, block.timestamp + 1 hours);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.InvalidOpenAuthorization.selector, id, alice)
        );
        channel.openWithPermit(p, DEPOSIT, block.timestamp + 1 hours, v, r, s, openSig);
    }

    function test_openWithPermit_revertsWhenExpired() public {
        (
            IPaymentChannel.ChannelParams memory p,,
            uint8 v,
            bytes32 r,
            bytes32 s,
            bytes memory openSig
        ) = _alicePermitOpen(DEPOSIT, 0);
        uint256 deadline = block.timestamp + 1 hours;
        vm.warp(deadline + 1);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.AuthorizationExpired.selector, deadline)
        );
        channel.openWithPermit(p, DEPOSIT, deadline, v, r, s, openSig);
    }

    function test_openWithPermit_opensWhenPermitFrontRun() public {
        (
            IPaymentChannel.ChannelParams memory p,
            bytes32 id,
            uint8 v,
            bytes32 r,
            bytes32 s,
            bytes memory openSig
        ) = _alicePermitOpen(DEPOSIT, 0);
        uint256 deadline = block.timestamp + 1 hours;
        usd.permit(alice, address(channel), DEPOSIT, deadline, v, r, s);
        channel.openWithPermit(p, DEPOSIT, deadline, v, r, s, openSig);
        _assertChannel(id, DEPOSIT, 0, 0);
    }

    function test_openWithPermit_revertsWhenPermitInvalidAndNoAllowance() public {
        (IPaymentChannel.ChannelParams memory p,,,,, bytes memory openSig) =
            _alicePermitOpen(DEPOSIT, 0);
        vm.expectRevert(
            abi.encodeWithSelector(
                IERC20Errors.ERC20InsufficientAllowance.selector, address(channel), 0, DEPOSIT
            )
        );
        channel.openWithPermit(p, DEPOSIT, block.timestamp + 1 hours, 27, 0, 0, openSig);
    }

    function test_openWithPermit_revertsWhenNative() public {
        IPaymentChannel.ChannelParams memory p = _params(address(0), address(0), 0);
        vm.expectRevert(IPaymentChannel.NativeTokenNotSupported.selector);
        channel.openWithPermit(p, 1, block.timestamp, 0, 0, 0, "");
    }

    function test_openWithPermit_revertsWhenReplayed() public {
        (
            IPaymentChannel.ChannelParams memory p,
            bytes32 id,
            uint8 v,
            bytes32 r,
            bytes32 s,
            bytes memory openSig
        ) = _alicePermitOpen(DEPOSIT, 0);
        uint256 deadline = block.timestamp + 1 hours;
        channel.openWithPermit(p, DEPOSIT, deadline, v, r, s, openSig);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.ChannelExists.selector, id));
        channel.openWithPermit(p, DEPOSIT, deadline, v, r, s, openSig);
    }

    function test_openWithPermit_eip1271WalletPayer() public {
        ERC1271Wallet wallet = new ERC1271Wallet(alice);
        usd.mint(address(wallet), FUNDS);
        vm.prank(address(wallet));
        usd.approve(address(channel), type(uint256).max);
        IPaymentChannel.ChannelParams memory p = _params(address(usd), address(0), 0);
        p.payer = address(wallet);
        bytes32 id = _remember(p);
        bytes memory openSig = _openAuthSig(aliceKey, id, DEPOSIT, block.timestamp);
        channel.openWithPermit(p, DEPOSIT, block.timestamp, 0, 0, 0, openSig);
        _assertChannel(id, DEPOSIT, 0, 0);
    }

    // =========================================================================================
    // openWithAuthorization
    // =========================================================================================

    function _aliceAuth(uint256 deposit, bytes32 salt)
        internal
        returns (IPaymentChannel.ChannelParams memory p, bytes32 id, uint8 v, bytes32 r, bytes32 s)
    {
        p = _params(address(usd), address(0), salt);
        p.payer = alice;
        id = _remember(p);
        (v, r, s) = _receiveAuthSig(aliceKey, alice, deposit, 0, block.timestamp + 1 hours, id);
    }

    function test_openWithAuthorization_relayerOpensForPayer() public {
        (IPaymentChannel.ChannelParams memory p, bytes32 id, uint8 v, bytes32 r, bytes32 s) =
            _aliceAuth(DEPOSIT, 0);
        vm.prank(stranger);
        assertEq(
            channel.openWithAuthorization(p, DEPOSIT, 0, block.timestamp + 1 hours, v, r, s), id
        );
        _assertChannel(id, DEPOSIT, 0, 0);
        assertEq(usd.balanceOf(alice), FUNDS - DEPOSIT);
    }

    function test_openWithAuthorization_revertsWhenAnythingAltered() public {
        (IPaymentChannel.ChannelParams memory p,, uint8 v, bytes32 r, bytes32 s) =
            _aliceAuth(DEPOSIT, 0);
        uint256 before = block.timestamp + 1 hours;
        IPaymentChannel.ChannelParams memory q = IPaymentChannel.ChannelParams(
            p.payer, stranger, p.token, p.signer, p.challengePeriod, p.salt
        );
        vm.expectRevert(TestStablecoin.InvalidAuthorizationSignature.selector);
        channel.openWithAuthorization(q, DEPOSIT, 0, before, v, r, s);
        vm.expectRevert(TestStablecoin.InvalidAuthorizationSignature.selector);
        channel.openWithAuthorization(p, DEPOSIT + 1, 0, before, v, r, s);
        q.payee = payee;
        q.payer = payer;
        vm.expectRevert(TestStablecoin.InvalidAuthorizationSignature.selector);
        channel.openWithAuthorization(q, DEPOSIT, 0, before, v, r, s);
        assertEq(usd.balanceOf(alice), FUNDS);
    }

    function test_openWithAuthorization_revertsWhenReplayed() public {
        (IPaymentChannel.ChannelParams memory p, bytes32 id, uint8 v, bytes32 r, bytes32 s) =
            _aliceAuth(DEPOSIT, 0);
        channel.openWithAuthorization(p, DEPOSIT, 0, block.timestamp + 1 hours, v, r, s);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.ChannelExists.selector, id));
        channel.openWithAuthorization(p, DEPOSIT, 0, block.timestamp + 1 hours, v, r, s);
    }

    function test_openWithAuthorization_revertsWhenExpired() public {
        (IPaymentChannel.ChannelParams memory p,, uint8 v, bytes32 r, bytes32 s) =
            _aliceAuth(DEPOSIT, 0);
        uint256 before = block.timestamp + 1 hours;
        vm.warp(before);
        vm.expectRevert(
            abi.encodeWithSelector(TestStablecoin.AuthorizationNotInValidWindow.selector, 0, before)
        );
        channel.openWithAuthorization(p, DEPOSIT, 0, before, v, r, s);
    }

    function test_openWithAuthorization_revertsWhenNative() public {
        IPaymentChannel.ChannelParams memory p = _params(address(0), address(0), 0);
        vm.expectRevert(IPaymentChannel.NativeTokenNotSupported.selector);
        channel.openWithAuthorization(p, 1, 0, 1, 0, 0, 0);
    }

    function test_openWithAuthorization_checksParamsBeforeToken() public {
        IPaymentChannel.ChannelParams memory p = _params(address(usd), address(0), 0);
        p.payee = address(0);
        vm.expectRevert(IPaymentChannel.InvalidPayee.selector);
        channel.openWithAuthorization(p, DEPOSIT, 0, 1, 0, 0, 0);
    }

    // =========================================================================================
    // topUp
    // =========================================================================================

    function test_topUp_byPayerAddsToDeposit() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.ChannelParams memory p = _p(id);
        vm.expectEmit(address(channel));
        emit IPaymentChannel.ToppedUp(id, payer, 5e6, DEPOSIT + 5e6);
        vm.prank(payer);
        channel.topUp(p, 5e6);
        _assertChannel(id, DEPOSIT + 5e6, 0, 0);
    }

    function test_topUp_byThirdPartyWithoutExit() public {
        bytes32 id = _openUsd(DEPOSIT);
        _fund(stranger);
        IPaymentChannel.ChannelParams memory p = _p(id);
        vm.prank(stranger);
        channel.topUp(p, 5e6);
        _assertChannel(id, DEPOSIT + 5e6, 0, 0);
        assertEq(usd.balanceOf(stranger), FUNDS - 5e6);
    }

    function test_topUp_nativeAddsMsgValue() public {
        bytes32 id = _openEth(1 ether);
        IPaymentChannel.ChannelParams memory p = _p(id);
        vm.prank(payer);
        channel.topUp{value: 2 ether}(p, 2 ether);
        _assertChannel(id, 3 ether, 0, 0);
    }

    function test_topUp_revertsOnWrongValue() public {
        bytes32 e = _openEth(1 ether);
        bytes32 u = _open(_params(address(usd), address(0), "u"), DEPOSIT);
        IPaymentChannel.ChannelParams memory pe = _p(e);
        IPaymentChannel.ChannelParams memory pu = _p(u);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.InvalidMsgValue.selector, 1, 2));
        channel.topUp{value: 1}(pe, 2);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.InvalidMsgValue.selector, 1, 0));
        channel.topUp{value: 1}(pu, 2);
    }

    function test_topUp_revertsWhenAmountZero() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.ChannelParams memory p = _p(id);
        vm.prank(payer);
        vm.expectRevert(IPaymentChannel.ZeroAmount.selector);
        channel.topUp(p, 0);
    }

    function test_topUp_revertsWhenChannelUnknownOrClosed() public {
        IPaymentChannel.ChannelParams memory p = _params(address(usd), address(0), "none");
        bytes32 unknown = channel.computeChannelId(p);
        vm.prank(payer);
        vm.expectRevert(_notOpen(unknown, IPaymentChannel.Status.None));
        channel.topUp(p, 1);

        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory none = _noVoucher(id);
        vm.prank(payee);
        channel.close(none);
        IPaymentChannel.ChannelParams memory q = _p(id);
        vm.prank(payer);
        vm.expectRevert(_notOpen(id, IPaymentChannel.Status.Closed));
        channel.topUp(q, 1);
    }

    function test_topUp_revertsForOthersDuringExit() public {
        bytes32 id = _openUsd(DEPOSIT);
        _requestExit(id);
        IPaymentChannel.ChannelParams memory p = _p(id);
        address[3] memory others = [stranger, payee, watcher];
        for (uint256 i; i < 3; ++i) {
            _fund(others[i]);
            vm.prank(others[i]);
            vm.expectRevert(
                abi.encodeWithSelector(IPaymentChannel.TopUpDuringExit.selector, id, others[i])
            );
            channel.topUp(p, 1);
        }
    }

    function test_topUp_byPayerDuringExitCancelsIt() public {
        bytes32 id = _openUsd(DEPOSIT);
        _requestExit(id);
        IPaymentChannel.ChannelParams memory p = _p(id);
        vm.expectEmit(address(channel));
        emit IPaymentChannel.ToppedUp(id, payer, 1, DEPOSIT + 1);
        vm.expectEmit(address(channel));
        emit IPaymentChannel.ExitCancelled(id);
        vm.prank(payer);
        channel.topUp(p, 1);
        _assertChannel(id, DEPOSIT + 1, 0, 0);
    }

    function test_topUp_byPayerAfterExitAtStillCancelsExit() public {
        bytes32 id = _openUsd(DEPOSIT);
        uint256 exitAt = _requestExit(id);
        vm.warp(exitAt + 1);
        IPaymentChannel.ChannelParams memory p = _p(id);
        vm.prank(payer);
        channel.topUp(p, 1);
        _assertChannel(id, DEPOSIT + 1, 0, 0);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.ExitNotRequested.selector, id));
        channel.withdraw(p);
    }

    function test_topUp_depositBoundedByUint104() public {
        vm.deal(payer, 2 * uint256(MAX_DEPOSIT));
        bytes32 id = _openEth(1);
        IPaymentChannel.ChannelParams memory p = _p(id);
        uint256 rest = uint256(MAX_DEPOSIT) - 1;
        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentChannel.DepositTooLarge.selector, uint256(MAX_DEPOSIT) + 1
            )
        );
        channel.topUp{value: rest + 1}(p, rest + 1);
        vm.prank(payer);
        channel.topUp{value: rest}(p, rest);
        _assertChannel(id, MAX_DEPOSIT, 0, 0);
    }

    function test_topUp_feeOnTransferTokenCreditsWhatArrived() public {
        UnitQuirkyToken qt = new UnitQuirkyToken();
        qt.mint(payer, FUNDS);
        vm.prank(payer);
        qt.approve(address(channel), type(uint256).max);
        bytes32 id = _open(_params(address(qt), address(0), 0), DEPOSIT);
        qt.setFeeBps(100);
        IPaymentChannel.ChannelParams memory p = _p(id);
        vm.prank(payer);
        channel.topUp(p, 100e6);
        _assertChannel(id, DEPOSIT + 99e6, 0, 0);
        qt.setFeeBps(10_000);
        vm.prank(payer);
        vm.expectRevert(IPaymentChannel.ZeroAmount.selector);
        channel.topUp(p, 100e6);
    }

    // =========================================================================================
    // settle
    // =========================================================================================

    function test_settle_paysDifferenceAndKeepsChannelOpen() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c1 = _claim(payerKey, id, 1, 100e6);
        IPaymentChannel.Claim memory c2 = _claim(payerKey, id, 9, 250e6);
        vm.expectEmit(address(channel));
        emit IPaymentChannel.Settled(id, 1, 100e6, 100e6);
        vm.prank(payee);
        channel.settle(c1);
        vm.expectEmit(address(channel));
        emit IPaymentChannel.Settled(id, 9, 250e6, 150e6);
        vm.prank(payee);
        channel.settle(c2);
        _assertChannel(id, DEPOSIT, 250e6, 0);
        assertEq(usd.balanceOf(payee), 250e6);
        assertEq(usd.balanceOf(address(channel)), DEPOSIT - 250e6);
    }

    function test_settle_nonceIsNotStoredAndMayGoAnyWay() public {
        // No on-chain nonce: only `paid` orders claims. An older voucher with a higher amount
        // signed later (nonces are the signer's business) is still bounded by what it says.
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c1 = _claim(payerKey, id, 9, 100e6);
        IPaymentChannel.Claim memory c2 = _claim(payerKey, id, 3, 200e6);
        vm.prank(payee);
        channel.settle(c1);
        vm.prank(payee);
        channel.settle(c2);
        _assertChannel(id, DEPOSIT, 200e6, 0);
    }

    function test_settle_payeeClaimingLessIsPaidClaimed() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _partial(payerKey, id, 1, 110e6, 10e6);
        vm.prank(payee);
        channel.settle(c);
        _assertChannel(id, DEPOSIT, 10e6, 0);
        assertEq(usd.balanceOf(payee), 10e6);
        // The rest of that ceiling stays claimable with the same voucher.
        c.claimed = 110e6;
        vm.prank(payee);
        channel.settle(c);
        assertEq(usd.balanceOf(payee), 110e6);
    }

    function test_settle_sameVoucherAgainPaysNothing() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        vm.prank(payee);
        channel.settle(c);
        vm.expectEmit(address(channel));
        emit IPaymentChannel.Settled(id, 1, 100e6, 0);
        vm.prank(payee);
        channel.settle(c);
        assertEq(usd.balanceOf(payee), 100e6);
    }

    function test_settle_voucherEqualToDepositPaysAll() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, DEPOSIT);
        vm.prank(payee);
        channel.settle(c);
        assertEq(usd.balanceOf(payee), DEPOSIT);
        assertEq(usd.balanceOf(address(channel)), 0);
    }

    function test_settle_nativePaysEth() public {
        bytes32 id = _openEth(1 ether);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 0.25 ether);
        vm.prank(payee);
        channel.settle(c);
        assertEq(payee.balance, 0.25 ether);
    }

    function test_settle_sessionKeyVoucher() public {
        bytes32 id = _openUsdWithSession(DEPOSIT, "s");
        IPaymentChannel.Claim memory c = _claim(sessionKey, id, 1, 100e6);
        vm.prank(payee);
        channel.settle(c);
        assertEq(usd.balanceOf(payee), 100e6);
        // The payer's own key does not sign for a session channel.
        IPaymentChannel.Claim memory byPayer = _claim(payerKey, id, 2, 200e6);
        _settleExpectRevert(byPayer, _badSig(id, session));
    }

    function test_settle_eip1271WalletPayer() public {
        ERC1271Wallet wallet = new ERC1271Wallet(alice);
        _fund(address(wallet));
        IPaymentChannel.ChannelParams memory p = _params(address(usd), address(0), 0);
        p.payer = address(wallet);
        bytes32 id = _open(p, DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(aliceKey, id, 1, 100e6);
        vm.prank(payee);
        channel.settle(c);
        assertEq(usd.balanceOf(payee), 100e6);
        IPaymentChannel.Claim memory bad = _claim(payerKey, id, 2, 200e6);
        _settleExpectRevert(bad, _badSig(id, address(wallet)));
    }

    function test_settle_amountChecks() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory above = _claim(payerKey, id, 1, DEPOSIT + 1);
        _settleExpectRevert(
            above,
            abi.encodeWithSelector(
                IPaymentChannel.VoucherExceedsDeposit.selector, DEPOSIT + 1, DEPOSIT
            )
        );
        IPaymentChannel.Claim memory c = _partial(payerKey, id, 1, 100e6, 100e6 + 1);
        _settleExpectRevert(
            c, abi.encodeWithSelector(IPaymentChannel.ClaimAboveVoucher.selector, 100e6 + 1, 100e6)
        );
        IPaymentChannel.Claim memory first = _claim(payerKey, id, 2, 300e6);
        vm.prank(payee);
        channel.settle(first);
        IPaymentChannel.Claim memory lower = _claim(payerKey, id, 3, 200e6);
        _settleExpectRevert(
            lower, abi.encodeWithSelector(IPaymentChannel.ClaimBelowPaid.selector, 200e6, 300e6)
        );
        IPaymentChannel.Claim memory partLower = _partial(payerKey, id, 4, 900e6, 250e6);
        _settleExpectRevert(
            partLower, abi.encodeWithSelector(IPaymentChannel.ClaimBelowPaid.selector, 250e6, 300e6)
        );
        // A voucher above the old deposit becomes valid after a top-up.
        IPaymentChannel.ChannelParams memory p = _p(id);
        vm.prank(payer);
        channel.topUp(p, 1);
        vm.prank(payee);
        channel.settle(above);
        assertEq(usd.balanceOf(payee), DEPOSIT + 1);
    }

    function test_settle_revertsWhenSignedByWrongKeyOrTampered() public {
        bytes32 id = _openUsd(DEPOSIT);
        bytes32 other = _open(_params(address(usd), address(0), "other"), DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(sessionKey, id, 1, 100e6);
        _settleExpectRevert(c, _badSig(id, payer));

        c = _claim(payerKey, id, 1, 100e6);
        c.cumulativeAmount = 200e6;
        c.claimed = 200e6;
        _settleExpectRevert(c, _badSig(id, payer));

        c = _claim(payerKey, id, 1, 100e6);
        c.nonce = 2;
        _settleExpectRevert(c, _badSig(id, payer));

        c = _claim(payerKey, id, 1, 100e6);
        c.channel = _p(other);
        _settleExpectRevert(c, _badSig(other, payer));
    }

    function test_settle_revertsOnMalformedSignatures() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory good = _claim(payerKey, id, 1, 100e6);
        bytes memory sig = good.signature;
        bytes[5] memory bad;
        bad[0] = _highS(sig);
        bytes memory short = new bytes(64);
        for (uint256 i; i < 64; ++i) {
            short[i] = sig[i];
        }
        bad[1] = short;
        bad[2] = abi.encodePacked(sig, uint8(0));
        bytes memory v0 = abi.encodePacked(sig);
        v0[64] = bytes1(uint8(sig[64]) - 27);
        bad[3] = v0;
        bytes memory v1 = abi.encodePacked(sig);
        v1[64] = bytes1(uint8(sig[64]) == 27 ? 1 : 0);
        bad[4] = v1;
        for (uint256 i; i < bad.length; ++i) {
            IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
            c.signature = bad[i];
            _settleExpectRevert(c, _badSig(id, payer));
        }
        IPaymentChannel.Claim memory none = _claim(payerKey, id, 1, 100e6);
        none.signature = "";
        _settleExpectRevert(
            none, abi.encodeWithSelector(IPaymentChannel.MissingSignature.selector, id)
        );
        vm.prank(payee);
        channel.settle(good);
    }

    function test_settle_revertsForEveryoneButPayee() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        address[4] memory others = [stranger, payer, session, watcher];
        for (uint256 i; i < 4; ++i) {
            vm.prank(others[i]);
            vm.expectRevert(
                abi.encodeWithSelector(IPaymentChannel.NotPayee.selector, others[i], payee)
            );
            channel.settle(c);
        }
    }

    function test_settle_timingAroundExitAt() public {
        bytes32 id = _openUsd(DEPOSIT);
        uint256 exitAt = _requestExit(id);
        vm.warp(exitAt - 1);
        IPaymentChannel.Claim memory c = _partial(payerKey, id, 1, 300e6, 100e6);
        vm.prank(payee);
        channel.settle(c);
        vm.warp(exitAt);
        c.claimed = 200e6;
        _settleExpectRevert(
            c, abi.encodeWithSelector(IPaymentChannel.ChallengePeriodOver.selector, id, exitAt)
        );
        vm.warp(exitAt + 1 days);
        _settleExpectRevert(
            c, abi.encodeWithSelector(IPaymentChannel.ChallengePeriodOver.selector, id, exitAt)
        );
    }

    function test_settle_revertsWhenChannelUnknownOrClosed() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        c.channel.salt = "unknown";
        bytes32 unknown = channel.computeChannelId(c.channel);
        _settleExpectRevert(c, _notOpen(unknown, IPaymentChannel.Status.None));

        IPaymentChannel.Claim memory none = _noVoucher(id);
        vm.prank(payee);
        channel.close(none);
        IPaymentChannel.Claim memory late = _claim(payerKey, id, 1, 100e6);
        _settleExpectRevert(late, _notOpen(id, IPaymentChannel.Status.Closed));
    }

    function test_settle_revertsForVoucherOfOtherDeploymentOrChain() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel other = _deployChannel(MIN_PERIOD, MAX_PERIOD);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        c.signature = _sign(payerKey, other.voucherDigest(id, 1, 100e6));
        _settleExpectRevert(c, _badSig(id, payer));

        uint256 chainId = block.chainid;
        vm.chainId(chainId + 1);
        bytes memory foreign = _sign(payerKey, channel.voucherDigest(id, 1, 100e6));
        vm.chainId(chainId);
        c.signature = foreign;
        _settleExpectRevert(c, _badSig(id, payer));
    }

    // =========================================================================================
    // settleMany
    // =========================================================================================

    function test_settleMany_paysPayeeOnceForManyChannels() public {
        IPaymentChannel.Claim[] memory claims = new IPaymentChannel.Claim[](3);
        for (uint256 i; i < 3; ++i) {
            bytes32 id = _open(_params(address(usd), address(0), bytes32(i)), DEPOSIT);
            claims[i] = _claim(payerKey, id, 1, (i + 1) * 10e6);
        }
        vm.recordLogs();
        vm.prank(payee);
        assertEq(channel.settleMany(claims), 3);
        assertEq(_transfersFrom(vm.getRecordedLogs(), address(usd), address(channel)), 1);
        assertEq(usd.balanceOf(payee), 60e6);
    }

    function test_settleMany_skipsBadItemsWithReason() public {
        bytes32 a = _openUsd(DEPOSIT);
        bytes32 b = _open(_params(address(usd), address(0), "b"), DEPOSIT);
        IPaymentChannel.Claim[] memory claims = new IPaymentChannel.Claim[](3);
        claims[0] = _claim(payerKey, a, 1, 100e6);
        claims[1] = _claim(sessionKey, b, 1, 100e6);
        claims[2] = _claim(payerKey, b, 1, DEPOSIT + 1);
        vm.expectEmit(address(channel));
        emit IPaymentChannel.ClaimSkipped(b, _badSig(b, payer));
        vm.expectEmit(address(channel));
        emit IPaymentChannel.ClaimSkipped(
            b,
            abi.encodeWithSelector(
                IPaymentChannel.VoucherExceedsDeposit.selector, DEPOSIT + 1, DEPOSIT
            )
        );
        vm.prank(payee);
        assertEq(channel.settleMany(claims), 1);
        assertEq(usd.balanceOf(payee), 100e6);
        _assertChannel(b, DEPOSIT, 0, 0);
    }

    function test_settleMany_strangerSettlesNothing() public {
        bytes32 id = _openUsd(DEPOSIT);
        _requestExit(id);
        IPaymentChannel.Claim[] memory claims = _array(_claim(payerKey, id, 1, 100e6));
        vm.expectEmit(address(channel));
        emit IPaymentChannel.ClaimSkipped(
            id, abi.encodeWithSelector(IPaymentChannel.NotPayee.selector, stranger, payee)
        );
        vm.prank(stranger);
        assertEq(channel.settleMany(claims), 0);
        assertEq(usd.balanceOf(payee), 0);
    }

    function test_settleMany_duplicateItemPaysOnce() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim[] memory claims = new IPaymentChannel.Claim[](2);
        claims[0] = _claim(payerKey, id, 1, 100e6);
        claims[1] = claims[0];
        vm.prank(payee);
        channel.settleMany(claims);
        assertEq(usd.balanceOf(payee), 100e6);
        _assertChannel(id, DEPOSIT, 100e6, 0);
    }

    function test_settleMany_mixedTokensPayOncePerToken() public {
        bytes32 u1 = _openUsd(DEPOSIT);
        bytes32 e = _openEth(1 ether);
        bytes32 u2 = _open(_params(address(usd), address(0), "2"), DEPOSIT);
        IPaymentChannel.Claim[] memory claims = new IPaymentChannel.Claim[](3);
        claims[0] = _claim(payerKey, u1, 1, 10e6);
        claims[1] = _claim(payerKey, e, 1, 0.1 ether);
        claims[2] = _claim(payerKey, u2, 1, 20e6);
        vm.recordLogs();
        vm.prank(payee);
        assertEq(channel.settleMany(claims), 3);
        assertEq(_transfersFrom(vm.getRecordedLogs(), address(usd), address(channel)), 1);
        assertEq(usd.balanceOf(payee), 30e6);
        assertEq(payee.balance, 0.1 ether);
    }

    function test_settleMany_emptyBatchReturnsZero() public {
        vm.prank(payee);
        assertEq(channel.settleMany(new IPaymentChannel.Claim[](0)), 0);
    }

    // =========================================================================================
    // close
    // =========================================================================================

    function test_close_paysPayeeRefundsPayerAndTombstones() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 3, 300e6);
        vm.recordLogs();
        vm.prank(payee);
        channel.close(c);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        // A close emits only Closed (and the token's transfers).
        uint256 ours;
        for (uint256 i; i < logs.length; ++i) {
            if (logs[i].emitter == address(channel)) {
                ++ours;
                assertEq(logs[i].topics[0], IPaymentChannel.Closed.selector);
                assertEq(logs[i].data, abi.encode(300e6, DEPOSIT - 300e6));
            }
        }
        assertEq(ours, 1);
        assertEq(usd.balanceOf(payee), 300e6);
        assertEq(usd.balanceOf(payer), FUNDS - 300e6);
        _assertTombstone(id);
    }

    function test_close_payeeMayClaimPartial() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _partial(payerKey, id, 3, 300e6, 120e6);
        vm.prank(payee);
        channel.close(c);
        assertEq(usd.balanceOf(payee), 120e6);
        assertEq(usd.balanceOf(payer), FUNDS - 120e6);
    }

    function test_close_withoutVoucherClosesAtPaid() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        vm.prank(payee);
        channel.settle(c);
        IPaymentChannel.Claim memory none = _noVoucher(id);
        none.claimed = 999e6; // ignored without a voucher
        vm.expectEmit(address(channel));
        emit IPaymentChannel.Closed(id, 100e6, DEPOSIT - 100e6);
        vm.prank(payee);
        channel.close(none);
        assertEq(usd.balanceOf(payee), 100e6);
        assertEq(usd.balanceOf(payer), FUNDS - 100e6);
    }

    function test_close_withoutVoucherOnFreshChannelRefundsAll() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory none = _noVoucher(id);
        vm.prank(payee);
        channel.close(none);
        assertEq(usd.balanceOf(payer), FUNDS);
        _assertTombstone(id);
    }

    function test_close_nativeChannelAndFullDeposit() public {
        bytes32 id = _openEth(1 ether);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 0.4 ether);
        uint256 before = payer.balance;
        vm.prank(payee);
        channel.close(c);
        assertEq(payee.balance, 0.4 ether);
        assertEq(payer.balance, before + 0.6 ether);

        bytes32 full = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory all = _claim(payerKey, full, 1, DEPOSIT);
        vm.recordLogs();
        vm.prank(payee);
        channel.close(all);
        assertEq(_transfersFrom(vm.getRecordedLogs(), address(usd), address(channel)), 1);
    }

    function test_close_revertsForEveryoneButPayee() public {
        bytes32 id = _openUsd(DEPOSIT);
        _requestExit(id);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        address[3] memory others = [stranger, payer, watcher];
        for (uint256 i; i < 3; ++i) {
            vm.prank(others[i]);
            vm.expectRevert(
                abi.encodeWithSelector(IPaymentChannel.NotPayee.selector, others[i], payee)
            );
            channel.close(c);
        }
    }

    function test_close_revertsWithInvalidVoucherOrUnknownChannel() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(sessionKey, id, 1, 100e6);
        vm.prank(payee);
        vm.expectRevert(_badSig(id, payer));
        channel.close(c);
        c.channel.salt = "unknown";
        bytes32 unknown = channel.computeChannelId(c.channel);
        vm.prank(payee);
        vm.expectRevert(_notOpen(unknown, IPaymentChannel.Status.None));
        channel.close(c);
    }

    function test_close_duringExitBeforeExitAtEndsExit() public {
        bytes32 id = _openUsd(DEPOSIT);
        uint256 exitAt = _requestExit(id);
        vm.warp(exitAt - 1);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        vm.prank(payee);
        channel.close(c);
        _assertTombstone(id);
        IPaymentChannel.ChannelParams memory p = _p(id);
        vm.warp(exitAt);
        vm.expectRevert(_notOpen(id, IPaymentChannel.Status.Closed));
        channel.withdraw(p);
    }

    function test_close_revertsAtExitAt() public {
        bytes32 id = _openUsd(DEPOSIT);
        uint256 exitAt = _requestExit(id);
        vm.warp(exitAt);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        vm.prank(payee);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.ChallengePeriodOver.selector, id, exitAt)
        );
        channel.close(c);
    }

    function test_close_everythingRefusedAfterwards() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        vm.prank(payee);
        channel.close(c);
        IPaymentChannel.ChannelParams memory p = _p(id);
        bytes memory closed = _notOpen(id, IPaymentChannel.Status.Closed);
        vm.startPrank(payee);
        vm.expectRevert(closed);
        channel.settle(c);
        vm.expectRevert(closed);
        channel.close(c);
        vm.stopPrank();
        vm.startPrank(payer);
        vm.expectRevert(closed);
        channel.topUp(p, 1);
        vm.expectRevert(closed);
        channel.requestExit(p);
        vm.expectRevert(closed);
        channel.withdraw(p);
        vm.expectRevert(closed);
        channel.closeWithAuthorization(p, 100e6, CLOSE_DEADLINE, "");
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.ChannelExists.selector, id));
        channel.open(p, DEPOSIT);
        vm.stopPrank();
    }

    // =========================================================================================
    // closeMany
    // =========================================================================================

    function test_closeMany_paysPayeeOnceAndRefundsEachPayer() public {
        _fund(alice);
        bytes32 a = _openUsd(DEPOSIT);
        IPaymentChannel.ChannelParams memory pb = _params(address(usd), address(0), "b");
        pb.payer = alice;
        bytes32 b = _open(pb, DEPOSIT);
        IPaymentChannel.Claim[] memory claims = new IPaymentChannel.Claim[](2);
        claims[0] = _claim(payerKey, a, 1, 100e6);
        claims[1] = _claim(aliceKey, b, 1, 200e6);
        vm.recordLogs();
        vm.prank(payee);
        assertEq(channel.closeMany(claims), 2);
        // One payout to the payee and one refund per payer.
        assertEq(_transfersFrom(vm.getRecordedLogs(), address(usd), address(channel)), 3);
        assertEq(usd.balanceOf(payee), 300e6);
        assertEq(usd.balanceOf(payer), FUNDS - 100e6);
        assertEq(usd.balanceOf(alice), 2 * FUNDS - 200e6);
        _assertTombstone(a);
        _assertTombstone(b);
    }

    function test_closeMany_skipsBadItemsWithReason() public {
        bytes32 a = _openUsd(DEPOSIT);
        bytes32 b = _open(_params(address(usd), address(0), "b"), DEPOSIT);
        IPaymentChannel.Claim[] memory claims = new IPaymentChannel.Claim[](3);
        claims[0] = _claim(sessionKey, a, 1, 100e6);
        claims[1] = _claim(payerKey, b, 1, 100e6);
        claims[2] = _claim(payerKey, b, 2, 200e6);
        vm.expectEmit(address(channel));
        emit IPaymentChannel.ClaimSkipped(a, _badSig(a, payer));
        vm.expectEmit(address(channel));
        emit IPaymentChannel.ClaimSkipped(b, _notOpen(b, IPaymentChannel.Status.Closed));
        vm.prank(payee);
        assertEq(channel.closeMany(claims), 1);
        _assertChannel(a, DEPOSIT, 0, 0);
        _assertTombstone(b);
        assertEq(usd.balanceOf(payee), 100e6);
    }

    function test_closeMany_byNonPayeeClosesNothing() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim[] memory claims = _array(_claim(payerKey, id, 1, 100e6));
        vm.prank(payer);
        assertEq(channel.closeMany(claims), 0);
        _assertChannel(id, DEPOSIT, 0, 0);
    }

    function test_closeMany_mixedTokensAndNoVoucherItems() public {
        bytes32 u = _openUsd(DEPOSIT);
        bytes32 e = _openEth(1 ether);
        bytes32 n = _open(_params(address(usd), address(0), "n"), DEPOSIT);
        IPaymentChannel.Claim[] memory claims = new IPaymentChannel.Claim[](3);
        claims[0] = _claim(payerKey, u, 1, 10e6);
        claims[1] = _claim(payerKey, e, 1, 0.1 ether);
        claims[2] = _noVoucher(n);
        uint256 ethBefore = payer.balance;
        vm.prank(payee);
        assertEq(channel.closeMany(claims), 3);
        assertEq(usd.balanceOf(payee), 10e6);
        assertEq(payee.balance, 0.1 ether);
        assertEq(usd.balanceOf(payer), FUNDS - 10e6);
        assertEq(payer.balance, ethBefore + 0.9 ether);
    }

    // =========================================================================================
    // closeWithAuthorization
    // =========================================================================================

    function _closeAuth(bytes32 id, uint256 finalAmount, uint256 key, address caller) internal {
        bytes memory auth = _closeAuthSig(key, id, finalAmount);
        IPaymentChannel.ChannelParams memory p = _p(id);
        vm.prank(caller);
        channel.closeWithAuthorization(p, finalAmount, CLOSE_DEADLINE, auth);
    }

    function _closeAuthExpectRevert(
        bytes32 id,
        uint256 finalAmount,
        uint256 key,
        address caller,
        bytes memory err
    ) internal {
        bytes memory auth = _closeAuthSig(key, id, finalAmount);
        IPaymentChannel.ChannelParams memory p = _p(id);
        vm.prank(caller);
        vm.expectRevert(err);
        channel.closeWithAuthorization(p, finalAmount, CLOSE_DEADLINE, auth);
    }

    function test_closeWithAuthorization_payerGetsRefundAtOnce() public {
        bytes32 id = _openUsd(DEPOSIT);
        vm.expectEmit(address(channel));
        emit IPaymentChannel.Closed(id, 300e6, DEPOSIT - 300e6);
        _closeAuth(id, 300e6, payeeKey, payer);
        assertEq(usd.balanceOf(payee), 300e6);
        assertEq(usd.balanceOf(payer), FUNDS - 300e6);
        _assertTombstone(id);
    }

    function test_closeWithAuthorization_nativeChannel() public {
        bytes32 id = _openEth(1 ether);
        uint256 before = payer.balance;
        _closeAuth(id, 0.3 ether, payeeKey, payer);
        assertEq(payee.balance, 0.3 ether);
        assertEq(payer.balance, before + 0.7 ether);
    }

    function test_closeWithAuthorization_sessionSignerMaySubmit() public {
        bytes32 id = _openUsdWithSession(DEPOSIT, "s");
        _closeAuth(id, 100e6, payeeKey, session);
        assertEq(usd.balanceOf(payer), FUNDS - 100e6);
    }

    function test_closeWithAuthorization_revertsForOtherCallers() public {
        bytes32 id = _openUsd(DEPOSIT);
        address[3] memory others = [stranger, payee, session];
        for (uint256 i; i < 3; ++i) {
            _closeAuthExpectRevert(
                id,
                100e6,
                payeeKey,
                others[i],
                abi.encodeWithSelector(IPaymentChannel.NotPayer.selector, others[i], payer)
            );
        }
    }

    function test_closeWithAuthorization_finalAmountRange() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        vm.prank(payee);
        channel.settle(c);
        _closeAuthExpectRevert(
            id,
            100e6 - 1,
            payeeKey,
            payer,
            abi.encodeWithSelector(
                IPaymentChannel.FinalAmountOutOfRange.selector, 100e6 - 1, 100e6, DEPOSIT
            )
        );
        _closeAuthExpectRevert(
            id,
            DEPOSIT + 1,
            payeeKey,
            payer,
            abi.encodeWithSelector(
                IPaymentChannel.FinalAmountOutOfRange.selector, DEPOSIT + 1, 100e6, DEPOSIT
            )
        );
        // Both ends of the range close; after a partial settle the remainder is paid.
        uint256 s = vm.snapshotState();
        _closeAuth(id, 100e6, payeeKey, payer);
        assertEq(usd.balanceOf(payee), 100e6);
        vm.revertToState(s);
        _closeAuth(id, DEPOSIT, payeeKey, payer);
        assertEq(usd.balanceOf(payee), DEPOSIT);
        assertEq(usd.balanceOf(payer), FUNDS - DEPOSIT);
    }

    function test_closeWithAuthorization_revertsForWrongAuthorization() public {
        bytes32 id = _openUsd(DEPOSIT);
        bytes32 other = _open(_params(address(usd), address(0), "o"), DEPOSIT);
        bytes memory invalid =
            abi.encodeWithSelector(IPaymentChannel.InvalidCloseAuthorization.selector, id);
        // Signed by the payer.
        _closeAuthExpectRevert(id, 100e6, payerKey, payer, invalid);
        IPaymentChannel.ChannelParams memory p = _p(id);
        // For another amount.
        bytes memory auth = _closeAuthSig(payeeKey, id, 100e6);
        vm.prank(payer);
        vm.expectRevert(invalid);
        channel.closeWithAuthorization(p, 200e6, CLOSE_DEADLINE, auth);
        // For another channel.
        auth = _closeAuthSig(payeeKey, other, 100e6);
        vm.prank(payer);
        vm.expectRevert(invalid);
        channel.closeWithAuthorization(p, 100e6, CLOSE_DEADLINE, auth);
        // A voucher signature of the payee is not a close authorisation.
        auth = _voucherSig(payeeKey, id, 1, 100e6);
        vm.prank(payer);
        vm.expectRevert(invalid);
        channel.closeWithAuthorization(p, 100e6, CLOSE_DEADLINE, auth);
        // The deadline is signed.
        auth = _closeAuthSig(payeeKey, id, 100e6);
        vm.prank(payer);
        vm.expectRevert(invalid);
        channel.closeWithAuthorization(p, 100e6, CLOSE_DEADLINE - 1, auth);
        // Of another deployment.
        IPaymentChannel second = _deployChannel(MIN_PERIOD, MAX_PERIOD);
        auth = _sign(payeeKey, second.closeAuthorizationDigest(id, 100e6, CLOSE_DEADLINE));
        vm.prank(payer);
        vm.expectRevert(invalid);
        channel.closeWithAuthorization(p, 100e6, CLOSE_DEADLINE, auth);
    }

    function test_closeWithAuthorization_exitTiming() public {
        bytes32 id = _openUsd(DEPOSIT);
        uint256 exitAt = _requestExit(id);
        uint256 s = vm.snapshotState();
        vm.warp(exitAt - 1);
        _closeAuth(id, 100e6, payeeKey, payer);
        _assertTombstone(id);
        vm.revertToState(s);
        vm.warp(exitAt);
        _closeAuthExpectRevert(
            id,
            100e6,
            payeeKey,
            payer,
            abi.encodeWithSelector(IPaymentChannel.ChallengePeriodOver.selector, id, exitAt)
        );
    }

    function test_closeWithAuthorization_revertsAfterDeadlineOrUnknown() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.ChannelParams memory p = _p(id);
        bytes memory auth = _closeAuthSig(payeeKey, id, 100e6);
        vm.warp(CLOSE_DEADLINE + 1);
        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.AuthorizationExpired.selector, CLOSE_DEADLINE)
        );
        channel.closeWithAuthorization(p, 100e6, CLOSE_DEADLINE, auth);
        vm.warp(CLOSE_DEADLINE);
        p.salt = "unknown";
        bytes32 unknown = channel.computeChannelId(p);
        vm.prank(payer);
        vm.expectRevert(_notOpen(unknown, IPaymentChannel.Status.None));
        channel.closeWithAuthorization(p, 100e6, CLOSE_DEADLINE, auth);
    }

    function test_closeWithAuthorization_oldAuthorizationUsableOnlyUntilItsDeadline() public {
        // The provider signs a close for 100 with a deadline and serves nothing more until it
        // passes; afterwards the old authorisation is dead and later vouchers are safe.
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.ChannelParams memory p = _p(id);
        uint256 deadline = block.timestamp + 1 hours;
        bytes memory auth = _sign(payeeKey, channel.closeAuthorizationDigest(id, 100e6, deadline));
        vm.warp(deadline + 1);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 2, 500e6);
        vm.prank(payee);
        channel.settle(c);
        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.AuthorizationExpired.selector, deadline)
        );
        channel.closeWithAuthorization(p, 100e6, deadline, auth);
        assertEq(usd.balanceOf(payee), 500e6);
    }

    // =========================================================================================
    // requestExit / withdraw
    // =========================================================================================

    function test_requestExit_setsExitAtAndEmits() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.ChannelParams memory p = _p(id);
        vm.expectEmit(address(channel));
        emit IPaymentChannel.ExitRequested(id, block.timestamp + PERIOD);
        vm.prank(payer);
        channel.requestExit(p);
        _assertChannel(id, DEPOSIT, 0, block.timestamp + PERIOD);
    }

    function test_requestExit_revertsForOthersTwiceAndUnknown() public {
        bytes32 id = _openUsdWithSession(DEPOSIT, "s");
        IPaymentChannel.ChannelParams memory p = _p(id);
        address[3] memory others = [stranger, payee, session];
        for (uint256 i; i < 3; ++i) {
            vm.prank(others[i]);
            vm.expectRevert(
                abi.encodeWithSelector(IPaymentChannel.NotPayer.selector, others[i], payer)
            );
            channel.requestExit(p);
        }
        uint256 exitAt = _requestExit(id);
        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.ExitAlreadyRequested.selector, id, exitAt)
        );
        channel.requestExit(p);
        p.salt = "unknown";
        bytes32 unknown = channel.computeChannelId(p);
        vm.prank(payer);
        vm.expectRevert(_notOpen(unknown, IPaymentChannel.Status.None));
        channel.requestExit(p);
    }

    function test_requestExit_afterCancelRestartsTimer() public {
        bytes32 id = _openUsd(DEPOSIT);
        _requestExit(id);
        IPaymentChannel.ChannelParams memory p = _p(id);
        vm.prank(payer);
        channel.topUp(p, 1);
        vm.warp(block.timestamp + 1000);
        assertEq(_requestExit(id), block.timestamp + PERIOD);
    }

    function test_withdraw_timing() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.ChannelParams memory p = _p(id);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.ExitNotRequested.selector, id));
        channel.withdraw(p);
        uint256 exitAt = _requestExit(id);
        vm.warp(exitAt - 1);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.ChallengePeriodActive.selector, id, exitAt)
        );
        channel.withdraw(p);
        vm.warp(exitAt);
        vm.expectEmit(address(channel));
        emit IPaymentChannel.Closed(id, 0, DEPOSIT);
        vm.prank(stranger);
        channel.withdraw(p);
        assertEq(usd.balanceOf(payer), FUNDS);
        assertEq(usd.balanceOf(stranger), 0);
        _assertTombstone(id);
        vm.expectRevert(_notOpen(id, IPaymentChannel.Status.Closed));
        channel.withdraw(p);
    }

    function test_withdraw_nativeRefundsPayer() public {
        bytes32 id = _openEth(1 ether);
        uint256 before = payer.balance;
        uint256 exitAt = _requestExit(id);
        vm.warp(exitAt);
        IPaymentChannel.ChannelParams memory p = _p(id);
        channel.withdraw(p);
        assertEq(payer.balance, before + 1 ether);
    }

    function test_withdraw_afterPayeeSettledPayeeHoldsExactlyClaimed() public {
        bytes32 id = _openUsd(DEPOSIT);
        uint256 exitAt = _requestExit(id);
        IPaymentChannel.Claim memory c = _partial(payerKey, id, 5, 400e6, 350e6);
        vm.prank(payee);
        channel.settle(c);
        vm.warp(exitAt);
        IPaymentChannel.ChannelParams memory p = _p(id);
        channel.withdraw(p);
        assertEq(usd.balanceOf(payee), 350e6);
        assertEq(usd.balanceOf(payer), FUNDS - 350e6);
        assertEq(usd.balanceOf(address(channel)), 0);
    }

    // =========================================================================================
    // withdrawCredit
    // =========================================================================================

    function test_withdrawCredit_failedPayeePayoutIsCreditedAndWithdrawnElsewhere() public {
        UnitRejectingReceiver rejecting = new UnitRejectingReceiver();
        IPaymentChannel.ChannelParams memory p = _params(address(0), address(0), 0);
        p.payee = address(rejecting);
        bytes32 id = _open(p, 1 ether);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 0.4 ether);
        vm.expectEmit(address(channel));
        emit IPaymentChannel.PayoutCredited(address(rejecting), address(0), 0.4 ether);
        vm.prank(address(rejecting));
        channel.settle(c);
        assertEq(channel.creditOf(address(rejecting), address(0)), 0.4 ether);

        vm.expectEmit(address(channel));
        emit IPaymentChannel.CreditWithdrawn(address(rejecting), address(0), alice, 0.4 ether);
        vm.prank(address(rejecting));
        assertEq(channel.withdrawCredit(address(0), alice), 0.4 ether);
        assertEq(alice.balance, 0.4 ether);
        vm.prank(address(rejecting));
        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentChannel.NoCredit.selector, address(rejecting), address(0)
            )
        );
        channel.withdrawCredit(address(0), alice);
    }

    function test_withdrawCredit_failedPayerRefundIsCredited() public {
        UnitRejectingReceiver rejecting = new UnitRejectingReceiver();
        vm.deal(address(rejecting), 1 ether);
        IPaymentChannel.ChannelParams memory p = _params(address(0), address(0), 0);
        p.payer = address(rejecting);
        bytes32 id = _open(p, 1 ether);
        IPaymentChannel.Claim memory none = _noVoucher(id);
        vm.prank(payee);
        channel.close(none);
        assertEq(channel.creditOf(address(rejecting), address(0)), 1 ether);
    }

    function test_withdrawCredit_payeeOutOfGasIsCredited() public {
        UnitGasGuzzler guzzler = new UnitGasGuzzler();
        IPaymentChannel.ChannelParams memory p = _params(address(0), address(0), 0);
        p.payee = address(guzzler);
        bytes32 id = _open(p, 1 ether);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 0.4 ether);
        vm.prank(address(guzzler));
        channel.settle(c);
        assertEq(channel.creditOf(address(guzzler), address(0)), 0.4 ether);
    }

    function test_withdrawCredit_failedErc20PayoutIsCredited() public {
        UnitQuirkyToken qt = new UnitQuirkyToken();
        qt.mint(payer, FUNDS);
        vm.prank(payer);
        qt.approve(address(channel), type(uint256).max);
        bytes32 id = _open(_params(address(qt), address(0), 0), DEPOSIT);
        qt.setBlocked(payee, true);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        vm.prank(payee);
        channel.settle(c);
        assertEq(channel.creditOf(payee, address(qt)), 100e6);
        vm.prank(payee);
        channel.withdrawCredit(address(qt), alice);
        assertEq(qt.balanceOf(alice), 100e6);
    }

    function test_withdrawCredit_revertsWhenRecipientRejects() public {
        UnitRejectingReceiver rejecting = new UnitRejectingReceiver();
        IPaymentChannel.ChannelParams memory p = _params(address(0), address(0), 0);
        p.payee = address(rejecting);
        bytes32 id = _open(p, 1 ether);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 0.4 ether);
        vm.prank(address(rejecting));
        channel.settle(c);
        vm.prank(address(rejecting));
        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentChannel.CreditTransferFailed.selector,
                address(rejecting),
                address(0),
                0.4 ether
            )
        );
        channel.withdrawCredit(address(0), address(rejecting));
        assertEq(channel.creditOf(address(rejecting), address(0)), 0.4 ether);
    }

    // =========================================================================================
    // EIP-712 and views
    // =========================================================================================

    function test_eip712Domain_matchesSpec() public view {
        (
            bytes1 fields,
            string memory name,
            string memory version,
            uint256 chainId,
            address verifyingContract,
            bytes32 salt,
            uint256[] memory extensions
        ) = _c().eip712Domain();
        assertEq(uint8(fields), 0x0f);
        assertEq(name, "x402 Payment Channel");
        assertEq(version, "2");
        assertEq(chainId, block.chainid);
        assertEq(verifyingContract, address(channel));
        assertEq(salt, bytes32(0));
        assertEq(extensions.length, 0);
    }

    function _domainSeparator() internal view returns (bytes32) {
        return keccak256(
            abi.encode(
                keccak256(
                    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
                ),
                keccak256("x402 Payment Channel"),
                keccak256("2"),
                block.chainid,
                address(channel)
            )
        );
    }

    function _manual(bytes32 typehash, bytes32 a, uint256 b, uint256 c)
        internal
        view
        returns (bytes32)
    {
        return keccak256(
            abi.encodePacked(
                "\x19\x01", _domainSeparator(), keccak256(abi.encode(typehash, a, b, c))
            )
        );
    }

    function test_digests_matchManualEip712() public view {
        bytes32 id = keccak256("some channel");
        bytes32 voucher =
            keccak256("Voucher(bytes32 channelId,uint64 nonce,uint256 cumulativeAmount)");
        bytes32 claimAuth =
            keccak256("ClaimAuthorization(bytes32 channelId,uint64 nonce,uint256 claimed)");
        bytes32 closeAuth =
            keccak256("CloseAuthorization(bytes32 channelId,uint256 finalAmount,uint256 deadline)");
        bytes32 openAuth =
            keccak256("OpenAuthorization(bytes32 channelId,uint256 deposit,uint256 deadline)");
        assertEq(_c().VOUCHER_TYPEHASH(), voucher);
        assertEq(_c().CLAIM_AUTHORIZATION_TYPEHASH(), claimAuth);
        assertEq(_c().CLOSE_AUTHORIZATION_TYPEHASH(), closeAuth);
        assertEq(_c().OPEN_AUTHORIZATION_TYPEHASH(), openAuth);
        assertEq(channel.voucherDigest(id, 42, 123e6), _manual(voucher, id, 42, 123e6));
        assertEq(channel.claimAuthorizationDigest(id, 42, 12e6), _manual(claimAuth, id, 42, 12e6));
        assertEq(channel.closeAuthorizationDigest(id, 7, 99), _manual(closeAuth, id, 7, 99));
        assertEq(channel.openAuthorizationDigest(id, 7, 99), _manual(openAuth, id, 7, 99));
    }

    function test_digests_areDistinctPerType() public view {
        bytes32 id = keccak256("some channel");
        bytes32[4] memory d = [
            channel.voucherDigest(id, 5, 5),
            channel.claimAuthorizationDigest(id, 5, 5),
            channel.closeAuthorizationDigest(id, 5, 5),
            channel.openAuthorizationDigest(id, 5, 5)
        ];
        for (uint256 i; i < 4; ++i) {
            for (uint256 j = i + 1; j < 4; ++j) {
                assertTrue(d[i] != d[j]);
            }
        }
    }

    function test_getChannel_unknownIsEmpty() public view {
        IPaymentChannel.Channel memory ch = channel.getChannel(keccak256("nothing"));
        assertEq(uint256(ch.deposit) + ch.paid + ch.exitAt + uint8(ch.status), 0);
    }
}

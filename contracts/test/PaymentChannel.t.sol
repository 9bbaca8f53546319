// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Vm} from "forge-std/Vm.sol";
import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

import {PaymentChannel} from "../src/PaymentChannel.sol";
import {TestStablecoin} from "../src/TestStablecoin.sol";
import {IPaymentChannel} from "../src/interfaces/IPaymentChannel.sol";
import {ERC1271Wallet} from "./mocks/ERC1271Wallet.sol";
import {ChannelFixture} from "./utils/ChannelFixture.sol";

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
        // About 2,000 hashing rounds: well above the gas a payout forwards, whatever is warm.
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

/// @notice Unit tests of every external function and every revert path of {PaymentChannel}.
contract PaymentChannelTest is ChannelFixture {
    address internal alice;
    uint256 internal aliceKey;

    function setUp() public override {
        super.setUp();
        // A payer with funds but no allowance, for the gasless opens.
        (alice, aliceKey) = makeAddrAndKey("alice");
        usd.mint(alice, FUNDS);
    }

    // =========================================================================================
    // Helpers
    // =========================================================================================

    function _openUsdSalt(bytes32 salt) internal returns (bytes32 id) {
        vm.prank(payer);
        id = channel.open(_params(address(usd), DEPOSIT, address(0), salt));
    }

    function _openEthSalt(uint256 deposit, bytes32 salt) internal returns (bytes32 id) {
        vm.prank(payer);
        id = channel.open{value: deposit}(_params(address(0), deposit, address(0), salt));
    }

    /// Opens a USD channel paid by `from` (which approves the channel first).
    function _openUsdFrom(address from, uint256 deposit, bytes32 salt)
        internal
        returns (bytes32 id)
    {
        vm.startPrank(from);
        usd.approve(address(channel), type(uint256).max);
        id = channel.open(_params(address(usd), deposit, address(0), salt));
        vm.stopPrank();
    }

    function _split(bytes memory sig) internal pure returns (bytes32 r, bytes32 s, uint8 v) {
        assembly {
            r := mload(add(sig, 0x20))
            s := mload(add(sig, 0x40))
            v := byte(0, mload(add(sig, 0x60)))
        }
    }

    function _assertUsd(uint256 payerBalance, uint256 payeeBalance, uint256 channelBalance)
        internal
        view
    {
        assertEq(usd.balanceOf(payer), payerBalance, "payer usd");
        assertEq(usd.balanceOf(payee), payeeBalance, "payee usd");
        assertEq(usd.balanceOf(address(channel)), channelBalance, "channel usd");
    }

    function _assertEth(uint256 payerBalance, uint256 payeeBalance, uint256 channelBalance)
        internal
        view
    {
        assertEq(payer.balance, payerBalance, "payer eth");
        assertEq(payee.balance, payeeBalance, "payee eth");
        assertEq(address(channel).balance, channelBalance, "channel eth");
    }

    /// A closed channel keeps only its payer and status.
    function _assertTombstoned(bytes32 id, address expectedPayer) internal view {
        IPaymentChannel.Channel memory ch = channel.getChannel(id);
        assertEq(ch.payer, expectedPayer, "tombstone payer");
        assertEq(uint8(ch.status), uint8(IPaymentChannel.Status.Closed), "tombstone status");
        assertEq(ch.challengePeriod, 0);
        assertEq(ch.exitAt, 0);
        assertEq(ch.payee, address(0));
        assertEq(ch.nonce, 0);
        assertEq(ch.token, address(0));
        assertEq(ch.signer, address(0));
        assertEq(ch.deposit, 0);
        assertEq(ch.paid, 0);
    }

    function _notOpen(bytes32 id, IPaymentChannel.Status status)
        internal
        pure
        returns (bytes memory)
    {
        return abi.encodeWithSelector(IPaymentChannel.ChannelNotOpen.selector, id, status);
    }

    function _badSig(bytes32 id, address signer) internal pure returns (bytes memory) {
        return abi.encodeWithSelector(IPaymentChannel.InvalidSignature.selector, id, signer);
    }

    // =========================================================================================
    // constructor and bounds
    // =========================================================================================

    function test_constructor_revertsWhenMinZero() public {
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.ChallengePeriodOutOfBounds.selector, 0, 1, 10)
        );
        new PaymentChannel(0, 10);
    }

    function test_constructor_revertsWhenMinAboveMax() public {
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.ChallengePeriodOutOfBounds.selector, 11, 1, 10)
        );
        new PaymentChannel(11, 10);
    }

    function test_constructor_storesBoundsAndAcceptsMinEqualMax() public {
        PaymentChannel fixed_ = new PaymentChannel(7, 7);
        assertEq(fixed_.minChallengePeriod(), 7);
        assertEq(fixed_.maxChallengePeriod(), 7);
        assertEq(channel.minChallengePeriod(), MIN_PERIOD);
        assertEq(channel.maxChallengePeriod(), MAX_PERIOD);
    }

    // =========================================================================================
    // open
    // =========================================================================================

    function test_open_erc20PullsDepositAndStoresChannel() public {
        IPaymentChannel.OpenParams memory p = _params(address(usd), DEPOSIT, address(0), "s");
        bytes32 expected = channel.computeChannelId(payer, p);

        vm.expectEmit(address(channel));
        emit IPaymentChannel.ChannelOpened(
            expected, payer, payee, address(usd), address(0), DEPOSIT, PERIOD, "s"
        );
        vm.prank(payer);
        bytes32 id = channel.open(p);

        assertEq(id, expected);
        IPaymentChannel.Channel memory ch = channel.getChannel(id);
        assertEq(ch.payer, payer);
        assertEq(uint8(ch.status), uint8(IPaymentChannel.Status.Open));
        assertEq(ch.challengePeriod, PERIOD);
        assertEq(ch.exitAt, 0);
        assertEq(ch.payee, payee);
        assertEq(ch.nonce, 0);
        assertEq(ch.token, address(usd));
        assertEq(ch.signer, address(0));
        assertEq(ch.deposit, DEPOSIT);
        assertEq(ch.paid, 0);
        _assertUsd(FUNDS - DEPOSIT, 0, DEPOSIT);
    }

    function test_open_nativeTakesMsgValue() public {
        IPaymentChannel.OpenParams memory p = _params(address(0), 2 ether, session, "n");
        bytes32 expected = channel.computeChannelId(payer, p);

        vm.expectEmit(address(channel));
        emit IPaymentChannel.ChannelOpened(
            expected, payer, payee, address(0), session, 2 ether, PERIOD, "n"
        );
        vm.prank(payer);
        bytes32 id = channel.open{value: 2 ether}(p);

        assertEq(id, expected);
        IPaymentChannel.Channel memory ch = channel.getChannel(id);
        assertEq(ch.token, address(0));
        assertEq(ch.signer, session);
        assertEq(ch.deposit, 2 ether);
        _assertEth(1000 ether - 2 ether, 0, 2 ether);
    }

    function test_open_revertsWhenPayeeZero() public {
        IPaymentChannel.OpenParams memory p = _params(address(usd), DEPOSIT, address(0), 0);
        p.payee = address(0);
        vm.prank(payer);
        vm.expectRevert(IPaymentChannel.InvalidPayee.selector);
        channel.open(p);
    }

    function test_open_revertsWhenDepositZero() public {
        IPaymentChannel.OpenParams memory p = _params(address(usd), 0, address(0), 0);
        vm.prank(payer);
        vm.expectRevert(IPaymentChannel.ZeroAmount.selector);
        channel.open(p);
    }

    function test_open_revertsWhenDepositAboveUint128() public {
        uint256 tooMuch = uint256(type(uint128).max) + 1;
        usd.mint(payer, tooMuch);
        IPaymentChannel.OpenParams memory p = _params(address(usd), tooMuch, address(0), 0);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.DepositTooLarge.selector, tooMuch));
        channel.open(p);
    }

    function test_open_acceptsDepositOfUint128Max() public {
        uint256 max = type(uint128).max;
        usd.mint(payer, max);
        vm.prank(payer);
        bytes32 id = channel.open(_params(address(usd), max, address(0), 0));
        assertEq(channel.getChannel(id).deposit, max);
        assertEq(usd.balanceOf(address(channel)), max);
    }

    function test_open_revertsWhenPeriodBelowMin() public {
        IPaymentChannel.OpenParams memory p = _params(address(usd), DEPOSIT, address(0), 0);
        p.challengePeriod = MIN_PERIOD - 1;
        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentChannel.ChallengePeriodOutOfBounds.selector,
                MIN_PERIOD - 1,
                MIN_PERIOD,
                MAX_PERIOD
            )
        );
        channel.open(p);
    }

    function test_open_revertsWhenPeriodAboveMax() public {
        IPaymentChannel.OpenParams memory p = _params(address(usd), DEPOSIT, address(0), 0);
        p.challengePeriod = MAX_PERIOD + 1;
        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentChannel.ChallengePeriodOutOfBounds.selector,
                MAX_PERIOD + 1,
                MIN_PERIOD,
                MAX_PERIOD
            )
        );
        channel.open(p);
    }

    function test_open_acceptsPeriodAtBothBounds() public {
        IPaymentChannel.OpenParams memory p = _params(address(usd), DEPOSIT, address(0), 0);
        p.challengePeriod = MIN_PERIOD;
        vm.prank(payer);
        bytes32 a = channel.open(p);
        p.challengePeriod = MAX_PERIOD;
        vm.prank(payer);
        bytes32 b = channel.open(p);
        assertEq(channel.getChannel(a).challengePeriod, MIN_PERIOD);
        assertEq(channel.getChannel(b).challengePeriod, MAX_PERIOD);
    }

    function test_open_revertsWhenNativeValueBelowDeposit() public {
        IPaymentChannel.OpenParams memory p = _params(address(0), 1 ether, address(0), 0);
        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.InvalidMsgValue.selector, 1 ether - 1, 1 ether)
        );
        channel.open{value: 1 ether - 1}(p);
    }

    function test_open_revertsWhenNativeValueAboveDeposit() public {
        IPaymentChannel.OpenParams memory p = _params(address(0), 1 ether, address(0), 0);
        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.InvalidMsgValue.selector, 1 ether + 1, 1 ether)
        );
        channel.open{value: 1 ether + 1}(p);
    }

    function test_open_revertsWhenValueSentWithErc20() public {
        IPaymentChannel.OpenParams memory p = _params(address(usd), DEPOSIT, address(0), 0);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.InvalidMsgValue.selector, 1, 0));
        channel.open{value: 1}(p);
    }

    function test_open_revertsWhenErc20AllowanceMissing() public {
        IPaymentChannel.OpenParams memory p = _params(address(usd), DEPOSIT, address(0), 0);
        vm.prank(alice);
        vm.expectRevert(
            abi.encodeWithSelector(
                IERC20Errors.ERC20InsufficientAllowance.selector, address(channel), 0, DEPOSIT
            )
        );
        channel.open(p);
    }

    function test_open_revertsWhenIdReused() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.OpenParams memory p = _params(address(usd), DEPOSIT, address(0), 0);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.ChannelExists.selector, id));
        channel.open(p);
    }

    function test_open_revertsWhenClosedIdReopened() public {
        bytes32 id = _openUsd(DEPOSIT);
        vm.prank(payee);
        channel.close(_noVoucher(id));
        _assertTombstoned(id, payer);

        IPaymentChannel.OpenParams memory p = _params(address(usd), DEPOSIT, address(0), 0);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.ChannelExists.selector, id));
        channel.open(p);
    }

    function test_open_revertsWhenWithdrawnIdReopened() public {
        bytes32 id = _openEth(1 ether);
        uint256 exitAt = _requestExit(id);
        vm.warp(exitAt);
        channel.withdraw(id);

        IPaymentChannel.OpenParams memory p = _params(address(0), 1 ether, address(0), 0);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.ChannelExists.selector, id));
        channel.open{value: 1 ether}(p);
    }

    function test_open_newSaltOpensSecondChannel() public {
        bytes32 a = _openUsdSalt(bytes32(uint256(1)));
        bytes32 b = _openUsdSalt(bytes32(uint256(2)));
        assertTrue(a != b);
        assertEq(channel.getChannel(a).deposit, DEPOSIT);
        assertEq(channel.getChannel(b).deposit, DEPOSIT);
        _assertUsd(FUNDS - 2 * DEPOSIT, 0, 2 * DEPOSIT);
    }

    function test_open_feeOnTransferTokenCreditsWhatArrived() public {
        UnitQuirkyToken qt = new UnitQuirkyToken();
        qt.mint(payer, DEPOSIT);
        qt.setFeeBps(100); // 1 %
        IPaymentChannel.OpenParams memory p = _params(address(qt), DEPOSIT, address(0), 0);
        bytes32 expected = channel.computeChannelId(payer, p);

        vm.startPrank(payer);
        qt.approve(address(channel), DEPOSIT);
        vm.expectEmit(address(channel));
        emit IPaymentChannel.ChannelOpened(
            expected, payer, payee, address(qt), address(0), 990e6, PERIOD, 0
        );
        bytes32 id = channel.open(p);
        vm.stopPrank();

        assertEq(channel.getChannel(id).deposit, 990e6);
        assertEq(qt.balanceOf(address(channel)), 990e6);
    }

    function test_open_revertsWhenNothingArrives() public {
        UnitQuirkyToken qt = new UnitQuirkyToken();
        qt.mint(payer, DEPOSIT);
        qt.setFeeBps(10_000); // everything is taken as a fee
        IPaymentChannel.OpenParams memory p = _params(address(qt), DEPOSIT, address(0), 0);
        vm.startPrank(payer);
        qt.approve(address(channel), DEPOSIT);
        vm.expectRevert(IPaymentChannel.ZeroAmount.selector);
        channel.open(p);
        vm.stopPrank();
    }

    function test_open_revertsWhenBrokenTokenDeliversAboveUint128() public {
        UnitQuirkyToken qt = new UnitQuirkyToken();
        qt.mint(payer, 1);
        qt.setBonus(uint256(type(uint128).max));
        IPaymentChannel.OpenParams memory p = _params(address(qt), 1, address(0), 0);
        vm.startPrank(payer);
        qt.approve(address(channel), 1);
        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentChannel.DepositTooLarge.selector, uint256(type(uint128).max) + 1
            )
        );
        channel.open(p);
        vm.stopPrank();
    }

    // =========================================================================================
    // computeChannelId
    // =========================================================================================

    function test_computeChannelId_matchesOpenAndBindsEveryParameter() public {
        IPaymentChannel.OpenParams memory p = _params(address(usd), DEPOSIT, session, "salt");
        bytes32 base = channel.computeChannelId(payer, p);
        vm.prank(payer);
        assertEq(channel.open(p), base);

        bytes32[] memory ids = new bytes32[](8);
        ids[0] = base;
        IPaymentChannel.OpenParams memory q = _params(address(usd), DEPOSIT, session, "salt");
        q.payee = stranger;
        ids[1] = channel.computeChannelId(payer, q);
        q = _params(address(0), DEPOSIT, session, "salt");
        ids[2] = channel.computeChannelId(payer, q);
        q = _params(address(usd), DEPOSIT, address(0), "salt");
        ids[3] = channel.computeChannelId(payer, q);
        q = _params(address(usd), DEPOSIT, session, "salt");
        q.challengePeriod = PERIOD + 1;
        ids[4] = channel.computeChannelId(payer, q);
        q = _params(address(usd), DEPOSIT + 1, session, "salt");
        ids[5] = channel.computeChannelId(payer, q);
        q = _params(address(usd), DEPOSIT, session, "salt2");
        ids[6] = channel.computeChannelId(payer, q);
        ids[7] = channel.computeChannelId(alice, p);
        for (uint256 i; i < ids.length; ++i) {
            for (uint256 j = i + 1; j < ids.length; ++j) {
                assertTrue(ids[i] != ids[j], "ids collide");
            }
        }
    }

    function test_computeChannelId_bindsContractAndChain() public {
        IPaymentChannel.OpenParams memory p = _params(address(usd), DEPOSIT, address(0), 0);
        bytes32 here = channel.computeChannelId(payer, p);
        PaymentChannel other = new PaymentChannel(MIN_PERIOD, MAX_PERIOD);
        assertTrue(other.computeChannelId(payer, p) != here, "other deployment");

        uint256 chainId = block.chainid;
        vm.chainId(chainId + 1);
        bytes32 elsewhere = channel.computeChannelId(payer, p);
        vm.chainId(chainId);
        assertTrue(elsewhere != here, "other chain");
        assertEq(channel.computeChannelId(payer, p), here);
    }

    // =========================================================================================
    // openWithPermit
    // =========================================================================================

    function _permitOpen(IPaymentChannel.OpenParams memory p, uint256 deadline)
        internal
        view
        returns (uint8 v, bytes32 r, bytes32 s, bytes memory openSig, bytes32 id)
    {
        (v, r, s) = _permitSig(aliceKey, alice, p.deposit, deadline);
        id = channel.computeChannelId(alice, p);
        openSig = _openAuthSig(aliceKey, id, deadline);
    }

    function test_openWithPermit_relayerOpensForPayer() public {
        IPaymentChannel.OpenParams memory p = _params(address(usd), DEPOSIT, session, "p");
        uint256 deadline = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s, bytes memory openSig, bytes32 expected) =
            _permitOpen(p, deadline);

        vm.expectEmit(address(channel));
        emit IPaymentChannel.ChannelOpened(
            expected, alice, payee, address(usd), session, DEPOSIT, PERIOD, "p"
        );
        vm.prank(stranger);
        bytes32 id = channel.openWithPermit(alice, p, deadline, v, r, s, openSig);

        assertEq(id, expected);
        IPaymentChannel.Channel memory ch = channel.getChannel(id);
        assertEq(ch.payer, alice);
        assertEq(ch.deposit, DEPOSIT);
        assertEq(ch.signer, session);
        assertEq(usd.balanceOf(alice), FUNDS - DEPOSIT);
        assertEq(usd.balanceOf(stranger), 0);
        assertEq(usd.balanceOf(address(channel)), DEPOSIT);
        assertEq(usd.nonces(alice), 1, "permit used");
        assertEq(usd.allowance(alice, address(channel)), 0);
    }

    function test_openWithPermit_acceptsDeadlineEqualToNow() public {
        IPaymentChannel.OpenParams memory p = _params(address(usd), DEPOSIT, address(0), 0);
        uint256 deadline = block.timestamp;
        (uint8 v, bytes32 r, bytes32 s, bytes memory openSig,) = _permitOpen(p, deadline);
        vm.prank(stranger);
        bytes32 id = channel.openWithPermit(alice, p, deadline, v, r, s, openSig);
        assertEq(channel.getChannel(id).payer, alice);
    }

    function test_openWithPermit_revertsWhenFrontRunnerChangesPayee() public {
        IPaymentChannel.OpenParams memory p = _params(address(usd), DEPOSIT, address(0), 0);
        uint256 deadline = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s, bytes memory openSig,) = _permitOpen(p, deadline);

        IPaymentChannel.OpenParams memory evil = _params(address(usd), DEPOSIT, address(0), 0);
        evil.payee = stranger;
        bytes32 evilId = channel.computeChannelId(alice, evil);
        vm.prank(stranger);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.InvalidOpenAuthorization.selector, evilId, alice)
        );
        channel.openWithPermit(alice, evil, deadline, v, r, s, openSig);
        assertEq(usd.balanceOf(alice), FUNDS);
    }

    function test_openWithPermit_revertsWhenFrontRunnerChangesSigner() public {
        IPaymentChannel.OpenParams memory p = _params(address(usd), DEPOSIT, address(0), 0);
        uint256 deadline = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s, bytes memory openSig,) = _permitOpen(p, deadline);

        // A relayer trying to install its own voucher key.
        IPaymentChannel.OpenParams memory evil = _params(address(usd), DEPOSIT, stranger, 0);
        bytes32 evilId = channel.computeChannelId(alice, evil);
        vm.prank(stranger);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.InvalidOpenAuthorization.selector, evilId, alice)
        );
        channel.openWithPermit(alice, evil, deadline, v, r, s, openSig);
    }

    function test_openWithPermit_revertsWhenOpenSignedByAnotherKey() public {
        IPaymentChannel.OpenParams memory p = _params(address(usd), DEPOSIT, address(0), 0);
        uint256 deadline = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s,, bytes32 id) = _permitOpen(p, deadline);
        bytes memory wrongSig = _openAuthSig(payerKey, id, deadline);
        vm.prank(stranger);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.InvalidOpenAuthorization.selector, id, alice)
        );
        channel.openWithPermit(alice, p, deadline, v, r, s, wrongSig);
    }

    function test_openWithPermit_revertsWhenOpenSignedForOtherDeadline() public {
        IPaymentChannel.OpenParams memory p = _params(address(usd), DEPOSIT, address(0), 0);
        uint256 deadline = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s,, bytes32 id) = _permitOpen(p, deadline);
        bytes memory shortSig = _openAuthSig(aliceKey, id, deadline - 1);
        vm.prank(stranger);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.InvalidOpenAuthorization.selector, id, alice)
        );
        channel.openWithPermit(alice, p, deadline, v, r, s, shortSig);
    }

    function test_openWithPermit_revertsWhenExpired() public {
        IPaymentChannel.OpenParams memory p = _params(address(usd), DEPOSIT, address(0), 0);
        uint256 deadline = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s, bytes memory openSig,) = _permitOpen(p, deadline);
        vm.warp(deadline + 1);
        vm.prank(stranger);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.AuthorizationExpired.selector, deadline)
        );
        channel.openWithPermit(alice, p, deadline, v, r, s, openSig);
    }

    function test_openWithPermit_opensWhenPermitFrontRun() public {
        IPaymentChannel.OpenParams memory p = _params(address(usd), DEPOSIT, address(0), 0);
        uint256 deadline = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s, bytes memory openSig, bytes32 expected) =
            _permitOpen(p, deadline);

        // Someone copies the permit out of the mempool and submits it first.
        vm.prank(stranger);
        usd.permit(alice, address(channel), DEPOSIT, deadline, v, r, s);
        assertEq(usd.allowance(alice, address(channel)), DEPOSIT);

        vm.prank(stranger);
        bytes32 id = channel.openWithPermit(alice, p, deadline, v, r, s, openSig);
        assertEq(id, expected);
        assertEq(channel.getChannel(id).deposit, DEPOSIT);
        assertEq(usd.balanceOf(alice), FUNDS - DEPOSIT);
        assertEq(usd.allowance(alice, address(channel)), 0);
    }

    function test_openWithPermit_revertsWhenPermitInvalidAndNoAllowance() public {
        IPaymentChannel.OpenParams memory p = _params(address(usd), DEPOSIT, address(0), 0);
        uint256 deadline = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s, bytes memory openSig,) = _permitOpen(p, deadline);
        // The permit is swallowed when it fails; the transfer then fails on the allowance.
        vm.prank(stranger);
        vm.expectRevert(
            abi.encodeWithSelector(
                IERC20Errors.ERC20InsufficientAllowance.selector, address(channel), 0, DEPOSIT
            )
        );
        channel.openWithPermit(alice, p, deadline, v, r, bytes32(uint256(s) ^ 1), openSig);
    }

    function test_openWithPermit_revertsWhenNative() public {
        IPaymentChannel.OpenParams memory p = _params(address(0), 1 ether, address(0), 0);
        vm.prank(stranger);
        vm.expectRevert(IPaymentChannel.NativeTokenNotSupported.selector);
        channel.openWithPermit(alice, p, block.timestamp, 27, 0, 0, "");
    }

    function test_openWithPermit_revertsWhenReplayed() public {
        IPaymentChannel.OpenParams memory p = _params(address(usd), DEPOSIT, address(0), 0);
        uint256 deadline = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s, bytes memory openSig, bytes32 id) = _permitOpen(p, deadline);
        vm.prank(stranger);
        channel.openWithPermit(alice, p, deadline, v, r, s, openSig);
        // Even with a fresh allowance in place the same authorisation cannot open twice.
        vm.prank(alice);
        usd.approve(address(channel), DEPOSIT);
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.ChannelExists.selector, id));
        channel.openWithPermit(alice, p, deadline, v, r, s, openSig);
        assertEq(usd.balanceOf(alice), FUNDS - DEPOSIT);
    }

    function test_openWithPermit_eip1271WalletPayer() public {
        ERC1271Wallet wallet = new ERC1271Wallet(alice);
        usd.mint(address(wallet), DEPOSIT);
        vm.prank(address(wallet));
        usd.approve(address(channel), DEPOSIT);
        IPaymentChannel.OpenParams memory p = _params(address(usd), DEPOSIT, address(0), 0);
        uint256 deadline = block.timestamp + 1 hours;
        bytes32 id = channel.computeChannelId(address(wallet), p);
        bytes memory openSig = _openAuthSig(aliceKey, id, deadline);

        vm.prank(stranger);
        channel.openWithPermit(address(wallet), p, deadline, 0, 0, 0, openSig);
        assertEq(channel.getChannel(id).payer, address(wallet));
        assertEq(usd.balanceOf(address(wallet)), 0);
    }

    // =========================================================================================
    // openWithAuthorization
    // =========================================================================================

    function _receiveAuth(IPaymentChannel.OpenParams memory p, uint256 validBefore)
        internal
        view
        returns (uint8 v, bytes32 r, bytes32 s, bytes32 id)
    {
        id = channel.computeChannelId(alice, p);
        (v, r, s) = _receiveAuthSig(aliceKey, alice, p.deposit, 0, validBefore, id);
    }

    function test_openWithAuthorization_relayerOpensForPayer() public {
        IPaymentChannel.OpenParams memory p = _params(address(usd), DEPOSIT, address(0), "a");
        uint256 validBefore = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s, bytes32 expected) = _receiveAuth(p, validBefore);

        vm.expectEmit(address(channel));
        emit IPaymentChannel.ChannelOpened(
            expected, alice, payee, address(usd), address(0), DEPOSIT, PERIOD, "a"
        );
        vm.prank(stranger);
        bytes32 id = channel.openWithAuthorization(alice, p, 0, validBefore, v, r, s);

        assertEq(id, expected);
        assertEq(channel.getChannel(id).payer, alice);
        assertEq(channel.getChannel(id).deposit, DEPOSIT);
        assertEq(usd.balanceOf(alice), FUNDS - DEPOSIT);
        assertEq(usd.balanceOf(address(channel)), DEPOSIT);
        assertEq(usd.balanceOf(stranger), 0);
        assertTrue(usd.authorizationState(alice, id), "nonce = channel id used");
    }

    function test_openWithAuthorization_revertsWhenPayeeAltered() public {
        IPaymentChannel.OpenParams memory p = _params(address(usd), DEPOSIT, address(0), 0);
        uint256 validBefore = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s,) = _receiveAuth(p, validBefore);
        p.payee = stranger;
        vm.prank(stranger);
        vm.expectRevert(TestStablecoin.InvalidAuthorizationSignature.selector);
        channel.openWithAuthorization(alice, p, 0, validBefore, v, r, s);
        assertEq(usd.balanceOf(alice), FUNDS);
    }

    function test_openWithAuthorization_revertsWhenDepositAltered() public {
        IPaymentChannel.OpenParams memory p = _params(address(usd), DEPOSIT, address(0), 0);
        uint256 validBefore = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s,) = _receiveAuth(p, validBefore);
        p.deposit = DEPOSIT - 1;
        vm.prank(stranger);
        vm.expectRevert(TestStablecoin.InvalidAuthorizationSignature.selector);
        channel.openWithAuthorization(alice, p, 0, validBefore, v, r, s);
    }

    function test_openWithAuthorization_revertsWhenPayerAltered() public {
        IPaymentChannel.OpenParams memory p = _params(address(usd), DEPOSIT, address(0), 0);
        uint256 validBefore = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s,) = _receiveAuth(p, validBefore);
        // Charging alice's signature to another (funded) account fails.
        vm.prank(stranger);
        vm.expectRevert(TestStablecoin.InvalidAuthorizationSignature.selector);
        channel.openWithAuthorization(payer, p, 0, validBefore, v, r, s);
        assertEq(usd.balanceOf(payer), FUNDS);
    }

    function test_openWithAuthorization_revertsWhenReplayed() public {
        IPaymentChannel.OpenParams memory p = _params(address(usd), DEPOSIT, address(0), 0);
        uint256 validBefore = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s, bytes32 id) = _receiveAuth(p, validBefore);
        vm.prank(stranger);
        channel.openWithAuthorization(alice, p, 0, validBefore, v, r, s);

        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.ChannelExists.selector, id));
        channel.openWithAuthorization(alice, p, 0, validBefore, v, r, s);

        // Still refused after the channel is closed: the id is tombstoned.
        vm.prank(payee);
        channel.close(_noVoucher(id));
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.ChannelExists.selector, id));
        channel.openWithAuthorization(alice, p, 0, validBefore, v, r, s);
        assertEq(usd.balanceOf(alice), FUNDS);
    }

    function test_openWithAuthorization_revertsWhenExpired() public {
        IPaymentChannel.OpenParams memory p = _params(address(usd), DEPOSIT, address(0), 0);
        uint256 validBefore = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s,) = _receiveAuth(p, validBefore);
        vm.warp(validBefore);
        vm.prank(stranger);
        vm.expectRevert(
            abi.encodeWithSelector(
                TestStablecoin.AuthorizationNotInValidWindow.selector, 0, validBefore
            )
        );
        channel.openWithAuthorization(alice, p, 0, validBefore, v, r, s);
    }

    function test_openWithAuthorization_revertsWhenNative() public {
        IPaymentChannel.OpenParams memory p = _params(address(0), 1 ether, address(0), 0);
        vm.prank(stranger);
        vm.expectRevert(IPaymentChannel.NativeTokenNotSupported.selector);
        channel.openWithAuthorization(alice, p, 0, block.timestamp + 1, 27, 0, 0);
    }

    function test_openWithAuthorization_checksParamsBeforeToken() public {
        IPaymentChannel.OpenParams memory p = _params(address(usd), DEPOSIT, address(0), 0);
        p.challengePeriod = MIN_PERIOD - 1;
        vm.prank(stranger);
        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentChannel.ChallengePeriodOutOfBounds.selector,
                MIN_PERIOD - 1,
                MIN_PERIOD,
                MAX_PERIOD
            )
        );
        channel.openWithAuthorization(alice, p, 0, block.timestamp + 1, 27, 0, 0);
    }

    // =========================================================================================
    // topUp
    // =========================================================================================

    function test_topUp_byPayerAddsToDeposit() public {
        bytes32 id = _openUsd(DEPOSIT);
        vm.expectEmit(address(channel));
        emit IPaymentChannel.ToppedUp(id, payer, 500e6, DEPOSIT + 500e6);
        vm.prank(payer);
        channel.topUp(id, 500e6);
        assertEq(channel.getChannel(id).deposit, DEPOSIT + 500e6);
        _assertUsd(FUNDS - DEPOSIT - 500e6, 0, DEPOSIT + 500e6);
    }

    function test_topUp_byThirdPartyWithoutExit() public {
        bytes32 id = _openUsd(DEPOSIT);
        usd.mint(stranger, 300e6);
        vm.prank(stranger);
        usd.approve(address(channel), 300e6);

        vm.expectEmit(address(channel));
        emit IPaymentChannel.ToppedUp(id, stranger, 300e6, DEPOSIT + 300e6);
        vm.prank(stranger);
        channel.topUp(id, 300e6);

        assertEq(channel.getChannel(id).deposit, DEPOSIT + 300e6);
        assertEq(channel.getChannel(id).payer, payer, "payer unchanged");
        assertEq(usd.balanceOf(stranger), 0);
        _assertUsd(FUNDS - DEPOSIT, 0, DEPOSIT + 300e6);
    }

    function test_topUp_nativeAddsMsgValue() public {
        bytes32 id = _openEth(1 ether);
        vm.prank(payer);
        channel.topUp{value: 0.5 ether}(id, 0.5 ether);
        assertEq(channel.getChannel(id).deposit, 1.5 ether);
        _assertEth(1000 ether - 1.5 ether, 0, 1.5 ether);
    }

    function test_topUp_revertsWhenNativeValueMismatch() public {
        bytes32 id = _openEth(1 ether);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.InvalidMsgValue.selector, 1, 2));
        channel.topUp{value: 1}(id, 2);
    }

    function test_topUp_revertsWhenValueSentWithErc20() public {
        bytes32 id = _openUsd(DEPOSIT);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.InvalidMsgValue.selector, 5, 0));
        channel.topUp{value: 5}(id, 5);
    }

    function test_topUp_revertsWhenAmountZero() public {
        bytes32 id = _openUsd(DEPOSIT);
        vm.prank(payer);
        vm.expectRevert(IPaymentChannel.ZeroAmount.selector);
        channel.topUp(id, 0);
    }

    function test_topUp_revertsWhenChannelUnknown() public {
        bytes32 id = keccak256("unknown");
        vm.prank(payer);
        vm.expectRevert(_notOpen(id, IPaymentChannel.Status.None));
        channel.topUp(id, 1);
    }

    function test_topUp_revertsWhenChannelClosed() public {
        bytes32 id = _openUsd(DEPOSIT);
        vm.prank(payee);
        channel.close(_noVoucher(id));
        vm.prank(payer);
        vm.expectRevert(_notOpen(id, IPaymentChannel.Status.Closed));
        channel.topUp(id, 1);
    }

    function test_topUp_revertsForStrangerDuringExit() public {
        bytes32 id = _openUsd(DEPOSIT);
        uint256 exitAt = _requestExit(id);
        usd.mint(stranger, 1e6);
        vm.prank(stranger);
        usd.approve(address(channel), 1e6);
        vm.prank(stranger);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.TopUpDuringExit.selector, id, stranger)
        );
        channel.topUp(id, 1e6);
        assertEq(channel.getChannel(id).exitAt, exitAt, "exit still pending");
    }

    function test_topUp_revertsForPayeeDuringExit() public {
        bytes32 id = _openUsd(DEPOSIT);
        _requestExit(id);
        vm.prank(payee);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.TopUpDuringExit.selector, id, payee));
        channel.topUp(id, 1);
    }

    function test_topUp_byPayerDuringExitCancelsIt() public {
        bytes32 id = _openUsd(DEPOSIT);
        _requestExit(id);

        vm.expectEmit(address(channel));
        emit IPaymentChannel.ToppedUp(id, payer, 1e6, DEPOSIT + 1e6);
        vm.expectEmit(address(channel));
        emit IPaymentChannel.ExitCancelled(id);
        vm.prank(payer);
        channel.topUp(id, 1e6);

        assertEq(channel.getChannel(id).exitAt, 0);
        assertEq(channel.getChannel(id).deposit, DEPOSIT + 1e6);
        vm.warp(block.timestamp + PERIOD);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.ExitNotRequested.selector, id));
        channel.withdraw(id);
        // Back to normal: only the payee settles.
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 10e6);
        vm.prank(watcher);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.NotPayee.selector, watcher, payee));
        channel.settle(c);
    }

    function test_topUp_byPayerAfterExitAtStillCancelsExit() public {
        bytes32 id = _openUsd(DEPOSIT);
        uint256 exitAt = _requestExit(id);
        vm.warp(exitAt + 1);
        vm.prank(payer);
        channel.topUp(id, 1e6);
        assertEq(channel.getChannel(id).exitAt, 0);
        // The payee can settle again.
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 10e6);
        vm.prank(payee);
        channel.settle(c);
        assertEq(usd.balanceOf(payee), 10e6);
    }

    function test_topUp_revertsWhenDepositOverflowsUint128() public {
        bytes32 id = _openUsd(DEPOSIT);
        uint256 amount = uint256(type(uint128).max) - DEPOSIT + 1;
        usd.mint(payer, amount);
        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentChannel.DepositTooLarge.selector, uint256(type(uint128).max) + 1
            )
        );
        channel.topUp(id, amount);
    }

    function test_topUp_acceptsDepositUpToUint128Max() public {
        bytes32 id = _openUsd(DEPOSIT);
        uint256 amount = uint256(type(uint128).max) - DEPOSIT;
        usd.mint(payer, amount);
        vm.prank(payer);
        channel.topUp(id, amount);
        assertEq(channel.getChannel(id).deposit, type(uint128).max);
    }

    function test_topUp_feeOnTransferTokenCreditsWhatArrived() public {
        UnitQuirkyToken qt = new UnitQuirkyToken();
        qt.mint(payer, 2 * DEPOSIT);
        vm.startPrank(payer);
        qt.approve(address(channel), type(uint256).max);
        bytes32 id = channel.open(_params(address(qt), DEPOSIT, address(0), 0));
        vm.stopPrank();
        qt.setFeeBps(1000); // 10 %

        vm.expectEmit(address(channel));
        emit IPaymentChannel.ToppedUp(id, payer, 90e6, DEPOSIT + 90e6);
        vm.prank(payer);
        channel.topUp(id, 100e6);
        assertEq(channel.getChannel(id).deposit, DEPOSIT + 90e6);
        assertEq(qt.balanceOf(address(channel)), DEPOSIT + 90e6);
    }

    function test_topUp_revertsWhenNothingArrives() public {
        UnitQuirkyToken qt = new UnitQuirkyToken();
        qt.mint(payer, 2 * DEPOSIT);
        vm.startPrank(payer);
        qt.approve(address(channel), type(uint256).max);
        bytes32 id = channel.open(_params(address(qt), DEPOSIT, address(0), 0));
        vm.stopPrank();
        qt.setFeeBps(10_000);

        vm.prank(payer);
        vm.expectRevert(IPaymentChannel.ZeroAmount.selector);
        channel.topUp(id, 100e6);
    }

    // =========================================================================================
    // settle
    // =========================================================================================

    function test_settle_paysDifferenceAndKeepsChannelOpen() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c1 = _claim(payerKey, id, 1, 100e6);
        IPaymentChannel.Claim memory c2 = _claim(payerKey, id, 2, 250e6);

        vm.expectEmit(address(channel));
        emit IPaymentChannel.Settled(id, payee, 1, 100e6, 100e6);
        vm.prank(payee);
        channel.settle(c1);
        _assertUsd(FUNDS - DEPOSIT, 100e6, DEPOSIT - 100e6);

        vm.expectEmit(address(channel));
        emit IPaymentChannel.Settled(id, payee, 2, 250e6, 150e6);
        vm.prank(payee);
        channel.settle(c2);
        _assertUsd(FUNDS - DEPOSIT, 250e6, DEPOSIT - 250e6);

        IPaymentChannel.Channel memory ch = channel.getChannel(id);
        assertEq(uint8(ch.status), uint8(IPaymentChannel.Status.Open));
        assertEq(ch.nonce, 2);
        assertEq(ch.paid, 250e6);
        assertEq(ch.deposit, DEPOSIT);
    }

    function test_settle_nonceMayJump() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1000, 100e6);
        vm.prank(payee);
        channel.settle(c);
        assertEq(channel.getChannel(id).nonce, 1000);
        assertEq(usd.balanceOf(payee), 100e6);
    }

    function test_settle_payeeClaimingLessIsPaidClaimed() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _partial(payerKey, id, 1, 300e6, 120e6);
        vm.expectEmit(address(channel));
        emit IPaymentChannel.Settled(id, payee, 1, 120e6, 120e6);
        vm.prank(payee);
        channel.settle(c);
        assertEq(channel.getChannel(id).paid, 120e6);
        _assertUsd(FUNDS - DEPOSIT, 120e6, DEPOSIT - 120e6);
    }

    function test_settle_claimEqualToPaidPaysNothingButUsesNonce() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c1 = _claim(payerKey, id, 1, 100e6);
        IPaymentChannel.Claim memory c2 = _partial(payerKey, id, 2, 300e6, 100e6);
        vm.prank(payee);
        channel.settle(c1);

        vm.recordLogs();
        vm.expectEmit(address(channel));
        emit IPaymentChannel.Settled(id, payee, 2, 100e6, 0);
        vm.prank(payee);
        channel.settle(c2);
        assertEq(_transfersFrom(vm.getRecordedLogs(), address(usd), address(channel)), 0);
        assertEq(channel.getChannel(id).nonce, 2);
        _assertUsd(FUNDS - DEPOSIT, 100e6, DEPOSIT - 100e6);
    }

    function test_settle_voucherEqualToDepositPaysAll() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, DEPOSIT);
        vm.prank(payee);
        channel.settle(c);
        _assertUsd(FUNDS - DEPOSIT, DEPOSIT, 0);
        assertEq(uint8(channel.getChannel(id).status), uint8(IPaymentChannel.Status.Open));
    }

    function test_settle_nativePaysEth() public {
        bytes32 id = _openEth(1 ether);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 0.3 ether);
        vm.prank(payee);
        channel.settle(c);
        _assertEth(1000 ether - 1 ether, 0.3 ether, 0.7 ether);
    }

    function test_settle_sessionKeyVoucher() public {
        bytes32 id = _openUsdWithSession(DEPOSIT, 0);
        IPaymentChannel.Claim memory c = _claim(sessionKey, id, 1, 100e6);
        vm.prank(payee);
        channel.settle(c);
        assertEq(usd.balanceOf(payee), 100e6);
    }

    function test_settle_eip1271WalletPayer() public {
        ERC1271Wallet wallet = new ERC1271Wallet(alice);
        usd.mint(address(wallet), DEPOSIT);
        bytes32 id = _openUsdFrom(address(wallet), DEPOSIT, 0);
        IPaymentChannel.Claim memory good = _claim(aliceKey, id, 1, 100e6);
        IPaymentChannel.Claim memory bad = _claim(payerKey, id, 1, 100e6);

        vm.prank(payee);
        vm.expectRevert(_badSig(id, address(wallet)));
        channel.settle(bad);

        vm.prank(payee);
        channel.settle(good);
        assertEq(usd.balanceOf(payee), 100e6);
    }

    function test_settle_revertsWhenNonceEqual() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c1 = _claim(payerKey, id, 1, 100e6);
        IPaymentChannel.Claim memory again = _claim(payerKey, id, 1, 200e6);
        vm.prank(payee);
        channel.settle(c1);
        vm.prank(payee);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.NonceTooLow.selector, 1, 1));
        channel.settle(again);
    }

    function test_settle_revertsWhenSameVoucherReplayed() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 3, 100e6);
        vm.prank(payee);
        channel.settle(c);
        vm.prank(payee);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.NonceTooLow.selector, 3, 3));
        channel.settle(c);
        assertEq(usd.balanceOf(payee), 100e6);
    }

    function test_settle_revertsWhenNonceLower() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c5 = _claim(payerKey, id, 5, 100e6);
        IPaymentChannel.Claim memory c4 = _claim(payerKey, id, 4, 200e6);
        vm.prank(payee);
        channel.settle(c5);
        vm.prank(payee);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.NonceTooLow.selector, 4, 5));
        channel.settle(c4);
        assertEq(usd.balanceOf(payee), 100e6);
    }

    function test_settle_revertsWhenNonceZeroOnFreshChannel() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 0, 100e6);
        vm.prank(payee);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.NonceTooLow.selector, 0, 0));
        channel.settle(c);
    }

    function test_settle_revertsWhenVoucherExceedsDeposit() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _partial(payerKey, id, 1, DEPOSIT + 1, 1);
        vm.prank(payee);
        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentChannel.VoucherExceedsDeposit.selector, DEPOSIT + 1, DEPOSIT
            )
        );
        channel.settle(c);
    }

    function test_settle_voucherAboveOldDepositValidAfterTopUp() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, DEPOSIT + 1);
        vm.prank(payer);
        channel.topUp(id, 1);
        vm.prank(payee);
        channel.settle(c);
        _assertUsd(FUNDS - DEPOSIT - 1, DEPOSIT + 1, 0);
    }

    function test_settle_revertsWhenClaimAboveVoucher() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _partial(payerKey, id, 1, 100e6, 100e6 + 1);
        vm.prank(payee);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.ClaimAboveVoucher.selector, 100e6 + 1, 100e6)
        );
        channel.settle(c);
    }

    function test_settle_revertsWhenClaimBelowPaid() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c1 = _claim(payerKey, id, 1, 200e6);
        IPaymentChannel.Claim memory c2 = _claim(payerKey, id, 2, 150e6);
        vm.prank(payee);
        channel.settle(c1);
        vm.prank(payee);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.ClaimBelowPaid.selector, 150e6, 200e6)
        );
        channel.settle(c2);
        assertEq(channel.getChannel(id).paid, 200e6);
    }

    function test_settle_revertsWhenPartialClaimBelowPaid() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c1 = _claim(payerKey, id, 1, 200e6);
        IPaymentChannel.Claim memory c2 = _partial(payerKey, id, 2, 500e6, 199e6);
        vm.prank(payee);
        channel.settle(c1);
        vm.prank(payee);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.ClaimBelowPaid.selector, 199e6, 200e6)
        );
        channel.settle(c2);
    }

    function test_settle_revertsWhenSignedByWrongKey() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payeeKey, id, 1, 100e6);
        vm.prank(payee);
        vm.expectRevert(_badSig(id, payer));
        channel.settle(c);
    }

    function test_settle_revertsWhenSessionChannelSignedByPayer() public {
        bytes32 id = _openUsdWithSession(DEPOSIT, 0);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        vm.prank(payee);
        vm.expectRevert(_badSig(id, session));
        channel.settle(c);
    }

    function test_settle_revertsWhenAmountTampered() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        c.cumulativeAmount = 200e6;
        c.claimed = 200e6;
        vm.prank(payee);
        vm.expectRevert(_badSig(id, payer));
        channel.settle(c);
    }

    function test_settle_revertsWhenNonceTampered() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        c.nonce = 2;
        vm.prank(payee);
        vm.expectRevert(_badSig(id, payer));
        channel.settle(c);
    }

    function test_settle_revertsWhenChannelIdTampered() public {
        bytes32 a = _openUsdSalt(bytes32(uint256(1)));
        bytes32 b = _openUsdSalt(bytes32(uint256(2)));
        IPaymentChannel.Claim memory c = _claim(payerKey, a, 1, 100e6);
        c.channelId = b;
        vm.prank(payee);
        vm.expectRevert(_badSig(b, payer));
        channel.settle(c);
    }

    function test_settle_revertsWhenHighS() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        c.signature = _highS(c.signature);
        // The malleated signature still recovers the payer with the bare precompile...
        (bytes32 r, bytes32 s, uint8 v) = _split(c.signature);
        assertEq(ecrecover(channel.voucherDigest(id, 1, 100e6), v, r, s), payer);
        // ...but the channel refuses it.
        vm.prank(payee);
        vm.expectRevert(_badSig(id, payer));
        channel.settle(c);
    }

    function test_settle_revertsWhenSignatureIs64Bytes() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        (bytes32 r, bytes32 s, uint8 v) = _split(c.signature);
        bytes32 vs = bytes32(uint256(s) | (uint256(v - 27) << 255));
        // A valid EIP-2098 compact signature of the payer...
        assertEq(ECDSA.recover(channel.voucherDigest(id, 1, 100e6), r, vs), payer);
        c.signature = abi.encodePacked(r, vs);
        // ...is refused: vouchers must be 65 bytes.
        vm.prank(payee);
        vm.expectRevert(_badSig(id, payer));
        channel.settle(c);
    }

    function test_settle_revertsWhenSignatureHasTrailingByte() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        c.signature = abi.encodePacked(c.signature, uint8(0));
        vm.prank(payee);
        vm.expectRevert(_badSig(id, payer));
        channel.settle(c);
    }

    function test_settle_revertsWhenVIsZeroOrOne() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        (bytes32 r, bytes32 s, uint8 v) = _split(c.signature);

        c.signature = abi.encodePacked(r, s, v - 27);
        vm.prank(payee);
        vm.expectRevert(_badSig(id, payer));
        channel.settle(c);

        c.signature = abi.encodePacked(r, s, uint8(v == 27 ? 1 : 0));
        vm.prank(payee);
        vm.expectRevert(_badSig(id, payer));
        channel.settle(c);
        assertEq(channel.getChannel(id).nonce, 0);
    }

    function test_settle_revertsWhenSignatureMissing() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        c.signature = "";
        vm.prank(payee);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.MissingSignature.selector, id));
        channel.settle(c);
    }

    function test_settle_revertsForStrangerOutsideExit() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.NotPayee.selector, stranger, payee));
        channel.settle(c);
    }

    function test_settle_revertsForPayerOutsideExit() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.NotPayee.selector, payer, payee));
        channel.settle(c);
    }

    function test_settle_watcherSettlesFullClaimDuringExit() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 7, 400e6);
        _requestExit(id);
        vm.expectEmit(address(channel));
        emit IPaymentChannel.Settled(id, watcher, 7, 400e6, 400e6);
        vm.prank(watcher);
        channel.settle(c);
        // The payout goes to the payee, never to the submitter.
        _assertUsd(FUNDS - DEPOSIT, 400e6, DEPOSIT - 400e6);
        assertEq(usd.balanceOf(watcher), 0);
    }

    function test_settle_revertsOnPartialClaimByWatcherDuringExit() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _partial(payerKey, id, 1, 100e6, 50e6);
        _requestExit(id);
        vm.prank(watcher);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.PartialClaimNotAllowed.selector, 50e6, 100e6)
        );
        channel.settle(c);
    }

    function test_settle_payeeMayClaimPartialDuringExit() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _partial(payerKey, id, 1, 100e6, 50e6);
        _requestExit(id);
        vm.prank(payee);
        channel.settle(c);
        assertEq(usd.balanceOf(payee), 50e6);
    }

    function test_settle_succeedsOneSecondBeforeExitAt() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        uint256 exitAt = _requestExit(id);
        vm.warp(exitAt - 1);
        vm.prank(watcher);
        channel.settle(c);
        assertEq(usd.balanceOf(payee), 100e6);
    }

    function test_settle_revertsAtExitAt() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        uint256 exitAt = _requestExit(id);
        vm.warp(exitAt);
        vm.prank(payee);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.ChallengePeriodOver.selector, id, exitAt)
        );
        channel.settle(c);
    }

    function test_settle_revertsAfterExitAt() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        uint256 exitAt = _requestExit(id);
        vm.warp(exitAt + 365 days);
        vm.prank(watcher);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.ChallengePeriodOver.selector, id, exitAt)
        );
        channel.settle(c);
    }

    function test_settle_revertsWhenChannelUnknown() public {
        bytes32 id = keccak256("unknown");
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        vm.prank(payee);
        vm.expectRevert(_notOpen(id, IPaymentChannel.Status.None));
        channel.settle(c);
    }

    function test_settle_revertsWhenChannelClosed() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        vm.prank(payee);
        channel.close(_noVoucher(id));
        vm.prank(payee);
        vm.expectRevert(_notOpen(id, IPaymentChannel.Status.Closed));
        channel.settle(c);
    }

    /// Regression: the payer, who holds the voucher key, must not be able to void the payee's
    /// latest voucher during its own exit by settling a fresh voucher with a huge nonce for the
    /// amount already paid.
    function test_settle_payerHighNonceVoucherCannotBlockLatestVoucherDuringExit() public {
        bytes32 id = _openUsd(DEPOSIT);
        // The payee served 400e6 worth of requests; its latest voucher is unsettled.
        IPaymentChannel.Claim memory latest = _claim(payerKey, id, 40, 400e6);
        // The payer exits and at once settles a zero-amount voucher with the largest nonce.
        IPaymentChannel.Claim memory blocker = _claim(payerKey, id, type(uint64).max, 0);
        uint256 exitAt = _requestExit(id);
        vm.prank(payer);
        channel.settle(blocker);

        // The payee answers well within the challenge period, as the threat model prescribes.
        vm.warp(exitAt - PERIOD / 2);
        vm.prank(payee);
        channel.settle(latest);
        vm.warp(exitAt);
        channel.withdraw(id);

        // The payee holds what the payer signed for; the payer gets only the rest.
        assertEq(usd.balanceOf(payee), 400e6, "payee lost its latest voucher");
        assertEq(usd.balanceOf(payer), FUNDS - 400e6);
    }

    // =========================================================================================
    // settleMany
    // =========================================================================================

    function test_settleMany_paysPayeeOnceForManyChannels() public {
        uint256 n = 5;
        IPaymentChannel.Claim[] memory claims = new IPaymentChannel.Claim[](n);
        uint256 total;
        for (uint256 i; i < n; ++i) {
            bytes32 id = _openUsdSalt(bytes32(i));
            claims[i] = _claim(payerKey, id, 1, (i + 1) * 10e6);
            total += (i + 1) * 10e6;
        }

        vm.recordLogs();
        vm.expectEmit(address(usd));
        emit IERC20.Transfer(address(channel), payee, total);
        vm.prank(payee);
        uint256 settled = channel.settleMany(claims);
        Vm.Log[] memory logs = vm.getRecordedLogs();

        assertEq(settled, n);
        assertEq(_transfersFrom(logs, address(usd), address(channel)), 1, "one transfer");
        _assertUsd(FUNDS - n * DEPOSIT, total, n * DEPOSIT - total);
        for (uint256 i; i < n; ++i) {
            assertEq(channel.getChannel(claims[i].channelId).paid, (i + 1) * 10e6);
            assertEq(channel.getChannel(claims[i].channelId).nonce, 1);
        }
    }

    function test_settleMany_skipsBadItemsWithReason() public {
        bytes32 a = _openUsdSalt(bytes32(uint256(1)));
        bytes32 b = _openUsdSalt(bytes32(uint256(2)));
        bytes32 c = _openUsdSalt(bytes32(uint256(3)));
        bytes32 d = _openUsdSalt(bytes32(uint256(4)));
        bytes32 unknown = keccak256("unknown");
        IPaymentChannel.Claim memory dFirst = _claim(payerKey, d, 5, 50e6);
        vm.prank(payee);
        channel.close(_noVoucher(c));
        vm.prank(payee);
        channel.settle(dFirst);

        IPaymentChannel.Claim[] memory claims = new IPaymentChannel.Claim[](6);
        claims[0] = _claim(payerKey, a, 1, 100e6);
        claims[1] = _claim(payeeKey, b, 1, 100e6); // wrong signer
        claims[2] = _claim(payerKey, c, 1, 100e6); // closed
        claims[3] = _claim(payerKey, d, 5, 80e6); // stale nonce
        claims[4] = _claim(payerKey, unknown, 1, 1); // never opened
        claims[5] = _claim(payerKey, b, 2, 0);
        claims[5].signature = ""; // missing signature

        vm.expectEmit(address(channel));
        emit IPaymentChannel.Settled(a, payee, 1, 100e6, 100e6);
        vm.expectEmit(address(channel));
        emit IPaymentChannel.ClaimSkipped(b, _badSig(b, payer));
        vm.expectEmit(address(channel));
        emit IPaymentChannel.ClaimSkipped(c, _notOpen(c, IPaymentChannel.Status.Closed));
        vm.expectEmit(address(channel));
        emit IPaymentChannel.ClaimSkipped(
            d, abi.encodeWithSelector(IPaymentChannel.NonceTooLow.selector, 5, 5)
        );
        vm.expectEmit(address(channel));
        emit IPaymentChannel.ClaimSkipped(unknown, _notOpen(unknown, IPaymentChannel.Status.None));
        vm.expectEmit(address(channel));
        emit IPaymentChannel.ClaimSkipped(
            b, abi.encodeWithSelector(IPaymentChannel.MissingSignature.selector, b)
        );
        vm.expectEmit(address(usd));
        emit IERC20.Transfer(address(channel), payee, 100e6);
        vm.prank(payee);
        uint256 settled = channel.settleMany(claims);

        assertEq(settled, 1);
        assertEq(usd.balanceOf(payee), 150e6);
        assertEq(channel.getChannel(b).nonce, 0, "skipped item unchanged");
        assertEq(channel.getChannel(d).paid, 50e6, "skipped item unchanged");
        assertEq(channel.getChannel(d).nonce, 5);
    }

    function test_settleMany_strangerOutsideExitSettlesNothing() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim[] memory claims = _array(_claim(payerKey, id, 1, 100e6));
        vm.expectEmit(address(channel));
        emit IPaymentChannel.ClaimSkipped(
            id, abi.encodeWithSelector(IPaymentChannel.NotPayee.selector, stranger, payee)
        );
        vm.prank(stranger);
        assertEq(channel.settleMany(claims), 0);
        assertEq(usd.balanceOf(payee), 0);
    }

    function test_settleMany_duplicateItemIsSkippedAsStale() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim[] memory claims = new IPaymentChannel.Claim[](2);
        claims[0] = _claim(payerKey, id, 1, 100e6);
        claims[1] = claims[0];
        vm.expectEmit(address(channel));
        emit IPaymentChannel.ClaimSkipped(
            id, abi.encodeWithSelector(IPaymentChannel.NonceTooLow.selector, 1, 1)
        );
        vm.prank(payee);
        assertEq(channel.settleMany(claims), 1);
        assertEq(usd.balanceOf(payee), 100e6);
    }

    function test_settleMany_mixedTokensPayOncePerToken() public {
        bytes32 u1 = _openUsdSalt(bytes32(uint256(1)));
        bytes32 e1 = _openEthSalt(1 ether, bytes32(uint256(1)));
        bytes32 u2 = _openUsdSalt(bytes32(uint256(2)));
        bytes32 e2 = _openEthSalt(1 ether, bytes32(uint256(2)));
        IPaymentChannel.Claim[] memory claims = new IPaymentChannel.Claim[](4);
        claims[0] = _claim(payerKey, u1, 1, 100e6);
        claims[1] = _claim(payerKey, e1, 1, 0.1 ether);
        claims[2] = _claim(payerKey, u2, 1, 200e6);
        claims[3] = _claim(payerKey, e2, 1, 0.2 ether);

        vm.recordLogs();
        vm.prank(payee);
        uint256 settled = channel.settleMany(claims);
        Vm.Log[] memory logs = vm.getRecordedLogs();

        assertEq(settled, 4);
        assertEq(_transfersFrom(logs, address(usd), address(channel)), 1);
        _assertUsd(FUNDS - 2 * DEPOSIT, 300e6, 2 * DEPOSIT - 300e6);
        _assertEth(1000 ether - 2 ether, 0.3 ether, 2 ether - 0.3 ether);
    }

    function test_settleMany_watcherPaysEachPayeeDuringExits() public {
        // Two providers; the payer exits from both; one watcher submits both vouchers.
        bytes32 a = _openUsdSalt(bytes32(uint256(1)));
        IPaymentChannel.OpenParams memory p = _params(address(usd), DEPOSIT, address(0), 0);
        p.payee = alice;
        vm.prank(payer);
        bytes32 b = channel.open(p);
        IPaymentChannel.Claim[] memory claims = new IPaymentChannel.Claim[](2);
        claims[0] = _claim(payerKey, a, 1, 100e6);
        claims[1] = _claim(payerKey, b, 1, 200e6);
        _requestExit(a);
        _requestExit(b);

        vm.recordLogs();
        vm.prank(watcher);
        assertEq(channel.settleMany(claims), 2);
        assertEq(_transfersFrom(vm.getRecordedLogs(), address(usd), address(channel)), 2);
        assertEq(usd.balanceOf(payee), 100e6);
        assertEq(usd.balanceOf(alice), FUNDS + 200e6);
        assertEq(usd.balanceOf(watcher), 0);
    }

    function test_settleMany_emptyBatchReturnsZero() public {
        IPaymentChannel.Claim[] memory claims = new IPaymentChannel.Claim[](0);
        vm.recordLogs();
        vm.prank(payee);
        assertEq(channel.settleMany(claims), 0);
        assertEq(vm.getRecordedLogs().length, 0);
    }

    // =========================================================================================
    // close
    // =========================================================================================

    function test_close_paysPayeeRefundsPayerAndTombstones() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 3, 300e6);
        vm.expectEmit(address(channel));
        emit IPaymentChannel.Settled(id, payee, 3, 300e6, 300e6);
        vm.expectEmit(address(channel));
        emit IPaymentChannel.Closed(id, 300e6, DEPOSIT - 300e6);
        vm.prank(payee);
        channel.close(c);
        _assertUsd(FUNDS - 300e6, 300e6, 0);
        _assertTombstoned(id, payer);
    }

    function test_close_payeeMayClaimPartial() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _partial(payerKey, id, 3, 300e6, 250e6);
        vm.expectEmit(address(channel));
        emit IPaymentChannel.Closed(id, 250e6, DEPOSIT - 250e6);
        vm.prank(payee);
        channel.close(c);
        _assertUsd(FUNDS - 250e6, 250e6, 0);
    }

    function test_close_withoutVoucherClosesAtPaid() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 200e6);
        vm.prank(payee);
        channel.settle(c);

        vm.recordLogs();
        vm.expectEmit(address(channel));
        emit IPaymentChannel.Closed(id, 200e6, DEPOSIT - 200e6);
        vm.prank(payee);
        channel.close(_noVoucher(id));
        // Only the refund moves; the payee was already paid.
        assertEq(_transfersFrom(vm.getRecordedLogs(), address(usd), address(channel)), 1);
        _assertUsd(FUNDS - 200e6, 200e6, 0);
        _assertTombstoned(id, payer);
    }

    function test_close_withoutVoucherOnFreshChannelRefundsAll() public {
        bytes32 id = _openEth(1 ether);
        vm.prank(payee);
        channel.close(_noVoucher(id));
        _assertEth(1000 ether, 0, 0);
        _assertTombstoned(id, payer);
    }

    function test_close_nativeChannel() public {
        bytes32 id = _openEth(1 ether);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 0.25 ether);
        vm.prank(payee);
        channel.close(c);
        _assertEth(1000 ether - 0.25 ether, 0.25 ether, 0);
    }

    function test_close_fullDepositLeavesNoRefund() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, DEPOSIT);
        vm.recordLogs();
        vm.prank(payee);
        channel.close(c);
        assertEq(_transfersFrom(vm.getRecordedLogs(), address(usd), address(channel)), 1);
        _assertUsd(FUNDS - DEPOSIT, DEPOSIT, 0);
    }

    function test_close_revertsForPayer() public {
        bytes32 id = _openUsd(DEPOSIT);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.NotPayee.selector, payer, payee));
        channel.close(_noVoucher(id));
    }

    function test_close_revertsForStranger() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.NotPayee.selector, stranger, payee));
        channel.close(c);
    }

    function test_close_revertsForWatcherDuringExit() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        _requestExit(id);
        vm.prank(watcher);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.NotPayee.selector, watcher, payee));
        channel.close(c);
    }

    function test_close_revertsWithInvalidVoucher() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payeeKey, id, 1, 100e6);
        vm.prank(payee);
        vm.expectRevert(_badSig(id, payer));
        channel.close(c);
        assertEq(uint8(channel.getChannel(id).status), uint8(IPaymentChannel.Status.Open));
    }

    function test_close_revertsWhenChannelUnknown() public {
        bytes32 id = keccak256("unknown");
        vm.prank(payee);
        vm.expectRevert(_notOpen(id, IPaymentChannel.Status.None));
        channel.close(_noVoucher(id));
    }

    function test_close_duringExitBeforeExitAtEndsExit() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        uint256 exitAt = _requestExit(id);
        vm.warp(exitAt - 1);
        vm.prank(payee);
        channel.close(c);
        _assertUsd(FUNDS - 100e6, 100e6, 0);
        _assertTombstoned(id, payer);
        vm.warp(exitAt);
        vm.expectRevert(_notOpen(id, IPaymentChannel.Status.Closed));
        channel.withdraw(id);
    }

    function test_close_revertsAtExitAt() public {
        bytes32 id = _openUsd(DEPOSIT);
        uint256 exitAt = _requestExit(id);
        vm.warp(exitAt);
        vm.prank(payee);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.ChallengePeriodOver.selector, id, exitAt)
        );
        channel.close(_noVoucher(id));
    }

    function test_close_everythingRefusedAfterwards() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        IPaymentChannel.Claim memory next = _claim(payerKey, id, 2, 200e6);
        bytes memory auth = _closeAuthSig(payeeKey, id, 0);
        vm.prank(payee);
        channel.close(c);
        bytes memory err = _notOpen(id, IPaymentChannel.Status.Closed);

        vm.prank(payee);
        vm.expectRevert(err);
        channel.settle(next);
        vm.prank(payee);
        vm.expectRevert(err);
        channel.close(next);
        vm.prank(payee);
        vm.expectRevert(err);
        channel.close(_noVoucher(id));
        vm.prank(payer);
        vm.expectRevert(err);
        channel.topUp(id, 1e6);
        vm.prank(payer);
        vm.expectRevert(err);
        channel.requestExit(id);
        vm.prank(payer);
        vm.expectRevert(err);
        channel.withdraw(id);
        vm.prank(payer);
        vm.expectRevert(err);
        channel.closeWithAuthorization(id, 0, CLOSE_DEADLINE, auth);

        // Batches skip it.
        vm.prank(payee);
        assertEq(channel.settleMany(_array(next)), 0);
        vm.prank(payee);
        assertEq(channel.closeMany(_array(next)), 0);
        _assertUsd(FUNDS - 100e6, 100e6, 0);
    }

    // =========================================================================================
    // closeMany
    // =========================================================================================

    function test_closeMany_paysPayeeOnceAndRefundsEachPayer() public {
        uint256 n = 3;
        address[] memory payers = new address[](n);
        IPaymentChannel.Claim[] memory claims = new IPaymentChannel.Claim[](n);
        uint256 total;
        for (uint256 i; i < n; ++i) {
            uint256 key;
            (payers[i], key) = makeAddrAndKey(string(abi.encodePacked("client", i)));
            usd.mint(payers[i], DEPOSIT);
            bytes32 id = _openUsdFrom(payers[i], DEPOSIT, 0);
            claims[i] = _claim(key, id, 1, (i + 1) * 100e6);
            total += (i + 1) * 100e6;
        }

        vm.recordLogs();
        vm.expectEmit(address(usd));
        emit IERC20.Transfer(address(channel), payee, total);
        for (uint256 i; i < n; ++i) {
            vm.expectEmit(address(usd));
            emit IERC20.Transfer(address(channel), payers[i], DEPOSIT - (i + 1) * 100e6);
        }
        vm.prank(payee);
        uint256 closed = channel.closeMany(claims);

        assertEq(closed, n);
        assertEq(_transfersFrom(vm.getRecordedLogs(), address(usd), address(channel)), n + 1);
        assertEq(usd.balanceOf(payee), total);
        assertEq(usd.balanceOf(address(channel)), 0);
        for (uint256 i; i < n; ++i) {
            assertEq(usd.balanceOf(payers[i]), DEPOSIT - (i + 1) * 100e6);
            _assertTombstoned(claims[i].channelId, payers[i]);
        }
    }

    function test_closeMany_skipsBadItemsWithReason() public {
        bytes32 a = _openUsdSalt(bytes32(uint256(1)));
        bytes32 b = _openUsdSalt(bytes32(uint256(2)));
        bytes32 c = _openUsdSalt(bytes32(uint256(3)));
        bytes32 exiting = _openUsdSalt(bytes32(uint256(4)));
        bytes32 unknown = keccak256("unknown");
        uint256 exitAt = _requestExit(exiting);
        vm.prank(payee);
        channel.close(_noVoucher(c));
        vm.warp(exitAt);

        IPaymentChannel.Claim[] memory claims = new IPaymentChannel.Claim[](5);
        claims[0] = _claim(payerKey, a, 1, 100e6);
        claims[1] = _claim(payerKey, b, 1, DEPOSIT + 1); // above deposit
        claims[2] = _noVoucher(c); // closed
        claims[3] = _noVoucher(exiting); // challenge period over
        claims[4] = _noVoucher(unknown);

        vm.expectEmit(address(channel));
        emit IPaymentChannel.Closed(a, 100e6, DEPOSIT - 100e6);
        vm.expectEmit(address(channel));
        emit IPaymentChannel.ClaimSkipped(
            b,
            abi.encodeWithSelector(
                IPaymentChannel.VoucherExceedsDeposit.selector, DEPOSIT + 1, DEPOSIT
            )
        );
        vm.expectEmit(address(channel));
        emit IPaymentChannel.ClaimSkipped(c, _notOpen(c, IPaymentChannel.Status.Closed));
        vm.expectEmit(address(channel));
        emit IPaymentChannel.ClaimSkipped(
            exiting,
            abi.encodeWithSelector(IPaymentChannel.ChallengePeriodOver.selector, exiting, exitAt)
        );
        vm.expectEmit(address(channel));
        emit IPaymentChannel.ClaimSkipped(unknown, _notOpen(unknown, IPaymentChannel.Status.None));
        vm.prank(payee);
        uint256 closed = channel.closeMany(claims);

        assertEq(closed, 1);
        assertEq(usd.balanceOf(payee), 100e6);
        // c was refunded earlier, a now; b and the exiting channel still hold their deposits.
        _assertUsd(FUNDS - 100e6 - 2 * DEPOSIT, 100e6, 2 * DEPOSIT);
        assertEq(uint8(channel.getChannel(b).status), uint8(IPaymentChannel.Status.Open));
        assertEq(uint8(channel.getChannel(exiting).status), uint8(IPaymentChannel.Status.Open));
    }

    function test_closeMany_byNonPayeeClosesNothing() public {
        bytes32 id = _openUsd(DEPOSIT);
        _requestExit(id);
        // Even during an exit, closing is the payee's decision.
        vm.expectEmit(address(channel));
        emit IPaymentChannel.ClaimSkipped(
            id, abi.encodeWithSelector(IPaymentChannel.NotPayee.selector, watcher, payee)
        );
        vm.prank(watcher);
        assertEq(channel.closeMany(_array(_noVoucher(id))), 0);
        assertEq(uint8(channel.getChannel(id).status), uint8(IPaymentChannel.Status.Open));
    }

    function test_closeMany_mixedTokensAndNoVoucherItems() public {
        bytes32 u1 = _openUsdSalt(bytes32(uint256(1)));
        bytes32 u2 = _openUsdSalt(bytes32(uint256(2)));
        bytes32 e1 = _openEthSalt(1 ether, bytes32(uint256(1)));
        IPaymentChannel.Claim[] memory claims = new IPaymentChannel.Claim[](3);
        claims[0] = _claim(payerKey, u1, 1, 100e6);
        claims[1] = _noVoucher(u2);
        claims[2] = _claim(payerKey, e1, 1, 0.4 ether);

        vm.recordLogs();
        vm.prank(payee);
        assertEq(channel.closeMany(claims), 3);
        // One payout to the payee and two refunds (u2 has no payout).
        assertEq(_transfersFrom(vm.getRecordedLogs(), address(usd), address(channel)), 3);
        _assertUsd(FUNDS - 100e6, 100e6, 0);
        _assertEth(1000 ether - 0.4 ether, 0.4 ether, 0);
        _assertTombstoned(u2, payer);
    }

    // =========================================================================================
    // closeWithAuthorization
    // =========================================================================================

    function test_closeWithAuthorization_payerGetsRefundAtOnce() public {
        bytes32 id = _openUsd(DEPOSIT);
        bytes memory auth = _closeAuthSig(payeeKey, id, 300e6);
        vm.expectEmit(address(channel));
        emit IPaymentChannel.Closed(id, 300e6, DEPOSIT - 300e6);
        vm.prank(payer);
        channel.closeWithAuthorization(id, 300e6, CLOSE_DEADLINE, auth);
        _assertUsd(FUNDS - 300e6, 300e6, 0);
        _assertTombstoned(id, payer);
    }

    function test_closeWithAuthorization_nativeChannel() public {
        bytes32 id = _openEth(1 ether);
        bytes memory auth = _closeAuthSig(payeeKey, id, 0.6 ether);
        vm.prank(payer);
        channel.closeWithAuthorization(id, 0.6 ether, CLOSE_DEADLINE, auth);
        _assertEth(1000 ether - 0.6 ether, 0.6 ether, 0);
    }

    function test_closeWithAuthorization_sessionSignerMaySubmit() public {
        bytes32 id = _openUsdWithSession(DEPOSIT, 0);
        bytes memory auth = _closeAuthSig(payeeKey, id, 100e6);
        vm.prank(session);
        channel.closeWithAuthorization(id, 100e6, CLOSE_DEADLINE, auth);
        // The refund goes to the payer, not to the session key.
        _assertUsd(FUNDS - 100e6, 100e6, 0);
        assertEq(usd.balanceOf(session), 0);
    }

    function test_closeWithAuthorization_revertsForStranger() public {
        bytes32 id = _openUsdWithSession(DEPOSIT, 0);
        bytes memory auth = _closeAuthSig(payeeKey, id, 100e6);
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.NotPayer.selector, stranger, payer));
        channel.closeWithAuthorization(id, 100e6, CLOSE_DEADLINE, auth);
    }

    function test_closeWithAuthorization_revertsForPayee() public {
        bytes32 id = _openUsd(DEPOSIT);
        bytes memory auth = _closeAuthSig(payeeKey, id, 100e6);
        vm.prank(payee);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.NotPayer.selector, payee, payer));
        channel.closeWithAuthorization(id, 100e6, CLOSE_DEADLINE, auth);
    }

    function test_closeWithAuthorization_revertsForSessionWhenChannelHasNone() public {
        bytes32 id = _openUsd(DEPOSIT);
        bytes memory auth = _closeAuthSig(payeeKey, id, 100e6);
        vm.prank(session);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.NotPayer.selector, session, payer));
        channel.closeWithAuthorization(id, 100e6, CLOSE_DEADLINE, auth);
    }

    function test_closeWithAuthorization_revertsWhenFinalBelowPaid() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 200e6);
        bytes memory auth = _closeAuthSig(payeeKey, id, 100e6);
        vm.prank(payee);
        channel.settle(c);
        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentChannel.FinalAmountOutOfRange.selector, 100e6, 200e6, DEPOSIT
            )
        );
        channel.closeWithAuthorization(id, 100e6, CLOSE_DEADLINE, auth);
    }

    function test_closeWithAuthorization_revertsWhenFinalAboveDeposit() public {
        bytes32 id = _openUsd(DEPOSIT);
        bytes memory auth = _closeAuthSig(payeeKey, id, DEPOSIT + 1);
        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentChannel.FinalAmountOutOfRange.selector, DEPOSIT + 1, 0, DEPOSIT
            )
        );
        channel.closeWithAuthorization(id, DEPOSIT + 1, CLOSE_DEADLINE, auth);
    }

    function test_closeWithAuthorization_acceptsBothEndsOfRange() public {
        bytes32 a = _openUsdSalt(bytes32(uint256(1)));
        bytes32 b = _openUsdSalt(bytes32(uint256(2)));
        bytes memory authZero = _closeAuthSig(payeeKey, a, 0);
        bytes memory authAll = _closeAuthSig(payeeKey, b, DEPOSIT);
        vm.prank(payer);
        channel.closeWithAuthorization(a, 0, CLOSE_DEADLINE, authZero);
        vm.prank(payer);
        channel.closeWithAuthorization(b, DEPOSIT, CLOSE_DEADLINE, authAll);
        _assertUsd(FUNDS - DEPOSIT, DEPOSIT, 0);
    }

    function test_closeWithAuthorization_revertsWhenSignedByPayer() public {
        bytes32 id = _openUsd(DEPOSIT);
        bytes memory auth = _closeAuthSig(payerKey, id, 0);
        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.InvalidCloseAuthorization.selector, id)
        );
        channel.closeWithAuthorization(id, 0, CLOSE_DEADLINE, auth);
    }

    function test_closeWithAuthorization_revertsWhenAmountDiffers() public {
        bytes32 id = _openUsd(DEPOSIT);
        bytes memory auth = _closeAuthSig(payeeKey, id, 300e6);
        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.InvalidCloseAuthorization.selector, id)
        );
        channel.closeWithAuthorization(id, 299e6, CLOSE_DEADLINE, auth);
    }

    function test_closeWithAuthorization_revertsForOtherChannel() public {
        bytes32 a = _openUsdSalt(bytes32(uint256(1)));
        bytes32 b = _openUsdSalt(bytes32(uint256(2)));
        bytes memory authA = _closeAuthSig(payeeKey, a, 0);
        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.InvalidCloseAuthorization.selector, b)
        );
        channel.closeWithAuthorization(b, 0, CLOSE_DEADLINE, authA);
    }

    function test_closeWithAuthorization_revertsWhenVoucherSignatureReused() public {
        // A voucher signature is not a close authorisation, even from the right key.
        bytes32 id = _openUsd(DEPOSIT);
        bytes memory voucher = _voucherSig(payeeKey, id, 1, 100e6);
        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.InvalidCloseAuthorization.selector, id)
        );
        channel.closeWithAuthorization(id, 100e6, CLOSE_DEADLINE, voucher);
    }

    function test_closeWithAuthorization_worksDuringExitBeforeExitAt() public {
        bytes32 id = _openUsd(DEPOSIT);
        bytes memory auth = _closeAuthSig(payeeKey, id, 50e6);
        uint256 exitAt = _requestExit(id);
        vm.warp(exitAt - 1);
        vm.prank(payer);
        channel.closeWithAuthorization(id, 50e6, CLOSE_DEADLINE, auth);
        _assertUsd(FUNDS - 50e6, 50e6, 0);
    }

    function test_closeWithAuthorization_revertsWhenChallengePeriodOver() public {
        bytes32 id = _openUsd(DEPOSIT);
        bytes memory auth = _closeAuthSig(payeeKey, id, 50e6);
        uint256 exitAt = _requestExit(id);
        vm.warp(exitAt);
        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.ChallengePeriodOver.selector, id, exitAt)
        );
        channel.closeWithAuthorization(id, 50e6, CLOSE_DEADLINE, auth);
    }

    function test_closeWithAuthorization_revertsWhenChannelUnknown() public {
        bytes32 id = keccak256("unknown");
        bytes memory auth = _closeAuthSig(payeeKey, id, 0);
        vm.prank(payer);
        vm.expectRevert(_notOpen(id, IPaymentChannel.Status.None));
        channel.closeWithAuthorization(id, 0, CLOSE_DEADLINE, auth);
    }

    function test_closeWithAuthorization_afterPartialSettlePaysRemainder() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 200e6);
        bytes memory auth = _closeAuthSig(payeeKey, id, 500e6);
        vm.prank(payee);
        channel.settle(c);

        vm.expectEmit(address(channel));
        emit IPaymentChannel.Closed(id, 500e6, 500e6);
        vm.expectEmit(address(usd));
        emit IERC20.Transfer(address(channel), payee, 300e6);
        vm.expectEmit(address(usd));
        emit IERC20.Transfer(address(channel), payer, 500e6);
        vm.prank(payer);
        channel.closeWithAuthorization(id, 500e6, CLOSE_DEADLINE, auth);
        _assertUsd(FUNDS - 500e6, 500e6, 0);
    }

    /// A close authorisation signed earlier stays usable while `paid` has not passed it, but
    /// only until its deadline: the node refuses vouchers on the channel until then.
    function test_closeWithAuthorization_oldAuthorizationUsableOnlyUntilItsDeadline() public {
        bytes32 id = _openUsd(DEPOSIT);
        uint256 deadline = block.timestamp + 1 hours;
        bytes memory oldAuth =
            _sign(payeeKey, channel.closeAuthorizationDigest(id, 100e6, deadline));
        // The payee keeps serving and settles 80e6 of a 600e6 voucher...
        IPaymentChannel.Claim memory c = _partial(payerKey, id, 1, 600e6, 80e6);
        vm.prank(payee);
        channel.settle(c);
        // ...after the deadline the old authorisation is void...
        vm.warp(deadline + 1);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.AuthorizationExpired.selector, deadline)
        );
        vm.prank(payer);
        channel.closeWithAuthorization(id, 100e6, deadline, oldAuth);
        // ...and until it, the payer may close with it at 100e6.
        vm.warp(deadline);
        vm.prank(payer);
        channel.closeWithAuthorization(id, 100e6, deadline, oldAuth);
        _assertUsd(FUNDS - 100e6, 100e6, 0);
    }

    // =========================================================================================
    // requestExit
    // =========================================================================================

    function test_requestExit_setsExitAtAndEmits() public {
        bytes32 id = _openUsd(DEPOSIT);
        vm.warp(1000);
        vm.expectEmit(address(channel));
        emit IPaymentChannel.ExitRequested(id, 1000 + PERIOD);
        vm.prank(payer);
        channel.requestExit(id);
        assertEq(channel.getChannel(id).exitAt, 1000 + PERIOD);
        _assertUsd(FUNDS - DEPOSIT, 0, DEPOSIT);
    }

    function test_requestExit_usesChannelPeriod() public {
        IPaymentChannel.OpenParams memory p = _params(address(usd), DEPOSIT, address(0), 0);
        p.challengePeriod = MIN_PERIOD;
        vm.prank(payer);
        bytes32 id = channel.open(p);
        uint256 exitAt = _requestExit(id);
        assertEq(exitAt, block.timestamp + MIN_PERIOD);
    }

    function test_requestExit_revertsForStranger() public {
        bytes32 id = _openUsd(DEPOSIT);
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.NotPayer.selector, stranger, payer));
        channel.requestExit(id);
    }

    function test_requestExit_revertsForPayeeAndSession() public {
        bytes32 id = _openUsdWithSession(DEPOSIT, 0);
        vm.prank(payee);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.NotPayer.selector, payee, payer));
        channel.requestExit(id);
        vm.prank(session);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.NotPayer.selector, session, payer));
        channel.requestExit(id);
        assertEq(channel.getChannel(id).exitAt, 0);
    }

    function test_requestExit_revertsWhenAlreadyRequested() public {
        bytes32 id = _openUsd(DEPOSIT);
        uint256 exitAt = _requestExit(id);
        vm.warp(block.timestamp + 1 hours);
        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.ExitAlreadyRequested.selector, id, exitAt)
        );
        channel.requestExit(id);
    }

    function test_requestExit_revertsWhenChannelUnknown() public {
        bytes32 id = keccak256("unknown");
        vm.prank(payer);
        vm.expectRevert(_notOpen(id, IPaymentChannel.Status.None));
        channel.requestExit(id);
    }

    function test_requestExit_afterCancelRestartsTimer() public {
        bytes32 id = _openUsd(DEPOSIT);
        _requestExit(id);
        vm.warp(block.timestamp + 1 hours);
        vm.prank(payer);
        channel.topUp(id, 1);
        uint256 exitAt = _requestExit(id);
        assertEq(exitAt, block.timestamp + PERIOD);
    }

    // =========================================================================================
    // withdraw
    // =========================================================================================

    function test_withdraw_revertsWhenExitNotRequested() public {
        bytes32 id = _openUsd(DEPOSIT);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.ExitNotRequested.selector, id));
        channel.withdraw(id);
    }

    function test_withdraw_revertsOneSecondBeforeExitAt() public {
        bytes32 id = _openUsd(DEPOSIT);
        uint256 exitAt = _requestExit(id);
        vm.warp(exitAt - 1);
        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.ChallengePeriodActive.selector, id, exitAt)
        );
        channel.withdraw(id);
    }

    function test_withdraw_atExitAtByAnyoneRefundsPayer() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 150e6);
        vm.prank(payee);
        channel.settle(c);
        uint256 exitAt = _requestExit(id);
        vm.warp(exitAt);

        vm.expectEmit(address(channel));
        emit IPaymentChannel.Closed(id, 150e6, DEPOSIT - 150e6);
        vm.prank(stranger);
        channel.withdraw(id);

        _assertUsd(FUNDS - 150e6, 150e6, 0);
        assertEq(usd.balanceOf(stranger), 0);
        _assertTombstoned(id, payer);
    }

    function test_withdraw_nativeRefundsPayer() public {
        bytes32 id = _openEth(1 ether);
        uint256 exitAt = _requestExit(id);
        vm.warp(exitAt + 1 days);
        channel.withdraw(id);
        _assertEth(1000 ether, 0, 0);
    }

    function test_withdraw_afterWatcherSettledPayeeHoldsExactlySigned() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory older = _claim(payerKey, id, 10, 100e6);
        IPaymentChannel.Claim memory latest = _claim(payerKey, id, 12, 345e6);
        vm.prank(payee);
        channel.settle(older);
        uint256 exitAt = _requestExit(id);
        vm.warp(exitAt - 1);
        vm.prank(watcher);
        channel.settle(latest);
        vm.warp(exitAt);
        channel.withdraw(id);
        _assertUsd(FUNDS - 345e6, 345e6, 0);
    }

    function test_withdraw_revertsWhenAlreadyWithdrawn() public {
        bytes32 id = _openUsd(DEPOSIT);
        uint256 exitAt = _requestExit(id);
        vm.warp(exitAt);
        channel.withdraw(id);
        vm.expectRevert(_notOpen(id, IPaymentChannel.Status.Closed));
        channel.withdraw(id);
        _assertUsd(FUNDS, 0, 0);
    }

    function test_withdraw_revertsWhenChannelUnknown() public {
        bytes32 id = keccak256("unknown");
        vm.expectRevert(_notOpen(id, IPaymentChannel.Status.None));
        channel.withdraw(id);
    }

    // =========================================================================================
    // withdrawCredit and failed payouts
    // =========================================================================================

    function _openEthTo(address to, uint256 deposit) internal returns (bytes32 id) {
        IPaymentChannel.OpenParams memory p = _params(address(0), deposit, address(0), 0);
        p.payee = to;
        vm.prank(payer);
        id = channel.open{value: deposit}(p);
    }

    function test_withdrawCredit_failedPayeePayoutIsCreditedAndWithdrawnElsewhere() public {
        UnitRejectingReceiver rejecter = new UnitRejectingReceiver();
        bytes32 id = _openEthTo(address(rejecter), 1 ether);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 0.4 ether);

        vm.expectEmit(address(channel));
        emit IPaymentChannel.PayoutCredited(address(rejecter), address(0), 0.4 ether);
        vm.prank(address(rejecter));
        channel.settle(c);
        assertEq(channel.creditOf(address(rejecter), address(0)), 0.4 ether);
        assertEq(channel.getChannel(id).paid, 0.4 ether);
        assertEq(address(rejecter).balance, 0);
        assertEq(address(channel).balance, 1 ether);

        vm.expectEmit(address(channel));
        emit IPaymentChannel.CreditWithdrawn(address(rejecter), address(0), stranger, 0.4 ether);
        vm.prank(address(rejecter));
        uint256 amount = channel.withdrawCredit(address(0), stranger);

        assertEq(amount, 0.4 ether);
        assertEq(stranger.balance, 0.4 ether);
        assertEq(address(channel).balance, 0.6 ether);
        assertEq(channel.creditOf(address(rejecter), address(0)), 0);
    }

    function test_withdrawCredit_failedPayerRefundIsCredited() public {
        UnitRejectingReceiver rejecter = new UnitRejectingReceiver();
        vm.deal(address(rejecter), 1 ether);
        vm.prank(address(rejecter));
        bytes32 id = channel.open{value: 1 ether}(_params(address(0), 1 ether, session, 0));
        IPaymentChannel.Claim memory c = _claim(sessionKey, id, 1, 0.3 ether);

        vm.expectEmit(address(channel));
        emit IPaymentChannel.PayoutCredited(address(rejecter), address(0), 0.7 ether);
        vm.prank(payee);
        channel.close(c);
        // The payee was paid despite the payer's reverting `receive`.
        assertEq(payee.balance, 0.3 ether);
        assertEq(channel.creditOf(address(rejecter), address(0)), 0.7 ether);
        assertEq(address(channel).balance, 0.7 ether);

        vm.prank(address(rejecter));
        assertEq(channel.withdrawCredit(address(0), watcher), 0.7 ether);
        assertEq(watcher.balance, 0.7 ether);
        assertEq(address(channel).balance, 0);
    }

    function test_withdrawCredit_payeeOutOfGasIsCredited() public {
        UnitGasGuzzler guzzler = new UnitGasGuzzler();
        // With plenty of gas the guzzler accepts ether...
        (bool ok,) = address(guzzler).call{value: 1}("");
        assertTrue(ok);
        // ...but a payout forwards a bounded amount of gas, so it is credited instead.
        bytes32 id = _openEthTo(address(guzzler), 1 ether);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 0.5 ether);
        vm.prank(address(guzzler));
        channel.settle(c);
        assertEq(channel.creditOf(address(guzzler), address(0)), 0.5 ether);
        assertEq(address(guzzler).balance, 1);
    }

    function test_withdrawCredit_failedErc20PayoutIsCredited() public {
        UnitQuirkyToken qt = new UnitQuirkyToken();
        qt.mint(payer, DEPOSIT);
        vm.startPrank(payer);
        qt.approve(address(channel), DEPOSIT);
        bytes32 id = channel.open(_params(address(qt), DEPOSIT, address(0), 0));
        vm.stopPrank();
        qt.setBlocked(payee, true);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);

        vm.expectEmit(address(channel));
        emit IPaymentChannel.PayoutCredited(payee, address(qt), 100e6);
        vm.prank(payee);
        channel.close(c);
        assertEq(qt.balanceOf(payer), DEPOSIT - 100e6, "refund unaffected");
        assertEq(channel.creditOf(payee, address(qt)), 100e6);

        // Sending the credit to the blocked address itself fails and keeps the credit.
        vm.prank(payee);
        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentChannel.CreditTransferFailed.selector, payee, address(qt), 100e6
            )
        );
        channel.withdrawCredit(address(qt), payee);
        assertEq(channel.creditOf(payee, address(qt)), 100e6);

        vm.prank(payee);
        assertEq(channel.withdrawCredit(address(qt), watcher), 100e6);
        assertEq(qt.balanceOf(watcher), 100e6);
        assertEq(qt.balanceOf(address(channel)), 0);
    }

    function test_withdrawCredit_revertsWhenNoCredit() public {
        vm.prank(stranger);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.NoCredit.selector, stranger, address(0))
        );
        channel.withdrawCredit(address(0), stranger);
    }

    function test_withdrawCredit_revertsWhenCreditAlreadyWithdrawn() public {
        UnitRejectingReceiver rejecter = new UnitRejectingReceiver();
        bytes32 id = _openEthTo(address(rejecter), 1 ether);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 0.4 ether);
        vm.prank(address(rejecter));
        channel.settle(c);
        vm.prank(address(rejecter));
        channel.withdrawCredit(address(0), stranger);

        vm.prank(address(rejecter));
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.NoCredit.selector, address(rejecter), address(0))
        );
        channel.withdrawCredit(address(0), stranger);
        // Credit is per token: none in usd either.
        vm.prank(address(rejecter));
        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentChannel.NoCredit.selector, address(rejecter), address(usd)
            )
        );
        channel.withdrawCredit(address(usd), stranger);
    }

    function test_withdrawCredit_revertsWhenRecipientRejects() public {
        UnitRejectingReceiver rejecter = new UnitRejectingReceiver();
        UnitRejectingReceiver other = new UnitRejectingReceiver();
        bytes32 id = _openEthTo(address(rejecter), 1 ether);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 0.4 ether);
        vm.prank(address(rejecter));
        channel.settle(c);

        vm.prank(address(rejecter));
        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentChannel.CreditTransferFailed.selector, address(other), address(0), 0.4 ether
            )
        );
        channel.withdrawCredit(address(0), address(other));
        assertEq(channel.creditOf(address(rejecter), address(0)), 0.4 ether);
        assertEq(address(channel).balance, 1 ether);
    }

    // =========================================================================================
    // Cross-domain replay and EIP-712
    // =========================================================================================

    function test_settle_revertsForVoucherOfOtherDeployment() public {
        bytes32 id = _openUsd(DEPOSIT);
        PaymentChannel other = new PaymentChannel(MIN_PERIOD, MAX_PERIOD);
        bytes32 foreign = other.voucherDigest(id, 1, 100e6);
        assertTrue(foreign != channel.voucherDigest(id, 1, 100e6));
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        c.signature = _sign(payerKey, foreign);
        vm.prank(payee);
        vm.expectRevert(_badSig(id, payer));
        channel.settle(c);
    }

    function test_settle_revertsForVoucherSignedForOtherChain() public {
        bytes32 id = _openUsd(DEPOSIT);
        uint256 chainId = block.chainid;
        vm.chainId(chainId + 1);
        bytes32 foreign = channel.voucherDigest(id, 1, 100e6);
        bytes memory sig = _sign(payerKey, foreign);
        vm.chainId(chainId);
        assertTrue(foreign != channel.voucherDigest(id, 1, 100e6));

        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        c.signature = sig;
        vm.prank(payee);
        vm.expectRevert(_badSig(id, payer));
        channel.settle(c);
    }

    function test_closeWithAuthorization_revertsForOtherDeployment() public {
        bytes32 id = _openUsd(DEPOSIT);
        PaymentChannel other = new PaymentChannel(MIN_PERIOD, MAX_PERIOD);
        bytes memory auth = _sign(payeeKey, other.closeAuthorizationDigest(id, 0, CLOSE_DEADLINE));
        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.InvalidCloseAuthorization.selector, id)
        );
        channel.closeWithAuthorization(id, 0, CLOSE_DEADLINE, auth);
    }

    function test_eip712Domain_matchesSpec() public view {
        (
            bytes1 fields,
            string memory name,
            string memory version,
            uint256 chainId,
            address verifyingContract,
            bytes32 salt,
            uint256[] memory extensions
        ) = channel.eip712Domain();
        assertEq(uint8(fields), 0x0f);
        assertEq(name, "x402 Payment Channel");
        assertEq(version, "1");
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
                keccak256("1"),
                block.chainid,
                address(channel)
            )
        );
    }

    function test_voucherDigest_matchesManualEip712() public view {
        bytes32 typehash =
            keccak256("Voucher(bytes32 channelId,uint64 nonce,uint256 cumulativeAmount)");
        assertEq(channel.VOUCHER_TYPEHASH(), typehash);
        bytes32 id = keccak256("some channel");
        bytes32 expected = keccak256(
            abi.encodePacked(
                "\x19\x01",
                _domainSeparator(),
                keccak256(abi.encode(typehash, id, uint64(42), uint256(123e6)))
            )
        );
        assertEq(channel.voucherDigest(id, 42, 123e6), expected);
    }

    function test_closeAuthorizationDigest_matchesManualEip712() public view {
        bytes32 typehash =
            keccak256("CloseAuthorization(bytes32 channelId,uint256 finalAmount,uint256 deadline)");
        assertEq(channel.CLOSE_AUTHORIZATION_TYPEHASH(), typehash);
        bytes32 id = keccak256("some channel");
        bytes32 expected = keccak256(
            abi.encodePacked(
                "\x19\x01",
                _domainSeparator(),
                keccak256(abi.encode(typehash, id, uint256(7), CLOSE_DEADLINE))
            )
        );
        assertEq(channel.closeAuthorizationDigest(id, 7, CLOSE_DEADLINE), expected);
    }

    function test_openAuthorizationDigest_matchesManualEip712() public view {
        bytes32 typehash = keccak256("OpenAuthorization(bytes32 channelId,uint256 deadline)");
        assertEq(channel.OPEN_AUTHORIZATION_TYPEHASH(), typehash);
        bytes32 id = keccak256("some channel");
        bytes32 expected = keccak256(
            abi.encodePacked(
                "\x19\x01", _domainSeparator(), keccak256(abi.encode(typehash, id, uint256(99)))
            )
        );
        assertEq(channel.openAuthorizationDigest(id, 99), expected);
    }

    function test_digests_areDistinctPerType() public view {
        bytes32 id = keccak256("some channel");
        bytes32 v = channel.voucherDigest(id, 0, 5);
        bytes32 c = channel.closeAuthorizationDigest(id, 5, CLOSE_DEADLINE);
        bytes32 o = channel.openAuthorizationDigest(id, 5);
        assertTrue(v != c && c != o && v != o);
    }

    // =========================================================================================
    // views
    // =========================================================================================

    function test_getChannel_unknownIsEmpty() public view {
        IPaymentChannel.Channel memory ch = channel.getChannel(keccak256("unknown"));
        assertEq(uint8(ch.status), uint8(IPaymentChannel.Status.None));
        assertEq(ch.payer, address(0));
        assertEq(ch.deposit, 0);
        assertEq(channel.creditOf(payee, address(usd)), 0);
        assertEq(channel.NATIVE_TOKEN(), address(0));
    }

    function test_closeWithAuthorization_revertsAfterDeadline() public {
        bytes32 id = _openUsd(DEPOSIT);
        uint256 deadline = block.timestamp + 1 hours;
        bytes memory auth = _sign(payeeKey, channel.closeAuthorizationDigest(id, 100e6, deadline));
        vm.warp(deadline + 1);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.AuthorizationExpired.selector, deadline)
        );
        vm.prank(payer);
        channel.closeWithAuthorization(id, 100e6, deadline, auth);
        // At the deadline itself it still works.
        vm.warp(deadline);
        vm.prank(payer);
        channel.closeWithAuthorization(id, 100e6, deadline, auth);
        assertEq(usd.balanceOf(payee), 100e6);
    }

    function test_closeWithAuthorization_deadlineIsSigned() public {
        bytes32 id = _openUsd(DEPOSIT);
        uint256 deadline = block.timestamp + 1 hours;
        bytes memory auth = _sign(payeeKey, channel.closeAuthorizationDigest(id, 100e6, deadline));
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.InvalidCloseAuthorization.selector, id)
        );
        vm.prank(payer);
        channel.closeWithAuthorization(id, 100e6, deadline + 1 days, auth);
    }

    function test_settle_watcherClaimDoesNotConsumeNonce() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory latest = _claim(payerKey, id, 9, 300e6);
        vm.prank(payer);
        channel.requestExit(id);
        // A watcher submits an older voucher first; the payee's latest still pays in full.
        vm.prank(watcher);
        channel.settle(_claim(payerKey, id, 5, 100e6));
        assertEq(channel.getChannel(id).nonce, 0);
        assertEq(channel.getChannel(id).paid, 100e6);
        vm.prank(payee);
        channel.settle(latest);
        assertEq(channel.getChannel(id).nonce, 9);
        assertEq(usd.balanceOf(payee), 300e6);
    }
}

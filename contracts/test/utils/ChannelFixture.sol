// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Test} from "forge-std/Test.sol";
import {Vm} from "forge-std/Vm.sol";

import {IPaymentChannel} from "../../src/interfaces/IPaymentChannel.sol";
import {TestStablecoin} from "../../src/TestStablecoin.sol";

/// @notice Shared fixture: a deployed PaymentChannel, a test stablecoin, funded actors with
/// known keys, and `vm.sign` helpers for every signature the protocol uses.
abstract contract ChannelFixture is Test {
    uint32 internal constant MIN_PERIOD = 1 hours;
    uint32 internal constant MAX_PERIOD = 30 days;
    uint32 internal constant PERIOD = 1 days;
    uint256 internal constant DEPOSIT = 1000e6;
    uint256 internal constant FUNDS = 1_000_000e6;
    /// Deadline of close authorisations signed by `_closeAuthSig`.
    uint256 internal constant CLOSE_DEADLINE = 365 days;

    /// secp256k1 order, for building high-s signatures.
    uint256 internal constant SECP256K1_N =
        0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;

    bytes32 internal constant TRANSFER_TOPIC = keccak256("Transfer(address,address,uint256)");

    /// The contract under test, deployed from its artifact: `PaymentChannel.sol` is compiled
    /// with the IR pipeline (see `foundry.toml`), the tests and mocks without it.
    IPaymentChannel internal channel;
    TestStablecoin internal usd;

    uint256 internal payerKey;
    address internal payer;
    uint256 internal payeeKey;
    address internal payee;
    uint256 internal sessionKey;
    address internal session;
    address internal watcher;
    address internal stranger;

    mapping(bytes32 id => IPaymentChannel.ChannelParams) private _known;

    function setUp() public virtual {
        channel = _deployChannel(MIN_PERIOD, MAX_PERIOD);
        usd = new TestStablecoin();
        (payer, payerKey) = makeAddrAndKey("payer");
        (payee, payeeKey) = makeAddrAndKey("payee");
        (session, sessionKey) = makeAddrAndKey("session");
        watcher = makeAddr("watcher");
        stranger = makeAddr("stranger");

        usd.mint(payer, FUNDS);
        vm.deal(payer, 1000 ether);
        vm.prank(payer);
        usd.approve(address(channel), type(uint256).max);
    }

    /// Deploys a PaymentChannel from its compiled artifact.
    function _deployChannel(uint32 minPeriod, uint32 maxPeriod) internal returns (IPaymentChannel) {
        return IPaymentChannel(
            deployCode("PaymentChannel.sol:PaymentChannel", abi.encode(minPeriod, maxPeriod))
        );
    }

    // ----- opening -----

    /// Gives `who` test dollars and lets the channel contract pull them.
    function _fund(address who) internal {
        usd.mint(who, FUNDS);
        vm.prank(who);
        usd.approve(address(channel), type(uint256).max);
    }

    /// Parameters of a channel paid by `payer` to `payee`, remembered for the id-based helpers.
    function _params(address token, address signer, bytes32 salt)
        internal
        returns (IPaymentChannel.ChannelParams memory p)
    {
        p = IPaymentChannel.ChannelParams({
            payer: payer,
            payee: payee,
            token: token,
            signer: signer,
            challengePeriod: PERIOD,
            salt: salt
        });
        _remember(p);
    }

    /// Parameters of a channel paid by `from` to `to`, remembered for the id-based helpers.
    function _paramsOf(address from, address to, address token, address signer, bytes32 salt)
        internal
        returns (IPaymentChannel.ChannelParams memory p)
    {
        p = IPaymentChannel.ChannelParams({
            payer: from,
            payee: to,
            token: token,
            signer: signer,
            challengePeriod: PERIOD,
            salt: salt
        });
        _remember(p);
    }

    /// Opens a channel with `p` from `p.payer` (sending `deposit` as value for the native
    /// token) and remembers its parameters for the id-based helpers.
    function _open(IPaymentChannel.ChannelParams memory p, uint256 deposit)
        internal
        returns (bytes32 id)
    {
        vm.prank(p.payer);
        id = channel.open{value: p.token == address(0) ? deposit : 0}(p, deposit);
        _remember(p);
    }

    /// Records `p` so that helpers taking a channel id can find its parameters. Computes the
    /// id locally (no call), so it can sit between a `vm.prank` and the call it is meant for.
    function _remember(IPaymentChannel.ChannelParams memory p) internal returns (bytes32 id) {
        id = keccak256(abi.encode(block.chainid, address(channel), p));
        _known[id] = p;
    }

    /// The parameters of a channel opened through this fixture.
    function _p(bytes32 id) internal view returns (IPaymentChannel.ChannelParams memory p) {
        p = _known[id];
        require(p.payee != address(0), "fixture: unknown channel id");
    }

    /// Opens a USD channel from `payer` signed by the payer itself.
    function _openUsd(uint256 deposit) internal returns (bytes32 id) {
        return _open(_params(address(usd), address(0), bytes32(0)), deposit);
    }

    /// Opens a USD channel from `payer` whose vouchers are signed by the session key.
    function _openUsdWithSession(uint256 deposit, bytes32 salt) internal returns (bytes32 id) {
        return _open(_params(address(usd), session, salt), deposit);
    }

    /// Opens a native-token channel from `payer`.
    function _openEth(uint256 deposit) internal returns (bytes32 id) {
        return _open(_params(address(0), address(0), bytes32(0)), deposit);
    }

    // ----- signing -----

    function _sign(uint256 key, bytes32 digest) internal pure returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        return abi.encodePacked(r, s, v);
    }

    /// The same signature with `s' = n - s` and the parity flipped: valid for ecrecover,
    /// refused by OpenZeppelin's ECDSA.
    function _highS(bytes memory sig) internal pure returns (bytes memory) {
        bytes32 r;
        bytes32 s;
        uint8 v;
        assembly {
            r := mload(add(sig, 0x20))
            s := mload(add(sig, 0x40))
            v := byte(0, mload(add(sig, 0x60)))
        }
        return
            abi.encodePacked(r, bytes32(SECP256K1_N - uint256(s)), v == 27 ? uint8(28) : uint8(27));
    }

    function _voucherSig(uint256 key, bytes32 id, uint64 nonce, uint256 cumulative)
        internal
        view
        returns (bytes memory)
    {
        return _sign(key, channel.voucherDigest(id, nonce, cumulative));
    }

    /// A claim of the full voucher amount, signed with `key`.
    function _claim(uint256 key, bytes32 id, uint64 nonce, uint256 cumulative)
        internal
        view
        returns (IPaymentChannel.Claim memory)
    {
        return IPaymentChannel.Claim({
            channel: _p(id),
            nonce: nonce,
            cumulativeAmount: cumulative,
            claimed: cumulative,
            signature: _voucherSig(key, id, nonce, cumulative)
        });
    }

    /// A claim of `claimed` (below the voucher's ceiling), signed with `key`.
    function _partial(uint256 key, bytes32 id, uint64 nonce, uint256 cumulative, uint256 claimed)
        internal
        view
        returns (IPaymentChannel.Claim memory c)
    {
        c = _claim(key, id, nonce, cumulative);
        c.claimed = claimed;
    }

    /// The payer requests an exit; returns when it may withdraw.
    function _requestExit(bytes32 id) internal returns (uint256 exitAt) {
        vm.prank(_p(id).payer);
        channel.requestExit(_p(id));
        exitAt = channel.getChannel(id).exitAt;
    }

    /// A claim with no voucher (close at the amount already paid).
    function _noVoucher(bytes32 id) internal view returns (IPaymentChannel.Claim memory) {
        return IPaymentChannel.Claim({
            channel: _p(id), nonce: 0, cumulativeAmount: 0, claimed: 0, signature: ""
        });
    }

    /// The payee's authorisation for anyone to submit a claim of `claimed` with voucher `nonce`.
    function _claimAuthSig(uint256 key, bytes32 id, uint64 nonce, uint256 claimed)
        internal
        view
        returns (bytes memory)
    {
        return _sign(key, channel.claimAuthorizationDigest(id, nonce, claimed));
    }

    function _closeAuthSig(uint256 key, bytes32 id, uint256 finalAmount)
        internal
        view
        returns (bytes memory)
    {
        return _sign(key, channel.closeAuthorizationDigest(id, finalAmount, CLOSE_DEADLINE));
    }

    function _openAuthSig(uint256 key, bytes32 id, uint256 deposit, uint256 deadline)
        internal
        view
        returns (bytes memory)
    {
        return _sign(key, channel.openAuthorizationDigest(id, deposit, deadline));
    }

    /// EIP-2612 permit signature of `owner` for this channel contract.
    function _permitSig(uint256 key, address owner, uint256 value, uint256 deadline)
        internal
        view
        returns (uint8 v, bytes32 r, bytes32 s)
    {
        bytes32 structHash = keccak256(
            abi.encode(
                keccak256(
                    "Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)"
                ),
                owner,
                address(channel),
                value,
                usd.nonces(owner),
                deadline
            )
        );
        (v, r, s) = vm.sign(
            key, keccak256(abi.encodePacked("\x19\x01", usd.DOMAIN_SEPARATOR(), structHash))
        );
    }

    /// EIP-3009 `ReceiveWithAuthorization` signature of `from` paying the channel contract.
    function _receiveAuthSig(
        uint256 key,
        address from,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce
    ) internal view returns (uint8 v, bytes32 r, bytes32 s) {
        return _authorizationSig(
            key,
            usd.RECEIVE_WITH_AUTHORIZATION_TYPEHASH(),
            from,
            address(channel),
            value,
            validAfter,
            validBefore,
            nonce
        );
    }

    /// EIP-3009 signature of `from` over an authorisation of type `typehash` on the test token.
    function _authorizationSig(
        uint256 key,
        bytes32 typehash,
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce
    ) internal view returns (uint8 v, bytes32 r, bytes32 s) {
        bytes32 structHash = keccak256(
            abi.encode(typehash, from, to, value, validAfter, validBefore, nonce)
        );
        (v, r, s) = vm.sign(
            key, keccak256(abi.encodePacked("\x19\x01", usd.DOMAIN_SEPARATOR(), structHash))
        );
    }

    /// Transfer logs of `token` sent by `from`.
    function _transfersFrom(Vm.Log[] memory logs, address token, address from)
        internal
        pure
        returns (uint256 n)
    {
        for (uint256 i; i < logs.length; ++i) {
            Vm.Log memory l = logs[i];
            if (
                l.emitter == token && l.topics.length == 3 && l.topics[0] == TRANSFER_TOPIC
                    && address(uint160(uint256(l.topics[1]))) == from
            ) {
                ++n;
            }
        }
    }

    function _array(IPaymentChannel.Claim memory c)
        internal
        pure
        returns (IPaymentChannel.Claim[] memory claims)
    {
        claims = new IPaymentChannel.Claim[](1);
        claims[0] = c;
    }
}

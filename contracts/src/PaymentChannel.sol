// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC1271} from "@openzeppelin/contracts/interfaces/IERC1271.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

import {IPaymentChannel, IERC3009} from "./interfaces/IPaymentChannel.sol";

/// @title PaymentChannel (v2)
/// @notice Singleton holding every x402 payment channel of a chain. See {IPaymentChannel} for
/// the lifecycle, the signature rule and the threat model.
/// @dev One storage slot per channel: the parameters are passed again with every call and
/// checked by hashing them into the channel id. Every external function that moves value is
/// `nonReentrant`; each item's state change happens before its transfers, and a batch's
/// payouts to the payee are summed and sent once per token at the end. Failed payouts are
/// credited, never reverted.
contract PaymentChannel is IPaymentChannel, EIP712, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @notice EIP-712 type of a voucher.
    bytes32 public constant VOUCHER_TYPEHASH =
        keccak256("Voucher(bytes32 channelId,uint64 nonce,uint256 cumulativeAmount)");

    /// @notice EIP-712 type of a payee's authorisation of a claim anyone may submit.
    bytes32 public constant CLAIM_AUTHORIZATION_TYPEHASH =
        keccak256("ClaimAuthorization(bytes32 channelId,uint64 nonce,uint256 claimed)");

    /// @notice EIP-712 type of a payee's cooperative close authorisation.
    bytes32 public constant CLOSE_AUTHORIZATION_TYPEHASH =
        keccak256("CloseAuthorization(bytes32 channelId,uint256 finalAmount,uint256 deadline)");

    /// @notice EIP-712 type of a payer's authorisation of a gasless open.
    bytes32 public constant OPEN_AUTHORIZATION_TYPEHASH =
        keccak256("OpenAuthorization(bytes32 channelId,uint256 deposit,uint256 deadline)");

    /// @notice The token address that stands for the chain's native token.
    address public constant NATIVE_TOKEN = address(0);

    /// @inheritdoc IPaymentChannel
    /// @dev Enough for a plain ECDSA-owned wallet (about 5,000), small enough that a wallet
    /// burning all of it costs a 21-item batch less than a tenth more than its 20 honest items.
    // forge-lint: disable-next-line(screaming-snake-case-const)
    uint256 public constant ERC1271_GAS_STIPEND = 12_000;

    /// @dev Gas that must be left before the ERC-1271 call for the callee to get the whole
    /// stipend: by the 63/64 rule (EIP-150) the callee gets at most 63/64 of what is left after
    /// the call's own cost (at most 2,600 for a cold account, 2,600 more for an EIP-7702
    /// delegate), hence `stipend * 64 / 63`, rounded up, plus 5,300 of slack.
    uint256 private constant _GAS_FOR_ERC1271_CALL =
        ERC1271_GAS_STIPEND + ERC1271_GAS_STIPEND / 63 + 1 + 5300;

    /// @dev Gas forwarded with a native-token payout. Enough for smart-wallet `receive` hooks,
    /// too little to grief a batch; a recipient that needs more is credited instead.
    uint256 private constant _NATIVE_PAYOUT_GAS = 100_000;

    /// @dev The largest `s` of a non-malleable ECDSA signature (secp256k1 order / 2).
    uint256 private constant _HALF_CURVE_ORDER =
        0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;

    /// @dev The packed {Channel} of a closed channel: status `Closed` (2) in the top byte.
    uint256 private constant _CLOSED_WORD =
        0x0200000000000000000000000000000000000000000000000000000000000000;

    /// @dev The bits of `paid` in the packed {Channel}.
    uint256 private constant _PAID_MASK =
        0x000000000000ffffffffffffffffffffffffff00000000000000000000000000;

    /// @dev Largest deposit a {Channel} can hold.
    uint256 private constant _MAX_DEPOSIT = type(uint104).max;

    uint32 private immutable _MIN_CHALLENGE_PERIOD;
    uint32 private immutable _MAX_CHALLENGE_PERIOD;

    mapping(bytes32 channelId => Channel) private _channels;
    mapping(address account => mapping(address token => uint256)) private _credits;

    /// @dev A pending transfer of a batch.
    struct Payout {
        address to;
        address token;
        uint256 amount;
    }

    /// @param minChallengePeriod_ The shortest challenge period a channel may have, in seconds.
    /// @param maxChallengePeriod_ The longest challenge period a channel may have, in seconds.
    constructor(uint32 minChallengePeriod_, uint32 maxChallengePeriod_)
        EIP712("x402 Payment Channel", "2")
    {
        if (minChallengePeriod_ == 0 || minChallengePeriod_ > maxChallengePeriod_) {
            revert ChallengePeriodOutOfBounds(minChallengePeriod_, 1, maxChallengePeriod_);
        }
        _MIN_CHALLENGE_PERIOD = minChallengePeriod_;
        _MAX_CHALLENGE_PERIOD = maxChallengePeriod_;
    }

    // ---------------------------------------------------------------------------------------
    // Opening and funding
    // ---------------------------------------------------------------------------------------

    /// @inheritdoc IPaymentChannel
    function open(ChannelParams calldata params, uint256 deposit)
        external
        payable
        nonReentrant
        returns (bytes32 channelId)
    {
        if (msg.sender != params.payer) revert NotPayer(msg.sender, params.payer);
        channelId = _checkNewChannel(params, deposit);
        _open(channelId, params, _pull(params.token, msg.sender, deposit));
    }

    /// @inheritdoc IPaymentChannel
    function openWithPermit(
        ChannelParams calldata params,
        uint256 deposit,
        uint256 deadline,
        uint8 v,
        bytes32 r,
        bytes32 s,
        bytes calldata openSignature
    ) external nonReentrant returns (bytes32 channelId) {
        if (params.token == NATIVE_TOKEN) {
            revert NativeTokenNotSupported();
        }
        channelId = _checkNewChannel(params, deposit);
        if (block.timestamp > deadline) revert AuthorizationExpired(deadline);
        address payer = params.payer;
        if (!_isValidSignature(
                payer, _openAuthorizationDigest(channelId, deposit, deadline), openSignature
            )) {
            revert InvalidOpenAuthorization(channelId, payer);
        }
        // The permit may have been front-run (it is public once in the mempool); an allowance
        // that is already in place serves just as well, and `safeTransferFrom` checks it.
        try IERC20Permit(params.token).permit(payer, address(this), deposit, deadline, v, r, s) {}
            catch {}
        _open(channelId, params, _pull(params.token, payer, deposit));
    }

    /// @inheritdoc IPaymentChannel
    function openWithAuthorization(
        ChannelParams calldata params,
        uint256 deposit,
        uint256 validAfter,
        uint256 validBefore,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external nonReentrant returns (bytes32 channelId) {
        if (params.token == NATIVE_TOKEN) revert NativeTokenNotSupported();
        channelId = _checkNewChannel(params, deposit);
        IERC20 token = IERC20(params.token);
        uint256 balanceBefore = token.balanceOf(address(this));
        // `nonce = channelId` binds every channel parameter into the payer's signature, and
        // `receiveWithAuthorization` only lets `to` (this contract) execute it.
        IERC3009(address(token))
            .receiveWithAuthorization(
                params.payer, address(this), deposit, validAfter, validBefore, channelId, v, r, s
            );
        _open(channelId, params, token.balanceOf(address(this)) - balanceBefore);
    }

    /// @inheritdoc IPaymentChannel
    function topUp(ChannelParams calldata params, uint256 amount) external payable nonReentrant {
        bytes32 channelId = _channelId(params);
        Channel memory ch = _load(channelId);
        if (ch.status != Status.Open) revert ChannelNotOpen(channelId, ch.status);
        bool exitPending = ch.exitAt != 0;
        if (exitPending && msg.sender != params.payer) {
            revert TopUpDuringExit(channelId, msg.sender);
        }
        if (amount == 0) revert ZeroAmount();

        uint256 received = _pull(params.token, msg.sender, amount);
        if (received == 0) revert ZeroAmount();
        uint256 deposit = ch.deposit + received;
        if (deposit > _MAX_DEPOSIT) revert DepositTooLarge(deposit);

        // forge-lint: disable-next-line(unsafe-typecast) checked against _MAX_DEPOSIT above
        _store(channelId, Channel(uint104(deposit), ch.paid, 0, Status.Open));
        emit ToppedUp(channelId, msg.sender, received, deposit);
        if (exitPending) emit ExitCancelled(channelId);
    }

    // ---------------------------------------------------------------------------------------
    // Redeeming vouchers
    // ---------------------------------------------------------------------------------------

    /// @inheritdoc IPaymentChannel
    function settle(Claim calldata claim) external nonReentrant {
        (bytes memory err,, uint256 payout,) = _redeem(claim, false, false, msg.data[0:0]);
        _revertIfFailed(err);
        _pay(claim.channel.token, msg.sender, payout);
    }

    /// @inheritdoc IPaymentChannel
    function settleMany(Claim[] calldata claims) external nonReentrant returns (uint256 settled) {
        Payout[] memory payouts = _newPayouts(claims.length);
        uint256 count;
        for (uint256 i; i < claims.length; ++i) {
            Claim calldata c = claims[i];
            (bytes memory err, bytes32 channelId, uint256 payout,) =
                _redeem(c, false, false, msg.data[0:0]);
            if (err.length != 0) {
                emit ClaimSkipped(channelId, err);
                continue;
            }
            ++settled;
            count = _accrue(payouts, count, msg.sender, c.channel.token, payout);
        }
        _payAll(payouts, count);
    }

    /// @inheritdoc IPaymentChannel
    function settleAuthorized(Claim calldata claim, bytes calldata payeeSignature)
        external
        nonReentrant
    {
        (bytes memory err,, uint256 payout,) = _redeem(claim, false, true, payeeSignature);
        _revertIfFailed(err);
        _pay(claim.channel.token, claim.channel.payee, payout);
    }

    /// @inheritdoc IPaymentChannel
    function settleManyAuthorized(Claim[] calldata claims, bytes[] calldata payeeSignatures)
        external
        nonReentrant
        returns (uint256 settled)
    {
        if (claims.length != payeeSignatures.length) {
            revert LengthMismatch(claims.length, payeeSignatures.length);
        }
        Payout[] memory payouts = _newPayouts(claims.length);
        uint256 count;
        for (uint256 i; i < claims.length; ++i) {
            Claim calldata c = claims[i];
            (bytes memory err, bytes32 channelId, uint256 payout,) =
                _redeem(c, false, true, payeeSignatures[i]);
            if (err.length != 0) {
                emit ClaimSkipped(channelId, err);
                continue;
            }
            ++settled;
            count = _accrue(payouts, count, c.channel.payee, c.channel.token, payout);
        }
        _payAll(payouts, count);
    }

    /// @inheritdoc IPaymentChannel
    function close(Claim calldata claim) external nonReentrant {
        (bytes memory err,, uint256 payout, uint256 refund) =
            _redeem(claim, true, false, msg.data[0:0]);
        _revertIfFailed(err);
        address token = claim.channel.token;
        _pay(token, msg.sender, payout);
        _pay(token, claim.channel.payer, refund);
    }

    /// @inheritdoc IPaymentChannel
    function closeMany(Claim[] calldata claims) external nonReentrant returns (uint256 closed) {
        Payout[] memory payouts = _newPayouts(claims.length);
        uint256 count;
        for (uint256 i; i < claims.length; ++i) {
            Claim calldata c = claims[i];
            (bytes memory err, bytes32 channelId, uint256 payout, uint256 refund) =
                _redeem(c, true, false, msg.data[0:0]);
            if (err.length != 0) {
                emit ClaimSkipped(channelId, err);
                continue;
            }
            ++closed;
            address token = c.channel.token;
            count = _accrue(payouts, count, msg.sender, token, payout);
            // Refunds go to different payers: one transfer each. The channel is already
            // tombstoned and every entry point is `nonReentrant`.
            _pay(token, c.channel.payer, refund);
        }
        _payAll(payouts, count);
    }

    // ---------------------------------------------------------------------------------------
    // Closing without a voucher
    // ---------------------------------------------------------------------------------------

    /// @inheritdoc IPaymentChannel
    function closeWithAuthorization(
        ChannelParams calldata params,
        uint256 finalAmount,
        uint256 deadline,
        bytes calldata payeeSignature
    ) external nonReentrant {
        if (block.timestamp > deadline) {
            revert AuthorizationExpired(deadline);
        }
        bytes32 channelId = _channelId(params);
        Channel memory ch = _load(channelId);
        if (ch.status != Status.Open) revert ChannelNotOpen(channelId, ch.status);
        if (msg.sender != params.payer && msg.sender != params.signer) {
            revert NotPayer(msg.sender, params.payer);
        }
        if (ch.exitAt != 0 && block.timestamp >= ch.exitAt) {
            revert ChallengePeriodOver(channelId, ch.exitAt);
        }
        if (finalAmount < ch.paid || finalAmount > ch.deposit) {
            revert FinalAmountOutOfRange(finalAmount, ch.paid, ch.deposit);
        }
        if (!_isValidSignature(
                params.payee,
                _closeAuthorizationDigest(channelId, finalAmount, deadline),
                payeeSignature
            )) {
            revert InvalidCloseAuthorization(channelId);
        }

        _tombstone(channelId);
        // `paid <= finalAmount <= deposit` was checked above.
        uint256 refund = ch.deposit - finalAmount;
        emit Closed(channelId, finalAmount, refund);

        _pay(params.token, params.payee, finalAmount - ch.paid);
        _pay(params.token, params.payer, refund);
    }

    /// @inheritdoc IPaymentChannel
    function requestExit(ChannelParams calldata params) external nonReentrant {
        bytes32 channelId = _channelId(params);
        Channel memory ch = _load(channelId);
        if (ch.status != Status.Open) revert ChannelNotOpen(channelId, ch.status);
        if (msg.sender != params.payer) revert NotPayer(msg.sender, params.payer);
        if (ch.exitAt != 0) revert ExitAlreadyRequested(channelId, ch.exitAt);

        uint256 exitAt = block.timestamp + params.challengePeriod;
        // forge-lint: disable-next-line(unsafe-typecast) uint40 timestamps last until the year 36812
        ch.exitAt = uint40(exitAt);
        _store(channelId, ch);
        emit ExitRequested(channelId, exitAt);
    }

    /// @inheritdoc IPaymentChannel
    function withdraw(ChannelParams calldata params) external nonReentrant {
        bytes32 channelId = _channelId(params);
        Channel memory ch = _load(channelId);
        if (ch.status != Status.Open) revert ChannelNotOpen(channelId, ch.status);
        if (ch.exitAt == 0) revert ExitNotRequested(channelId);
        if (block.timestamp < ch.exitAt) revert ChallengePeriodActive(channelId, ch.exitAt);

        // `paid <= deposit` holds for every open channel.
        uint256 refund = ch.deposit - ch.paid;
        _tombstone(channelId);
        emit Closed(channelId, ch.paid, refund);

        _pay(params.token, params.payer, refund);
    }

    /// @inheritdoc IPaymentChannel
    function withdrawCredit(address token, address to)
        external
        nonReentrant
        returns (uint256 amount)
    {
        amount = _credits[msg.sender][token];
        if (amount == 0) revert NoCredit(msg.sender, token);
        _credits[msg.sender][token] = 0;
        emit CreditWithdrawn(msg.sender, token, to, amount);

        bool ok;
        if (token == NATIVE_TOKEN) {
            (ok,) = to.call{value: amount}("");
        } else {
            ok = IERC20(token).trySafeTransfer(to, amount);
        }
        if (!ok) revert CreditTransferFailed(to, token, amount);
    }

    // ---------------------------------------------------------------------------------------
    // Views
    // ---------------------------------------------------------------------------------------

    /// @inheritdoc IPaymentChannel
    function getChannel(bytes32 channelId) external view returns (Channel memory) {
        return _channels[channelId];
    }

    /// @inheritdoc IPaymentChannel
    function creditOf(address account, address token) external view returns (uint256) {
        return _credits[account][token];
    }

    /// @inheritdoc IPaymentChannel
    function computeChannelId(ChannelParams calldata params) external view returns (bytes32) {
        // The checked encoding, so that parameters with dirty high bits revert here instead of
        // naming an id that no channel can have.
        return keccak256(abi.encode(block.chainid, address(this), params));
    }

    /// @inheritdoc IPaymentChannel
    function voucherDigest(bytes32 channelId, uint64 nonce, uint256 cumulativeAmount)
        external
        view
        returns (bytes32)
    {
        return _voucherDigest(channelId, nonce, cumulativeAmount);
    }

    /// @inheritdoc IPaymentChannel
    function claimAuthorizationDigest(bytes32 channelId, uint64 nonce, uint256 claimed)
        external
        view
        returns (bytes32)
    {
        return _claimAuthorizationDigest(channelId, nonce, claimed);
    }

    /// @inheritdoc IPaymentChannel
    function closeAuthorizationDigest(bytes32 channelId, uint256 finalAmount, uint256 deadline)
        external
        view
        returns (bytes32)
    {
        return _closeAuthorizationDigest(channelId, finalAmount, deadline);
    }

    /// @inheritdoc IPaymentChannel
    function openAuthorizationDigest(bytes32 channelId, uint256 deposit, uint256 deadline)
        external
        view
        returns (bytes32)
    {
        return _openAuthorizationDigest(channelId, deposit, deadline);
    }

    /// @inheritdoc IPaymentChannel
    function minChallengePeriod() external view returns (uint32) {
        return _MIN_CHALLENGE_PERIOD;
    }

    /// @inheritdoc IPaymentChannel
    function maxChallengePeriod() external view returns (uint32) {
        return _MAX_CHALLENGE_PERIOD;
    }

    // ---------------------------------------------------------------------------------------
    // Internals
    // ---------------------------------------------------------------------------------------

    /// @dev Validates a new channel's parameters and returns its id, which must never have been
    /// used. Reads every field of `params`, so each is checked for clean ABI encoding before
    /// {_channelId} hashes the raw words.
    function _checkNewChannel(ChannelParams calldata params, uint256 deposit)
        private
        view
        returns (bytes32 channelId)
    {
        if (params.payee == address(0)) revert InvalidPayee();
        if (deposit == 0) revert ZeroAmount();
        if (deposit > _MAX_DEPOSIT) revert DepositTooLarge(deposit);
        uint256 period = params.challengePeriod;
        if (period < _MIN_CHALLENGE_PERIOD || period > _MAX_CHALLENGE_PERIOD) {
            revert ChallengePeriodOutOfBounds(period, _MIN_CHALLENGE_PERIOD, _MAX_CHALLENGE_PERIOD);
        }
        channelId = _channelId(params);
        if (_channels[channelId].status != Status.None) revert ChannelExists(channelId);
    }

    /// @dev Records a new channel funded with `received` (which may be below the deposit asked
    /// for, with fee-on-transfer tokens).
    function _open(bytes32 channelId, ChannelParams calldata params, uint256 received) private {
        if (received == 0) revert ZeroAmount();
        // `received <= deposit <= _MAX_DEPOSIT`, unless the token is broken.
        if (received > _MAX_DEPOSIT) revert DepositTooLarge(received);
        // forge-lint: disable-next-line(unsafe-typecast) checked against _MAX_DEPOSIT above
        _store(channelId, Channel(uint104(received), 0, 0, Status.Open));
        emit ChannelOpened(
            channelId,
            params.payer,
            params.payee,
            params.token,
            params.signer,
            params.challengePeriod,
            params.salt,
            received
        );
    }

    /// @dev Validates `claim` against its channel and applies it: a settlement raises `paid`, a
    /// close (`closing`) tombstones the channel. With `authorized`, the payee's
    /// `payeeSignature` stands in for the payee being the caller. On refusal returns the
    /// ABI-encoded custom error in `err` and changes nothing.
    /// The hot path of every batch: the channel's slot is handled as a raw word (layout in
    /// {_load}) to spare the per-field reads, writes and memory of a struct.
    function _redeem(
        Claim calldata claim,
        bool closing,
        bool authorized,
        bytes calldata payeeSignature
    ) private returns (bytes memory err, bytes32 channelId, uint256 payout, uint256 refund) {
        channelId = _channelId(claim.channel);
        uint256 slot = _slotOf(channelId);
        uint256 word;
        assembly ("memory-safe") {
            word := sload(slot)
        }
        bytes calldata signature = claim.signature;
        err = _refusal(claim, signature, channelId, word, closing, authorized, payeeSignature);
        if (err.length != 0) return (err, channelId, 0, 0);

        uint256 paid = _paidOf(word);
        uint256 newPaid = signature.length == 0 ? paid : claim.claimed;
        // `paid <= newPaid <= deposit`: checked by {_refusal}, or `newPaid == paid`.
        unchecked {
            payout = newPaid - paid;
        }
        if (closing) {
            unchecked {
                refund = _depositOf(word) - newPaid;
            }
            // The tombstone: status `Closed`, every other field zero.
            assembly ("memory-safe") {
                sstore(slot, _CLOSED_WORD)
            }
            emit Closed(channelId, newPaid, refund);
        } else {
            // Replaces the `paid` field; `newPaid <= deposit < 2^104` fits it.
            assembly ("memory-safe") {
                sstore(slot, or(and(word, not(_PAID_MASK)), shl(104, newPaid)))
            }
            emit Settled(channelId, claim.nonce, newPaid, payout);
        }
    }

    /// @dev Why `claim` (with its voucher `signature`) must be refused, as an ABI-encoded
    /// custom error, or nothing. The checks run cheapest first, the signatures last.
    /// Once the channel is known to be open, the parameter words of `claim` are exactly those
    /// it was opened with (they hash to its id), and were checked then: they are read raw.
    function _refusal(
        Claim calldata claim,
        bytes calldata signature,
        bytes32 channelId,
        uint256 word,
        bool closing,
        bool authorized,
        bytes calldata payeeSignature
    ) private view returns (bytes memory) {
        {
            Status status = _statusOf(word);
            if (status != Status.Open) {
                return abi.encodeWithSelector(ChannelNotOpen.selector, channelId, status);
            }
            uint256 exitAt = _exitAtOf(word);
            if (exitAt != 0 && block.timestamp >= exitAt) {
                return abi.encodeWithSelector(ChallengePeriodOver.selector, channelId, exitAt);
            }
        }
        address payer;
        address payee;
        address signer;
        // ChannelParams words 0 (payer), 1 (payee) and 3 (signer), checked at open (see above).
        assembly ("memory-safe") {
            payer := calldataload(claim)
            payee := calldataload(add(claim, 0x20))
            signer := calldataload(add(claim, 0x60))
        }
        if (!authorized && msg.sender != payee) {
            return abi.encodeWithSelector(NotPayee.selector, msg.sender, payee);
        }
        if (signature.length == 0) {
            if (closing) return _noError();
            return abi.encodeWithSelector(MissingSignature.selector, channelId);
        }
        uint256 cumulative = claim.cumulativeAmount;
        uint256 claimed = claim.claimed;
        if (cumulative > _depositOf(word)) {
            return
                abi.encodeWithSelector(VoucherExceedsDeposit.selector, cumulative, _depositOf(word));
        }
        if (claimed > cumulative) {
            return abi.encodeWithSelector(ClaimAboveVoucher.selector, claimed, cumulative);
        }
        if (claimed < _paidOf(word)) {
            return abi.encodeWithSelector(ClaimBelowPaid.selector, claimed, _paidOf(word));
        }
        uint64 nonce = claim.nonce;
        if (
            authorized
                && !_isValidSignature(
                    payee, _claimAuthorizationDigest(channelId, nonce, claimed), payeeSignature
                )
        ) {
            return abi.encodeWithSelector(InvalidClaimAuthorization.selector, channelId);
        }
        if (signer == address(0)) signer = payer;
        if (!_isValidSignature(signer, _voucherDigest(channelId, nonce, cumulative), signature)) {
            return abi.encodeWithSelector(InvalidSignature.selector, channelId, signer);
        }
        return _noError();
    }

    /// @dev The signature rule (see {IPaymentChannel}): ECDSA recovery first, whatever code
    /// `signer` has; a bounded ERC-1271 call only if that fails and `signer` has code.
    function _isValidSignature(address signer, bytes32 digest, bytes calldata signature)
        private
        view
        returns (bool)
    {
        if (signature.length == 65) {
            address recovered;
            // ECDSA recovery as OpenZeppelin's `ECDSA.tryRecover(digest, v, r, s)`, read
            // straight from calldata: a high `s` (EIP-2 malleability) is refused, and the
            // precompile returns nothing for a `v` other than 27 or 28 or an invalid point.
            assembly ("memory-safe") {
                let s := calldataload(add(signature.offset, 0x20))
                if iszero(gt(s, _HALF_CURVE_ORDER)) {
                    let m := mload(0x40)
                    mstore(m, digest)
                    mstore(add(m, 0x20), byte(0, calldataload(add(signature.offset, 0x40))))
                    mstore(add(m, 0x40), calldataload(signature.offset))
                    mstore(add(m, 0x60), s)
                    if staticcall(gas(), 1, m, 0x80, 0, 0x20) {
                        if eq(returndatasize(), 0x20) { recovered := mload(0) }
                    }
                }
            }
            if (recovered != address(0) && recovered == signer) return true;
        }
        if (signer.code.length == 0) return false;
        return _isValidERC1271Signature(signer, digest, signature);
    }

    /// @dev ERC-1271 check with a fixed gas stipend, reading at most 32 bytes of return data.
    /// Reverts the whole transaction if the stipend cannot be given in full.
    function _isValidERC1271Signature(address signer, bytes32 digest, bytes calldata signature)
        private
        view
        returns (bool)
    {
        bytes memory data = abi.encodeCall(IERC1271.isValidSignature, (digest, signature));
        if (gasleft() < _GAS_FOR_ERC1271_CALL) revert InsufficientGasForSignatureCheck();
        bool ok;
        bytes32 result;
        // A high-level call would copy all the return data into memory (a return-data bomb);
        // this copies 32 bytes into the scratch space, and only if there are that many.
        assembly ("memory-safe") {
            ok := staticcall(ERC1271_GAS_STIPEND, signer, add(data, 0x20), mload(data), 0, 0)
            if and(ok, gt(returndatasize(), 0x1f)) {
                returndatacopy(0, 0, 0x20)
                result := mload(0)
            }
        }
        return ok && result == bytes32(IERC1271.isValidSignature.selector);
    }

    /// @dev Marks a channel closed forever: status `Closed`, every other field zero.
    function _tombstone(bytes32 channelId) private {
        _store(channelId, Channel(0, 0, 0, Status.Closed));
    }

    /// @dev The storage slot of a channel's state.
    function _slotOf(bytes32 channelId) private view returns (uint256 slot) {
        Channel storage s = _channels[channelId];
        assembly ("memory-safe") {
            slot := s.slot
        }
    }

    /// @dev A channel's state, read with a single SLOAD.
    function _load(bytes32 channelId) private view returns (Channel memory ch) {
        Channel storage s = _channels[channelId];
        uint256 word;
        // One SLOAD of the packed slot, unpacked below (the compiler may read it per field).
        assembly ("memory-safe") {
            word := sload(s.slot)
        }
        // Layout (low to high bits): deposit (104), paid (104), exitAt (40), status (8).
        // Each field is masked to its width, so the casts cannot truncate.
        // forge-lint: disable-next-line(unsafe-typecast)
        ch.deposit = uint104(_depositOf(word));
        // forge-lint: disable-next-line(unsafe-typecast)
        ch.paid = uint104(_paidOf(word));
        // forge-lint: disable-next-line(unsafe-typecast)
        ch.exitAt = uint40(_exitAtOf(word));
        ch.status = _statusOf(word);
    }

    /// @dev The `deposit` field of a packed {Channel}.
    function _depositOf(uint256 word) private pure returns (uint256) {
        return word & type(uint104).max;
    }

    /// @dev The `paid` field of a packed {Channel}.
    function _paidOf(uint256 word) private pure returns (uint256) {
        return (word >> 104) & type(uint104).max;
    }

    /// @dev The `exitAt` field of a packed {Channel}.
    function _exitAtOf(uint256 word) private pure returns (uint256) {
        return (word >> 208) & type(uint40).max;
    }

    /// @dev The `status` field of a packed {Channel} (every stored status is a valid one).
    function _statusOf(uint256 word) private pure returns (Status) {
        return Status(word >> 248);
    }

    /// @dev Writes a channel's state with a single SSTORE.
    function _store(bytes32 channelId, Channel memory ch) private {
        Channel storage s = _channels[channelId];
        uint256 word = uint256(ch.deposit) | (uint256(ch.paid) << 104) | (uint256(ch.exitAt) << 208)
            | (uint256(uint8(ch.status)) << 248);
        // The packed layout of {Channel}, see {_load}.
        assembly ("memory-safe") {
            sstore(s.slot, word)
        }
    }

    /// @dev Adds `amount` for (`to`, `token`) to the first `count` entries of `payouts`,
    /// returning the new count. Batches usually have one payee and one token, so the scan
    /// starts from the end and is short.
    function _accrue(
        Payout[] memory payouts,
        uint256 count,
        address to,
        address token,
        uint256 amount
    ) private pure returns (uint256) {
        if (amount == 0) return count;
        for (uint256 i = count; i != 0;) {
            // `i >= 1` inside the loop, so `i - 1` cannot underflow.
            unchecked {
                --i;
            }
            Payout memory p = payouts[i];
            if (p.to == to && p.token == token) {
                // A sum of payouts of one token is at most this contract's balance of it.
                unchecked {
                    p.amount += amount;
                }
                return count;
            }
        }
        payouts[count] = Payout(to, token, amount);
        return count + 1;
    }

    /// @dev An array for up to `n` payouts whose entries are not initialised: `new Payout[](n)`
    /// would allocate and zero a struct for each of them. Only the first `count` entries are
    /// ever read ({_accrue}, {_payAll}), each after being written.
    function _newPayouts(uint256 n) private pure returns (Payout[] memory payouts) {
        assembly ("memory-safe") {
            payouts := mload(0x40)
            mstore(payouts, n)
            mstore(0x40, add(payouts, shl(5, add(n, 1))))
        }
    }

    /// @dev Sends the first `count` entries of `payouts`.
    function _payAll(Payout[] memory payouts, uint256 count) private {
        for (uint256 i; i < count; ++i) {
            _pay(payouts[i].token, payouts[i].to, payouts[i].amount);
        }
    }

    /// @dev Takes `amount` of `token` from `from`, returning what this contract actually received.
    function _pull(address token, address from, uint256 amount) private returns (uint256 received) {
        if (token == NATIVE_TOKEN) {
            if (msg.value != amount) revert InvalidMsgValue(msg.value, amount);
            return amount;
        }
        if (msg.value != 0) revert InvalidMsgValue(msg.value, 0);
        uint256 balanceBefore = IERC20(token).balanceOf(address(this));
        IERC20(token).safeTransferFrom(from, address(this), amount);
        received = IERC20(token).balanceOf(address(this)) - balanceBefore;
    }

    /// @dev Sends `amount` of `token` to `to`; if that fails, credits it to `to` instead.
    function _pay(address token, address to, uint256 amount) private {
        if (amount == 0) return;
        bool ok;
        if (token == NATIVE_TOKEN) {
            // A bounded native transfer that copies no return data.
            assembly ("memory-safe") {
                ok := call(_NATIVE_PAYOUT_GAS, to, amount, 0, 0, 0, 0)
            }
        } else {
            // `IERC20(token).trySafeTransfer(to, amount)` without allocating the call data:
            // succeeds if the call does and returns `true`, or returns nothing from a contract.
            assembly ("memory-safe") {
                let m := mload(0x40)
                mstore(m, 0xa9059cbb00000000000000000000000000000000000000000000000000000000)
                mstore(add(m, 0x04), to)
                mstore(add(m, 0x24), amount)
                ok := call(gas(), token, 0, m, 0x44, 0, 0x20)
                switch returndatasize()
                case 0 { ok := and(ok, gt(extcodesize(token), 0)) }
                default { ok := and(ok, and(gt(returndatasize(), 0x1f), eq(mload(0), 1))) }
            }
        }
        if (!ok) {
            _credits[to][token] += amount;
            emit PayoutCredited(to, token, amount);
        }
    }

    /// @dev An empty error, without allocating memory (a default `bytes memory` points to the
    /// zero slot).
    function _noError() private pure returns (bytes memory none) {}

    /// @dev Reverts with `err` (an ABI-encoded custom error) unless it is empty.
    function _revertIfFailed(bytes memory err) private pure {
        if (err.length != 0) {
            // Re-raises the encoded error as this call's revert data.
            assembly ("memory-safe") {
                revert(add(err, 0x20), mload(err))
            }
        }
    }

    /// @dev `keccak256(abi.encode(block.chainid, address(this), params))` without the copy and
    /// per-field checks of `abi.encode`: the six fields are static words, hashed as they are in
    /// calldata. Words with dirty high bits hash to an id no channel has ({_checkNewChannel}
    /// reads, and so checks, every field before a channel is stored).
    function _channelId(ChannelParams calldata params) private view returns (bytes32 id) {
        assembly ("memory-safe") {
            let m := mload(0x40)
            mstore(m, chainid())
            mstore(add(m, 0x20), address())
            calldatacopy(add(m, 0x40), params, 0xc0)
            id := keccak256(m, 0x100)
        }
    }

    /// @dev `keccak256(abi.encode(typehash, a, b, c))` for the EIP-712 types here (a type hash
    /// and three static fields), in free memory without allocating it.
    function _hashStruct(bytes32 typehash, bytes32 a, uint256 b, uint256 c)
        private
        pure
        returns (bytes32 h)
    {
        assembly ("memory-safe") {
            let m := mload(0x40)
            mstore(m, typehash)
            mstore(add(m, 0x20), a)
            mstore(add(m, 0x40), b)
            mstore(add(m, 0x60), c)
            h := keccak256(m, 0x80)
        }
    }

    function _voucherDigest(bytes32 channelId, uint64 nonce, uint256 cumulativeAmount)
        private
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(_hashStruct(VOUCHER_TYPEHASH, channelId, nonce, cumulativeAmount));
    }

    function _claimAuthorizationDigest(bytes32 channelId, uint64 nonce, uint256 claimed)
        private
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(
            _hashStruct(CLAIM_AUTHORIZATION_TYPEHASH, channelId, nonce, claimed)
        );
    }

    function _closeAuthorizationDigest(bytes32 channelId, uint256 finalAmount, uint256 deadline)
        private
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(
            _hashStruct(CLOSE_AUTHORIZATION_TYPEHASH, channelId, finalAmount, deadline)
        );
    }

    function _openAuthorizationDigest(bytes32 channelId, uint256 deposit, uint256 deadline)
        private
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(
            _hashStruct(OPEN_AUTHORIZATION_TYPEHASH, channelId, deposit, deadline)
        );
    }
}

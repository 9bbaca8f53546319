// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

import {IPaymentChannel, IERC3009} from "./interfaces/IPaymentChannel.sol";

/// @title PaymentChannel
/// @notice Singleton holding every x402 payment channel of a chain. See {IPaymentChannel} for
/// the lifecycle and the threat model.
/// @dev Every external function that moves value is `nonReentrant` and follows
/// checks-effects-interactions: batch functions apply every item's state change first and make
/// all transfers at the end. Failed payouts are credited, never reverted.
contract PaymentChannel is IPaymentChannel, EIP712, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @notice EIP-712 type of a voucher.
    bytes32 public constant VOUCHER_TYPEHASH =
        keccak256("Voucher(bytes32 channelId,uint64 nonce,uint256 cumulativeAmount)");

    /// @notice EIP-712 type of a payee's cooperative close authorisation.
    bytes32 public constant CLOSE_AUTHORIZATION_TYPEHASH =
        keccak256("CloseAuthorization(bytes32 channelId,uint256 finalAmount,uint256 deadline)");

    /// @notice EIP-712 type of a payer's authorisation of a gasless open.
    bytes32 public constant OPEN_AUTHORIZATION_TYPEHASH =
        keccak256("OpenAuthorization(bytes32 channelId,uint256 deadline)");

    /// @notice The token address that stands for the chain's native token.
    address public constant NATIVE_TOKEN = address(0);

    /// @dev Gas forwarded with a native-token payout. Enough for smart-wallet `receive` hooks,
    /// too little to grief a batch; a recipient that needs more is credited instead.
    uint256 private constant _NATIVE_PAYOUT_GAS = 100_000;

    uint32 private immutable _MIN_CHALLENGE_PERIOD;
    uint32 private immutable _MAX_CHALLENGE_PERIOD;

    mapping(bytes32 channelId => Channel) private _channels;
    mapping(address account => mapping(address token => uint256)) private _credits;

    /// @dev What redeeming one claim produced. `err` is non-empty (an ABI-encoded custom error)
    /// exactly when the claim was refused, in which case no state changed.
    struct Outcome {
        bytes err;
        address token;
        address payee;
        uint256 payout;
        address payer;
        uint256 refund;
    }

    /// @dev A pending transfer of a batch.
    struct Payout {
        address to;
        address token;
        uint256 amount;
    }

    /// @param minChallengePeriod_ The shortest challenge period a channel may have, in seconds.
    /// @param maxChallengePeriod_ The longest challenge period a channel may have, in seconds.
    constructor(uint32 minChallengePeriod_, uint32 maxChallengePeriod_)
        EIP712("x402 Payment Channel", "1")
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
    function open(OpenParams calldata params)
        external
        payable
        nonReentrant
        returns (bytes32 channelId)
    {
        channelId = _checkNewChannel(msg.sender, params);
        uint256 received = _pull(params.token, msg.sender, params.deposit);
        _open(channelId, msg.sender, params, received);
    }

    /// @inheritdoc IPaymentChannel
    function openWithPermit(
        address payer,
        OpenParams calldata params,
        uint256 deadline,
        uint8 v,
        bytes32 r,
        bytes32 s,
        bytes calldata openSignature
    ) external nonReentrant returns (bytes32 channelId) {
        if (params.token == NATIVE_TOKEN) {
            revert NativeTokenNotSupported();
        }
        channelId = _checkNewChannel(payer, params);
        if (block.timestamp > deadline) revert AuthorizationExpired(deadline);
        if (!SignatureChecker.isValidSignatureNow(
                payer, _openAuthorizationDigest(channelId, deadline), openSignature
            )) {
            revert InvalidOpenAuthorization(channelId, payer);
        }
        // The permit may have been front-run (it is public once in the mempool); an allowance
        // that is already in place serves just as well, and `safeTransferFrom` checks it.
        try IERC20Permit(params.token)
            .permit(payer, address(this), params.deposit, deadline, v, r, s) {}
            catch {}
        uint256 received = _pull(params.token, payer, params.deposit);
        _open(channelId, payer, params, received);
    }

    /// @inheritdoc IPaymentChannel
    function openWithAuthorization(
        address payer,
        OpenParams calldata params,
        uint256 validAfter,
        uint256 validBefore,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external nonReentrant returns (bytes32 channelId) {
        if (params.token == NATIVE_TOKEN) revert NativeTokenNotSupported();
        channelId = _checkNewChannel(payer, params);
        IERC20 token = IERC20(params.token);
        uint256 balanceBefore = token.balanceOf(address(this));
        // `nonce = channelId` binds every channel parameter into the payer's signature, and
        // `receiveWithAuthorization` only lets `to` (this contract) execute it.
        IERC3009(params.token)
            .receiveWithAuthorization(
                payer, address(this), params.deposit, validAfter, validBefore, channelId, v, r, s
            );
        _open(channelId, payer, params, token.balanceOf(address(this)) - balanceBefore);
    }

    /// @inheritdoc IPaymentChannel
    function topUp(bytes32 channelId, uint256 amount) external payable nonReentrant {
        Channel storage ch = _channels[channelId];
        if (ch.status != Status.Open) revert ChannelNotOpen(channelId, ch.status);
        bool exitPending = ch.exitAt != 0;
        if (exitPending && msg.sender != ch.payer) revert TopUpDuringExit(channelId, msg.sender);
        if (amount == 0) revert ZeroAmount();

        uint256 received = _pull(ch.token, msg.sender, amount);
        if (received == 0) revert ZeroAmount();
        uint256 deposit = ch.deposit + received;
        if (deposit > type(uint128).max) revert DepositTooLarge(deposit);

        // forge-lint: disable-next-line(unsafe-typecast) checked against type(uint128).max above
        ch.deposit = uint128(deposit);
        emit ToppedUp(channelId, msg.sender, received, deposit);
        if (exitPending) {
            ch.exitAt = 0;
            emit ExitCancelled(channelId);
        }
    }

    // ---------------------------------------------------------------------------------------
    // Redeeming vouchers
    // ---------------------------------------------------------------------------------------

    /// @inheritdoc IPaymentChannel
    function settle(Claim calldata claim) external nonReentrant {
        Outcome memory o = _redeem(claim, false);
        _revertIfFailed(o.err);
        _pay(o.token, o.payee, o.payout);
    }

    /// @inheritdoc IPaymentChannel
    function settleMany(Claim[] calldata claims) external nonReentrant returns (uint256 settled) {
        Payout[] memory payouts = new Payout[](claims.length);
        uint256 count;
        for (uint256 i; i < claims.length; ++i) {
            Outcome memory o = _redeem(claims[i], false);
            if (o.err.length != 0) {
                emit ClaimSkipped(claims[i].channelId, o.err);
                continue;
            }
            ++settled;
            count = _accrue(payouts, count, o.payee, o.token, o.payout);
        }
        for (uint256 i; i < count; ++i) {
            _pay(payouts[i].token, payouts[i].to, payouts[i].amount);
        }
    }

    /// @inheritdoc IPaymentChannel
    function close(Claim calldata claim) external nonReentrant {
        Outcome memory o = _redeem(claim, true);
        _revertIfFailed(o.err);
        _pay(o.token, o.payee, o.payout);
        _pay(o.token, o.payer, o.refund);
    }

    /// @inheritdoc IPaymentChannel
    function closeMany(Claim[] calldata claims) external nonReentrant returns (uint256 closed) {
        Payout[] memory payouts = new Payout[](claims.length);
        Payout[] memory refunds = new Payout[](claims.length);
        uint256 count;
        for (uint256 i; i < claims.length; ++i) {
            Outcome memory o = _redeem(claims[i], true);
            if (o.err.length != 0) {
                emit ClaimSkipped(claims[i].channelId, o.err);
                continue;
            }
            count = _accrue(payouts, count, o.payee, o.token, o.payout);
            // Refunds go to different payers: one transfer each, after every state change.
            refunds[closed] = Payout(o.payer, o.token, o.refund);
            ++closed;
        }
        for (uint256 i; i < count; ++i) {
            _pay(payouts[i].token, payouts[i].to, payouts[i].amount);
        }
        for (uint256 i; i < closed; ++i) {
            _pay(refunds[i].token, refunds[i].to, refunds[i].amount);
        }
    }

    // ---------------------------------------------------------------------------------------
    // Closing without a voucher
    // ---------------------------------------------------------------------------------------

    /// @inheritdoc IPaymentChannel
    function closeWithAuthorization(
        bytes32 channelId,
        uint256 finalAmount,
        uint256 deadline,
        bytes calldata payeeSignature
    ) external nonReentrant {
        if (block.timestamp > deadline) revert AuthorizationExpired(deadline);
        Channel storage ch = _channels[channelId];
        if (ch.status != Status.Open) revert ChannelNotOpen(channelId, ch.status);
        address payer = ch.payer;
        if (msg.sender != payer && msg.sender != ch.signer) {
            revert NotPayer(msg.sender, payer);
        }
        uint256 exitAt = ch.exitAt;
        if (exitAt != 0 && block.timestamp >= exitAt) {
            revert ChallengePeriodOver(channelId, exitAt);
        }
        uint256 paid = ch.paid;
        uint256 deposit = ch.deposit;
        if (finalAmount < paid || finalAmount > deposit) {
            revert FinalAmountOutOfRange(finalAmount, paid, deposit);
        }
        address payee = ch.payee;
        if (!SignatureChecker.isValidSignatureNow(
                payee, _closeAuthorizationDigest(channelId, finalAmount, deadline), payeeSignature
            )) {
            revert InvalidCloseAuthorization(channelId);
        }

        address token = ch.token;
        _tombstone(ch);
        // `paid <= finalAmount <= deposit` was checked above.
        uint256 refund = deposit - finalAmount;
        emit Closed(channelId, finalAmount, refund);

        _pay(token, payee, finalAmount - paid);
        _pay(token, payer, refund);
    }

    /// @inheritdoc IPaymentChannel
    function requestExit(bytes32 channelId) external nonReentrant {
        Channel storage ch = _channels[channelId];
        if (ch.status != Status.Open) revert ChannelNotOpen(channelId, ch.status);
        if (msg.sender != ch.payer) revert NotPayer(msg.sender, ch.payer);
        if (ch.exitAt != 0) revert ExitAlreadyRequested(channelId, ch.exitAt);

        uint256 exitAt = block.timestamp + ch.challengePeriod;
        // forge-lint: disable-next-line(unsafe-typecast) uint40 timestamps last until the year 36812
        ch.exitAt = uint40(exitAt);
        emit ExitRequested(channelId, exitAt);
    }

    /// @inheritdoc IPaymentChannel
    function withdraw(bytes32 channelId) external nonReentrant {
        Channel storage ch = _channels[channelId];
        if (ch.status != Status.Open) revert ChannelNotOpen(channelId, ch.status);
        uint256 exitAt = ch.exitAt;
        if (exitAt == 0) revert ExitNotRequested(channelId);
        if (block.timestamp < exitAt) revert ChallengePeriodActive(channelId, exitAt);

        address payer = ch.payer;
        address token = ch.token;
        uint256 paid = ch.paid;
        // `paid <= deposit` holds for every open channel.
        uint256 refund = ch.deposit - paid;
        _tombstone(ch);
        emit Closed(channelId, paid, refund);

        _pay(token, payer, refund);
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
    function computeChannelId(address payer, OpenParams calldata params)
        external
        view
        returns (bytes32)
    {
        return _channelId(payer, params);
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
    function closeAuthorizationDigest(bytes32 channelId, uint256 finalAmount, uint256 deadline)
        external
        view
        returns (bytes32)
    {
        return _closeAuthorizationDigest(channelId, finalAmount, deadline);
    }

    /// @inheritdoc IPaymentChannel
    function openAuthorizationDigest(bytes32 channelId, uint256 deadline)
        external
        view
        returns (bytes32)
    {
        return _openAuthorizationDigest(channelId, deadline);
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

    /// @dev Validates `params` and returns the id of the channel, which must never have existed.
    function _checkNewChannel(address payer, OpenParams calldata params)
        private
        view
        returns (bytes32 channelId)
    {
        if (params.payee == address(0)) revert InvalidPayee();
        if (params.deposit == 0) revert ZeroAmount();
        if (params.deposit > type(uint128).max) revert DepositTooLarge(params.deposit);
        uint256 period = params.challengePeriod;
        if (period < _MIN_CHALLENGE_PERIOD || period > _MAX_CHALLENGE_PERIOD) {
            revert ChallengePeriodOutOfBounds(period, _MIN_CHALLENGE_PERIOD, _MAX_CHALLENGE_PERIOD);
        }
        channelId = _channelId(payer, params);
        if (_channels[channelId].status != Status.None) revert ChannelExists(channelId);
    }

    /// @dev Records a new channel funded with `received` (which may be below `params.deposit`
    /// for fee-on-transfer tokens).
    function _open(bytes32 channelId, address payer, OpenParams calldata params, uint256 received)
        private
    {
        if (received == 0) revert ZeroAmount();
        // `received <= params.deposit <= type(uint128).max`, unless the token is broken.
        if (received > type(uint128).max) revert DepositTooLarge(received);
        _channels[channelId] = Channel({
            payer: payer,
            status: Status.Open,
            challengePeriod: params.challengePeriod,
            exitAt: 0,
            payee: params.payee,
            nonce: 0,
            token: params.token,
            signer: params.signer,
            // forge-lint: disable-next-line(unsafe-typecast) checked against type(uint128).max above
            deposit: uint128(received),
            paid: 0
        });
        emit ChannelOpened(
            channelId,
            payer,
            params.payee,
            params.token,
            params.signer,
            received,
            params.challengePeriod,
            params.salt
        );
    }

    /// @dev Validates `claim` against its channel and applies it. On refusal returns the custom
    /// error in `o.err` and changes nothing; `closing` also tombstones the channel.
    function _redeem(Claim calldata claim, bool closing) private returns (Outcome memory o) {
        bytes32 channelId = claim.channelId;
        Channel storage ch = _channels[channelId];
        Status status = ch.status;
        if (status != Status.Open) {
            o.err = abi.encodeWithSelector(ChannelNotOpen.selector, channelId, status);
            return o;
        }
        uint256 exitAt = ch.exitAt;
        if (exitAt != 0 && block.timestamp >= exitAt) {
            o.err = abi.encodeWithSelector(ChallengePeriodOver.selector, channelId, exitAt);
            return o;
        }
        address payee = ch.payee;
        bool byPayee = msg.sender == payee;
        // Closing is the payee's decision; outside an exit, so is settling.
        if (!byPayee && (closing || exitAt == 0)) {
            o.err = abi.encodeWithSelector(NotPayee.selector, msg.sender, payee);
            return o;
        }

        uint256 paid = ch.paid;
        uint256 newPaid = paid;
        if (claim.signature.length != 0) {
            o.err = _checkVoucher(ch, claim, paid, byPayee);
            if (o.err.length != 0) return o;
            newPaid = claim.claimed;
            // Only the payee's own claims consume nonces. The payer holds the signing key, so
            // during its exit it could otherwise sign a fresh high-nonce voucher for the amount
            // already paid, submit it "as a watcher" and void the payee's latest voucher. A
            // claim by anyone else must pay the voucher's full amount and leaves the nonce
            // alone: the voucher paying the payee the most always wins.
            // A channel being closed is tombstoned below, which clears both fields anyway.
            if (!closing) {
                if (byPayee) ch.nonce = claim.nonce;
                // forge-lint: disable-next-line(unsafe-typecast) newPaid <= cumulativeAmount <= deposit
                ch.paid = uint128(newPaid);
            }
            emit Settled(channelId, msg.sender, claim.nonce, newPaid, newPaid - paid);
        } else if (!closing) {
            o.err = abi.encodeWithSelector(MissingSignature.selector, channelId);
            return o;
        }

        o.payee = payee;
        o.token = ch.token;
        o.payout = newPaid - paid;
        if (closing) {
            o.payer = ch.payer;
            o.refund = ch.deposit - newPaid;
            _tombstone(ch);
            emit Closed(channelId, newPaid, o.refund);
        }
    }

    /// @dev The checks a voucher must pass, cheapest first; returns the error, or nothing.
    function _checkVoucher(Channel storage ch, Claim calldata claim, uint256 paid, bool byPayee)
        private
        view
        returns (bytes memory)
    {
        uint64 nonce = ch.nonce;
        if (claim.nonce <= nonce) {
            return abi.encodeWithSelector(NonceTooLow.selector, claim.nonce, nonce);
        }
        uint256 deposit = ch.deposit;
        if (claim.cumulativeAmount > deposit) {
            return
                abi.encodeWithSelector(
                    VoucherExceedsDeposit.selector, claim.cumulativeAmount, deposit
                );
        }
        if (claim.claimed > claim.cumulativeAmount) {
            return abi.encodeWithSelector(
                ClaimAboveVoucher.selector, claim.claimed, claim.cumulativeAmount
            );
        }
        if (!byPayee && claim.claimed != claim.cumulativeAmount) {
            return abi.encodeWithSelector(
                PartialClaimNotAllowed.selector, claim.claimed, claim.cumulativeAmount
            );
        }
        if (claim.claimed < paid) {
            return abi.encodeWithSelector(ClaimBelowPaid.selector, claim.claimed, paid);
        }
        address signer = ch.signer;
        if (signer == address(0)) signer = ch.payer;
        bytes32 digest = _voucherDigest(claim.channelId, claim.nonce, claim.cumulativeAmount);
        if (!SignatureChecker.isValidSignatureNow(signer, digest, claim.signature)) {
            return abi.encodeWithSelector(InvalidSignature.selector, claim.channelId, signer);
        }
        return "";
    }

    /// @dev Marks a channel closed forever, keeping only its payer; clearing the rest refunds gas.
    /// Field by field: the payer's slot is rewritten in place, the other slots only cleared.
    function _tombstone(Channel storage ch) private {
        ch.status = Status.Closed;
        ch.challengePeriod = 0;
        ch.exitAt = 0;
        ch.payee = address(0);
        ch.nonce = 0;
        ch.token = address(0);
        ch.signer = address(0);
        ch.deposit = 0;
        ch.paid = 0;
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
                p.amount += amount;
                return count;
            }
        }
        payouts[count] = Payout(to, token, amount);
        return count + 1;
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
            assembly ("memory-safe") {
                ok := call(_NATIVE_PAYOUT_GAS, to, amount, 0, 0, 0, 0)
            }
        } else {
            ok = IERC20(token).trySafeTransfer(to, amount);
        }
        if (!ok) {
            _credits[to][token] += amount;
            emit PayoutCredited(to, token, amount);
        }
    }

    /// @dev Reverts with `err` (an ABI-encoded custom error) unless it is empty.
    function _revertIfFailed(bytes memory err) private pure {
        if (err.length != 0) {
            assembly ("memory-safe") {
                revert(add(err, 0x20), mload(err))
            }
        }
    }

    function _channelId(address payer, OpenParams calldata params) private view returns (bytes32) {
        return keccak256(
            abi.encode(
                block.chainid,
                address(this),
                payer,
                params.payee,
                params.token,
                params.signer,
                params.challengePeriod,
                params.deposit,
                params.salt
            )
        );
    }

    function _voucherDigest(bytes32 channelId, uint64 nonce, uint256 cumulativeAmount)
        private
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(
            keccak256(abi.encode(VOUCHER_TYPEHASH, channelId, nonce, cumulativeAmount))
        );
    }

    function _closeAuthorizationDigest(bytes32 channelId, uint256 finalAmount, uint256 deadline)
        private
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(
            keccak256(abi.encode(CLOSE_AUTHORIZATION_TYPEHASH, channelId, finalAmount, deadline))
        );
    }

    function _openAuthorizationDigest(bytes32 channelId, uint256 deadline)
        private
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(
            keccak256(abi.encode(OPEN_AUTHORIZATION_TYPEHASH, channelId, deadline))
        );
    }
}

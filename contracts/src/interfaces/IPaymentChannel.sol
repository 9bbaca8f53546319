// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title IPaymentChannel (v2)
/// @notice Unidirectional payment channels for pay-per-request HTTP APIs (x402 scheme `channel`).
///
/// A payer locks a deposit once, then pays a payee (the API provider) off-chain, per request, by
/// signing EIP-712 vouchers `Voucher(bytes32 channelId,uint64 nonce,uint256 cumulativeAmount)`.
/// Each voucher authorises the payee to be paid *in total* up to `cumulativeAmount` from the
/// deposit. The payee keeps only the latest voucher and redeems it on-chain whenever it likes,
/// usually many channels at once with {settleMany} / {closeMany}.
///
/// Storage: one slot per channel ({Channel}: deposit, paid, exit deadline, status). The
/// immutable parameters ({ChannelParams}) are not stored: every call passes them again and the
/// contract checks that they hash to an existing channel id ({computeChannelId}). Parameters
/// that hash to no open channel are refused with {ChannelNotOpen}.
///
/// Lifecycle:
/// 1. {open} (or {openWithPermit} / {openWithAuthorization}, submitted by a relayer) creates a
///    channel with a deposit. {topUp} adds to it.
/// 2. The payee claims with {settle} (the channel stays open) or {close} (final: the payee is
///    paid, the payer refunded the rest, the channel id is tombstoned forever). Anyone holding a
///    claim signed by the payee (a watcher) can submit it with {settleAuthorized}.
/// 3. Cooperative exit: the payee closes, or the payer submits a payee-signed close
///    authorisation with {closeWithAuthorization}. The refund arrives at once.
/// 4. Unilateral exit: the payer calls {requestExit}. For `challengePeriod` seconds the payee,
///    or anyone holding a payee-authorised claim (a watcher), can still claim. Afterwards anyone
///    calls {withdraw} and the payer gets `deposit - paid`. A payer {topUp} ends the exit; a
///    payee {close} ends the channel.
///
/// The signature rule (vouchers and every authorisation; the node, watcher and client apply the
/// same rule off-chain):
/// 1. ECDSA first: a 65-byte signature with `v` 27 or 28 and a low `s` that recovers the
///    expected signer is valid, WHATEVER CODE the signer's address has now. An EOA that later
///    delegates its account with EIP-7702 therefore cannot void what it signed.
/// 2. Only otherwise, and only if the signer has code: ERC-1271 `isValidSignature(digest, sig)`
///    through a STATICCALL with a fixed gas stipend ({ERC1271_GAS_STIPEND}), reading at most 32
///    bytes of return data; valid only on the magic value `0x1626ba7e`. If the transaction has
///    too little gas left to give the whole stipend, the whole transaction reverts with
///    {InsufficientGasForSignatureCheck}: a submitter cannot make an honest wallet's item fail
///    by starving it. A wallet that refuses, reverts or exhausts its stipend fails the check
///    (in a batch, the item is skipped with {ClaimSkipped}).
///
/// Threat model, and how each threat is handled:
/// - Replay: the voucher digest binds the channel id, and the channel id binds the payer, payee,
///   token, signer, challenge period, a salt, the chain id and this contract's address; the
///   EIP-712 domain binds chain id and contract again. A voucher therefore verifies for exactly
///   one channel on one chain and one contract. Closed channel ids stay tombstoned and can never
///   be opened again (not even by replaying an open authorisation against a standing allowance),
///   so old vouchers and authorisations die with their channel.
/// - Stale vouchers and the payer's own vouchers: only the payee, or someone holding the payee's
///   signed {ClaimAuthorization}, can claim. `paid` only ever grows, and every claim must
///   satisfy `paid <= claimed <= cumulativeAmount <= deposit`, so replaying a voucher or an
///   authorisation pays nothing new, and the payer, who holds the signing key, cannot make the
///   contract redeem any voucher the payee did not choose.
/// - Charging more than was used: the voucher's `cumulativeAmount` is a ceiling (prepaid credit);
///   the payee claims what it actually charged. A stranger cannot claim at all (not even during
///   an exit), and a payee-authorised claim fixes the amount, so nobody can charge the payer the
///   unused part of the ceiling.
/// - Revoking signatures: EIP-7702 cannot revoke an ECDSA signature (rule 1 above). An ERC-1271
///   wallet decides at redemption time, so a payer (or signer) that is a contract CAN revoke its
///   vouchers by changing its answer; providers should accept contract signers only when they
///   trust them (the node refuses them unless `payment.accept_contract_signers` is set).
/// - Hostile batch items: the ERC-1271 stipend and the 32-byte return-data read bound what a
///   gas-bomb or return-data-bomb wallet can cost a batch; its item is skipped, the rest apply.
/// - Double spend beyond the deposit: a voucher above the deposit is refused and payouts are
///   computed as `claimed - paid`, so the payee can never receive more than the deposit, nor
///   more than the highest cumulative amount signed. Deposits only grow while a channel is open.
/// - Provider disappearing: the payer's {requestExit} + {withdraw} needs nobody's cooperation
///   and returns everything not claimed during the challenge period.
/// - Client exiting early: a payer who requests an exit right after being served is answered by
///   the payee (or its watcher, with a payee-signed claim) within the challenge period. A payer
///   top-up cancels the exit but does not void a payee-authorised claim. Providers stop
///   accepting vouchers on a channel as soon as they see {ExitRequested}. A payee-signed close
///   authorisation carries a deadline; the provider accepts no vouchers on the channel until it
///   has passed, so an old authorisation cannot undercut later service.
/// - Forged vouchers: only the channel's signer (a session key, or the payer when no signer is
///   set) can authorise payments; malleable high-`s` ECDSA signatures are refused.
/// - Griefing by payouts: a payout that fails (reverting recipient, blacklisting token) is
///   credited to the recipient's withdrawable balance instead of reverting, so neither party
///   can block the other. Native-token payouts forward a bounded amount of gas.
/// - Front-running gasless opens: the payer's signature binds the channel id (and thereby every
///   channel parameter) and the deposit, so a relayer cannot redirect the funds.
/// - Fee-on-transfer tokens: deposits are credited with what the contract actually received
///   (balance-difference accounting). Rebasing tokens are not supported.
interface IPaymentChannel {
    /// @notice Lifecycle state of a channel id.
    enum Status {
        /// Never used.
        None,
        /// Open: accepts top-ups, claims and exits.
        Open,
        /// Closed and tombstoned: the id can never be used again.
        Closed
    }

    /// @notice The immutable parameters of a channel. They are not stored: the channel id
    /// commits to them, and every call passes them again.
    struct ChannelParams {
        /// The depositor, who receives refunds and starts exits.
        address payer;
        /// The provider, paid by vouchers. Must not be zero.
        address payee;
        /// The ERC-20 token, or `address(0)` for the native token.
        address token;
        /// The voucher signer (a session key); `address(0)` means the payer signs.
        address signer;
        /// The challenge period in seconds, within [minChallengePeriod, maxChallengePeriod].
        uint32 challengePeriod;
        /// Any value that makes the channel id unique among the payer's channels.
        bytes32 salt;
    }

    /// @notice The mutable state of a channel: exactly one storage slot.
    /// @dev A closed channel is tombstoned: `status` is `Closed` and every other field zero.
    struct Channel {
        /// Total deposited (at most 2^104 - 1).
        uint104 deposit;
        /// Total paid to the payee so far; only grows, never above `deposit`.
        uint104 paid;
        /// Timestamp from which anyone may {withdraw}; zero when no exit is pending.
        uint40 exitAt;
        /// Lifecycle state.
        Status status;
    }

    /// @notice A voucher submitted for payment.
    /// @dev `claimed` is the new total paid to the payee: the voucher's `cumulativeAmount` is a
    /// ceiling, and the payee claims what it actually charged (dynamic prices). Every claim
    /// needs `paid <= claimed <= cumulativeAmount <= deposit`. The nonce is not stored on-chain;
    /// it is part of the signed voucher (and of a {ClaimAuthorization}) and of the events.
    struct Claim {
        /// The channel's parameters; they must hash to an open channel.
        ChannelParams channel;
        /// The voucher's nonce.
        uint64 nonce;
        /// The voucher's cumulative amount. Must not exceed the deposit.
        uint256 cumulativeAmount;
        /// The new total paid to the payee: `paid <= claimed <= cumulativeAmount`.
        uint256 claimed;
        /// The voucher signer's EIP-712 signature over
        /// `Voucher(bytes32 channelId,uint64 nonce,uint256 cumulativeAmount)`. For {close} and
        /// {closeMany} an empty signature means "no new voucher": close at the amount already
        /// paid (`nonce`, `cumulativeAmount` and `claimed` are then ignored).
        bytes signature;
    }

    /// @notice A channel was opened with `deposit` (what the contract received).
    event ChannelOpened(
        bytes32 indexed channelId,
        address indexed payer,
        address indexed payee,
        address token,
        address signer,
        uint32 challengePeriod,
        bytes32 salt,
        uint256 deposit
    );

    /// @notice `amount` was added to a channel's deposit, which is now `deposit`.
    event ToppedUp(
        bytes32 indexed channelId, address indexed from, uint256 amount, uint256 deposit
    );

    /// @notice The payer started a unilateral exit; anyone may withdraw from `exitAt` on.
    event ExitRequested(bytes32 indexed channelId, uint256 exitAt);

    /// @notice A pending exit ended because the payer topped up.
    event ExitCancelled(bytes32 indexed channelId);

    /// @notice A voucher with `nonce` was redeemed (by the payee, or with its authorisation):
    /// the payee has now been paid `paid` in total, `payout` of it in this call.
    event Settled(bytes32 indexed channelId, uint64 nonce, uint256 paid, uint256 payout);

    /// @notice A channel was closed and tombstoned: the payee was paid `paid` in total and the
    /// payer refunded `refund`. A close emits only this event (no {Settled}).
    event Closed(bytes32 indexed channelId, uint256 paid, uint256 refund);

    /// @notice A batch item was skipped; `reason` is the ABI-encoded custom error that the
    /// single-item function would have reverted with.
    event ClaimSkipped(bytes32 indexed channelId, bytes reason);

    /// @notice A payout to `account` failed and was credited to its withdrawable balance.
    event PayoutCredited(address indexed account, address indexed token, uint256 amount);

    /// @notice `account` withdrew `amount` of its credited balance to `to`.
    event CreditWithdrawn(
        address indexed account, address indexed token, address to, uint256 amount
    );

    /// @notice The payee is the zero address.
    error InvalidPayee();
    /// @notice The deposit or top-up is zero.
    error ZeroAmount();
    /// @notice The deposit would exceed 2^104 - 1.
    error DepositTooLarge(uint256 deposit);
    /// @notice The challenge period is outside the deployment's bounds.
    error ChallengePeriodOutOfBounds(uint256 challengePeriod, uint256 min, uint256 max);
    /// @notice `msg.value` does not match what the call needs.
    error InvalidMsgValue(uint256 sent, uint256 expected);
    /// @notice A channel with this id exists or existed (ids are never reused).
    error ChannelExists(bytes32 channelId);
    /// @notice No open channel has this id (also: parameters that hash to no open channel).
    error ChannelNotOpen(bytes32 channelId, Status status);
    /// @notice Only the channel's payer (or, for {closeWithAuthorization}, its signer) may do
    /// this.
    error NotPayer(address caller, address payer);
    /// @notice Only the channel's payee may do this.
    error NotPayee(address caller, address payee);
    /// @notice The voucher signature is not valid for the channel's signer.
    error InvalidSignature(bytes32 channelId, address signer);
    /// @notice The voucher's cumulative amount is above the deposit.
    error VoucherExceedsDeposit(uint256 cumulativeAmount, uint256 deposit);
    /// @notice The claimed total is above the voucher's cumulative amount.
    error ClaimAboveVoucher(uint256 claimed, uint256 cumulativeAmount);
    /// @notice The claimed total is below what was already paid.
    error ClaimBelowPaid(uint256 claimed, uint256 paid);
    /// @notice A settlement needs a voucher signature.
    error MissingSignature(bytes32 channelId);
    /// @notice An exit is already pending.
    error ExitAlreadyRequested(bytes32 channelId, uint256 exitAt);
    /// @notice No exit is pending.
    error ExitNotRequested(bytes32 channelId);
    /// @notice The challenge period has not ended yet.
    error ChallengePeriodActive(bytes32 channelId, uint256 exitAt);
    /// @notice The challenge period has ended: only {withdraw} (or a payer {topUp}, which
    /// resumes the channel) is possible.
    error ChallengePeriodOver(bytes32 channelId, uint256 exitAt);
    /// @notice Only the payer may top up a channel with a pending exit.
    error TopUpDuringExit(bytes32 channelId, address caller);
    /// @notice The close authorisation's final amount is outside [paid, deposit].
    error FinalAmountOutOfRange(uint256 finalAmount, uint256 paid, uint256 deposit);
    /// @notice The payee's close authorisation signature is not valid.
    error InvalidCloseAuthorization(bytes32 channelId);
    /// @notice The payee's claim authorisation signature is not valid for this claim.
    error InvalidClaimAuthorization(bytes32 channelId);
    /// @notice The payer's open authorisation signature is not valid.
    error InvalidOpenAuthorization(bytes32 channelId, address payer);
    /// @notice The authorisation's deadline has passed.
    error AuthorizationExpired(uint256 deadline);
    /// @notice Gasless opens need an ERC-20 token.
    error NativeTokenNotSupported();
    /// @notice The account has no credited balance in this token.
    error NoCredit(address account, address token);
    /// @notice Sending a credited balance failed.
    error CreditTransferFailed(address to, address token, uint256 amount);
    /// @notice The transaction has too little gas left to give an ERC-1271 check its whole
    /// stipend ({ERC1271_GAS_STIPEND}); retry with more gas.
    error InsufficientGasForSignatureCheck();
    /// @notice {settleManyAuthorized} got a different number of claims and payee signatures.
    error LengthMismatch(uint256 claims, uint256 signatures);

    /// @notice Opens a channel paid by `params.payer`, who must be the caller.
    /// @dev For the native token send `deposit` as `msg.value`; for an ERC-20 approve this
    /// contract first. The deposit credited is what the contract received.
    /// @return channelId The new channel's id, see {computeChannelId}.
    function open(ChannelParams calldata params, uint256 deposit)
        external
        payable
        returns (bytes32 channelId);

    /// @notice Opens a channel for `params.payer` with an EIP-2612 permit, submitted by anyone.
    /// @dev `openSignature` is the payer's EIP-712 signature over
    /// `OpenAuthorization(bytes32 channelId,uint256 deposit,uint256 deadline)`, which binds every
    /// channel parameter and the deposit. The permit (`deadline`, `v`, `r`, `s`) is tried but
    /// may already have been used: an existing allowance is enough.
    function openWithPermit(
        ChannelParams calldata params,
        uint256 deposit,
        uint256 deadline,
        uint8 v,
        bytes32 r,
        bytes32 s,
        bytes calldata openSignature
    ) external returns (bytes32 channelId);

    /// @notice Opens a channel for `params.payer` with an EIP-3009 `receiveWithAuthorization`,
    /// submitted by anyone.
    /// @dev The payer signs `ReceiveWithAuthorization(payer, this, deposit, validAfter,
    /// validBefore, nonce)` with `nonce = channelId`, which binds every channel parameter.
    function openWithAuthorization(
        ChannelParams calldata params,
        uint256 deposit,
        uint256 validAfter,
        uint256 validBefore,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external returns (bytes32 channelId);

    /// @notice Adds `amount` to a channel's deposit, paid by `msg.sender`.
    /// @dev While an exit is pending only the payer may top up, and doing so cancels the exit.
    function topUp(ChannelParams calldata params, uint256 amount) external payable;

    /// @notice Payee only: redeems a voucher; the channel stays open. Allowed until a pending
    /// exit's deadline.
    function settle(Claim calldata claim) external;

    /// @notice Payee only: redeems many vouchers, paying each payee once per token. Items that
    /// would revert in {settle} (including items of other payees) are skipped with
    /// {ClaimSkipped}.
    /// @return settled The number of items applied.
    function settleMany(Claim[] calldata claims) external returns (uint256 settled);

    /// @notice Anyone (a watcher): redeems a voucher at the amount the payee authorised.
    /// @dev `payeeSignature` is the payee's EIP-712 signature over
    /// `ClaimAuthorization(bytes32 channelId,uint64 nonce,uint256 claimed)` for this claim's
    /// channel, nonce and claimed total. Valid whether or not an exit is pending (a top-up
    /// cannot void it), until a pending exit's deadline.
    function settleAuthorized(Claim calldata claim, bytes calldata payeeSignature) external;

    /// @notice Anyone: {settleAuthorized} for many claims; `payeeSignatures[i]` authorises
    /// `claims[i]`. Items that would revert are skipped with {ClaimSkipped}.
    /// @return settled The number of items applied.
    function settleManyAuthorized(Claim[] calldata claims, bytes[] calldata payeeSignatures)
        external
        returns (uint256 settled);

    /// @notice Payee only: redeems a voucher (optional, see {Claim}) and closes the channel,
    /// refunding `deposit - claimed` to the payer. Allowed until a pending exit's deadline.
    function close(Claim calldata claim) external;

    /// @notice Payee only: closes many channels, paying the payee once per token. Items that
    /// would revert in {close} are skipped with {ClaimSkipped}.
    /// @return closed The number of channels closed.
    function closeMany(Claim[] calldata claims) external returns (uint256 closed);

    /// @notice Cooperative close submitted by the payer or its signer: the payee's EIP-712
    /// signature over `CloseAuthorization(bytes32 channelId,uint256 finalAmount,uint256 deadline)`
    /// sets the payee's final total; the rest is refunded at once. A payee that signs one must
    /// accept no further vouchers on the channel until `deadline` has passed.
    function closeWithAuthorization(
        ChannelParams calldata params,
        uint256 finalAmount,
        uint256 deadline,
        bytes calldata payeeSignature
    ) external;

    /// @notice Payer only: starts the challenge period of a unilateral exit.
    function requestExit(ChannelParams calldata params) external;

    /// @notice After the challenge period: refunds `deposit - paid` to the payer and closes the
    /// channel. Anyone may call it; the refund always goes to the payer.
    function withdraw(ChannelParams calldata params) external;

    /// @notice Sends the caller's credited balance of `token` (from failed payouts) to `to`.
    /// @return amount The amount sent.
    function withdrawCredit(address token, address to) external returns (uint256 amount);

    /// @notice The state of a channel.
    function getChannel(bytes32 channelId) external view returns (Channel memory);

    /// @notice The withdrawable balance credited to `account` in `token`.
    function creditOf(address account, address token) external view returns (uint256);

    /// @notice The id of the channel with `params`:
    /// `keccak256(abi.encode(block.chainid, address(this), params))`.
    function computeChannelId(ChannelParams calldata params) external view returns (bytes32);

    /// @notice The EIP-712 digest a signer signs for a voucher.
    function voucherDigest(bytes32 channelId, uint64 nonce, uint256 cumulativeAmount)
        external
        view
        returns (bytes32);

    /// @notice The EIP-712 digest a payee signs to let anyone submit a claim.
    function claimAuthorizationDigest(bytes32 channelId, uint64 nonce, uint256 claimed)
        external
        view
        returns (bytes32);

    /// @notice The EIP-712 digest a payee signs to authorise a cooperative close.
    function closeAuthorizationDigest(bytes32 channelId, uint256 finalAmount, uint256 deadline)
        external
        view
        returns (bytes32);

    /// @notice The EIP-712 digest a payer signs to authorise a gasless open with a permit.
    function openAuthorizationDigest(bytes32 channelId, uint256 deposit, uint256 deadline)
        external
        view
        returns (bytes32);

    /// @notice The shortest challenge period a channel may have, in seconds.
    function minChallengePeriod() external view returns (uint32);

    /// @notice The longest challenge period a channel may have, in seconds.
    function maxChallengePeriod() external view returns (uint32);

    /// @notice The gas an ERC-1271 `isValidSignature` call gets (see the signature rule).
    // forge-lint: disable-next-line(mixed-case-function)
    function ERC1271_GAS_STIPEND() external view returns (uint256);
}

/// @notice The EIP-3009 function used by {IPaymentChannel.openWithAuthorization}.
interface IERC3009 {
    /// @notice Receives a transfer from `from` authorised by its signature; callable only by `to`.
    function receiveWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external;
}

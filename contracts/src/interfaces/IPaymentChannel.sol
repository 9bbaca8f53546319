// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title IPaymentChannel
/// @notice Unidirectional payment channels for pay-per-request HTTP APIs (x402 scheme `channel`).
///
/// A payer locks a deposit once, then pays a payee (the API provider) off-chain, per request, by
/// signing EIP-712 vouchers `Voucher(bytes32 channelId,uint64 nonce,uint256 cumulativeAmount)`.
/// Each voucher authorises the payee to be paid *in total* up to `cumulativeAmount` from the
/// deposit. The payee keeps only the latest voucher and redeems it on-chain whenever it likes,
/// usually many channels at once with {settleMany} / {closeMany}.
///
/// Lifecycle:
/// 1. {open} (or {openWithPermit} / {openWithAuthorization}, submitted by a relayer) creates a
///    channel with a deposit, a voucher signer and a challenge period. {topUp} adds to it.
/// 2. The payee claims with {settle} (the channel stays open) or {close} (final: the payee is
///    paid, the payer refunded the rest, the channel id is tombstoned forever).
/// 3. Cooperative exit: the payee closes, or the payer submits a payee-signed close
///    authorization with {closeWithAuthorization}. The refund arrives at once.
/// 4. Unilateral exit: the payer calls {requestExit}. For `challengePeriod` seconds the payee, or
///    anyone holding a voucher (a watcher), can {settle} the latest voucher. Afterwards the payer
///    calls {withdraw} and gets `deposit - paid`. A payer {topUp} or a payee {close} ends the exit.
///
/// Threat model, and how each threat is handled:
/// - Replay: the voucher digest binds the channel id, and the channel id binds the payer, payee,
///   token, signer, initial deposit, challenge period, a salt, the chain id and this contract's
///   address; the EIP-712 domain binds chain id and contract again. A voucher therefore verifies
///   for exactly one channel on one chain and one contract. Closed channel ids stay tombstoned
///   and can never be opened again, so old vouchers die with their channel. Each voucher's nonce
///   must exceed the last nonce used on-chain, so a voucher can be redeemed at most once.
/// - Stale signature: an older voucher has a lower nonce and (for an honest payer) a lower
///   cumulative amount. Once a newer voucher is on-chain the older one is refused (nonce), and
///   no voucher can move `paid` backwards, so a stale voucher can never pay more than the latest.
///   During an exit the payee or a watcher submits the latest voucher, which supersedes any
///   stale one the payer might try to pass off. The payer holds the signing key and could sign a
///   fresh voucher with a huge nonce for the amount already paid; only the payee's own claims
///   consume nonces, so such a voucher submitted by anyone else pays nothing and blocks nothing:
///   among the vouchers submitted in an exit, the one paying the payee the most wins.
/// - Double spend beyond the deposit: a voucher above the deposit is refused and payouts are
///   computed as `claimed - paid`, so the payee can never receive more than the deposit, nor more
///   than the highest cumulative amount signed. Deposits only grow while a channel is open.
/// - Provider disappearing: the payer's {requestExit} + {withdraw} needs nobody's cooperation and
///   returns everything not covered by a voucher submitted during the challenge period.
/// - Client exiting early: a payer who requests an exit right after being served is answered by
///   the payee (or its watcher) submitting the latest voucher within the challenge period.
///   Providers stop accepting vouchers on a channel as soon as they see {ExitRequested}, so a
///   payer cannot burst unsettled vouchers just before withdrawing. A payee-signed close
///   authorisation carries a deadline; the provider accepts no vouchers on the channel until it
///   has passed, so an old authorisation cannot undercut later service.
/// - Forged vouchers: only the channel's signer (an ECDSA key, or the payer's EIP-1271 wallet
///   when no session key is set) can authorise payments. ECDSA signatures must be 65 bytes,
///   `v ∈ {27, 28}` and low-`s` (malleable high-`s` signatures are refused).
/// - Griefing by payouts: a payout that fails (reverting recipient, blacklisting token) is
///   credited to the recipient's withdrawable balance instead of reverting, so neither party can
///   block the other. Native-token payouts forward a bounded amount of gas.
/// - Front-running gasless opens: the payer's signature binds the channel id (and thereby every
///   channel parameter), so a relayer cannot redirect the deposit into another channel.
/// - Fee-on-transfer tokens: deposits are credited with what the contract actually received
///   (balance-difference accounting). Rebasing tokens are not supported.
interface IPaymentChannel {
    /// @notice Lifecycle state of a channel id.
    enum Status {
        /// Never used.
        None,
        /// Open: accepts top-ups, settlements and exits.
        Open,
        /// Closed and tombstoned: the id can never be used again.
        Closed
    }

    /// @notice On-chain state of a channel. Packed into five storage slots.
    /// @dev A closed channel keeps only `payer` and `status`; every other field is zeroed.
    struct Channel {
        /// The depositor, who receives refunds.
        address payer;
        /// Lifecycle state.
        Status status;
        /// Seconds between {requestExit} and {withdraw}.
        uint32 challengePeriod;
        /// Timestamp from which the payer may {withdraw}; zero when no exit is pending.
        uint40 exitAt;
        /// The provider, paid by vouchers.
        address payee;
        /// Highest voucher nonce used on-chain.
        uint64 nonce;
        /// The ERC-20 token, or `address(0)` for the native token.
        address token;
        /// The voucher signer; `address(0)` means the payer signs (an EOA or an EIP-1271 wallet).
        address signer;
        /// Total deposited.
        uint128 deposit;
        /// Total paid to the payee so far.
        uint128 paid;
    }

    /// @notice Parameters of a new channel. The payer is the caller of {open}, or the address
    /// that signed the authorisation of a gasless open.
    struct OpenParams {
        /// The provider. Must not be zero.
        address payee;
        /// The ERC-20 token, or `address(0)` for the native token.
        address token;
        /// The voucher signer (a session key); `address(0)` means the payer itself.
        address signer;
        /// The challenge period in seconds, within [minChallengePeriod, maxChallengePeriod].
        uint32 challengePeriod;
        /// The initial deposit, in token base units. Must be non-zero and fit in 128 bits.
        uint256 deposit;
        /// Any value that makes the channel id unique among the payer's channels.
        bytes32 salt;
    }

    /// @notice A voucher submitted for payment.
    /// @dev `claimed` is the total the submitter wants paid to the payee: the voucher's
    /// `cumulativeAmount` is a ceiling, and the payee may claim less (what it actually charged,
    /// for dynamic prices). Anyone other than the payee must claim exactly `cumulativeAmount`,
    /// and only the payee's claims advance the channel's nonce.
    struct Claim {
        /// The channel.
        bytes32 channelId;
        /// The voucher's nonce. Must exceed the channel's on-chain nonce.
        uint64 nonce;
        /// The voucher's cumulative amount. Must not exceed the deposit.
        uint256 cumulativeAmount;
        /// The new total paid to the payee: `paid <= claimed <= cumulativeAmount`.
        uint256 claimed;
        /// The signer's EIP-712 signature over the voucher. For {close} and {closeMany} an empty
        /// signature means "no new voucher": close at the amount already paid.
        bytes signature;
    }

    /// @notice A channel was opened.
    event ChannelOpened(
        bytes32 indexed channelId,
        address indexed payer,
        address indexed payee,
        address token,
        address signer,
        uint256 deposit,
        uint32 challengePeriod,
        bytes32 salt
    );

    /// @notice `amount` was added to a channel's deposit, which is now `deposit`.
    event ToppedUp(
        bytes32 indexed channelId, address indexed from, uint256 amount, uint256 deposit
    );

    /// @notice The payer started a unilateral exit; it may withdraw from `exitAt` on.
    event ExitRequested(bytes32 indexed channelId, uint256 exitAt);

    /// @notice A pending exit ended because the payer topped up.
    event ExitCancelled(bytes32 indexed channelId);

    /// @notice A voucher was redeemed: the payee has now been paid `paid` in total, `payout` of
    /// it in this call. `nonce` is the voucher's; it became the channel's nonce only if the
    /// submitter is the payee (other submitters' claims do not consume nonces).
    event Settled(
        bytes32 indexed channelId,
        address indexed submitter,
        uint64 nonce,
        uint256 paid,
        uint256 payout
    );

    /// @notice A channel was closed and tombstoned: the payee was paid `paid` in total and the
    /// payer refunded `refund`.
    event Closed(bytes32 indexed channelId, uint256 paid, uint256 refund);

    /// @notice A batch item was skipped; `reason` is the ABI-encoded custom error that
    /// {settle} or {close} would have reverted with.
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
    /// @notice The deposit would exceed 2^128 - 1.
    error DepositTooLarge(uint256 deposit);
    /// @notice The challenge period is outside the deployment's bounds.
    error ChallengePeriodOutOfBounds(uint256 challengePeriod, uint256 min, uint256 max);
    /// @notice `msg.value` does not match what the call needs.
    error InvalidMsgValue(uint256 sent, uint256 expected);
    /// @notice A channel with this id exists or existed (ids are never reused).
    error ChannelExists(bytes32 channelId);
    /// @notice The channel is not open.
    error ChannelNotOpen(bytes32 channelId, Status status);
    /// @notice Only the channel's payer may do this.
    error NotPayer(address caller, address payer);
    /// @notice Only the channel's payee may do this (outside a pending exit, for settlements).
    error NotPayee(address caller, address payee);
    /// @notice The voucher signature is not valid for the channel's signer.
    error InvalidSignature(bytes32 channelId, address signer);
    /// @notice The voucher's nonce is not above the nonce used on-chain.
    error NonceTooLow(uint64 nonce, uint64 current);
    /// @notice The voucher's cumulative amount is above the deposit.
    error VoucherExceedsDeposit(uint256 cumulativeAmount, uint256 deposit);
    /// @notice The claimed total is above the voucher's cumulative amount.
    error ClaimAboveVoucher(uint256 claimed, uint256 cumulativeAmount);
    /// @notice The claimed total is below what was already paid.
    error ClaimBelowPaid(uint256 claimed, uint256 paid);
    /// @notice Someone other than the payee tried to claim less than the voucher's amount.
    error PartialClaimNotAllowed(uint256 claimed, uint256 cumulativeAmount);
    /// @notice {settle} needs a voucher signature.
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

    /// @notice Opens a channel paid by `msg.sender`.
    /// @dev For the native token send `params.deposit` as `msg.value`; for an ERC-20 approve
    /// this contract first. The deposit credited is what the contract received.
    /// @return channelId The new channel's id, see {computeChannelId}.
    function open(OpenParams calldata params) external payable returns (bytes32 channelId);

    /// @notice Opens a channel for `payer` with an EIP-2612 permit, submitted by anyone.
    /// @dev `openSignature` is the payer's EIP-712 signature over
    /// `OpenAuthorization(bytes32 channelId,uint256 deadline)`, which binds every channel
    /// parameter. The permit (`deadline`, `v`, `r`, `s`) is tried but may already have been
    /// used: an existing allowance is enough.
    function openWithPermit(
        address payer,
        OpenParams calldata params,
        uint256 deadline,
        uint8 v,
        bytes32 r,
        bytes32 s,
        bytes calldata openSignature
    ) external returns (bytes32 channelId);

    /// @notice Opens a channel for `payer` with an EIP-3009 `receiveWithAuthorization`,
    /// submitted by anyone.
    /// @dev The payer signs `ReceiveWithAuthorization(payer, this, params.deposit, validAfter,
    /// validBefore, nonce)` with `nonce = channelId`, which binds every channel parameter.
    function openWithAuthorization(
        address payer,
        OpenParams calldata params,
        uint256 validAfter,
        uint256 validBefore,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external returns (bytes32 channelId);

    /// @notice Adds `amount` to a channel's deposit, paid by `msg.sender`.
    /// @dev While an exit is pending only the payer may top up, and doing so cancels the exit.
    function topUp(bytes32 channelId, uint256 amount) external payable;

    /// @notice Redeems a voucher; the channel stays open.
    /// @dev The payee may call this at any time before a pending exit's challenge period ends.
    /// While an exit is pending anyone may call it (a watcher), claiming the full amount; such a
    /// claim does not consume the nonce, so it can never block a voucher that pays the payee
    /// more (the payer could otherwise sign a high-nonce voucher and submit it itself).
    function settle(Claim calldata claim) external;

    /// @notice Redeems many vouchers, paying each recipient once per token. Items that would
    /// revert in {settle} are skipped with {ClaimSkipped}.
    /// @return settled The number of items applied.
    function settleMany(Claim[] calldata claims) external returns (uint256 settled);

    /// @notice Payee only: redeems a voucher (optional, see {Claim}) and closes the channel,
    /// refunding the rest of the deposit to the payer.
    function close(Claim calldata claim) external;

    /// @notice Payee only: closes many channels, paying the payee once per token. Items that
    /// would revert in {close} are skipped with {ClaimSkipped}.
    /// @return closed The number of channels closed.
    function closeMany(Claim[] calldata claims) external returns (uint256 closed);

    /// @notice Cooperative close submitted by the payer (or its signer): the payee's EIP-712
    /// signature over `CloseAuthorization(bytes32 channelId,uint256 finalAmount,uint256 deadline)`
    /// sets the payee's final total; the rest is refunded at once. A payee that signs one must
    /// accept no further vouchers on the channel until `deadline` has passed.
    function closeWithAuthorization(
        bytes32 channelId,
        uint256 finalAmount,
        uint256 deadline,
        bytes calldata payeeSignature
    ) external;

    /// @notice Payer only: starts the challenge period of a unilateral exit.
    function requestExit(bytes32 channelId) external;

    /// @notice After the challenge period: refunds `deposit - paid` to the payer and closes the
    /// channel. Anyone may call it; the refund always goes to the payer.
    function withdraw(bytes32 channelId) external;

    /// @notice Sends the caller's credited balance of `token` (from failed payouts) to `to`.
    /// @return amount The amount sent.
    function withdrawCredit(address token, address to) external returns (uint256 amount);

    /// @notice The state of a channel.
    function getChannel(bytes32 channelId) external view returns (Channel memory);

    /// @notice The withdrawable balance credited to `account` in `token`.
    function creditOf(address account, address token) external view returns (uint256);

    /// @notice The id of the channel that `payer` would open with `params`.
    function computeChannelId(address payer, OpenParams calldata params)
        external
        view
        returns (bytes32);

    /// @notice The EIP-712 digest a signer signs for a voucher.
    function voucherDigest(bytes32 channelId, uint64 nonce, uint256 cumulativeAmount)
        external
        view
        returns (bytes32);

    /// @notice The EIP-712 digest a payee signs to authorise a cooperative close.
    function closeAuthorizationDigest(bytes32 channelId, uint256 finalAmount, uint256 deadline)
        external
        view
        returns (bytes32);

    /// @notice The EIP-712 digest a payer signs to authorise a gasless open with a permit.
    function openAuthorizationDigest(bytes32 channelId, uint256 deadline)
        external
        view
        returns (bytes32);

    /// @notice The shortest challenge period a channel may have, in seconds.
    function minChallengePeriod() external view returns (uint32);

    /// @notice The longest challenge period a channel may have, in seconds.
    function maxChallengePeriod() external view returns (uint32);
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

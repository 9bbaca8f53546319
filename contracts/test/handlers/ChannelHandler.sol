// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {Test} from "forge-std/Test.sol";
import {console} from "forge-std/console.sol";

import {IPaymentChannel} from "../../src/interfaces/IPaymentChannel.sol";
import {TestStablecoin} from "../../src/TestStablecoin.sol";
import {ERC1271Wallet} from "../mocks/ERC1271Wallet.sol";
import {FeeOnTransferToken} from "../mocks/FeeOnTransferToken.sol";

/// @notice Drives one PaymentChannel through random sequences of actions on several channels,
/// in three tokens (the test stablecoin, the native token and a fee-on-transfer token), by
/// three payers with known keys, one payee (an EIP-1271 wallet that can refuse the native
/// token), a watcher (submitting claims the payee authorised) and a stranger.
/// @dev The handler keeps an independent model of every channel: what was received (from the
/// contract's balance), what the payee was paid (from the payee's balances and credits), the
/// vouchers an honest client signed, the pending exit. Before each call it predicts from the
/// model whether the call must succeed; after it, it compares every balance movement with the
/// model. Every disagreement is counted in a `*Violations` counter that the invariants assert
/// to be zero. All calls are wrapped in try/catch, so the fuzzer never sees a revert.
contract ChannelHandler is Test {
    uint256 internal constant CLOSE_DEADLINE = type(uint256).max;

    uint256 public constant TOKENS = 3;
    uint256 internal constant USD = 0;
    uint256 internal constant NATIVE = 1;
    uint256 internal constant FEE = 2;
    uint256 public constant PAYERS = 3;
    /// The payee and the payers: every account a payout can go to, so every account that can
    /// ever hold a credit.
    uint256 internal constant ACTORS = 1 + PAYERS;
    uint256 internal constant MAX_CHANNELS = 16;
    uint32 internal constant MIN_PERIOD = 1 hours;
    uint32 internal constant MAX_USED_PERIOD = 2 days;
    uint256 internal constant MAX_ERC20_DEPOSIT = 1_000_000e6;
    uint256 internal constant MAX_NATIVE_DEPOSIT = 100 ether;

    /// @notice A voucher as the payee holds it; no signature means no voucher.
    struct Voucher {
        uint64 nonce;
        uint256 cumulative;
        bytes signature;
    }

    /// @notice The handler's model of one channel.
    /// @dev Packed, and vouchers are stored without their signature (`vm.sign` is
    /// deterministic, so it is recomputed when needed): each call of an invariant campaign is
    /// a fresh transaction, and cold storage is most of what the campaign spends its time on.
    struct Model {
        address payer;
        uint8 payerIdx;
        uint8 tokenIdx;
        bool closed;
        /// Whether the session key signs the vouchers (else the payer).
        bool withSession;
        uint32 challengePeriod;
        /// The latest voucher the client signed (nonce zero: none yet), and the one before.
        uint64 latestNonce;
        uint64 staleNonce;
        uint256 latestCumulative;
        uint256 staleCumulative;
        /// Highest cumulative amount the client ever signed.
        uint256 maxSigned;
        /// Total received by the contract for this channel (balance differences).
        uint256 deposit;
        /// Total the payee was paid, observed from its balances and credits.
        uint256 paid;
        /// Pending exit; zero when none.
        uint256 exitAt;
        uint256 paidAtExit;
        /// Highest total claimed by a voucher submitted during the pending exit.
        uint256 exitHighest;
        /// On-chain values after the previous call, for monotonicity.
        uint256 prevPaid;
        uint256 prevDeposit;
        /// The deposit and salt the channel was opened with (they are part of its id).
        uint256 openDeposit;
        bytes32 salt;
    }

    IPaymentChannel public immutable channel;
    TestStablecoin public immutable usd;
    FeeOnTransferToken public immutable fee;
    ERC1271Wallet public immutable payee;
    uint256 internal immutable _payeeKey;
    address public immutable watcher;
    address public immutable stranger;
    address public immutable sink;
    address public immutable session;
    uint256 internal immutable _sessionKey;

    address[PAYERS] internal _payers;
    uint256[PAYERS] internal _payerKeys;

    bytes32[] internal _ids;
    /// Channels picked by the current action.
    bytes32[] internal _touched;
    mapping(bytes32 channelId => Model) internal _models;
    mapping(bytes32 channelId => bytes32) internal _tombstoneHashes;

    /// @notice Σ over live channels of (deposit - paid), per token index, from the model.
    uint256[TOKENS] public ghostLive;
    /// @notice Σ of credited balances, per token index, from the model.
    uint256[TOKENS] public ghostCredits;

    /// @notice A call succeeded that the model says must fail, or the other way round.
    uint256 public predictionViolations;
    /// @notice A payout, refund, deposit or credit differed from the model.
    uint256 public accountingViolations;
    /// @notice On-chain `paid` or `deposit` decreased, `paid` exceeded `deposit`, or the
    /// on-chain state of an open channel disagreed with the model.
    uint256 public monotoneViolations;
    /// @notice A withdrawal refunded something else than deposit - max(paid before the
    /// exit, highest voucher submitted during it).
    uint256 public exitRecoveryViolations;
    /// @notice A closed channel id was opened again.
    uint256 public reopenViolations;
    /// @notice A freshly closed channel was not a proper tombstone.
    uint256 public tombstoneViolations;
    /// @notice The last violation, for debugging.
    string public lastViolation;

    /// @notice Calls per action, and calls that went through on-chain.
    mapping(bytes32 action => uint256) public calls;
    mapping(bytes32 action => uint256) public successes;
    /// @notice Successful calls that paid the payee something.
    uint256 public payouts;

    uint256 public currentTime;
    uint256 internal _salt;

    constructor(IPaymentChannel channel_, TestStablecoin usd_, FeeOnTransferToken fee_) {
        channel = channel_;
        usd = usd_;
        fee = fee_;
        address payeeOwner;
        (payeeOwner, _payeeKey) = makeAddrAndKey("handler.payee");
        payee = new ERC1271Wallet(payeeOwner);
        watcher = makeAddr("handler.watcher");
        stranger = makeAddr("handler.stranger");
        sink = makeAddr("handler.sink");
        (session, _sessionKey) = makeAddrAndKey("handler.session");
        for (uint256 i; i < PAYERS; ++i) {
            (_payers[i], _payerKeys[i]) =
                makeAddrAndKey(string.concat("handler.payer", vm.toString(i)));
            usd.mint(_payers[i], type(uint104).max);
            fee.mint(_payers[i], type(uint104).max);
            vm.deal(_payers[i], type(uint104).max);
            vm.startPrank(_payers[i]);
            usd.approve(address(channel), type(uint256).max);
            fee.approve(address(channel), type(uint256).max);
            vm.stopPrank();
        }
        currentTime = block.timestamp;
    }

    /// @dev Warps to the handler's clock, counts the call, and afterwards checks every
    /// channel the action touched (the invariants compare all the others with the model).
    modifier action(bytes32 name) {
        vm.warp(currentTime);
        ++calls[name];
        _;
        _checkTouched();
    }

    // -------------------------------------------------------------------------------------
    // Actions
    // -------------------------------------------------------------------------------------

    /// @notice A payer opens a channel to the payee.
    function open(
        uint256 payerSeed,
        uint256 tokenSeed,
        uint256 amount,
        uint256 periodSeed,
        bool withSession
    ) external action("open") {
        if (_open(payerSeed, tokenSeed, amount, periodSeed, withSession) != bytes32(0)) {
            ++successes["open"];
        }
    }

    /// @notice Someone (usually the payer, sometimes another payer) tops a channel up.
    function topUp(uint256 channelSeed, uint256 amount, uint256 fromSeed) external action("topUp") {
        bytes32 id = _pick(channelSeed);
        if (id == bytes32(0)) return;
        Model storage m = _models[id];
        address from = fromSeed % 4 == 0 ? _payers[fromSeed % PAYERS] : m.payer;
        amount = _bound(amount, 1, _maxDeposit(m.tokenIdx));
        bool expected = !m.closed && (m.exitAt == 0 || from == m.payer);

        uint256 before = _channelBalance(m.tokenIdx);
        uint256 value = m.tokenIdx == NATIVE ? amount : 0;
        vm.prank(from);
        try channel.topUp{value: value}(_paramsOf(m), amount) {
            _expectOutcome(expected, true, "topUp");
            ++successes["topUp"];
            uint256 received = _channelBalance(m.tokenIdx) - before;
            if (received != _afterFee(m.tokenIdx, amount)) _accounting("topUp: received");
            m.deposit += received;
            ghostLive[m.tokenIdx] += received;
            // A payer top-up ends a pending exit.
            m.exitAt = 0;
        } catch {
            _expectOutcome(expected, false, "topUp");
        }
    }

    /// @notice The client signs a new voucher off-chain, like an honest client: the nonce
    /// and the cumulative amount never go down. The previous voucher becomes the stale one.
    function signVoucher(uint256 channelSeed, uint256 amountSeed, uint256 nonceStep)
        external
        action("signVoucher")
    {
        bytes32 id = _pick(channelSeed);
        if (id == bytes32(0)) return;
        Model storage m = _models[id];
        if (m.closed) return;
        _signNext(m, amountSeed, nonceStep);
        ++successes["signVoucher"];
    }

    /// @notice The payee redeems its latest (or a stale) voucher, claiming up to its amount.
    function settle(uint256 channelSeed, uint256 claimSeed, bool useStale)
        external
        action("settle")
    {
        bytes32 id = _pick(channelSeed);
        if (id == bytes32(0)) return;
        Model storage m = _models[id];
        // The client keeps paying: usually there is a voucher the payee has not redeemed yet.
        if (
            !m.closed
                && (m.latestNonce == 0 || (m.latestCumulative <= m.paid && claimSeed % 4 != 0))
        ) {
            _signNext(m, claimSeed, 1);
        }
        Voucher memory v = _voucher(id, m, useStale && m.staleNonce != 0);
        _settleOne(id, address(payee), v, _claimFor(m, v, claimSeed), false, "settle");
    }

    /// @notice The watcher submits the latest (or a stale) voucher with the payee's claim
    /// authorisation (for what the payee charged), usually during an exit; or the payer or the
    /// watcher tries to settle without one (always refused).
    function watcherSettle(uint256 channelSeed, bool useStale, bool unauthorized)
        external
        action("watcherSettle")
    {
        bytes32 id = _pickExiting(channelSeed);
        if (id == bytes32(0)) return;
        Model storage m = _models[id];
        // Usually the watcher holds a voucher the payee has not redeemed yet.
        if (!m.closed && m.latestCumulative <= m.paid && channelSeed % 4 != 0) {
            _signNext(m, channelSeed >> 8, 1);
        }
        Voucher memory v = _voucher(id, m, useStale && m.staleNonce != 0);
        uint256 claimed = _claimFor(m, v, channelSeed >> 16);
        if (unauthorized) {
            _settleOne(
                id, channelSeed % 2 == 0 ? m.payer : watcher, v, claimed, false, "watcherSettle"
            );
        } else {
            _settleOne(id, watcher, v, claimed, true, "watcherSettle");
        }
    }

    /// @notice The payee redeems up to three channels at once, or the watcher does with the
    /// payee's claim authorisations ({IPaymentChannel-settleManyAuthorized}).
    function settleMany(uint256 seedA, uint256 seedB, uint256 seedC, bool byWatcher)
        external
        action("settleMany")
    {
        address sender = byWatcher ? watcher : address(payee);
        IPaymentChannel.Claim[] memory claims = _batch(seedA, seedB, seedC, false);
        Expectation memory e = _expectBatch(claims, sender, false, byWatcher);
        bytes[] memory auths = new bytes[](claims.length);
        for (uint256 i; i < claims.length; ++i) {
            auths[i] = _claimAuth(e.ids[i], claims[i].nonce, claims[i].claimed);
        }
        uint256[ACTORS * TOKENS] memory before = _observe(e.tokens);
        vm.prank(sender);
        (bool ok, uint256 settled) = _trySettleMany(claims, auths, byWatcher);
        if (!ok) {
            _predictionFailed("settleMany: reverted");
            return;
        }
        if (settled != e.count) _predictionFailed("settleMany: count");
        ++successes["settleMany"];
        _applyBatch(e, before, false);
    }

    /// @dev {settleMany}'s call (pranked by the caller), returning whether it went through.
    function _trySettleMany(
        IPaymentChannel.Claim[] memory claims,
        bytes[] memory auths,
        bool authorized
    ) internal returns (bool ok, uint256 settled) {
        if (authorized) {
            try channel.settleManyAuthorized(claims, auths) returns (uint256 n) {
                return (true, n);
            } catch {}
        } else {
            try channel.settleMany(claims) returns (uint256 n) {
                return (true, n);
            } catch {}
        }
    }

    /// @notice The payee closes a channel with no voucher, the latest or a stale one.
    function close(uint256 channelSeed, uint256 claimSeed, uint256 mode) external action("close") {
        bytes32 id = _pick(channelSeed);
        if (id == bytes32(0)) return;
        Model storage m = _models[id];
        mode %= 3;
        if (mode != 0 && !m.closed && m.latestNonce == 0) _signNext(m, claimSeed, 1);
        Voucher memory v = mode == 0 ? Voucher(0, 0, "") : _voucher(id, m, mode == 2);
        uint256 claimed = _claimFor(m, v, claimSeed);
        IPaymentChannel.Claim memory c = _toClaim(m, v, claimed);
        bool expected = _redeemOk(m, address(payee), v, claimed, true, false);
        uint256 newPaid = v.signature.length == 0 ? m.paid : claimed;

        uint256[ACTORS * TOKENS] memory before = _observe(2 ** m.tokenIdx);
        vm.prank(address(payee));
        try channel.close(c) {
            _expectOutcome(expected, true, "close");
            ++successes["close"];
            _closed(id, m, newPaid, _sub(m.deposit, newPaid), before);
        } catch {
            _expectOutcome(expected, false, "close");
        }
    }

    /// @notice The payee closes up to three channels at once.
    function closeMany(uint256 seedA, uint256 seedB, uint256 seedC) external action("closeMany") {
        IPaymentChannel.Claim[] memory claims = _batch(seedA, seedB, seedC, true);
        Expectation memory e = _expectBatch(claims, address(payee), true, false);
        uint256[ACTORS * TOKENS] memory before = _observe(e.tokens);
        vm.prank(address(payee));
        try channel.closeMany(claims) returns (uint256 closed) {
            if (closed != e.count) _predictionFailed("closeMany: count");
            ++successes["closeMany"];
            _applyBatch(e, before, true);
        } catch {
            _predictionFailed("closeMany: reverted");
        }
    }

    /// @notice The payer (or its session key, or a stranger) closes with a payee-signed
    /// close authorisation. The payee signs at most what the client signed; sometimes the
    /// amount is out of range.
    function closeWithAuthorization(
        uint256 channelSeed,
        uint256 amountSeed,
        uint256 callerSeed,
        bool outOfRange
    ) external action("closeWithAuthorization") {
        bytes32 id = _pick(channelSeed);
        if (id == bytes32(0)) return;
        Model storage m = _models[id];
        uint256 finalAmount = _finalAmount(m, amountSeed, outOfRange);
        callerSeed %= 4;
        address caller = callerSeed == 0 ? stranger : callerSeed == 1 ? session : m.payer;
        bool callerOk = caller == m.payer || (caller == session && m.withSession);
        bool expected = !m.closed && !_exitOver(m) && callerOk && finalAmount >= m.paid
            && finalAmount <= m.deposit;
        bytes memory sig =
            _sign(_payeeKey, channel.closeAuthorizationDigest(id, finalAmount, CLOSE_DEADLINE));

        uint256[ACTORS * TOKENS] memory before = _observe(2 ** m.tokenIdx);
        vm.prank(caller);
        try channel.closeWithAuthorization(_paramsOf(m), finalAmount, CLOSE_DEADLINE, sig) {
            _expectOutcome(expected, true, "closeWithAuthorization");
            ++successes["closeWithAuthorization"];
            _closed(id, m, finalAmount, _sub(m.deposit, finalAmount), before);
        } catch {
            _expectOutcome(expected, false, "closeWithAuthorization");
        }
    }

    /// @notice The payer starts a unilateral exit.
    function requestExit(uint256 channelSeed) external action("requestExit") {
        bytes32 id = _pick(channelSeed);
        if (id == bytes32(0)) return;
        Model storage m = _models[id];
        bool expected = !m.closed && m.exitAt == 0;
        vm.prank(m.payer);
        try channel.requestExit(_paramsOf(m)) {
            _expectOutcome(expected, true, "requestExit");
            ++successes["requestExit"];
            m.exitAt = block.timestamp + m.challengePeriod;
            m.paidAtExit = m.paid;
            m.exitHighest = 0;
            if (channel.getChannel(id).exitAt != m.exitAt) _accounting("requestExit: exitAt");
        } catch {
            _expectOutcome(expected, false, "requestExit");
        }
    }

    /// @notice Anyone completes an exit. The payer must get exactly deposit - max(paid before
    /// the exit, highest voucher submitted during it).
    function withdraw(uint256 channelSeed, bool waitForExit) external action("withdraw") {
        bytes32 id = _pickExiting(channelSeed);
        if (id == bytes32(0)) return;
        Model storage m = _models[id];
        if (waitForExit && !m.closed && block.timestamp < m.exitAt) {
            currentTime = m.exitAt;
            vm.warp(currentTime);
        }
        bool expected = !m.closed && m.exitAt != 0 && block.timestamp >= m.exitAt;
        uint256 highest = m.exitHighest > m.paidAtExit ? m.exitHighest : m.paidAtExit;
        uint256[ACTORS * TOKENS] memory before = _observe(2 ** m.tokenIdx);
        vm.prank(stranger);
        try channel.withdraw(_paramsOf(m)) {
            _expectOutcome(expected, true, "withdraw");
            ++successes["withdraw"];
            uint256 i = (1 + m.payerIdx) * TOKENS + m.tokenIdx;
            uint256 refund = _observeOne(m.payer, m.tokenIdx) - before[i];
            if (refund != _sub(m.deposit, highest)) {
                ++exitRecoveryViolations;
                lastViolation = "withdraw: refund != deposit - highest voucher";
            }
            _closed(id, m, m.paid, _sub(m.deposit, m.paid), before);
        } catch {
            _expectOutcome(expected, false, "withdraw");
        }
    }

    /// @notice The payee withdraws its credited balance to the sink or to itself.
    function withdrawCredit(uint256 tokenSeed, bool toSelf) external action("withdrawCredit") {
        // Usually a token the payee has a credit in, if there is one.
        uint256 t = tokenSeed % TOKENS;
        for (uint256 i; i < TOKENS && tokenSeed % 4 != 0; ++i) {
            if (ghostCredits[(t + i) % TOKENS] != 0) {
                t = (t + i) % TOKENS;
                break;
            }
        }
        address tokenAddress = _token(t);
        address to = toSelf ? address(payee) : sink;
        uint256 credit = channel.creditOf(address(payee), tokenAddress);
        bool expected = credit != 0 && !(t == NATIVE && toSelf && payee.rejectNative());
        uint256 balanceBefore = _balance(to, t);
        vm.prank(address(payee));
        try channel.withdrawCredit(tokenAddress, to) returns (uint256 amount) {
            _expectOutcome(expected, true, "withdrawCredit");
            ++successes["withdrawCredit"];
            if (amount != credit || _balance(to, t) - balanceBefore != credit) {
                _accounting("withdrawCredit: amount");
            }
            ghostCredits[t] = _sub(ghostCredits[t], credit);
        } catch {
            _expectOutcome(expected, false, "withdrawCredit");
        }
    }

    /// @notice The payee wallet starts or stops refusing the native token, so native payouts
    /// are credited instead.
    function setPayeeRejectsNative(bool reject) external action("setPayeeRejectsNative") {
        payee.setRejectNative(reject);
        ++successes["setPayeeRejectsNative"];
    }

    /// @notice Time passes.
    function warp(uint256 secondsSeed) external action("warp") {
        currentTime += _bound(secondsSeed, 1, 12 hours);
        ++successes["warp"];
    }

    /// @notice Someone tries to open a closed channel's id again; it must fail.
    function reopenClosed(uint256 channelSeed) external action("reopenClosed") {
        if (_ids.length == 0) return;
        bytes32 id = _ids[channelSeed % _ids.length];
        Model storage m = _models[id];
        if (!m.closed) return;
        IPaymentChannel.ChannelParams memory p = _paramsOf(m);
        uint256 value = m.tokenIdx == NATIVE ? m.openDeposit : 0;
        vm.prank(m.payer);
        try channel.open{value: value}(p, m.openDeposit) {
            ++reopenViolations;
            lastViolation = "reopenClosed: a tombstoned id was reopened";
        } catch {
            ++successes["reopenClosed"];
        }
    }

    /// @notice Logs how many times each action was called and went through on-chain.
    function callSummary() external view {
        bytes32[16] memory names;
        names[0] = "open";
        names[1] = "topUp";
        names[2] = "signVoucher";
        names[3] = "settle";
        names[4] = "watcherSettle";
        names[5] = "settleMany";
        names[6] = "close";
        names[7] = "closeMany";
        names[8] = "closeWithAuthorization";
        names[9] = "requestExit";
        names[10] = "withdraw";
        names[11] = "withdrawCredit";
        names[12] = "setPayeeRejectsNative";
        names[13] = "warp";
        names[14] = "reopenClosed";
        // Channels opened by other actions because no channel was open (no calls of its own).
        names[15] = "openOnDemand";
        console.log("action                    calls  successes");
        for (uint256 i; i < names.length; ++i) {
            console.log(
                string.concat(
                    _pad(string(abi.encodePacked(names[i]))),
                    vm.toString(calls[names[i]]),
                    "  ",
                    vm.toString(successes[names[i]])
                )
            );
        }
        console.log("payouts to the payee:", payouts);
        console.log("channels:", _ids.length);
    }

    // -------------------------------------------------------------------------------------
    // Views for the invariants
    // -------------------------------------------------------------------------------------

    /// @notice What the invariants need to know about one channel.
    struct Ghost {
        bytes32 id;
        bool closed;
        uint256 tokenIdx;
        address payer;
        /// Total paid to the payee, observed from its balances and credits.
        uint256 paid;
        /// Total received for the channel.
        uint256 deposit;
        /// Highest cumulative amount the client signed.
        uint256 maxSigned;
        /// Hash of the channel's state right after it closed.
        bytes32 tombstoneHash;
    }

    /// @notice Flags for {ghosts}: which values to read besides the id, state and payer.
    uint256 public constant AMOUNTS = 1;
    uint256 public constant SIGNED = 2;
    uint256 public constant TOMBSTONES = 4;

    /// @notice Every channel's ghost values in one call, reading only the `fields` asked for
    /// (the invariants run after every call, and cold storage reads are what they cost).
    function ghosts(uint256 fields) external view returns (Ghost[] memory g) {
        g = new Ghost[](_ids.length);
        for (uint256 i; i < _ids.length; ++i) {
            bytes32 id = _ids[i];
            Model storage m = _models[id];
            Ghost memory x = g[i];
            (x.id, x.closed, x.tokenIdx, x.payer) = (id, m.closed, m.tokenIdx, m.payer);
            if (fields & (AMOUNTS | SIGNED) != 0) x.paid = m.paid;
            if (fields & AMOUNTS != 0) x.deposit = m.deposit;
            if (fields & SIGNED != 0) x.maxSigned = m.maxSigned;
            if (fields & TOMBSTONES != 0 && m.closed) x.tombstoneHash = _tombstoneHashes[id];
        }
    }

    function channelCount() external view returns (uint256) {
        return _ids.length;
    }

    function token(uint256 t) external view returns (address) {
        return _token(t);
    }

    function channelBalance(uint256 t) external view returns (uint256) {
        return _channelBalance(t);
    }

    /// @notice Every account that could hold a credit.
    function actors() public view returns (address[ACTORS] memory a) {
        a[0] = address(payee);
        for (uint256 i; i < PAYERS; ++i) {
            a[1 + i] = _payers[i];
        }
    }

    /// @notice Σ of on-chain credits of every actor in token index `t`.
    function creditSum(uint256 t) public view returns (uint256 sum) {
        address[ACTORS] memory a = actors();
        for (uint256 i; i < ACTORS; ++i) {
            sum += channel.creditOf(a[i], _token(t));
        }
    }

    // -------------------------------------------------------------------------------------
    // Internals
    // -------------------------------------------------------------------------------------

    /// @dev What a batch is expected to do: which items apply, and the new `paid` of each;
    /// `tokens` is the bit set of the token indices involved.
    struct Expectation {
        bytes32[] ids;
        bool[] ok;
        uint256[] newPaid;
        uint256 count;
        uint256 tokens;
    }

    function _open(
        uint256 payerSeed,
        uint256 tokenSeed,
        uint256 amount,
        uint256 periodSeed,
        bool withSession
    ) internal returns (bytes32 id) {
        if (_ids.length >= MAX_CHANNELS) return bytes32(0);
        uint256 t = tokenSeed % TOKENS;
        uint256 p = payerSeed % PAYERS;
        IPaymentChannel.ChannelParams memory params = IPaymentChannel.ChannelParams({
            payer: _payers[p],
            payee: address(payee),
            token: _token(t),
            signer: withSession ? session : address(0),
            challengePeriod: uint32(_bound(periodSeed, MIN_PERIOD, MAX_USED_PERIOD)),
            salt: bytes32(++_salt)
        });
        uint256 deposit = _bound(amount, 1, _maxDeposit(t));
        uint256 before = _channelBalance(t);
        uint256 value = t == NATIVE ? deposit : 0;
        vm.prank(_payers[p]);
        try channel.open{value: value}(params, deposit) returns (bytes32 newId) {
            id = newId;
        } catch {
            _predictionFailed("open: reverted");
            return bytes32(0);
        }
        uint256 received = _channelBalance(t) - before;
        if (received != _afterFee(t, deposit)) _accounting("open: received");
        if (channel.getChannel(id).deposit != received) _accounting("open: deposit");

        _ids.push(id);
        _touched.push(id);
        Model storage m = _models[id];
        m.payer = _payers[p];
        m.payerIdx = SafeCast.toUint8(p);
        m.tokenIdx = SafeCast.toUint8(t);
        m.withSession = withSession;
        m.challengePeriod = params.challengePeriod;
        m.openDeposit = deposit;
        m.salt = params.salt;
        m.deposit = received;
        m.prevDeposit = received;
        ghostLive[t] += received;
    }

    /// @dev A channel for an action: usually an open one (opening one if there is none, so
    /// that every run has channels), sometimes any channel, closed ones included.
    function _pick(uint256 seed) internal returns (bytes32 id) {
        id = _select(seed);
        if (id != bytes32(0)) _touched.push(id);
    }

    function _select(uint256 seed) internal returns (bytes32) {
        uint256 n = _ids.length;
        if (n != 0 && seed % 5 == 0) return _ids[(seed / 5) % n];
        for (uint256 i; i < n; ++i) {
            bytes32 id = _ids[(seed % n + i) % n];
            if (!_models[id].closed) return id;
        }
        bytes32 opened = _open(seed, seed >> 8, seed >> 16, seed >> 32, seed & 1 == 1);
        if (opened != bytes32(0)) ++successes["openOnDemand"];
        if (opened != bytes32(0) || n == 0) return opened;
        return _ids[seed % n];
    }

    /// @dev Usually a channel with a pending exit, if there is one; otherwise as {_pick}.
    function _pickExiting(uint256 seed) internal returns (bytes32) {
        uint256 n = _ids.length;
        if (n != 0 && seed % 5 != 0) {
            for (uint256 i; i < n; ++i) {
                bytes32 id = _ids[(seed % n + i) % n];
                if (!_models[id].closed && _models[id].exitAt != 0) {
                    _touched.push(id);
                    return id;
                }
            }
        }
        return _pick(seed);
    }

    function _signNext(Model storage m, uint256 amountSeed, uint256 nonceStep) internal {
        uint64 nonce = m.latestNonce + SafeCast.toUint64(_bound(nonceStep, 1, 3));
        // Mostly within the deposit; one voucher in eight may run ahead of it (it becomes
        // redeemable after a top-up).
        uint256 ceiling = amountSeed % 8 == 0 ? m.deposit + m.deposit / 4 : m.deposit;
        if (ceiling < m.maxSigned) ceiling = m.maxSigned;
        uint256 cumulative = _bound(amountSeed, m.maxSigned, ceiling);
        (m.staleNonce, m.staleCumulative) = (m.latestNonce, m.latestCumulative);
        (m.latestNonce, m.latestCumulative) = (nonce, cumulative);
        m.maxSigned = cumulative;
    }

    /// @dev The latest (or the stale) voucher, signed by the channel's signer.
    function _voucher(bytes32 id, Model storage m, bool stale)
        internal
        view
        returns (Voucher memory v)
    {
        (v.nonce, v.cumulative) =
            stale ? (m.staleNonce, m.staleCumulative) : (m.latestNonce, m.latestCumulative);
        if (v.nonce == 0) return v;
        uint256 key = m.withSession ? _sessionKey : _payerKeys[m.payerIdx];
        v.signature = _sign(key, channel.voucherDigest(id, v.nonce, v.cumulative));
    }

    /// @dev The parameters the channel was opened with (they hash to its id).
    function _paramsOf(Model storage m)
        internal
        view
        returns (IPaymentChannel.ChannelParams memory)
    {
        return IPaymentChannel.ChannelParams({
            payer: m.payer,
            payee: address(payee),
            token: _token(m.tokenIdx),
            signer: m.withSession ? session : address(0),
            challengePeriod: m.challengePeriod,
            salt: m.salt
        });
    }

    /// @dev The payee's authorisation for anyone to submit a claim of `claimed`.
    function _claimAuth(bytes32 id, uint64 nonce, uint256 claimed)
        internal
        view
        returns (bytes memory)
    {
        return _sign(_payeeKey, channel.claimAuthorizationDigest(id, nonce, claimed));
    }

    function _settleOne(
        bytes32 id,
        address sender,
        Voucher memory v,
        uint256 claimed,
        bool authorized,
        bytes32 name
    ) internal {
        Model storage m = _models[id];
        bool expected = _redeemOk(m, sender, v, claimed, false, authorized);
        IPaymentChannel.Claim memory c = _toClaim(m, v, claimed);
        bytes memory auth = _claimAuth(id, v.nonce, claimed);
        uint256[ACTORS * TOKENS] memory before = _observe(2 ** m.tokenIdx);
        vm.prank(sender);
        bool ok = _trySettle(c, auth, authorized);
        _expectOutcome(expected, ok, "settle");
        if (!ok) return;
        ++successes[name];
        uint256[ACTORS * TOKENS] memory expectedDelta;
        expectedDelta[m.tokenIdx] = _sub(claimed, m.paid);
        _checkDeltas(before, expectedDelta, 2 ** m.tokenIdx, "settle");
        _paid(m, claimed);
    }

    /// @dev {_settleOne}'s call (pranked by the caller), returning whether it went through.
    function _trySettle(IPaymentChannel.Claim memory c, bytes memory auth, bool authorized)
        internal
        returns (bool)
    {
        if (authorized) {
            try channel.settleAuthorized(c, auth) {
                return true;
            } catch {}
        } else {
            try channel.settle(c) {
                return true;
            } catch {}
        }
        return false;
    }

    /// @dev Records that the payee has now been paid `newPaid` in total.
    function _paid(Model storage m, uint256 newPaid) internal {
        uint256 payout = _sub(newPaid, m.paid);
        if (payout != 0) ++payouts;
        ghostLive[m.tokenIdx] = _sub(ghostLive[m.tokenIdx], payout);
        m.paid = newPaid;
        if (m.exitAt != 0 && newPaid > m.exitHighest) m.exitHighest = newPaid;
    }

    /// @dev Records a close that paid the payee up to `newPaid` and refunded `refund`, checks
    /// the balance movements, and snapshots the tombstone.
    function _closed(
        bytes32 id,
        Model storage m,
        uint256 newPaid,
        uint256 refund,
        uint256[ACTORS * TOKENS] memory before
    ) internal {
        uint256[ACTORS * TOKENS] memory expectedDelta;
        expectedDelta[m.tokenIdx] = _sub(newPaid, m.paid);
        expectedDelta[(1 + m.payerIdx) * TOKENS + m.tokenIdx] = refund;
        _checkDeltas(before, expectedDelta, 2 ** m.tokenIdx, "close");
        _paid(m, newPaid);
        _tombstone(id, m);
    }

    function _tombstone(bytes32 id, Model storage m) internal {
        ghostLive[m.tokenIdx] = _sub(ghostLive[m.tokenIdx], _sub(m.deposit, m.paid));
        m.closed = true;
        m.exitAt = 0;
        IPaymentChannel.Channel memory c = channel.getChannel(id);
        _tombstoneHashes[id] = keccak256(abi.encode(c));
        bool proper = c.status == IPaymentChannel.Status.Closed && c.exitAt == 0 && c.deposit == 0
            && c.paid == 0;
        if (!proper) {
            ++tombstoneViolations;
            lastViolation = "close: not a proper tombstone";
        }
    }

    /// @dev Up to three distinct channels, each with its latest voucher (or none, for a close).
    function _batch(uint256 seedA, uint256 seedB, uint256 seedC, bool closing)
        internal
        returns (IPaymentChannel.Claim[] memory claims)
    {
        uint256[3] memory seeds = [seedA, seedB, seedC];
        bytes32[3] memory picked;
        uint256 n;
        for (uint256 i; i < 3; ++i) {
            bytes32 id = _pick(seeds[i]);
            if (id == bytes32(0) || id == picked[0] || id == picked[1]) continue;
            picked[n++] = id;
        }
        claims = new IPaymentChannel.Claim[](n);
        for (uint256 i; i < n; ++i) {
            Model storage m = _models[picked[i]];
            if (!m.closed && m.latestNonce == 0) _signNext(m, seeds[i], 1);
            Voucher memory v = _voucher(picked[i], m, false);
            if (closing && seeds[i] % 3 == 0) v = Voucher(0, 0, "");
            uint256 claimed = _claimFor(m, v, seeds[i]);
            claims[i] = _toClaim(m, v, claimed);
        }
    }

    function _expectBatch(
        IPaymentChannel.Claim[] memory claims,
        address sender,
        bool closing,
        bool authorized
    ) internal view returns (Expectation memory e) {
        e.ids = new bytes32[](claims.length);
        e.ok = new bool[](claims.length);
        e.newPaid = new uint256[](claims.length);
        for (uint256 i; i < claims.length; ++i) {
            IPaymentChannel.Claim memory c = claims[i];
            e.ids[i] = channel.computeChannelId(c.channel);
            Model storage m = _models[e.ids[i]];
            Voucher memory v = Voucher(c.nonce, c.cumulativeAmount, c.signature);
            e.ok[i] = _redeemOk(m, sender, v, c.claimed, closing, authorized);
            e.newPaid[i] = c.signature.length == 0 ? m.paid : c.claimed;
            if (e.ok[i]) ++e.count;
            e.tokens |= 2 ** m.tokenIdx;
        }
    }

    function _applyBatch(Expectation memory e, uint256[ACTORS * TOKENS] memory before, bool closing)
        internal
    {
        uint256[ACTORS * TOKENS] memory expectedDelta;
        for (uint256 i; i < e.ids.length; ++i) {
            if (!e.ok[i]) continue;
            Model storage m = _models[e.ids[i]];
            expectedDelta[m.tokenIdx] += e.newPaid[i] - m.paid;
            if (closing) {
                expectedDelta[(1 + m.payerIdx) * TOKENS + m.tokenIdx] += m.deposit - e.newPaid[i];
            }
        }
        _checkDeltas(before, expectedDelta, e.tokens, closing ? "closeMany" : "settleMany");
        for (uint256 i; i < e.ids.length; ++i) {
            if (!e.ok[i]) continue;
            Model storage m = _models[e.ids[i]];
            _paid(m, e.newPaid[i]);
            if (closing) _tombstone(e.ids[i], m);
        }
    }

    /// @dev The model of {PaymentChannel-_redeem}: whether a claim must be applied.
    /// Claims the payee authorised may be submitted by anyone, exit or not; all others only
    /// by the payee. No nonce is stored: `paid <= claimed <= cumulative <= deposit` decides.
    function _redeemOk(
        Model storage m,
        address sender,
        Voucher memory v,
        uint256 claimed,
        bool closing,
        bool authorized
    ) internal view returns (bool) {
        if (m.closed || _exitOver(m)) return false;
        if (!authorized && sender != address(payee)) return false;
        if (v.signature.length == 0) return closing;
        return v.cumulative <= m.deposit && claimed <= v.cumulative && claimed >= m.paid;
    }

    function _exitOver(Model storage m) internal view returns (bool) {
        return m.exitAt != 0 && block.timestamp >= m.exitAt;
    }

    /// @dev What the payee claims with `v`: the full amount one time in three, otherwise
    /// anything between what was paid and the voucher's amount (what it actually charged).
    function _claimFor(Model storage m, Voucher memory v, uint256 seed)
        internal
        view
        returns (uint256)
    {
        if (v.signature.length == 0) return 0;
        if (seed % 3 == 0) return v.cumulative;
        uint256 low = m.paid < v.cumulative ? m.paid : v.cumulative;
        return _bound(seed, low, v.cumulative);
    }

    function _finalAmount(Model storage m, uint256 seed, bool outOfRange)
        internal
        view
        returns (uint256)
    {
        if (outOfRange) {
            if (seed % 2 == 0 || m.paid == 0) return m.deposit + 1 + seed % 1000;
            return m.paid - 1;
        }
        uint256 high = m.maxSigned < m.deposit ? m.maxSigned : m.deposit;
        if (high < m.paid) high = m.paid;
        return _bound(seed, m.paid, high);
    }

    function _toClaim(Model storage m, Voucher memory v, uint256 claimed)
        internal
        view
        returns (IPaymentChannel.Claim memory)
    {
        return IPaymentChannel.Claim({
            channel: _paramsOf(m),
            nonce: v.nonce,
            cumulativeAmount: v.cumulative,
            claimed: claimed,
            signature: v.signature
        });
    }

    /// @dev After every action: on-chain `paid` and `deposit` only grow, `paid <= deposit`,
    /// and open channels agree with the model.
    function _checkTouched() internal {
        for (uint256 i; i < _touched.length; ++i) {
            bytes32 id = _touched[i];
            Model storage m = _models[id];
            if (m.closed) continue;
            IPaymentChannel.Channel memory c = channel.getChannel(id);
            bool ok = c.status == IPaymentChannel.Status.Open && c.paid >= m.prevPaid
                && c.deposit >= m.prevDeposit && c.paid <= c.deposit && c.paid == m.paid
                && c.deposit == m.deposit && c.exitAt == m.exitAt;
            if (!ok) {
                ++monotoneViolations;
                lastViolation = "channel state: not monotone or not as modelled";
            }
            m.prevPaid = c.paid;
            m.prevDeposit = c.deposit;
        }
        delete _touched;
    }

    /// @dev Balances (gross received, for the fee token) plus credits of the payee and the
    /// payers in the tokens of the bit set `tokens`, indexed `actor * TOKENS + token`. Only
    /// the tokens an action can move are observed: external calls are what the campaign's
    /// time goes into.
    function _observe(uint256 tokens) internal view returns (uint256[ACTORS * TOKENS] memory o) {
        address[ACTORS] memory a = actors();
        for (uint256 t; t < TOKENS; ++t) {
            if (tokens & 2 ** t == 0) continue;
            for (uint256 i; i < ACTORS; ++i) {
                o[i * TOKENS + t] = _observeOne(a[i], t);
            }
        }
    }

    function _observeOne(address account, uint256 t) internal view returns (uint256) {
        return _balance(account, t) + channel.creditOf(account, _token(t));
    }

    /// @dev Checks that the observed movements are exactly `expected`, and books the credits
    /// that appeared.
    function _checkDeltas(
        uint256[ACTORS * TOKENS] memory before,
        uint256[ACTORS * TOKENS] memory expected,
        uint256 tokens,
        string memory what
    ) internal {
        uint256[ACTORS * TOKENS] memory later = _observe(tokens);
        for (uint256 i; i < ACTORS * TOKENS; ++i) {
            if (later[i] != before[i] + expected[i]) {
                _accounting(string.concat(what, ": payout or refund"));
            }
        }
        for (uint256 t; t < TOKENS; ++t) {
            if (tokens & 2 ** t == 0) continue;
            uint256 credits = creditSum(t);
            if (credits < ghostCredits[t]) _accounting(string.concat(what, ": credit lost"));
            else ghostCredits[t] = credits;
        }
    }

    /// @dev `a - b`, or zero and a recorded violation if that would underflow: the handler
    /// must never revert, or the violation would be rolled back with the call.
    function _sub(uint256 a, uint256 b) internal returns (uint256) {
        if (a >= b) return a - b;
        _accounting("model: negative amount");
        return 0;
    }

    function _expectOutcome(bool expected, bool actual, string memory what) internal {
        if (expected != actual) {
            _predictionFailed(
                string.concat(what, actual ? ": succeeded unexpectedly" : ": reverted unexpectedly")
            );
        }
    }

    function _predictionFailed(string memory what) internal {
        ++predictionViolations;
        lastViolation = what;
    }

    function _accounting(string memory what) internal {
        ++accountingViolations;
        lastViolation = what;
    }

    function _sign(uint256 key, bytes32 digest) internal pure returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        return abi.encodePacked(r, s, v);
    }

    function _token(uint256 t) internal view returns (address) {
        if (t == USD) return address(usd);
        if (t == NATIVE) return address(0);
        return address(fee);
    }

    function _balance(address account, uint256 t) internal view returns (uint256) {
        if (t == USD) return usd.balanceOf(account);
        if (t == NATIVE) return account.balance;
        return fee.grossReceived(account);
    }

    function _channelBalance(uint256 t) internal view returns (uint256) {
        if (t == USD) return usd.balanceOf(address(channel));
        if (t == NATIVE) return address(channel).balance;
        return fee.balanceOf(address(channel));
    }

    function _maxDeposit(uint256 t) internal pure returns (uint256) {
        return t == NATIVE ? MAX_NATIVE_DEPOSIT : MAX_ERC20_DEPOSIT;
    }

    function _afterFee(uint256 t, uint256 amount) internal view returns (uint256) {
        return t == FEE ? amount - fee.feeOf(amount) : amount;
    }

    function _pad(string memory name) internal pure returns (string memory) {
        bytes memory b = bytes(name);
        uint256 len;
        while (len < b.length && b[len] != 0) ++len;
        bytes memory out = new bytes(26);
        bytes1 space = " ";
        for (uint256 i; i < 26; ++i) {
            out[i] = i < len ? b[i] : space;
        }
        return string(out);
    }
}

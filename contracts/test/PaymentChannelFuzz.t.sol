// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Vm} from "forge-std/Vm.sol";

import {IPaymentChannel} from "../src/interfaces/IPaymentChannel.sol";
import {ChannelFixture} from "./utils/ChannelFixture.sol";

/// @notice Property tests of PaymentChannel: amounts, claim orderings, timings and signers are
/// fuzzed with `bound()`; each test checks exact balances or exact revert data.
contract PaymentChannelFuzzTest is ChannelFixture {
    // ----- helpers -----

    function _openUsdWith(uint256 deposit, bytes32 salt) internal returns (bytes32 id) {
        id = _open(_params(address(usd), address(0), salt), deposit);
    }

    // ----- open, computeChannelId, topUp -----

    function testFuzz_open_storesDepositAndPullsIt(
        uint256 deposit,
        uint32 period,
        bytes32 salt,
        bool native
    ) public {
        period = uint32(bound(period, MIN_PERIOD, MAX_PERIOD));
        deposit = bound(deposit, 1, native ? 1000 ether : FUNDS);
        IPaymentChannel.ChannelParams memory p =
            _params(native ? address(0) : address(usd), address(0), salt);
        p.challengePeriod = period;
        bytes32 expected = channel.computeChannelId(p);

        vm.prank(payer);
        bytes32 id = channel.open{value: native ? deposit : 0}(p, deposit);

        assertEq(id, expected);
        IPaymentChannel.Channel memory ch = channel.getChannel(id);
        assertEq(ch.deposit, deposit);
        assertEq(_requestExit(_remember(p)), block.timestamp + period);
        if (native) {
            assertEq(address(channel).balance, deposit);
            assertEq(payer.balance, 1000 ether - deposit);
        } else {
            assertEq(usd.balanceOf(address(channel)), deposit);
            assertEq(usd.balanceOf(payer), FUNDS - deposit);
        }
    }

    function testFuzz_open_rejectsPeriodOutOfBounds(uint32 period, bool below) public {
        period = below
            ? uint32(bound(period, 0, MIN_PERIOD - 1))
            : uint32(bound(period, uint256(MAX_PERIOD) + 1, type(uint32).max));
        IPaymentChannel.ChannelParams memory p = _params(address(usd), address(0), 0);
        p.challengePeriod = period;
        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentChannel.ChallengePeriodOutOfBounds.selector, period, MIN_PERIOD, MAX_PERIOD
            )
        );
        channel.open(p, DEPOSIT);
    }

    function testFuzz_open_rejectsWrongMsgValue(uint256 deposit, uint256 value) public {
        deposit = bound(deposit, 1, 100 ether);
        value = bound(value, 0, 200 ether);
        vm.assume(value != deposit);
        IPaymentChannel.ChannelParams memory p = _params(address(0), address(0), 0);
        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.InvalidMsgValue.selector, value, deposit)
        );
        channel.open{value: value}(p, deposit);
    }

    function testFuzz_computeChannelId_uniquePerPayerAndSalt(
        address payerA,
        address payerB,
        bytes32 saltA,
        bytes32 saltB
    ) public {
        bytes32 a = channel.computeChannelId(
            _paramsOf(payerA, payee, address(usd), address(0), saltA)
        );
        bytes32 b =
            channel.computeChannelId(_paramsOf(payerB, payee, address(usd), address(0), saltB));
        assertEq(a == b, payerA == payerB && saltA == saltB);
    }

    function testFuzz_topUp_depositGrowsBySum(uint256 deposit, uint256[3] memory amounts) public {
        deposit = bound(deposit, 1, type(uint104).max);
        usd.mint(payer, type(uint104).max);
        bytes32 id = _openUsdWith(deposit, 0);
        uint256 expected = deposit;
        for (uint256 i; i < amounts.length; ++i) {
            if (expected == type(uint104).max) break;
            uint256 amount = bound(amounts[i], 1, type(uint104).max - expected);
            vm.prank(payer);
            channel.topUp(_p(id), amount);
            expected += amount;
            assertEq(channel.getChannel(id).deposit, expected);
        }
        assertEq(usd.balanceOf(address(channel)), expected);
        assertEq(usd.balanceOf(payer), FUNDS + type(uint104).max - expected);
    }

    function testFuzz_topUp_rejectsDepositAboveUint104(uint256 deposit, uint256 amount) public {
        deposit = bound(deposit, 1, type(uint104).max);
        amount = bound(amount, uint256(type(uint104).max) - deposit + 1, type(uint248).max);
        usd.mint(payer, deposit + amount);
        bytes32 id = _openUsdWith(deposit, 0);
        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.DepositTooLarge.selector, deposit + amount)
        );
        channel.topUp(_p(id), amount);
        assertEq(channel.getChannel(id).deposit, deposit);
    }

    // ----- settle: amounts and nonces -----

    /// A payee settles a sequence of vouchers with random nonces (in any order: none is stored),
    /// random amounts (some above the deposit) and random claims. Every call either applies
    /// exactly as the rules say (`paid <= claimed <= cumulative <= deposit`) or reverts with
    /// exactly the expected error, `paid` never decreases, and the payee never holds more than
    /// the largest amount signed, nor more than the deposit.
    function testFuzz_settle_sequenceFollowsRulesAndNeverOverpays(
        uint256 deposit,
        uint64[6] memory nonces,
        uint256[6] memory amounts,
        uint256[6] memory claims
    ) public {
        deposit = bound(deposit, 1, FUNDS);
        bytes32 id = _openUsdWith(deposit, 0);
        uint256 maxSigned;
        uint256 paid;
        for (uint256 i; i < nonces.length; ++i) {
            uint64 nonce = uint64(bound(nonces[i], 0, 8));
            uint256 cumulative = bound(amounts[i], 0, deposit + deposit / 4);
            uint256 claimed = bound(claims[i], 0, cumulative);
            if (cumulative > maxSigned) maxSigned = cumulative;
            IPaymentChannel.Claim memory c = _partial(payerKey, id, nonce, cumulative, claimed);

            bytes memory expectedErr;
            if (cumulative > deposit) {
                expectedErr = abi.encodeWithSelector(
                    IPaymentChannel.VoucherExceedsDeposit.selector, cumulative, deposit
                );
            } else if (claimed < paid) {
                expectedErr =
                    abi.encodeWithSelector(IPaymentChannel.ClaimBelowPaid.selector, claimed, paid);
            }

            vm.prank(payee);
            try channel.settle(c) {
                assertEq(expectedErr.length, 0, "applied a voucher the rules refuse");
                assertGe(claimed, paid, "paid is monotone");
                paid = claimed;
            } catch (bytes memory err) {
                assertEq(err, expectedErr, "wrong revert");
            }

            assertEq(usd.balanceOf(payee), paid);
            assertEq(channel.getChannel(id).paid, paid);
            assertLe(usd.balanceOf(payee), maxSigned);
            assertLe(usd.balanceOf(payee), deposit);
            assertEq(usd.balanceOf(payee) + usd.balanceOf(address(channel)), deposit);
        }
    }

    /// Once a larger claim is on-chain, a smaller one (an older voucher, or a smaller claim on a
    /// newer one) pays nothing and is refused; the same claim again pays nothing.
    function testFuzz_settle_staleClaimNeverIncreasesPayout(
        uint256 deposit,
        uint64 oldNonce,
        uint64 newNonce,
        uint256 oldAmount,
        uint256 newAmount
    ) public {
        deposit = bound(deposit, 1, FUNDS);
        newAmount = bound(newAmount, 1, deposit);
        oldAmount = bound(oldAmount, 0, newAmount - 1);
        bytes32 id = _openUsdWith(deposit, 0);
        IPaymentChannel.Claim memory stale = _claim(payerKey, id, oldNonce, oldAmount);
        IPaymentChannel.Claim memory latest = _claim(payerKey, id, newNonce, newAmount);

        vm.prank(payee);
        channel.settle(latest);
        assertEq(usd.balanceOf(payee), newAmount);

        vm.prank(payee);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.ClaimBelowPaid.selector, oldAmount, newAmount)
        );
        channel.settle(stale);
        vm.prank(payee);
        channel.settle(latest);
        assertEq(usd.balanceOf(payee), newAmount);
        assertEq(channel.getChannel(id).paid, newAmount);
    }

    /// Only the channel's signer verifies: a random key works exactly when it is the payer's.
    function testFuzz_settle_onlyPayerKeyVerifies(uint256 key, uint256 amount) public {
        key = bound(key, 1, SECP256K1_N - 1);
        amount = bound(amount, 0, DEPOSIT);
        bytes32 id = _openUsdWith(DEPOSIT, 0);
        IPaymentChannel.Claim memory c = _claim(key, id, 1, amount);
        vm.prank(payee);
        if (vm.addr(key) != payer) {
            vm.expectRevert(
                abi.encodeWithSelector(IPaymentChannel.InvalidSignature.selector, id, payer)
            );
        }
        channel.settle(c);
        assertEq(usd.balanceOf(payee), vm.addr(key) == payer ? amount : 0);
    }

    /// With a session key, only that key verifies (the payer's own key no longer does).
    function testFuzz_settle_onlySessionKeyVerifies(uint256 key, bool usePayerKey) public {
        key = usePayerKey ? payerKey : bound(key, 1, SECP256K1_N - 1);
        bytes32 id = _openUsdWithSession(DEPOSIT, 0);
        IPaymentChannel.Claim memory c = _claim(key, id, 1, 10e6);
        bool valid = vm.addr(key) == session;
        vm.prank(payee);
        if (!valid) {
            vm.expectRevert(
                abi.encodeWithSelector(IPaymentChannel.InvalidSignature.selector, id, session)
            );
        }
        channel.settle(c);
        assertEq(usd.balanceOf(payee), valid ? 10e6 : 0);
    }

    /// A stranger holding the payee's authorisation pays the payee exactly the authorised
    /// amount, exit or not; with an authorisation for any other amount it pays nothing.
    function testFuzz_settleAuthorized_paysExactlyAuthorized(
        uint256 cumulative,
        uint256 claimed,
        uint256 authorized,
        bool exiting
    ) public {
        cumulative = bound(cumulative, 0, DEPOSIT);
        claimed = bound(claimed, 0, cumulative);
        authorized = bound(authorized, 0, DEPOSIT);
        bytes32 id = _openUsdWith(DEPOSIT, 0);
        IPaymentChannel.Claim memory c = _partial(payerKey, id, 1, cumulative, claimed);
        bytes memory auth = _claimAuthSig(payeeKey, id, 1, authorized);
        if (exiting) _requestExit(id);
        vm.prank(stranger);
        if (claimed != authorized) {
            vm.expectRevert(
                abi.encodeWithSelector(IPaymentChannel.InvalidClaimAuthorization.selector, id)
            );
        }
        channel.settleAuthorized(c, auth);
        assertEq(usd.balanceOf(payee), claimed == authorized ? claimed : 0);
    }

    // ----- timings -----

    /// Settling succeeds at every moment before exitAt and fails at every moment from it on.
    function testFuzz_settle_timingRelativeToExitAt(uint256 requestedAt, uint256 at, uint256 amount)
        public
    {
        requestedAt = bound(requestedAt, block.timestamp, block.timestamp + 365 days);
        amount = bound(amount, 0, DEPOSIT);
        bytes32 id = _openUsdWith(DEPOSIT, 0);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, amount);
        vm.warp(requestedAt);
        uint256 exitAt = _requestExit(id);
        assertEq(exitAt, requestedAt + PERIOD);

        at = bound(at, requestedAt, exitAt + 3 * PERIOD);
        vm.warp(at);
        vm.prank(payee);
        if (at >= exitAt) {
            vm.expectRevert(
                abi.encodeWithSelector(IPaymentChannel.ChallengePeriodOver.selector, id, exitAt)
            );
        }
        channel.settle(c);
        assertEq(usd.balanceOf(payee), at < exitAt ? amount : 0);
    }

    /// Withdrawing fails at every moment before exitAt and, from it on, refunds exactly
    /// `deposit - paid` to the payer whoever calls.
    function testFuzz_withdraw_timingRelativeToExitAt(uint256 at, uint256 paid, address caller)
        public
    {
        paid = bound(paid, 0, DEPOSIT);
        bytes32 id = _openUsdWith(DEPOSIT, 0);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, paid);
        vm.prank(payee);
        channel.settle(c);
        uint256 exitAt = _requestExit(id);

        at = bound(at, block.timestamp, exitAt + 3 * PERIOD);
        vm.warp(at);
        vm.prank(caller);
        if (at < exitAt) {
            vm.expectRevert(
                abi.encodeWithSelector(IPaymentChannel.ChallengePeriodActive.selector, id, exitAt)
            );
            channel.withdraw(_p(id));
            assertEq(usd.balanceOf(payer), FUNDS - DEPOSIT);
        } else {
            channel.withdraw(_p(id));
            assertEq(usd.balanceOf(payer), FUNDS - paid);
            assertEq(usd.balanceOf(payee), paid);
            assertEq(usd.balanceOf(address(channel)), 0);
        }
    }

    // ----- full lifecycles: conservation -----

    /// Open, top up, settle, then close with a voucher (or none): the payer and payee end with
    /// exactly the deposit between them and the contract keeps nothing.
    function testFuzz_close_payerAndPayeeSplitTheDeposit(
        uint256 deposit,
        uint256 topUp,
        uint256 settled,
        uint256 finalCumulative,
        uint256 finalClaimed,
        bool withVoucher
    ) public {
        deposit = bound(deposit, 1, FUNDS / 2);
        topUp = bound(topUp, 0, FUNDS / 2);
        bytes32 id = _openUsdWith(deposit, 0);
        if (topUp != 0) {
            vm.prank(payer);
            channel.topUp(_p(id), topUp);
        }
        uint256 total = deposit + topUp;
        settled = bound(settled, 0, total);
        finalCumulative = bound(finalCumulative, settled, total);
        finalClaimed = bound(finalClaimed, settled, finalCumulative);
        IPaymentChannel.Claim memory first = _claim(payerKey, id, 1, settled);
        IPaymentChannel.Claim memory last =
            withVoucher ? _partial(payerKey, id, 2, finalCumulative, finalClaimed) : _noVoucher(id);

        vm.prank(payee);
        channel.settle(first);
        vm.prank(payee);
        channel.close(last);

        uint256 payeeGets = withVoucher ? finalClaimed : settled;
        assertEq(usd.balanceOf(payee), payeeGets);
        assertEq(usd.balanceOf(payer), FUNDS - payeeGets);
        assertEq(usd.balanceOf(payer) + usd.balanceOf(payee), FUNDS);
        assertEq(usd.balanceOf(address(channel)), 0);
        assertEq(uint8(channel.getChannel(id).status), uint8(IPaymentChannel.Status.Closed));
    }

    /// A unilateral exit where the payee settled some vouchers and a watcher submits the latest
    /// (with the payee's authorisation) during the challenge period: the payee holds exactly the
    /// latest voucher's amount, the payer the rest.
    function testFuzz_withdraw_watcherSettlementSplitsDeposit(
        uint256 deposit,
        uint256[4] memory amounts,
        uint256 settleCount,
        uint256 watcherAt
    ) public {
        deposit = bound(deposit, 1, FUNDS);
        bytes32 id = _openUsdWith(deposit, 0);
        // An honest payer: cumulative amounts never decrease.
        uint256[4] memory cumulative;
        for (uint256 i; i < 4; ++i) {
            uint256 floor = i == 0 ? 0 : cumulative[i - 1];
            cumulative[i] = bound(amounts[i], floor, deposit);
        }
        settleCount = bound(settleCount, 0, 3);
        for (uint256 i; i < settleCount; ++i) {
            // forge-lint: disable-next-line(unsafe-typecast) i < 3
            IPaymentChannel.Claim memory c = _claim(payerKey, id, uint64(i + 1), cumulative[i]);
            vm.prank(payee);
            channel.settle(c);
        }
        IPaymentChannel.Claim memory latest = _claim(payerKey, id, 4, cumulative[3]);
        bytes memory auth = _claimAuthSig(payeeKey, id, 4, cumulative[3]);
        uint256 exitAt = _requestExit(id);
        vm.warp(bound(watcherAt, block.timestamp, exitAt - 1));
        vm.prank(watcher);
        channel.settleAuthorized(latest, auth);
        vm.warp(exitAt);
        channel.withdraw(_p(id));

        assertEq(usd.balanceOf(payee), cumulative[3]);
        assertEq(usd.balanceOf(payer), FUNDS - cumulative[3]);
        assertEq(usd.balanceOf(address(channel)), 0);
    }

    /// A cooperative close accepts exactly the final amounts in [paid, deposit] and pays
    /// `final - paid` more to the payee.
    function testFuzz_closeWithAuthorization_finalAmountRange(
        uint256 deposit,
        uint256 paid,
        uint256 finalAmount
    ) public {
        deposit = bound(deposit, 1, FUNDS);
        paid = bound(paid, 0, deposit);
        finalAmount = bound(finalAmount, 0, deposit * 2);
        bytes32 id = _openUsdWith(deposit, 0);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, paid);
        bytes memory auth = _closeAuthSig(payeeKey, id, finalAmount);
        vm.prank(payee);
        channel.settle(c);

        bool inRange = finalAmount >= paid && finalAmount <= deposit;
        vm.prank(payer);
        if (!inRange) {
            vm.expectRevert(
                abi.encodeWithSelector(
                    IPaymentChannel.FinalAmountOutOfRange.selector, finalAmount, paid, deposit
                )
            );
        }
        channel.closeWithAuthorization(_p(id), finalAmount, CLOSE_DEADLINE, auth);
        if (inRange) {
            assertEq(usd.balanceOf(payee), finalAmount);
            assertEq(usd.balanceOf(payer), FUNDS - finalAmount);
            assertEq(usd.balanceOf(address(channel)), 0);
        } else {
            assertEq(usd.balanceOf(payee), paid);
            assertEq(usd.balanceOf(address(channel)), deposit - paid);
        }
    }

    // ----- batches -----

    /// However many channels and amounts, the payee receives their sum in one transfer (none if
    /// the sum is zero) and the return value counts every item.
    function testFuzz_settleMany_onePayoutOfTheSum(uint256 n, uint256[8] memory amounts) public {
        n = bound(n, 1, amounts.length);
        IPaymentChannel.Claim[] memory claims = new IPaymentChannel.Claim[](n);
        uint256 total;
        for (uint256 i; i < n; ++i) {
            uint256 amount = bound(amounts[i], 0, DEPOSIT);
            claims[i] = _claim(payerKey, _openUsdWith(DEPOSIT, bytes32(i)), 1, amount);
            total += amount;
        }
        vm.recordLogs();
        vm.prank(payee);
        assertEq(channel.settleMany(claims), n);
        assertEq(
            _transfersFrom(vm.getRecordedLogs(), address(usd), address(channel)), total == 0 ? 0 : 1
        );
        assertEq(usd.balanceOf(payee), total);
        assertEq(usd.balanceOf(address(channel)), n * DEPOSIT - total);
    }

    /// Items with a bad signature are skipped; the others close; no value is lost.
    function testFuzz_closeMany_skipsForgedItemsAndConservesFunds(
        uint256 n,
        uint256[6] memory amounts,
        uint8 forgedMask
    ) public {
        n = bound(n, 1, amounts.length);
        IPaymentChannel.Claim[] memory claims = new IPaymentChannel.Claim[](n);
        uint256 paidOut;
        uint256 closedCount;
        for (uint256 i; i < n; ++i) {
            uint256 amount = bound(amounts[i], 0, DEPOSIT);
            bool forged = (forgedMask >> i) & 1 == 1;
            bytes32 id = _openUsdWith(DEPOSIT, bytes32(i));
            claims[i] = _claim(forged ? payeeKey : payerKey, id, 1, amount);
            if (!forged) {
                paidOut += amount;
                ++closedCount;
            }
        }
        vm.prank(payee);
        assertEq(channel.closeMany(claims), closedCount);
        uint256 stillLocked = (n - closedCount) * DEPOSIT;
        assertEq(usd.balanceOf(payee), paidOut);
        assertEq(usd.balanceOf(address(channel)), stillLocked);
        assertEq(usd.balanceOf(payer), FUNDS - paidOut - stillLocked);
        for (uint256 i; i < n; ++i) {
            bool forged = (forgedMask >> i) & 1 == 1;
            assertEq(
                uint8(channel.getChannel(channel.computeChannelId(claims[i].channel)).status),
                uint8(forged ? IPaymentChannel.Status.Open : IPaymentChannel.Status.Closed)
            );
        }
    }
}

// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {StdInvariant} from "forge-std/StdInvariant.sol";
import {Test} from "forge-std/Test.sol";

import {IPaymentChannel} from "../src/interfaces/IPaymentChannel.sol";
import {TestStablecoin} from "../src/TestStablecoin.sol";
import {ChannelHandler} from "./handlers/ChannelHandler.sol";
import {FeeOnTransferToken} from "./mocks/FeeOnTransferToken.sol";

/// @notice Invariants of PaymentChannel under random sequences of opens, top-ups, vouchers,
/// settlements, closes, exits, withdrawals and time jumps, in the test stablecoin, the native
/// token and a fee-on-transfer token. See {ChannelHandler} for the actions and the model.
contract PaymentChannelInvariantTest is StdInvariant, Test {
    IPaymentChannel internal channel;
    TestStablecoin internal usd;
    FeeOnTransferToken internal fee;
    ChannelHandler internal handler;

    function setUp() public {
        channel = IPaymentChannel(
            deployCode("PaymentChannel.sol:PaymentChannel", abi.encode(1 hours, 30 days))
        );
        usd = new TestStablecoin();
        fee = new FeeOnTransferToken();
        handler = new ChannelHandler(channel, usd, fee);

        bytes4[] memory selectors = new bytes4[](16);
        selectors[0] = ChannelHandler.open.selector;
        selectors[1] = ChannelHandler.topUp.selector;
        selectors[2] = ChannelHandler.signVoucher.selector;
        selectors[3] = ChannelHandler.settle.selector;
        selectors[4] = ChannelHandler.watcherSettle.selector;
        selectors[5] = ChannelHandler.settleMany.selector;
        selectors[6] = ChannelHandler.close.selector;
        selectors[7] = ChannelHandler.closeMany.selector;
        selectors[8] = ChannelHandler.closeWithAuthorization.selector;
        selectors[9] = ChannelHandler.requestExit.selector;
        selectors[10] = ChannelHandler.withdraw.selector;
        selectors[11] = ChannelHandler.withdrawCredit.selector;
        selectors[12] = ChannelHandler.setPayeeRejectsNative.selector;
        selectors[13] = ChannelHandler.warp.selector;
        selectors[14] = ChannelHandler.reopenClosed.selector;
        selectors[15] = ChannelHandler.signVoucher.selector;
        // `signVoucher` is listed twice on purpose: payees need vouchers to redeem.
        targetSelector(FuzzSelector({addr: address(handler), selectors: selectors}));
        targetContract(address(handler));
    }

    /// For each token the contract holds exactly Σ over live channels (deposit - paid) plus
    /// Σ credits, both as read from the contract and as modelled by the handler. Exact for the
    /// fee-on-transfer token too: deposits are booked at what arrived, and payouts leave the
    /// contract at their gross amount.
    function invariant_solvency() public view {
        ChannelHandler.Ghost[] memory g = handler.ghosts(0);
        uint256[3] memory live;
        for (uint256 i; i < g.length; ++i) {
            if (g[i].closed) continue;
            IPaymentChannel.Channel memory c = channel.getChannel(g[i].id);
            live[g[i].tokenIdx] += c.deposit - c.paid;
        }
        for (uint256 t; t < 3; ++t) {
            uint256 credits = handler.creditSum(t);
            assertEq(handler.channelBalance(t), live[t] + credits, "balance != live + credits");
            assertEq(live[t], handler.ghostLive(t), "live channels != model");
            assertEq(credits, handler.ghostCredits(t), "credits != model");
        }
        assertEq(handler.accountingViolations(), 0, handler.lastViolation());
    }

    /// The payee never received more for a channel than the highest cumulative amount the
    /// client signed for it (payouts observed from the payee's balances and credits).
    function invariant_paidNeverExceedsSigned() public view {
        ChannelHandler.Ghost[] memory g = handler.ghosts(handler.SIGNED());
        for (uint256 i; i < g.length; ++i) {
            assertLe(g[i].paid, g[i].maxSigned, "paid above signed");
        }
    }

    /// On-chain `paid` and `deposit` only grow, and `paid <= deposit`: the handler checks the
    /// channels each call touched against their previous values, and here every open channel
    /// must equal the model.
    function invariant_paidMonotoneWithinDeposit() public view {
        ChannelHandler.Ghost[] memory g = handler.ghosts(handler.AMOUNTS());
        for (uint256 i; i < g.length; ++i) {
            if (g[i].closed) continue;
            IPaymentChannel.Channel memory c = channel.getChannel(g[i].id);
            assertLe(c.paid, c.deposit, "paid above deposit");
            // The model's values only grow (the handler checks), so these equalities carry
            // monotonicity over to channels the last action did not touch.
            assertEq(c.paid, g[i].paid, "paid != observed payouts");
            assertEq(c.deposit, g[i].deposit, "deposit != received");
        }
        assertEq(handler.monotoneViolations(), 0, handler.lastViolation());
    }

    /// A closed channel stays exactly the tombstone it became (status Closed, every other
    /// field zero), and its id is never reopened.
    function invariant_tombstonesFrozen() public view {
        ChannelHandler.Ghost[] memory g = handler.ghosts(handler.TOMBSTONES());
        for (uint256 i; i < g.length; ++i) {
            if (!g[i].closed) continue;
            IPaymentChannel.Channel memory c = channel.getChannel(g[i].id);
            assertEq(uint8(c.status), uint8(IPaymentChannel.Status.Closed), "status");
            assertEq(uint256(c.deposit) + c.paid + c.exitAt, 0, "tombstone fields");
            assertEq(keccak256(abi.encode(c)), g[i].tombstoneHash, "tombstone changed");
        }
        assertEq(handler.tombstoneViolations(), 0, handler.lastViolation());
        assertEq(handler.reopenViolations(), 0, handler.lastViolation());
    }

    /// After the challenge period the payer recovers exactly deposit - max(paid before the
    /// exit, highest voucher submitted during it).
    function invariant_exitRecovery() public view {
        assertEq(handler.exitRecoveryViolations(), 0, handler.lastViolation());
    }

    /// At the end of every run, whichever invariant the campaign is for: every call succeeded
    /// or failed exactly as the handler's model predicted, no violation was recorded, and the
    /// run was not vacuous (channels were opened and the payee was paid).
    function afterInvariant() public view {
        handler.callSummary();
        assertEq(handler.predictionViolations(), 0, handler.lastViolation());
        assertEq(handler.accountingViolations(), 0, handler.lastViolation());
        assertEq(handler.monotoneViolations(), 0, handler.lastViolation());
        assertEq(handler.exitRecoveryViolations(), 0, handler.lastViolation());
        assertEq(handler.tombstoneViolations(), 0, handler.lastViolation());
        assertEq(handler.reopenViolations(), 0, handler.lastViolation());
        assertGt(
            handler.successes("open") + handler.successes("openOnDemand"), 0, "no channel opened"
        );
        assertGt(handler.payouts(), 0, "the payee was never paid");
    }
}

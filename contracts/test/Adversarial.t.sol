// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {Vm} from "forge-std/Vm.sol";

import {IPaymentChannel} from "../src/interfaces/IPaymentChannel.sol";
import {BlacklistToken} from "./mocks/BlacklistToken.sol";
import {ERC1271Wallet, RejectingWallet} from "./mocks/ERC1271Wallet.sol";
import {FalseReturningToken} from "./mocks/FalseReturningToken.sol";
import {FeeOnTransferToken} from "./mocks/FeeOnTransferToken.sol";
import {NoReturnToken} from "./mocks/NoReturnToken.sol";
import {GasGuzzlerReceiver, RevertingReceiver} from "./mocks/Receivers.sol";
import {ReentrantToken} from "./mocks/ReentrantToken.sol";
import {ChannelFixture} from "./utils/ChannelFixture.sol";

/// @notice PaymentChannel against hostile or non-standard tokens and wallets: fee-on-transfer,
/// false-returning, USDT-style and blacklisting tokens, a reentrant token, recipients that
/// revert or burn all gas, EIP-1271 wallets, malleable and wrong-domain signatures.
contract AdversarialTest is ChannelFixture {
    FeeOnTransferToken internal feeToken;
    FalseReturningToken internal falseToken;
    NoReturnToken internal noReturn;
    BlacklistToken internal blToken;
    ReentrantToken internal reToken;

    function setUp() public override {
        super.setUp();
        feeToken = new FeeOnTransferToken();
        falseToken = new FalseReturningToken();
        noReturn = new NoReturnToken();
        blToken = new BlacklistToken();
        reToken = new ReentrantToken();

        feeToken.mint(payer, FUNDS);
        falseToken.mint(payer, FUNDS);
        noReturn.mint(payer, FUNDS);
        blToken.mint(payer, FUNDS);
        reToken.mint(payer, FUNDS);
        vm.startPrank(payer);
        feeToken.approve(address(channel), type(uint256).max);
        falseToken.approve(address(channel), type(uint256).max);
        noReturn.approve(address(channel), type(uint256).max);
        blToken.approve(address(channel), type(uint256).max);
        reToken.approve(address(channel), type(uint256).max);
        vm.stopPrank();
    }

    // =========================================================================================
    // Fee-on-transfer token
    // =========================================================================================

    function test_open_feeOnTransferCreditsWhatArrived() public {
        uint256 net = DEPOSIT - feeToken.feeOf(DEPOSIT);
        bytes32 id = _openToken(address(feeToken), DEPOSIT);

        assertEq(channel.getChannel(id).deposit, net, "deposit = amount received");
        assertEq(feeToken.balanceOf(address(channel)), net);
    }

    function test_topUp_feeOnTransferCreditsWhatArrived() public {
        uint256 net = DEPOSIT - feeToken.feeOf(DEPOSIT);
        bytes32 id = _openToken(address(feeToken), DEPOSIT);

        vm.expectEmit(address(channel));
        emit IPaymentChannel.ToppedUp(id, payer, net, 2 * net);
        vm.prank(payer);
        channel.topUp(_p(id), DEPOSIT);

        assertEq(channel.getChannel(id).deposit, 2 * net);
        assertEq(feeToken.balanceOf(address(channel)), 2 * net);
    }

    function test_settle_feeOnTransferVoucherForNominalDepositRefused() public {
        uint256 net = DEPOSIT - feeToken.feeOf(DEPOSIT);
        bytes32 id = _openToken(address(feeToken), DEPOSIT);

        // The client signs for the nominal amount, but only `net` arrived.
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, DEPOSIT);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.VoucherExceedsDeposit.selector, DEPOSIT, net)
        );
        vm.prank(payee);
        channel.settle(c);
    }

    function test_close_feeOnTransferBalanceCoversDepositMinusPaid() public {
        bytes32 id = _openToken(address(feeToken), DEPOSIT);
        vm.prank(payer);
        channel.topUp(_p(id), 500e6);
        _assertFeeTokenCovered(id);

        _settleAs(payee, _claim(payerKey, id, 1, 300e6));
        _assertFeeTokenCovered(id);
        assertEq(feeToken.grossReceived(payee), 300e6, "gross payout");
        assertEq(feeToken.balanceOf(payee), 300e6 - feeToken.feeOf(300e6));

        uint256 deposit = channel.getChannel(id).deposit;
        uint256 payerGrossBefore = feeToken.grossReceived(payer);
        _closeAs(payee, _claim(payerKey, id, 2, 700e6));

        assertEq(feeToken.grossReceived(payee), 700e6, "payee paid 700 in total");
        assertEq(feeToken.grossReceived(payer) - payerGrossBefore, deposit - 700e6, "refund");
        assertEq(feeToken.balanceOf(address(channel)), 0, "nothing left behind");
    }

    function test_topUp_feeOnTransferNothingArrivesReverts() public {
        bytes32 id = _openToken(address(feeToken), DEPOSIT);
        feeToken.setFeeBps(10_000);

        vm.expectRevert(IPaymentChannel.ZeroAmount.selector);
        vm.prank(payer);
        channel.topUp(_p(id), DEPOSIT);

        vm.expectRevert(IPaymentChannel.ZeroAmount.selector);
        vm.prank(payer);
        channel.open(_params(address(feeToken), address(0), keccak256("2")), DEPOSIT);
    }

    // =========================================================================================
    // False-returning token
    // =========================================================================================

    function test_open_falseReturningTokenReverts() public {
        falseToken.setFailTransfers(true);
        vm.expectRevert(
            abi.encodeWithSelector(SafeERC20.SafeERC20FailedOperation.selector, falseToken)
        );
        vm.prank(payer);
        channel.open(_params(address(falseToken), address(0), bytes32(0)), DEPOSIT);
    }

    function test_open_falseReturningTokenInsufficientBalanceReverts() public {
        // Returns false (no revert) because the payer's balance is too low.
        vm.expectRevert(
            abi.encodeWithSelector(SafeERC20.SafeERC20FailedOperation.selector, falseToken)
        );
        vm.prank(payer);
        channel.open(_params(address(falseToken), address(0), bytes32(0)), FUNDS + 1);
        assertEq(falseToken.balanceOf(address(channel)), 0);
    }

    function test_topUp_falseReturningTokenReverts() public {
        bytes32 id = _openToken(address(falseToken), DEPOSIT);
        falseToken.setFailTransfers(true);

        vm.expectRevert(
            abi.encodeWithSelector(SafeERC20.SafeERC20FailedOperation.selector, falseToken)
        );
        vm.prank(payer);
        channel.topUp(_p(id), DEPOSIT);
        assertEq(channel.getChannel(id).deposit, DEPOSIT);
    }

    function test_settle_falseReturningPayoutCredited() public {
        bytes32 id = _openToken(address(falseToken), DEPOSIT);
        falseToken.setFailTransfers(true);

        vm.expectEmit(address(channel));
        emit IPaymentChannel.PayoutCredited(payee, address(falseToken), 300e6);
        _settleAs(payee, _claim(payerKey, id, 1, 300e6));

        assertEq(channel.getChannel(id).paid, 300e6);
        assertEq(falseToken.balanceOf(payee), 0);
        assertEq(channel.creditOf(payee, address(falseToken)), 300e6);
        assertEq(falseToken.balanceOf(address(channel)), DEPOSIT, "nothing left the contract");

        // Withdrawing while the token still fails reverts and keeps the credit.
        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentChannel.CreditTransferFailed.selector, stranger, falseToken, 300e6
            )
        );
        vm.prank(payee);
        channel.withdrawCredit(address(falseToken), stranger);
        assertEq(channel.creditOf(payee, address(falseToken)), 300e6);

        falseToken.setFailTransfers(false);
        vm.prank(payee);
        assertEq(channel.withdrawCredit(address(falseToken), stranger), 300e6);
        assertEq(falseToken.balanceOf(stranger), 300e6);
        assertEq(channel.creditOf(payee, address(falseToken)), 0);
    }

    function test_close_falseReturningPayoutAndRefundCredited() public {
        bytes32 id = _openToken(address(falseToken), DEPOSIT);
        falseToken.setFailTransfers(true);

        _closeAs(payee, _claim(payerKey, id, 1, 300e6));

        assertEq(uint8(channel.getChannel(id).status), uint8(IPaymentChannel.Status.Closed));
        assertEq(channel.creditOf(payee, address(falseToken)), 300e6);
        assertEq(channel.creditOf(payer, address(falseToken)), DEPOSIT - 300e6);
        assertEq(falseToken.balanceOf(address(channel)), DEPOSIT, "credits fully backed");
    }

    // =========================================================================================
    // USDT-style token (no return value)
    // =========================================================================================

    function test_close_noReturnTokenEndToEnd() public {
        bytes32 id = _openToken(address(noReturn), DEPOSIT);
        vm.prank(payer);
        channel.topUp(_p(id), 500e6);
        assertEq(channel.getChannel(id).deposit, 1500e6);

        _settleAs(payee, _claim(payerKey, id, 1, 200e6));
        assertEq(noReturn.balanceOf(payee), 200e6);

        _closeAs(payee, _claim(payerKey, id, 2, 600e6));
        assertEq(noReturn.balanceOf(payee), 600e6);
        assertEq(noReturn.balanceOf(payer), FUNDS - 600e6);
        assertEq(noReturn.balanceOf(address(channel)), 0);
    }

    function test_withdraw_noReturnTokenRefundsPayer() public {
        bytes32 id = _openToken(address(noReturn), DEPOSIT);
        vm.prank(payer);
        channel.requestExit(_p(id));
        _settleAs(payee, _claim(payerKey, id, 1, 100e6));
        vm.warp(block.timestamp + PERIOD);

        channel.withdraw(_p(id));
        assertEq(noReturn.balanceOf(payee), 100e6);
        assertEq(noReturn.balanceOf(payer), FUNDS - 100e6);
        assertEq(noReturn.balanceOf(address(channel)), 0);
    }

    // =========================================================================================
    // Blacklisting token
    // =========================================================================================

    function test_close_blacklistedPayeeStillRefundsPayer() public {
        bytes32 id = _openToken(address(blToken), DEPOSIT);
        blToken.setBlacklisted(payee, true);

        _closeAs(payee, _claim(payerKey, id, 1, 300e6));

        assertEq(blToken.balanceOf(payer), FUNDS - 300e6, "payer refunded at once");
        assertEq(channel.creditOf(payee, address(blToken)), 300e6, "payee credited");
        assertEq(blToken.balanceOf(address(channel)), 300e6);

        // The payee cannot receive the token itself, but can send its credit elsewhere.
        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentChannel.CreditTransferFailed.selector, payee, blToken, 300e6
            )
        );
        vm.prank(payee);
        channel.withdrawCredit(address(blToken), payee);

        vm.prank(payee);
        channel.withdrawCredit(address(blToken), stranger);
        assertEq(blToken.balanceOf(stranger), 300e6);
        assertEq(blToken.balanceOf(address(channel)), 0);
    }

    function test_closeWithAuthorization_blacklistedPayeeStillRefundsPayer() public {
        bytes32 id = _openToken(address(blToken), DEPOSIT);
        blToken.setBlacklisted(payee, true);

        bytes memory sig = _closeAuthSig(payeeKey, id, 250e6);
        vm.prank(payer);
        channel.closeWithAuthorization(_p(id), 250e6, CLOSE_DEADLINE, sig);

        assertEq(blToken.balanceOf(payer), FUNDS - 250e6);
        assertEq(channel.creditOf(payee, address(blToken)), 250e6);
    }

    function test_close_blacklistedPayerStillPaysPayee() public {
        bytes32 id = _openToken(address(blToken), DEPOSIT);
        blToken.setBlacklisted(payer, true);

        _closeAs(payee, _claim(payerKey, id, 1, 300e6));

        assertEq(blToken.balanceOf(payee), 300e6, "payee paid at once");
        assertEq(channel.creditOf(payer, address(blToken)), DEPOSIT - 300e6, "refund credited");
    }

    function test_closeMany_blacklistedPayeeCreditedOnce() public {
        bytes32 a = _openToken(address(blToken), DEPOSIT);
        vm.prank(payer);
        bytes32 b = channel.open(_params(address(blToken), address(0), keccak256("b")), DEPOSIT);
        blToken.setBlacklisted(payee, true);

        IPaymentChannel.Claim[] memory claims = new IPaymentChannel.Claim[](2);
        claims[0] = _claim(payerKey, a, 1, 100e6);
        claims[1] = _claim(payerKey, b, 1, 200e6);
        vm.recordLogs();
        vm.prank(payee);
        assertEq(channel.closeMany(claims), 2);

        assertEq(channel.creditOf(payee, address(blToken)), 300e6);
        assertEq(blToken.balanceOf(payer), FUNDS - 300e6, "both refunds arrived");
        // The two payouts are aggregated into one transfer, so there is one credit.
        Vm.Log[] memory logs = vm.getRecordedLogs();
        uint256 credited;
        for (uint256 i; i < logs.length; ++i) {
            if (logs[i].topics[0] == IPaymentChannel.PayoutCredited.selector) ++credited;
        }
        assertEq(credited, 1, "one aggregated payout");
    }

    // =========================================================================================
    // Reentrancy
    // =========================================================================================

    function test_settle_reentrantSettleReverts() public {
        (bytes32 a, bytes32 b) = _openReentrantPair();
        IPaymentChannel.Claim memory claimB = _claim(payerKey, b, 1, 50e6);
        // The token is channel B's payee: outside the guard this call would pay it.
        reToken.arm(address(channel), abi.encodeCall(channel.settle, (claimB)));

        _settleAs(payee, _claim(payerKey, a, 1, 100e6));

        _assertReentryBlocked();
        assertEq(channel.getChannel(a).paid, 100e6);
        assertEq(reToken.balanceOf(payee), 100e6);
        assertEq(channel.getChannel(b).paid, 0, "B untouched");
        assertEq(reToken.balanceOf(address(channel)), 2 * DEPOSIT - 100e6);

        // The very same call succeeds outside the payout: only the guard stopped it.
        vm.prank(address(reToken));
        channel.settle(claimB);
        assertEq(channel.getChannel(b).paid, 50e6);
    }

    function test_close_reentrantCloseReverts() public {
        (bytes32 a, bytes32 b) = _openReentrantPair();
        IPaymentChannel.Claim memory claimB = _claim(payerKey, b, 1, 50e6);
        reToken.arm(address(channel), abi.encodeCall(channel.close, (claimB)));

        _closeAs(payee, _claim(payerKey, a, 1, 100e6));

        _assertReentryBlocked();
        assertEq(uint8(channel.getChannel(a).status), uint8(IPaymentChannel.Status.Closed));
        assertEq(uint8(channel.getChannel(b).status), uint8(IPaymentChannel.Status.Open));
        assertEq(reToken.balanceOf(payee), 100e6);
        assertEq(reToken.balanceOf(payer), FUNDS - 2 * DEPOSIT + (DEPOSIT - 100e6));
        assertEq(reToken.balanceOf(address(channel)), DEPOSIT, "only B's deposit left");
    }

    function test_closeMany_reentrantSettleReverts() public {
        (bytes32 a, bytes32 b) = _openReentrantPair();
        reToken.arm(
            address(channel), abi.encodeCall(channel.settle, (_claim(payerKey, b, 1, 50e6)))
        );

        assertEq(_closeManyAs(payee, _array(_claim(payerKey, a, 1, 100e6))), 1);

        _assertReentryBlocked();
        assertEq(channel.getChannel(b).paid, 0);
        assertEq(reToken.balanceOf(address(channel)), DEPOSIT);
    }

    function test_open_reentrantTopUpReverts() public {
        (, bytes32 b) = _openReentrantPair();
        // The token holds funds and has approved the channel, so it could top B up.
        reToken.mint(address(reToken), 10e6);
        reToken.selfApprove(address(channel), type(uint256).max);
        reToken.arm(address(channel), abi.encodeCall(channel.topUp, (_p(b), 10e6)));

        vm.prank(payer);
        bytes32 c = channel.open(_params(address(reToken), address(0), keccak256("c")), DEPOSIT);

        _assertReentryBlocked();
        assertEq(channel.getChannel(c).deposit, DEPOSIT);
        assertEq(channel.getChannel(b).deposit, DEPOSIT, "B not topped up");
        assertEq(reToken.balanceOf(address(channel)), 3 * DEPOSIT);

        vm.prank(address(reToken));
        channel.topUp(_p(b), 10e6);
        assertEq(channel.getChannel(b).deposit, DEPOSIT + 10e6);
    }

    function test_topUp_reentrantWithdrawReverts() public {
        (bytes32 a, bytes32 b) = _openReentrantPair();
        vm.startPrank(payer);
        channel.requestExit(_p(b));
        vm.warp(block.timestamp + PERIOD);
        vm.stopPrank();
        // Anyone may withdraw B now, but not from inside A's top-up.
        reToken.arm(address(channel), abi.encodeCall(channel.withdraw, (_p(b))));

        vm.prank(payer);
        channel.topUp(_p(a), 1e6);

        _assertReentryBlocked();
        assertEq(uint8(channel.getChannel(b).status), uint8(IPaymentChannel.Status.Open));
        assertEq(reToken.balanceOf(address(channel)), 2 * DEPOSIT + 1e6);
        channel.withdraw(_p(b));
        assertEq(reToken.balanceOf(address(channel)), DEPOSIT + 1e6);
    }

    function test_withdraw_reentrantWithdrawReverts() public {
        (bytes32 a, bytes32 b) = _openReentrantPair();
        vm.startPrank(payer);
        channel.requestExit(_p(a));
        channel.requestExit(_p(b));
        vm.stopPrank();
        vm.warp(block.timestamp + PERIOD);
        reToken.arm(address(channel), abi.encodeCall(channel.withdraw, (_p(b))));

        channel.withdraw(_p(a));

        _assertReentryBlocked();
        assertEq(uint8(channel.getChannel(b).status), uint8(IPaymentChannel.Status.Open));
        assertEq(reToken.balanceOf(address(channel)), DEPOSIT);
        assertEq(reToken.balanceOf(payer), FUNDS - DEPOSIT);
    }

    function test_settle_reentrantWithdrawCreditReverts() public {
        (bytes32 a,) = _openReentrantPair();
        // Give the token contract a native credit: it cannot receive ether.
        vm.prank(payer);
        bytes32 n = channel.open{value: 1 ether}(
            _paramsOf(payer, address(reToken), address(0), address(0), keccak256("n")), 1 ether
        );
        _closeAs(address(reToken), _claim(payerKey, n, 1, 0.4 ether));
        assertEq(channel.creditOf(address(reToken), address(0)), 0.4 ether);

        reToken.arm(
            address(channel), abi.encodeCall(channel.withdrawCredit, (address(0), stranger))
        );
        _settleAs(payee, _claim(payerKey, a, 1, 100e6));

        _assertReentryBlocked();
        assertEq(channel.creditOf(address(reToken), address(0)), 0.4 ether, "credit kept");
        assertEq(stranger.balance, 0);
        assertEq(address(channel).balance, 0.4 ether);
    }

    function test_withdrawCredit_reentrantSettleReverts() public {
        (bytes32 a, bytes32 b) = _openReentrantPair();
        // The payee cannot receive the token for a while: its payout is credited.
        reToken.setBlocked(payee, true);
        _settleAs(payee, _claim(payerKey, a, 1, 100e6));
        assertEq(channel.creditOf(payee, address(reToken)), 100e6);
        reToken.setBlocked(payee, false);

        reToken.arm(
            address(channel), abi.encodeCall(channel.settle, (_claim(payerKey, b, 1, 50e6)))
        );
        vm.prank(payee);
        assertEq(channel.withdrawCredit(address(reToken), payee), 100e6);

        _assertReentryBlocked();
        assertEq(reToken.balanceOf(payee), 100e6);
        assertEq(channel.creditOf(payee, address(reToken)), 0);
        assertEq(channel.getChannel(b).paid, 0, "B untouched");
        assertEq(reToken.balanceOf(address(channel)), 2 * DEPOSIT - 100e6);
    }

    // =========================================================================================
    // Reverting and gas-guzzling recipients of the native token
    // =========================================================================================

    function test_close_revertingPayeeCreditedPayerRefunded() public {
        RevertingReceiver r = new RevertingReceiver();
        bytes32 id = _openNativeTo(address(r), 1 ether);
        uint256 payerBefore = payer.balance;

        _closeAs(address(r), _claim(payerKey, id, 1, 0.3 ether));

        assertEq(payer.balance - payerBefore, 0.7 ether, "payer refunded at once");
        assertEq(channel.creditOf(address(r), address(0)), 0.3 ether);
        assertEq(address(channel).balance, 0.3 ether);

        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentChannel.CreditTransferFailed.selector, address(r), address(0), 0.3 ether
            )
        );
        vm.prank(address(r));
        channel.withdrawCredit(address(0), address(r));

        vm.prank(address(r));
        assertEq(channel.withdrawCredit(address(0), stranger), 0.3 ether);
        assertEq(stranger.balance, 0.3 ether);
        assertEq(address(channel).balance, 0);
    }

    function test_withdraw_revertingPayerCredited() public {
        RevertingReceiver r = new RevertingReceiver();
        vm.deal(address(r), 1 ether);
        vm.prank(address(r));
        bytes32 id = channel.open{value: 1 ether}(
            _paramsOf(address(r), payee, address(0), session, 0), 1 ether
        );
        vm.prank(address(r));
        channel.requestExit(_p(id));
        _settleAs(payee, _claim(sessionKey, id, 1, 0.25 ether));
        vm.warp(block.timestamp + PERIOD);

        vm.prank(stranger);
        channel.withdraw(_p(id));

        assertEq(payee.balance, 0.25 ether);
        assertEq(channel.creditOf(address(r), address(0)), 0.75 ether);
        vm.prank(address(r));
        channel.withdrawCredit(address(0), stranger);
        assertEq(stranger.balance, 0.75 ether);
        assertEq(address(channel).balance, 0);
    }

    function test_settle_gasGuzzlerPayeeCreditedWithBoundedGas() public {
        GasGuzzlerReceiver g = new GasGuzzlerReceiver();
        bytes32 id = _openNativeTo(address(g), 1 ether);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 0.5 ether);

        vm.prank(address(g));
        uint256 gasBefore = gasleft();
        channel.settle{gas: 5_000_000}(c);
        uint256 used = gasBefore - gasleft();

        assertEq(channel.creditOf(address(g), address(0)), 0.5 ether, "credited");
        assertEq(channel.getChannel(id).paid, 0.5 ether);
        assertEq(g.spins(), 0, "the receive hook's work was rolled back");
        // The payout forwards at most 100k gas, so the guzzler cannot eat the 5M given.
        assertLt(used, 250_000, "payout gas is bounded");

        vm.prank(address(g));
        channel.withdrawCredit(address(0), stranger);
        assertEq(stranger.balance, 0.5 ether);
    }

    function test_closeMany_gasGuzzlerPayersCredited() public {
        GasGuzzlerReceiver g = new GasGuzzlerReceiver();
        vm.deal(address(g), 2 ether);
        vm.startPrank(address(g));
        bytes32 a = channel.open{value: 1 ether}(
            _paramsOf(address(g), payee, address(0), session, keccak256("a")), 1 ether
        );
        bytes32 b = channel.open{value: 1 ether}(
            _paramsOf(address(g), payee, address(0), session, keccak256("b")), 1 ether
        );
        vm.stopPrank();

        IPaymentChannel.Claim[] memory claims = new IPaymentChannel.Claim[](2);
        claims[0] = _claim(sessionKey, a, 1, 0.1 ether);
        claims[1] = _claim(sessionKey, b, 1, 0.2 ether);
        vm.prank(payee);
        uint256 gasBefore = gasleft();
        assertEq(channel.closeMany{gas: 5_000_000}(claims), 2);
        assertLt(gasBefore - gasleft(), 500_000, "two bounded refunds");

        assertEq(payee.balance, 0.3 ether, "payee paid in one transfer");
        assertEq(channel.creditOf(address(g), address(0)), 1.7 ether, "both refunds credited");
        assertEq(address(channel).balance, 1.7 ether);
    }

    // =========================================================================================
    // EIP-1271 wallets
    // =========================================================================================

    function test_settle_erc1271PayerOwnerSignatureSettles() public {
        (address owner, uint256 ownerKey) = makeAddrAndKey("wallet owner");
        ERC1271Wallet wallet = new ERC1271Wallet(owner);
        bytes32 id = _openFromWallet(address(wallet));

        _settleAs(payee, _claim(ownerKey, id, 1, 100e6));

        assertEq(channel.getChannel(id).paid, 100e6);
        assertEq(usd.balanceOf(payee), 100e6);
    }

    function test_settle_erc1271PayerOtherKeyRefused() public {
        (address owner,) = makeAddrAndKey("wallet owner");
        ERC1271Wallet wallet = new ERC1271Wallet(owner);
        bytes32 id = _openFromWallet(address(wallet));

        // Signed by a key that is not the wallet's owner (here: the fixture payer).
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.InvalidSignature.selector, id, wallet)
        );
        vm.prank(payee);
        channel.settle(c);
        assertEq(channel.getChannel(id).paid, 0);
    }

    function test_settle_rejectingWalletNeverSettles() public {
        RejectingWallet wallet = new RejectingWallet();
        bytes32 id = _openFromWallet(address(wallet));
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);

        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.InvalidSignature.selector, id, wallet)
        );
        vm.prank(payee);
        channel.settle(c);

        vm.prank(payee);
        assertEq(channel.settleMany(_array(c)), 0, "batch skips it");

        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.InvalidSignature.selector, id, wallet)
        );
        vm.prank(payee);
        channel.close(c);

        // During an exit a watcher with the payee's authorisation cannot redeem it either; the
        // wallet gets everything back.
        vm.prank(address(wallet));
        channel.requestExit(_p(id));
        bytes memory auth = _claimAuthSig(payeeKey, id, 1, 100e6);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.InvalidSignature.selector, id, wallet)
        );
        vm.prank(watcher);
        channel.settleAuthorized(c, auth);
        vm.warp(block.timestamp + PERIOD);
        channel.withdraw(_p(id));
        assertEq(usd.balanceOf(address(wallet)), DEPOSIT);
        assertEq(usd.balanceOf(payee), 0);
    }

    function test_closeWithAuthorization_erc1271PayeeSigns() public {
        ERC1271Wallet payeeWallet = new ERC1271Wallet(payee);
        vm.prank(payer);
        bytes32 id = channel.open(
            _paramsOf(payer, address(payeeWallet), address(usd), address(0), bytes32(0)), DEPOSIT
        );

        // A signature by another key is refused.
        bytes memory bad = _closeAuthSig(sessionKey, id, 400e6);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.InvalidCloseAuthorization.selector, id)
        );
        vm.prank(payer);
        channel.closeWithAuthorization(_p(id), 400e6, CLOSE_DEADLINE, bad);

        // The wallet owner's signature is valid for the wallet.
        bytes memory good = _closeAuthSig(payeeKey, id, 400e6);
        vm.prank(payer);
        channel.closeWithAuthorization(_p(id), 400e6, CLOSE_DEADLINE, good);

        assertEq(usd.balanceOf(address(payeeWallet)), 400e6);
        assertEq(usd.balanceOf(payer), FUNDS - 400e6);
        assertEq(uint8(channel.getChannel(id).status), uint8(IPaymentChannel.Status.Closed));
    }

    // =========================================================================================
    // Malleable and wrong-domain signatures
    // =========================================================================================

    function test_closeWithAuthorization_highSSignatureRefused() public {
        bytes32 id = _openUsd(DEPOSIT);
        bytes memory sig = _highS(_closeAuthSig(payeeKey, id, 100e6));

        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.InvalidCloseAuthorization.selector, id)
        );
        vm.prank(payer);
        channel.closeWithAuthorization(_p(id), 100e6, CLOSE_DEADLINE, sig);
    }

    function test_settle_erc1271HighSSignatureRefused() public {
        (address owner, uint256 ownerKey) = makeAddrAndKey("wallet owner");
        ERC1271Wallet wallet = new ERC1271Wallet(owner);
        bytes32 id = _openFromWallet(address(wallet));
        IPaymentChannel.Claim memory c = _claim(ownerKey, id, 1, 100e6);
        c.signature = _highS(c.signature);

        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.InvalidSignature.selector, id, wallet)
        );
        vm.prank(payee);
        channel.settle(c);
    }

    // =========================================================================================
    // Helpers
    // =========================================================================================

    function _settleAs(address by, IPaymentChannel.Claim memory c) internal {
        vm.prank(by);
        channel.settle(c);
    }

    function _closeAs(address by, IPaymentChannel.Claim memory c) internal {
        vm.prank(by);
        channel.close(c);
    }

    function _closeManyAs(address by, IPaymentChannel.Claim[] memory c) internal returns (uint256) {
        vm.prank(by);
        return channel.closeMany(c);
    }

    function _openToken(address token, uint256 deposit) internal returns (bytes32 id) {
        vm.prank(payer);
        id = channel.open(_params(token, address(0), bytes32(0)), deposit);
    }

    function _openNativeTo(address to, uint256 deposit) internal returns (bytes32 id) {
        vm.prank(payer);
        id = channel.open{value: deposit}(_paramsOf(payer, to, address(0), address(0), 0), deposit);
    }

    /// A USD channel whose payer is `wallet` and whose vouchers it verifies (signer = 0).
    function _openFromWallet(address wallet) internal returns (bytes32 id) {
        usd.mint(wallet, DEPOSIT);
        vm.startPrank(wallet);
        usd.approve(address(channel), DEPOSIT);
        id = channel.open(_paramsOf(wallet, payee, address(usd), address(0), bytes32(0)), DEPOSIT);
        vm.stopPrank();
    }

    /// Channel A pays the fixture payee; channel B pays the reentrant token contract itself,
    /// so a reentrant settle or close of B from inside the token would be authorised.
    function _openReentrantPair() internal returns (bytes32 a, bytes32 b) {
        vm.startPrank(payer);
        a = channel.open(_params(address(reToken), address(0), keccak256("a")), DEPOSIT);
        b = channel.open(
            _paramsOf(payer, address(reToken), address(reToken), address(0), keccak256("b")),
            DEPOSIT
        );
        vm.stopPrank();
    }

    function _assertReentryBlocked() internal view {
        assertEq(reToken.attempts(), 1, "the token called back");
        assertEq(reToken.successes(), 0, "the reentrant call went through");
        assertEq(
            reToken.lastSelector(),
            ReentrancyGuardTransient.ReentrancyGuardReentrantCall.selector,
            "refused by the reentrancy guard"
        );
    }

    function _assertFeeTokenCovered(bytes32 id) internal view {
        IPaymentChannel.Channel memory c = channel.getChannel(id);
        assertEq(feeToken.balanceOf(address(channel)), c.deposit - c.paid, "balance covers");
    }
}

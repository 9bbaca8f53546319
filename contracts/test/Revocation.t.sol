// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Vm} from "forge-std/Vm.sol";

import {IPaymentChannel} from "../src/interfaces/IPaymentChannel.sol";
import {ERC1271Wallet} from "./mocks/ERC1271Wallet.sol";
import {
    FalseDelegate,
    GasBombWallet,
    RevertingDelegate,
    ReturnBombWallet,
    RevocableWallet
} from "./mocks/HostileWallets.sol";
import {ChannelFixture} from "./utils/ChannelFixture.sol";

/// @notice Regression tests of issue 13: signatures no payer can revoke (EIP-7702, ERC-1271),
/// batches no item can sink (gas and return-data bombs, starved stipends), claims only the
/// payee authorises, parameters checked against the channel id, ids that never reopen.
/// The EIP-7702 cases need the Prague rules (`evm_version = "prague"` in foundry.toml).
contract RevocationTest is ChannelFixture {
    address internal falseDelegate;
    address internal revertingDelegate;
    address internal burningDelegate;

    function setUp() public override {
        super.setUp();
        falseDelegate = address(new FalseDelegate());
        revertingDelegate = address(new RevertingDelegate());
        burningDelegate = address(new GasBombWallet());
    }

    // ---------------------------------------------------------------------------------------
    // EIP-7702: a delegating payer cannot void its vouchers
    // ---------------------------------------------------------------------------------------

    /// Delegates `key`'s account to `delegate` (or removes the delegation for `address(0)`),
    /// with a harmless EIP-7702 transaction.
    function _delegate(address delegate, uint256 key) internal {
        vm.signAndAttachDelegation(delegate, key);
        vm.prank(stranger);
        (bool ok,) = vm.addr(key).call("");
        ok; // A delegate without a fallback reverts: the delegation is set either way.
        if (delegate == address(0)) {
            assertEq(vm.addr(key).code.length, 0, "delegation removed");
        } else {
            assertEq(vm.addr(key).code, abi.encodePacked(hex"ef0100", delegate), "delegation set");
        }
    }

    function _delegates() internal view returns (address[3] memory) {
        return [falseDelegate, revertingDelegate, burningDelegate];
    }

    function test_settle_delegatedPayerVoucherStillValid() public {
        for (uint256 i; i < 3; ++i) {
            bytes32 id = _open(_params(address(usd), address(0), bytes32(i)), DEPOSIT);
            IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
            _delegate(_delegates()[i], payerKey);
            vm.prank(payee);
            channel.settle(c);
            assertEq(channel.getChannel(id).paid, 100e6);
        }
        assertEq(usd.balanceOf(payee), 300e6);
    }

    function test_close_delegatedPayerVoucherStillValid() public {
        for (uint256 i; i < 3; ++i) {
            bytes32 id = _open(_params(address(usd), address(0), bytes32(i)), DEPOSIT);
            IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
            _delegate(_delegates()[i], payerKey);
            vm.prank(payee);
            channel.close(c);
            assertEq(uint8(channel.getChannel(id).status), uint8(IPaymentChannel.Status.Closed));
        }
        assertEq(usd.balanceOf(payee), 300e6);
        assertEq(usd.balanceOf(payer), FUNDS - 300e6);
    }

    function test_settleAuthorized_delegatedPayerAndPayeeStillValid() public {
        for (uint256 i; i < 3; ++i) {
            bytes32 id = _open(_params(address(usd), address(0), bytes32(i)), DEPOSIT);
            IPaymentChannel.Claim memory c = _partial(payerKey, id, 1, 110e6, 10e6);
            bytes memory auth = _claimAuthSig(payeeKey, id, 1, 10e6);
            _requestExit(id);
            _delegate(_delegates()[i], payerKey);
            _delegate(_delegates()[i], payeeKey);
            vm.prank(watcher);
            channel.settleAuthorized(c, auth);
            assertEq(channel.getChannel(id).paid, 10e6);
        }
        assertEq(usd.balanceOf(payee), 30e6);
    }

    function test_settle_delegatedSessionKeyVoucherStillValid() public {
        for (uint256 i; i < 3; ++i) {
            bytes32 id = _openUsdWithSession(DEPOSIT, bytes32(i));
            IPaymentChannel.Claim memory c = _claim(sessionKey, id, 1, 100e6);
            _delegate(_delegates()[i], sessionKey);
            vm.prank(payee);
            channel.settle(c);
            assertEq(channel.getChannel(id).paid, 100e6);
        }
    }

    function test_settle_toggledDelegationChangesNothing() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c1 = _claim(payerKey, id, 1, 100e6);
        IPaymentChannel.Claim memory c2 = _claim(payerKey, id, 2, 200e6);
        IPaymentChannel.Claim memory c3 = _claim(payerKey, id, 3, 300e6);

        _delegate(falseDelegate, payerKey);
        vm.prank(payee);
        channel.settle(c1);
        _delegate(address(0), payerKey);
        vm.prank(payee);
        channel.settle(c2);
        _delegate(revertingDelegate, payerKey);
        vm.prank(payee);
        channel.close(c3);

        assertEq(usd.balanceOf(payee), 300e6);
        assertEq(usd.balanceOf(payer), FUNDS - 300e6);
    }

    function test_withdraw_delegatedPayerCannotOutrunTheClaim() public {
        // The attack of issue 13: served, the payer delegates, exits and withdraws. The payee's
        // claim lands during the challenge period; the payer gets only the rest.
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 7, 400e6);
        _delegate(revertingDelegate, payerKey);
        _requestExit(id);
        vm.prank(payee);
        channel.settle(c);
        vm.warp(block.timestamp + PERIOD);
        channel.withdraw(_p(id));
        assertEq(usd.balanceOf(payee), 400e6);
        assertEq(usd.balanceOf(payer), FUNDS - 400e6);
    }

    // ---------------------------------------------------------------------------------------
    // ERC-1271 signers decide at redemption time
    // ---------------------------------------------------------------------------------------

    function _walletChannel(address wallet, bytes32 salt) internal returns (bytes32 id) {
        _fund(wallet);
        IPaymentChannel.ChannelParams memory p = _params(address(usd), address(0), salt);
        p.payer = wallet;
        id = _open(p, DEPOSIT);
    }

    function test_settle_erc1271WalletSignatureValid() public {
        bytes32 id = _walletChannel(address(new ERC1271Wallet(payer)), 0);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        vm.prank(payee);
        channel.settle(c);
        assertEq(usd.balanceOf(payee), 100e6);
    }

    function test_settle_erc1271WalletThatLaterSaysNoRevokes() public {
        // Documented: a contract signer can revoke its vouchers by changing its answer. That is
        // why the node refuses contract signers unless `payment.accept_contract_signers` is set.
        RevocableWallet wallet = new RevocableWallet(payer);
        bytes32 id = _walletChannel(address(wallet), 0);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        wallet.setRevoked(true);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.InvalidSignature.selector, id, address(wallet))
        );
        vm.prank(payee);
        channel.settle(c);

        wallet.setRevoked(false);
        vm.prank(payee);
        channel.settle(c);
        assertEq(usd.balanceOf(payee), 100e6);
    }

    function test_settleMany_erc1271WalletThatSaysNoIsSkipped() public {
        RevocableWallet wallet = new RevocableWallet(payer);
        bytes32 bad = _walletChannel(address(wallet), 0);
        bytes32 good = _openUsd(DEPOSIT);
        IPaymentChannel.Claim[] memory claims = new IPaymentChannel.Claim[](2);
        claims[0] = _claim(payerKey, bad, 1, 100e6);
        claims[1] = _claim(payerKey, good, 1, 50e6);
        wallet.setRevoked(true);
        vm.expectEmit(address(channel));
        emit IPaymentChannel.ClaimSkipped(
            bad,
            abi.encodeWithSelector(IPaymentChannel.InvalidSignature.selector, bad, address(wallet))
        );
        vm.prank(payee);
        assertEq(channel.settleMany(claims), 1);
        assertEq(usd.balanceOf(payee), 50e6);
    }

    function test_settle_returnDataOfWalletReadOnlyFirstWord() public {
        // A wallet returning 4 KiB that start with the magic value: only 32 bytes are read.
        bytes32 id = _walletChannel(address(new ReturnBombWallet(4096)), 0);
        IPaymentChannel.Claim memory c = _claim(payeeKey, id, 1, 100e6);
        vm.prank(payee);
        channel.settle(c);
        assertEq(usd.balanceOf(payee), 100e6);
    }

    // ---------------------------------------------------------------------------------------
    // Gas and return-data bombs in batches
    // ---------------------------------------------------------------------------------------

    uint256 internal constant HONEST = 20;

    enum Batch {
        Settle,
        Close,
        SettleAuthorized
    }

    /// Twenty honest channels from distinct clients, and a hostile wallet's channel.
    function _bombSetup(address bomb)
        internal
        returns (IPaymentChannel.Claim[] memory honest, IPaymentChannel.Claim memory hostile)
    {
        honest = new IPaymentChannel.Claim[](HONEST);
        for (uint256 i; i < HONEST; ++i) {
            uint256 key = uint256(keccak256(abi.encode("honest", i))) % SECP256K1_N;
            _fund(vm.addr(key));
            IPaymentChannel.ChannelParams memory p = _params(address(usd), address(0), bytes32(i));
            p.payer = vm.addr(key);
            honest[i] = _claim(key, _open(p, DEPOSIT), 1, 100e6);
        }
        // The hostile wallet's voucher is an ECDSA signature of another key: recovery fails,
        // so the contract asks the wallet.
        hostile = _claim(payeeKey, _walletChannel(bomb, "bomb"), 1, 1e6);
    }

    function _authorizations(IPaymentChannel.Claim[] memory claims)
        internal
        view
        returns (bytes[] memory sigs)
    {
        sigs = new bytes[](claims.length);
        for (uint256 i; i < claims.length; ++i) {
            bytes32 id = channel.computeChannelId(claims[i].channel);
            sigs[i] = _claimAuthSig(payeeKey, id, claims[i].nonce, claims[i].claimed);
        }
    }

    /// Runs `claims` as a batch of `kind` with cold storage, returning (items applied, gas).
    function _runBatch(Batch kind, IPaymentChannel.Claim[] memory claims, address bomb)
        internal
        returns (uint256 applied, uint256 gasUsed)
    {
        bytes[] memory sigs = _authorizations(claims);
        vm.cool(address(channel));
        vm.cool(address(usd));
        vm.cool(bomb);
        uint256 before;
        if (kind == Batch.Settle) {
            vm.prank(payee);
            before = gasleft();
            applied = channel.settleMany(claims);
        } else if (kind == Batch.Close) {
            vm.prank(payee);
            before = gasleft();
            applied = channel.closeMany(claims);
        } else {
            vm.prank(watcher);
            before = gasleft();
            applied = channel.settleManyAuthorized(claims, sigs);
        }
        gasUsed = before - gasleft();
    }

    /// The bomb at `position` of a 21-item batch: the 20 honest items apply, the bomb is skipped,
    /// and the batch costs less than 10% more than the 20 honest items alone.
    function _bombBatch(address bomb, Batch kind, uint256 position) internal {
        (IPaymentChannel.Claim[] memory honest, IPaymentChannel.Claim memory hostile) =
            _bombSetup(bomb);
        IPaymentChannel.Claim[] memory all = new IPaymentChannel.Claim[](HONEST + 1);
        for (uint256 i; i < HONEST + 1; ++i) {
            if (i < position) all[i] = honest[i];
            else if (i == position) all[i] = hostile;
            else all[i] = honest[i - 1];
        }
        uint256 snapshot = vm.snapshotState();
        (uint256 appliedHonest, uint256 gasHonest) = _runBatch(kind, honest, bomb);
        assertEq(appliedHonest, HONEST);
        vm.revertToState(snapshot);

        bytes32 hostileId = channel.computeChannelId(hostile.channel);
        vm.recordLogs();
        (uint256 applied, uint256 gasAll) = _runBatch(kind, all, bomb);
        assertEq(applied, HONEST, "the honest items apply");
        assertEq(usd.balanceOf(payee), HONEST * 100e6, "the payee is paid for them");
        assertEq(channel.getChannel(hostileId).paid, 0);
        assertEq(uint8(channel.getChannel(hostileId).status), uint8(IPaymentChannel.Status.Open));
        _assertSkippedOnce(hostileId, bomb);
        emit log_named_uint("honest-only batch gas", gasHonest);
        emit log_named_uint("batch with the bomb, gas", gasAll);
        assertLt(gasAll * 10, gasHonest * 11, "the bomb costs the batch under 10%");
    }

    function _assertSkippedOnce(bytes32 hostileId, address bomb) internal {
        Vm.Log[] memory logs = vm.getRecordedLogs();
        uint256 skipped;
        for (uint256 i; i < logs.length; ++i) {
            if (logs[i].topics[0] == IPaymentChannel.ClaimSkipped.selector) {
                assertEq(logs[i].topics[1], hostileId);
                assertEq(
                    abi.decode(logs[i].data, (bytes)),
                    abi.encodeWithSelector(
                        IPaymentChannel.InvalidSignature.selector, hostileId, bomb
                    )
                );
                ++skipped;
            }
        }
        assertEq(skipped, 1, "the bomb is skipped");
    }

    function _bombs() internal returns (address[2] memory) {
        return [address(new GasBombWallet()), address(new ReturnBombWallet(1 << 20))];
    }

    function test_settleMany_bombFirstMiddleLastIsSkipped() public {
        address[2] memory bombs = _bombs();
        for (uint256 b; b < 2; ++b) {
            for (uint256 pos; pos <= HONEST; pos += HONEST / 2) {
                uint256 s = vm.snapshotState();
                _bombBatch(bombs[b], Batch.Settle, pos);
                vm.revertToState(s);
            }
        }
    }

    function test_closeMany_bombFirstMiddleLastIsSkipped() public {
        address[2] memory bombs = _bombs();
        for (uint256 b; b < 2; ++b) {
            for (uint256 pos; pos <= HONEST; pos += HONEST / 2) {
                uint256 s = vm.snapshotState();
                _bombBatch(bombs[b], Batch.Close, pos);
                vm.revertToState(s);
            }
        }
    }

    function test_settleManyAuthorized_bombFirstMiddleLastIsSkipped() public {
        address[2] memory bombs = _bombs();
        for (uint256 b; b < 2; ++b) {
            for (uint256 pos; pos <= HONEST; pos += HONEST / 2) {
                uint256 s = vm.snapshotState();
                _bombBatch(bombs[b], Batch.SettleAuthorized, pos);
                vm.revertToState(s);
            }
        }
    }

    function test_settleMany_starvedStipendRevertsWholeBatch() public {
        // An honest wallet's item must never be skipped because the submitter sent too little
        // gas: for every gas limit the batch either applies the item or reverts.
        bytes32 id = _walletChannel(address(new ERC1271Wallet(payer)), 0);
        IPaymentChannel.Claim[] memory claims = new IPaymentChannel.Claim[](1);
        // An EIP-1271 signature the wallet accepts but ECDSA recovery does not give the wallet.
        claims[0] = _claim(payerKey, id, 1, 100e6);
        uint256 starved;
        for (uint256 limit = 10_000; limit < 80_000; limit += 1000) {
            vm.prank(payee);
            try channel.settleMany{gas: limit}(claims) returns (uint256 settled) {
                assertEq(settled, 1, "an honest item is never skipped for lack of gas");
                assertEq(channel.getChannel(id).paid, 100e6);
                assertGt(starved, 0, "some limit starved the check");
                return;
            } catch (bytes memory reason) {
                if (
                    keccak256(reason)
                        == keccak256(
                            abi.encodeWithSelector(
                                IPaymentChannel.InsufficientGasForSignatureCheck.selector
                            )
                        )
                ) {
                    ++starved;
                }
            }
        }
        revert("no gas limit settled the item");
    }

    function test_settle_starvedStipendRevertsInsufficientGas() public {
        bytes32 id = _walletChannel(address(new ERC1271Wallet(payer)), 0);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        // Enough to reach the check, not enough to give the stipend.
        uint256 limit = channel.ERC1271_GAS_STIPEND() + 5000;
        vm.prank(payee);
        vm.expectRevert(IPaymentChannel.InsufficientGasForSignatureCheck.selector);
        channel.settle{gas: limit}(c);
    }

    // ---------------------------------------------------------------------------------------
    // Claims only the payee authorises
    // ---------------------------------------------------------------------------------------

    function test_settle_revertsForStrangerWithoutExit() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 110e6);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.NotPayee.selector, stranger, payee));
        vm.prank(stranger);
        channel.settle(c);
    }

    function test_settle_revertsForStrangerDuringExit() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 110e6);
        _requestExit(id);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.NotPayee.selector, stranger, payee));
        vm.prank(stranger);
        channel.settle(c);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.NotPayee.selector, payer, payee));
        vm.prank(payer);
        channel.settle(c);
    }

    function test_settleAuthorized_strangerClaimsPartialWithoutExit() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _partial(payerKey, id, 4, 110e6, 10e6);
        vm.expectEmit(address(channel));
        emit IPaymentChannel.Settled(id, 4, 10e6, 10e6);
        bytes memory auth = _claimAuthSig(payeeKey, id, 4, 10e6);
        vm.prank(stranger);
        channel.settleAuthorized(c, auth);
        assertEq(usd.balanceOf(payee), 10e6);
        assertEq(channel.getChannel(id).paid, 10e6);
    }

    function test_settleAuthorized_strangerClaimsPartialDuringExit() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _partial(payerKey, id, 4, 110e6, 10e6);
        _requestExit(id);
        bytes memory auth = _claimAuthSig(payeeKey, id, 4, 10e6);
        vm.prank(stranger);
        channel.settleAuthorized(c, auth);
        assertEq(usd.balanceOf(payee), 10e6);
        vm.warp(block.timestamp + PERIOD);
        channel.withdraw(_p(id));
        assertEq(usd.balanceOf(payer), FUNDS - 10e6, "the unused ceiling is refunded");
    }

    function test_settleAuthorized_survivesPayerTopUpDuringExit() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _partial(payerKey, id, 4, 110e6, 10e6);
        bytes memory auth = _claimAuthSig(payeeKey, id, 4, 10e6);
        _requestExit(id);
        // The payer front-runs the watcher with a 1-unit top-up, which cancels the exit.
        vm.prank(payer);
        channel.topUp(_p(id), 1);
        assertEq(channel.getChannel(id).exitAt, 0);
        vm.prank(watcher);
        channel.settleAuthorized(c, auth);
        assertEq(usd.balanceOf(payee), 10e6);
    }

    function test_settleAuthorized_revertsWhenStrangerClaimsCeiling() public {
        // The payee authorised 10; nobody can turn that into the 110 ceiling.
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 4, 110e6);
        bytes memory auth = _claimAuthSig(payeeKey, id, 4, 10e6);
        _requestExit(id);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.InvalidClaimAuthorization.selector, id)
        );
        vm.prank(stranger);
        channel.settleAuthorized(c, auth);
    }

    function test_settleAuthorized_revertsForWrongSigner() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _partial(payerKey, id, 4, 110e6, 10e6);
        uint256[2] memory keys = [payerKey, sessionKey];
        for (uint256 i; i < 2; ++i) {
            bytes memory auth = _claimAuthSig(keys[i], id, 4, 10e6);
            vm.expectRevert(
                abi.encodeWithSelector(IPaymentChannel.InvalidClaimAuthorization.selector, id)
            );
            vm.prank(stranger);
            channel.settleAuthorized(c, auth);
        }
    }

    function test_settleAuthorized_revertsForOtherNonce() public {
        bytes32 id = _openUsd(DEPOSIT);
        bytes memory auth = _claimAuthSig(payeeKey, id, 5, 10e6);
        IPaymentChannel.Claim memory c = _partial(payerKey, id, 4, 110e6, 10e6);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.InvalidClaimAuthorization.selector, id)
        );
        vm.prank(stranger);
        channel.settleAuthorized(c, auth);
    }

    function test_settleAuthorized_revertsForOtherChannel() public {
        bytes32 a = _openUsd(DEPOSIT);
        bytes32 b = _openUsdWithSession(DEPOSIT, "b");
        bytes memory auth = _claimAuthSig(payeeKey, a, 4, 10e6);
        IPaymentChannel.Claim memory c = _partial(sessionKey, b, 4, 110e6, 10e6);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.InvalidClaimAuthorization.selector, b)
        );
        vm.prank(stranger);
        channel.settleAuthorized(c, auth);
    }

    function test_settleAuthorized_replayPaysNothingMore() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _partial(payerKey, id, 4, 110e6, 10e6);
        bytes memory auth = _claimAuthSig(payeeKey, id, 4, 10e6);
        vm.prank(stranger);
        channel.settleAuthorized(c, auth);
        // The same authorisation again: pays nothing.
        vm.prank(stranger);
        channel.settleAuthorized(c, auth);
        assertEq(usd.balanceOf(payee), 10e6);
        // After the payee claimed more, the old authorisation is refused.
        IPaymentChannel.Claim memory more = _partial(payerKey, id, 5, 110e6, 50e6);
        vm.prank(payee);
        channel.settle(more);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.ClaimBelowPaid.selector, 10e6, 50e6));
        vm.prank(stranger);
        channel.settleAuthorized(c, auth);
        assertEq(usd.balanceOf(payee), 50e6);
    }

    function test_settleAuthorized_revertsAtExitAt() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _partial(payerKey, id, 4, 110e6, 10e6);
        uint256 exitAt = _requestExit(id);
        bytes memory auth = _claimAuthSig(payeeKey, id, 4, 10e6);
        vm.warp(exitAt);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannel.ChallengePeriodOver.selector, id, exitAt)
        );
        vm.prank(stranger);
        channel.settleAuthorized(c, auth);
    }

    function test_settleAuthorized_revertsWithoutVoucher() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _partial(payerKey, id, 4, 110e6, 10e6);
        c.signature = "";
        bytes memory auth = _claimAuthSig(payeeKey, id, 4, 10e6);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.MissingSignature.selector, id));
        vm.prank(stranger);
        channel.settleAuthorized(c, auth);
    }

    function test_settleManyAuthorized_paysEachPayeeAndSkipsBadItems() public {
        bytes32 a = _openUsd(DEPOSIT);
        bytes32 b = _openUsdWithSession(DEPOSIT, "b");
        IPaymentChannel.Claim[] memory claims = new IPaymentChannel.Claim[](3);
        claims[0] = _partial(payerKey, a, 1, 110e6, 10e6);
        claims[1] = _partial(sessionKey, b, 1, 110e6, 20e6);
        claims[2] = _partial(sessionKey, b, 2, 110e6, 30e6);
        bytes[] memory sigs = new bytes[](3);
        sigs[0] = _claimAuthSig(payeeKey, a, 1, 10e6);
        sigs[1] = _claimAuthSig(payeeKey, b, 1, 20e6);
        sigs[2] = _claimAuthSig(payerKey, b, 2, 30e6); // not the payee's
        vm.expectEmit(address(channel));
        emit IPaymentChannel.ClaimSkipped(
            b, abi.encodeWithSelector(IPaymentChannel.InvalidClaimAuthorization.selector, b)
        );
        vm.prank(stranger);
        assertEq(channel.settleManyAuthorized(claims, sigs), 2);
        assertEq(usd.balanceOf(payee), 30e6);
    }

    function test_settleManyAuthorized_paysEachPayeeOncePerToken() public {
        // Two providers, two tokens: each payee is paid once per token, whoever submits.
        (address other, uint256 otherKey) = makeAddrAndKey("other provider");
        bytes32 a = _openUsd(DEPOSIT);
        bytes32 b = _open(_paramsOf(payer, other, address(usd), address(0), "b"), DEPOSIT);
        bytes32 c = _open(_paramsOf(payer, other, address(0), address(0), "c"), 1 ether);
        bytes32 d = _open(_params(address(usd), address(0), "d"), DEPOSIT);
        IPaymentChannel.Claim[] memory claims = new IPaymentChannel.Claim[](4);
        claims[0] = _partial(payerKey, a, 1, 110e6, 10e6);
        claims[1] = _partial(payerKey, b, 1, 110e6, 20e6);
        claims[2] = _partial(payerKey, c, 1, 0.5 ether, 0.1 ether);
        claims[3] = _partial(payerKey, d, 1, 110e6, 30e6);
        bytes[] memory sigs = new bytes[](4);
        sigs[0] = _claimAuthSig(payeeKey, a, 1, 10e6);
        sigs[1] = _claimAuthSig(otherKey, b, 1, 20e6);
        sigs[2] = _claimAuthSig(otherKey, c, 1, 0.1 ether);
        sigs[3] = _claimAuthSig(payeeKey, d, 1, 30e6);
        vm.recordLogs();
        vm.prank(watcher);
        assertEq(channel.settleManyAuthorized(claims, sigs), 4);
        // One USD transfer to each payee, one native transfer to the other provider.
        assertEq(_transfersFrom(vm.getRecordedLogs(), address(usd), address(channel)), 2);
        assertEq(usd.balanceOf(payee), 40e6);
        assertEq(usd.balanceOf(other), 20e6);
        assertEq(other.balance, 0.1 ether);
        assertEq(usd.balanceOf(watcher), 0);
    }

    function test_settleManyAuthorized_revertsOnLengthMismatch() public {
        IPaymentChannel.Claim[] memory claims = new IPaymentChannel.Claim[](2);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.LengthMismatch.selector, 2, 1));
        channel.settleManyAuthorized(claims, new bytes[](1));
    }

    // ---------------------------------------------------------------------------------------
    // Parameters are checked against the channel id; ids never reopen
    // ---------------------------------------------------------------------------------------

    function test_settle_revertsWhenParamsDoNotHashToChannel() public {
        bytes32 id = _openUsd(DEPOSIT);
        for (uint256 field; field < 6; ++field) {
            IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
            if (field == 0) c.channel.payer = stranger;
            if (field == 1) c.channel.payee = stranger;
            if (field == 2) c.channel.token = address(0);
            if (field == 3) c.channel.signer = payer;
            if (field == 4) c.channel.challengePeriod = PERIOD + 1;
            if (field == 5) c.channel.salt = "other";
            bytes32 wrong = channel.computeChannelId(c.channel);
            assertTrue(wrong != id);
            vm.expectRevert(
                abi.encodeWithSelector(
                    IPaymentChannel.ChannelNotOpen.selector, wrong, IPaymentChannel.Status.None
                )
            );
            vm.prank(field == 1 ? stranger : payee);
            channel.settle(c);
        }
        // The payer cannot exit a channel it names wrongly either.
        IPaymentChannel.ChannelParams memory p = _p(id);
        p.salt = "other";
        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentChannel.ChannelNotOpen.selector,
                channel.computeChannelId(p),
                IPaymentChannel.Status.None
            )
        );
        vm.prank(payer);
        channel.requestExit(p);
    }

    function test_settle_dirtyParamWordsNameNoChannel() public {
        // Parameters with dirty high bits hash to an id no channel has.
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1, 100e6);
        bytes memory data = abi.encodeCall(IPaymentChannel.settle, (c));
        // Word 0 of the claim (after the selector and the claim's offset) is the payer.
        data[4 + 32] = 0x01;
        vm.prank(payee);
        (bool ok, bytes memory reason) = address(channel).call(data);
        assertFalse(ok);
        // forge-lint: disable-next-line(unsafe-typecast) the selector is the first 4 bytes
        assertEq(bytes4(reason), IPaymentChannel.ChannelNotOpen.selector);
        assertEq(channel.getChannel(id).paid, 0);
    }

    function test_open_revertsWhenCallerIsNotPayer() public {
        IPaymentChannel.ChannelParams memory p = _params(address(usd), address(0), 0);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.NotPayer.selector, stranger, payer));
        vm.prank(stranger);
        channel.open(p, DEPOSIT);
    }

    function test_open_closedIdNeverReopens() public {
        bytes32 id = _openUsd(DEPOSIT);
        vm.prank(payee);
        channel.close(_noVoucher(id));
        IPaymentChannel.Channel memory t = channel.getChannel(id);
        assertEq(uint8(t.status), uint8(IPaymentChannel.Status.Closed));
        assertEq(t.deposit + t.paid + t.exitAt, 0, "tombstone");

        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.ChannelExists.selector, id));
        vm.prank(payer);
        channel.open(_p(id), DEPOSIT);
    }

    function test_openWithPermit_replayedAuthorizationWithStandingAllowanceRefused() public {
        // The payer keeps a standing allowance; a relayer replays its open authorisation after
        // the channel closed: the id is tombstoned, nothing is pulled.
        IPaymentChannel.ChannelParams memory p = _params(address(usd), address(0), "permit");
        bytes32 id = _remember(p);
        uint256 deadline = block.timestamp + 1 hours;
        bytes memory openSig = _openAuthSig(payerKey, id, DEPOSIT, deadline);
        vm.prank(stranger);
        channel.openWithPermit(p, DEPOSIT, deadline, 0, 0, 0, openSig);
        vm.prank(payee);
        channel.close(_noVoucher(id));
        uint256 balance = usd.balanceOf(payer);

        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.ChannelExists.selector, id));
        vm.prank(stranger);
        channel.openWithPermit(p, DEPOSIT, deadline, 0, 0, 0, openSig);
        assertEq(usd.balanceOf(payer), balance);
    }

    function test_open_withdrawnIdNeverReopens() public {
        bytes32 id = _openUsd(DEPOSIT);
        _requestExit(id);
        vm.warp(block.timestamp + PERIOD);
        channel.withdraw(_p(id));
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannel.ChannelExists.selector, id));
        vm.prank(payer);
        channel.open(_p(id), DEPOSIT);
    }
}

// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IPaymentChannel} from "../src/interfaces/IPaymentChannel.sol";
import {ChannelFixture} from "./utils/ChannelFixture.sol";

/// @notice Gas of every operation a provider or client pays for, recorded with
/// `vm.snapshotGasLastCall` into `snapshots/PaymentChannelGas.json`. CI runs with
/// `FORGE_SNAPSHOT_CHECK=true`, so any change in gas fails until the snapshot is updated.
///
/// The setting is a deployment in use: the contract already holds other channels' deposits,
/// the provider already holds the token, and clients hold more than they deposit (so refunds
/// land in non-empty balances). Each of those first writes would otherwise add a zero-to-nonzero
/// storage write (17,100 gas) that a live deployment does not pay.
contract PaymentChannelGasTest is ChannelFixture {
    string internal constant GROUP = "PaymentChannelGas";
    uint256 internal constant SPARE = 10e6;

    function setUp() public override {
        // Outside the `gas` profile calls are not isolated, storage stays warm and the figures
        // would be wrong: skip rather than overwrite the snapshot with them.
        vm.skip(keccak256(bytes(vm.envOr("FOUNDRY_PROFILE", string("")))) != keccak256("gas"));
        super.setUp();
        // Another client's channel: the contract's token balance is not empty.
        _open(_params(address(usd), address(0), "someone else"), DEPOSIT);
        usd.mint(payee, 1);
    }

    function test_gas_erc20TransferBaseline() public {
        // What paying one request on-chain costs: a plain ERC-20 transfer to a provider that
        // already holds the token (warm recipient balance, as for a busy API).
        vm.prank(payer);
        bool ok = usd.transfer(payee, 1e6);
        vm.snapshotGasLastCall(GROUP, "erc20_transfer");
        assertTrue(ok);
        assertEq(usd.balanceOf(payee), 1e6 + 1);
    }

    function test_gas_open() public {
        IPaymentChannel.ChannelParams memory p = _params(address(usd), address(0), bytes32(0));
        vm.prank(payer);
        bytes32 id = channel.open(p, DEPOSIT);
        vm.snapshotGasLastCall(GROUP, "open_erc20");
        assertEq(channel.getChannel(id).deposit, DEPOSIT);

        p = _params(address(0), session, bytes32(0));
        vm.prank(payer);
        id = channel.open{value: 1 ether}(p, 1 ether);
        vm.snapshotGasLastCall(GROUP, "open_native_session_key");
        assertEq(channel.getChannel(id).deposit, 1 ether);
    }

    function test_gas_topUp() public {
        bytes32 id = _openUsd(DEPOSIT);
        vm.prank(payer);
        channel.topUp(_p(id), DEPOSIT);
        vm.snapshotGasLastCall(GROUP, "top_up");
        assertEq(channel.getChannel(id).deposit, 2 * DEPOSIT);
    }

    function test_gas_settle() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1000, 100e6);
        vm.prank(payee);
        channel.settle(c);
        vm.snapshotGasLastCall(GROUP, "settle");
        assertEq(usd.balanceOf(payee), 100e6 + 1);
    }

    function test_gas_settleAuthorized() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1000, 100e6);
        bytes memory auth = _claimAuthSig(payeeKey, id, 1000, 100e6);
        vm.prank(watcher);
        channel.settleAuthorized(c, auth);
        vm.snapshotGasLastCall(GROUP, "settle_authorized");
        assertEq(usd.balanceOf(payee), 100e6 + 1);
    }

    function test_gas_close() public {
        bytes32 id = _openUsd(DEPOSIT);
        IPaymentChannel.Claim memory c = _claim(payerKey, id, 1000, 100e6);
        vm.prank(payee);
        channel.close(c);
        vm.snapshotGasLastCall(GROUP, "close");
        assertEq(usd.balanceOf(payee), 100e6 + 1);
        assertEq(usd.balanceOf(payer), FUNDS - DEPOSIT - 100e6);
    }

    function test_gas_exitAndWithdraw() public {
        bytes32 id = _openUsd(DEPOSIT);
        vm.prank(payer);
        channel.requestExit(_p(id));
        vm.snapshotGasLastCall(GROUP, "request_exit");
        vm.warp(block.timestamp + PERIOD);
        channel.withdraw(_p(id));
        vm.snapshotGasLastCall(GROUP, "withdraw");
        assertEq(usd.balanceOf(payer), FUNDS - DEPOSIT);
    }

    function test_gas_closeMany_1() public {
        _closeMany(1, "close_many_1");
    }

    function test_gas_closeMany_10() public {
        _closeMany(10, "close_many_10");
    }

    function test_gas_closeMany_100() public {
        _closeMany(100, "close_many_100");
    }

    function test_gas_settleMany_10() public {
        _settleMany(10, "settle_many_10");
    }

    function test_gas_settleMany_100() public {
        _settleMany(100, "settle_many_100");
    }

    function _closeMany(uint256 n, string memory name) internal {
        IPaymentChannel.Claim[] memory claims = _batch(n);
        vm.prank(payee);
        uint256 closed = channel.closeMany(claims);
        vm.snapshotGasLastCall(GROUP, name);
        assertEq(closed, n);
        assertEq(usd.balanceOf(payee), n * 100e6 + 1);
    }

    function _settleMany(uint256 n, string memory name) internal {
        IPaymentChannel.Claim[] memory claims = _batch(n);
        vm.prank(payee);
        uint256 settled = channel.settleMany(claims);
        vm.snapshotGasLastCall(GROUP, name);
        assertEq(settled, n);
        assertEq(usd.balanceOf(payee), n * 100e6 + 1);
    }

    /// `n` channels from `n` distinct clients, each with a voucher for 1,000 requests and a
    /// random salt (a realistic calldata size).
    function _batch(uint256 n) internal returns (IPaymentChannel.Claim[] memory claims) {
        claims = new IPaymentChannel.Claim[](n);
        for (uint256 i; i < n; ++i) {
            uint256 key = uint256(keccak256(abi.encode("client", i))) % SECP256K1_N;
            address client = vm.addr(key);
            usd.mint(client, DEPOSIT + SPARE);
            vm.prank(client);
            usd.approve(address(channel), DEPOSIT);
            IPaymentChannel.ChannelParams memory p =
                _params(address(usd), address(0), keccak256(abi.encode(i)));
            p.payer = client;
            bytes32 id = _open(p, DEPOSIT);
            claims[i] = _claim(key, id, 1000, 100e6);
        }
    }
}

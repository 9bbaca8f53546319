// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Script, console2} from "forge-std/Script.sol";

import {PaymentChannel} from "../src/PaymentChannel.sol";
import {TestStablecoin} from "../src/TestStablecoin.sol";

/// @notice Deploys the PaymentChannel singleton (and, for local chains, a test stablecoin).
///
/// Environment:
/// - `MIN_CHALLENGE_PERIOD` (seconds, default 900 = 15 minutes)
/// - `MAX_CHALLENGE_PERIOD` (seconds, default 2592000 = 30 days)
/// - `DEPLOY_TEST_TOKEN` (bool, default false): also deploy {TestStablecoin}.
///
/// Usage: `forge script contracts/script/Deploy.s.sol --rpc-url $RPC --broadcast --private-key $KEY`
contract Deploy is Script {
    function run() external returns (PaymentChannel channel, TestStablecoin token) {
        uint32 minPeriod = uint32(vm.envOr("MIN_CHALLENGE_PERIOD", uint256(15 minutes)));
        uint32 maxPeriod = uint32(vm.envOr("MAX_CHALLENGE_PERIOD", uint256(30 days)));
        bool deployToken = vm.envOr("DEPLOY_TEST_TOKEN", false);

        vm.startBroadcast();
        channel = new PaymentChannel(minPeriod, maxPeriod);
        if (deployToken) token = new TestStablecoin();
        vm.stopBroadcast();

        console2.log("PaymentChannel:", address(channel));
        if (deployToken) console2.log("TestStablecoin:", address(token));
    }
}

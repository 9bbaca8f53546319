// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @notice A contract that refuses the native token: `receive` always reverts. Tests prank as it
/// to use it as a channel's payer or payee.
contract RevertingReceiver {
    error NoThanks();

    receive() external payable {
        revert NoThanks();
    }
}

/// @notice A contract whose `receive` burns every unit of gas it is given.
contract GasGuzzlerReceiver {
    uint256 public spins;

    receive() external payable {
        // Never returns: writes storage until the forwarded gas runs out.
        while (gasleft() > 0) {
            ++spins;
        }
    }
}

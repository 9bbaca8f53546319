// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @notice An ERC-20 that keeps a fee (1% by default) of every transfer: the recipient gets
/// `value - fee`, the fee is burnt. Used to check balance-difference accounting.
/// @dev `grossReceived` records what was *sent* to each account before the fee, so tests can
/// observe the gross amount of a payout (what left the sender) from the recipient's side.
contract FeeOnTransferToken is ERC20 {
    uint256 public constant BPS = 10_000;

    /// @notice The fee, in basis points of the transferred value.
    uint256 public feeBps = 100;

    /// @notice Total value sent to each account before fees, over every transfer and mint.
    mapping(address account => uint256) public grossReceived;

    constructor() ERC20("Fee USD", "fUSD") {}

    function decimals() public pure override returns (uint8) {
        return 6;
    }

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    function setFeeBps(uint256 feeBps_) external {
        require(feeBps_ <= BPS, "fee");
        feeBps = feeBps_;
    }

    /// @notice The fee kept from a transfer of `value`.
    function feeOf(uint256 value) public view returns (uint256) {
        return value * feeBps / BPS;
    }

    function _update(address from, address to, uint256 value) internal override {
        if (to != address(0)) grossReceived[to] += value;
        if (from == address(0) || to == address(0)) {
            super._update(from, to, value);
            return;
        }
        uint256 fee = feeOf(value);
        super._update(from, to, value - fee);
        if (fee != 0) super._update(from, address(0), fee);
    }
}

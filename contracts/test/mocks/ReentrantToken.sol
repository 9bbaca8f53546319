// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @notice An ERC-20 that, when armed, calls back into a target (the PaymentChannel) from inside
/// `transfer` / `transferFrom` while the target is the caller, then completes the transfer
/// normally. The outcome of the reentrant call is recorded, never bubbled up, so a test can
/// assert that it was refused and by what.
contract ReentrantToken is ERC20 {
    /// @notice The contract to call back; only calls made by it trigger the hook.
    address public target;
    /// @notice The calldata of the reentrant call; empty when disarmed.
    bytes public attack;

    /// @notice How many reentrant calls were made, and how many of them succeeded.
    uint256 public attempts;
    uint256 public successes;
    /// @notice The return or revert data of the last reentrant call.
    bytes public lastResult;
    /// @notice Accounts that cannot receive the token (transfers to them revert).
    mapping(address account => bool) public blocked;

    error Blocked(address account);

    constructor() ERC20("Reentrant USD", "rUSD") {}

    function decimals() public pure override returns (uint8) {
        return 6;
    }

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    /// @notice Arms the hook: the next transfer called by `target_` calls it with `data` (once).
    function arm(address target_, bytes calldata data) external {
        target = target_;
        attack = data;
    }

    function setBlocked(address account, bool value) external {
        blocked[account] = value;
    }

    /// @notice Lets this token (as an account) approve `spender`, e.g. to top up a channel.
    function selfApprove(address spender, uint256 amount) external {
        _approve(address(this), spender, amount);
    }

    /// @notice The 4-byte selector of the last reentrant call's revert data (zero if none).
    function lastSelector() external view returns (bytes4 selector) {
        bytes memory r = lastResult;
        if (r.length < 4) return bytes4(0);
        assembly ("memory-safe") {
            selector := mload(add(r, 0x20))
        }
    }

    function transfer(address to, uint256 value) public override returns (bool) {
        _reenter();
        return super.transfer(to, value);
    }

    function transferFrom(address from, address to, uint256 value) public override returns (bool) {
        _reenter();
        return super.transferFrom(from, to, value);
    }

    function _update(address from, address to, uint256 value) internal override {
        if (blocked[to]) revert Blocked(to);
        super._update(from, to, value);
    }

    function _reenter() private {
        if (msg.sender != target || attack.length == 0) return;
        bytes memory data = attack;
        delete attack;
        ++attempts;
        (bool ok, bytes memory result) = target.call(data);
        if (ok) ++successes;
        lastResult = result;
    }
}

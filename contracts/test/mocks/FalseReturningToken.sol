// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @notice A badly behaved ERC-20 whose `transfer` and `transferFrom` return `false` instead of
/// reverting: always while `failTransfers` is set, and on an insufficient balance or allowance.
contract FalseReturningToken {
    string public constant name = "False USD";
    string public constant symbol = "xUSD";
    uint8 public constant decimals = 6;

    uint256 public totalSupply;
    mapping(address account => uint256) public balanceOf;
    mapping(address owner => mapping(address spender => uint256)) public allowance;

    /// @notice While set, every transfer returns `false` and moves nothing.
    bool public failTransfers;

    event Transfer(address indexed from, address indexed to, uint256 value);
    event Approval(address indexed owner, address indexed spender, uint256 value);

    function setFailTransfers(bool fail) external {
        failTransfers = fail;
    }

    function mint(address to, uint256 amount) external {
        totalSupply += amount;
        balanceOf[to] += amount;
        emit Transfer(address(0), to, amount);
    }

    function approve(address spender, uint256 amount) external returns (bool) {
        allowance[msg.sender][spender] = amount;
        emit Approval(msg.sender, spender, amount);
        return true;
    }

    function transfer(address to, uint256 amount) external returns (bool) {
        return _transfer(msg.sender, to, amount);
    }

    function transferFrom(address from, address to, uint256 amount) external returns (bool) {
        if (failTransfers || allowance[from][msg.sender] < amount) return false;
        if (!_transfer(from, to, amount)) return false;
        allowance[from][msg.sender] -= amount;
        return true;
    }

    function _transfer(address from, address to, uint256 amount) private returns (bool) {
        if (failTransfers || balanceOf[from] < amount) return false;
        balanceOf[from] -= amount;
        balanceOf[to] += amount;
        emit Transfer(from, to, amount);
        return true;
    }
}

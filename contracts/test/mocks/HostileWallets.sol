// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC1271} from "@openzeppelin/contracts/interfaces/IERC1271.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// @notice An EIP-7702 delegate (or wallet) that refuses every signature.
contract FalseDelegate is IERC1271 {
    /// @inheritdoc IERC1271
    function isValidSignature(bytes32, bytes calldata) external pure returns (bytes4) {
        return 0xffffffff;
    }
}

/// @notice An EIP-7702 delegate (or wallet) whose `isValidSignature` reverts.
contract RevertingDelegate is IERC1271 {
    error No();

    /// @inheritdoc IERC1271
    function isValidSignature(bytes32, bytes calldata) external pure returns (bytes4) {
        revert No();
    }
}

/// @notice A gas bomb: `isValidSignature` burns every unit of gas it is given.
contract GasBombWallet is IERC1271 {
    /// @inheritdoc IERC1271
    function isValidSignature(bytes32, bytes calldata) external view returns (bytes4) {
        uint256 x;
        while (gasleft() > 0) {
            x = uint256(keccak256(abi.encode(x)));
        }
        return bytes4(bytes32(x));
    }
}

/// @notice A return-data bomb: `isValidSignature` returns `size` bytes starting with the magic
/// value (a caller that copies all return data pays for the whole of it).
contract ReturnBombWallet {
    uint256 public immutable size;

    constructor(uint256 size_) {
        size = size_;
    }

    fallback() external {
        uint256 n = size;
        assembly {
            mstore(0, 0x1626ba7e00000000000000000000000000000000000000000000000000000000)
            return(0, n)
        }
    }
}

/// @notice An EIP-1271 wallet owned by an EOA that its owner can make refuse signatures it
/// accepted before (what any contract signer can do at redemption time).
contract RevocableWallet is IERC1271 {
    address public immutable owner;
    bool public revoked;

    constructor(address owner_) {
        owner = owner_;
    }

    function setRevoked(bool revoked_) external {
        revoked = revoked_;
    }

    /// @inheritdoc IERC1271
    function isValidSignature(bytes32 hash, bytes calldata signature)
        external
        view
        returns (bytes4)
    {
        (address recovered, ECDSA.RecoverError err,) = ECDSA.tryRecover(hash, signature);
        if (!revoked && err == ECDSA.RecoverError.NoError && recovered == owner) {
            return IERC1271.isValidSignature.selector;
        }
        return 0xffffffff;
    }
}

// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC1271} from "@openzeppelin/contracts/interfaces/IERC1271.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// @notice A minimal smart wallet owned by an EOA key: signatures by the owner are valid for it
/// under EIP-1271. It accepts the native token unless told not to. Tests prank as the wallet to
/// make it act (open channels, approve, settle).
contract ERC1271Wallet is IERC1271 {
    /// @notice The EOA whose ECDSA signatures the wallet accepts.
    address public immutable owner;
    /// @notice While set, `receive` reverts.
    bool public rejectNative;

    error NativeRejected();

    constructor(address owner_) {
        owner = owner_;
    }

    function setRejectNative(bool reject) external {
        rejectNative = reject;
    }

    /// @inheritdoc IERC1271
    function isValidSignature(bytes32 hash, bytes calldata signature)
        external
        view
        returns (bytes4)
    {
        (address recovered, ECDSA.RecoverError err,) = ECDSA.tryRecover(hash, signature);
        if (err == ECDSA.RecoverError.NoError && recovered == owner) {
            return IERC1271.isValidSignature.selector;
        }
        return 0xffffffff;
    }

    receive() external payable {
        if (rejectNative) revert NativeRejected();
    }
}

/// @notice A smart wallet that rejects every signature.
contract RejectingWallet is IERC1271 {
    /// @inheritdoc IERC1271
    function isValidSignature(bytes32, bytes calldata) external pure returns (bytes4) {
        return 0xffffffff;
    }

    receive() external payable {}
}

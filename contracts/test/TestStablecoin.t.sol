// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

import {TestStablecoin} from "../src/TestStablecoin.sol";
import {ChannelFixture} from "./utils/ChannelFixture.sol";

/// @notice The test stablecoin's EIP-3009 functions and metadata.
contract TestStablecoinTest is ChannelFixture {
    uint256 internal constant VALUE = 100e6;
    bytes32 internal constant NONCE = keccak256("nonce");

    function test_decimals_isSix() public view {
        assertEq(usd.decimals(), 6);
        assertEq(usd.symbol(), "tUSD");
    }

    function test_receiveWithAuthorization_transfersToCaller() public {
        (uint8 v, bytes32 r, bytes32 s) = _receiveSig(payerKey, 0, 1 days, NONCE);

        vm.expectEmit(address(usd));
        emit TestStablecoin.AuthorizationUsed(payer, NONCE);
        vm.prank(address(channel));
        usd.receiveWithAuthorization(payer, address(channel), VALUE, 0, 1 days, NONCE, v, r, s);

        assertEq(usd.balanceOf(address(channel)), VALUE);
        assertEq(usd.balanceOf(payer), FUNDS - VALUE);
        assertTrue(usd.authorizationState(payer, NONCE));
    }

    function test_receiveWithAuthorization_wrongCallerReverts() public {
        (uint8 v, bytes32 r, bytes32 s) = _receiveSig(payerKey, 0, 1 days, NONCE);

        // A front-runner holding the signature cannot submit it: only `to` may.
        vm.expectRevert(
            abi.encodeWithSelector(
                TestStablecoin.CallerMustBePayee.selector, stranger, address(channel)
            )
        );
        vm.prank(stranger);
        usd.receiveWithAuthorization(payer, address(channel), VALUE, 0, 1 days, NONCE, v, r, s);
        assertFalse(usd.authorizationState(payer, NONCE));
    }

    function test_receiveWithAuthorization_outsideWindowReverts() public {
        vm.warp(1000);
        // Valid strictly after `validAfter` and strictly before `validBefore`.
        _expectWindowRevert(1000, 2000);
        _expectWindowRevert(0, 1000);
        _expectWindowRevert(500, 900);

        (uint8 v, bytes32 r, bytes32 s) = _receiveSig(payerKey, 999, 1001, NONCE);
        vm.prank(address(channel));
        usd.receiveWithAuthorization(payer, address(channel), VALUE, 999, 1001, NONCE, v, r, s);
        assertEq(usd.balanceOf(address(channel)), VALUE);
    }

    function test_receiveWithAuthorization_replayReverts() public {
        (uint8 v, bytes32 r, bytes32 s) = _receiveSig(payerKey, 0, 1 days, NONCE);
        vm.prank(address(channel));
        usd.receiveWithAuthorization(payer, address(channel), VALUE, 0, 1 days, NONCE, v, r, s);

        vm.expectRevert(
            abi.encodeWithSelector(TestStablecoin.AuthorizationAlreadyUsed.selector, payer, NONCE)
        );
        vm.prank(address(channel));
        usd.receiveWithAuthorization(payer, address(channel), VALUE, 0, 1 days, NONCE, v, r, s);
        assertEq(usd.balanceOf(address(channel)), VALUE, "paid once");
    }

    function test_receiveWithAuthorization_badSignatureReverts() public {
        // Signed by another key.
        (uint8 v, bytes32 r, bytes32 s) = _receiveSig(payeeKey, 0, 1 days, NONCE);
        vm.expectRevert(TestStablecoin.InvalidAuthorizationSignature.selector);
        vm.prank(address(channel));
        usd.receiveWithAuthorization(payer, address(channel), VALUE, 0, 1 days, NONCE, v, r, s);

        // Signed for another value.
        (v, r, s) = _receiveSig(payerKey, 0, 1 days, NONCE);
        vm.expectRevert(TestStablecoin.InvalidAuthorizationSignature.selector);
        vm.prank(address(channel));
        usd.receiveWithAuthorization(payer, address(channel), VALUE + 1, 0, 1 days, NONCE, v, r, s);
    }

    function test_receiveWithAuthorization_highSReverts() public {
        (uint8 v, bytes32 r, bytes32 s) = _receiveSig(payerKey, 0, 1 days, NONCE);
        bytes32 highS = bytes32(SECP256K1_N - uint256(s));
        vm.expectRevert(abi.encodeWithSelector(ECDSA.ECDSAInvalidSignatureS.selector, highS));
        vm.prank(address(channel));
        usd.receiveWithAuthorization(
            payer, address(channel), VALUE, 0, 1 days, NONCE, v == 27 ? 28 : 27, r, highS
        );
    }

    function test_transferWithAuthorization_anyoneSubmits() public {
        (uint8 v, bytes32 r, bytes32 s) = _transferSig(payerKey, stranger, 0, 1 days, NONCE);
        vm.prank(watcher);
        usd.transferWithAuthorization(payer, stranger, VALUE, 0, 1 days, NONCE, v, r, s);
        assertEq(usd.balanceOf(stranger), VALUE);
    }

    function test_transferWithAuthorization_sharesNoncesWithReceive() public {
        (uint8 v, bytes32 r, bytes32 s) = _transferSig(payerKey, stranger, 0, 1 days, NONCE);
        usd.transferWithAuthorization(payer, stranger, VALUE, 0, 1 days, NONCE, v, r, s);

        (v, r, s) = _receiveSig(payerKey, 0, 1 days, NONCE);
        vm.expectRevert(
            abi.encodeWithSelector(TestStablecoin.AuthorizationAlreadyUsed.selector, payer, NONCE)
        );
        vm.prank(address(channel));
        usd.receiveWithAuthorization(payer, address(channel), VALUE, 0, 1 days, NONCE, v, r, s);
    }

    function test_transferWithAuthorization_receiveTypeSignatureRefused() public {
        // A ReceiveWithAuthorization signature cannot be replayed as a TransferWithAuthorization
        // (which anyone may submit): the type hashes differ.
        (uint8 v, bytes32 r, bytes32 s) = _receiveSig(payerKey, 0, 1 days, NONCE);
        vm.expectRevert(TestStablecoin.InvalidAuthorizationSignature.selector);
        usd.transferWithAuthorization(payer, address(channel), VALUE, 0, 1 days, NONCE, v, r, s);
    }

    // ----- helpers -----

    function _expectWindowRevert(uint256 validAfter, uint256 validBefore) internal {
        (uint8 v, bytes32 r, bytes32 s) = _receiveSig(payerKey, validAfter, validBefore, NONCE);
        vm.expectRevert(
            abi.encodeWithSelector(
                TestStablecoin.AuthorizationNotInValidWindow.selector, validAfter, validBefore
            )
        );
        vm.prank(address(channel));
        usd.receiveWithAuthorization(
            payer, address(channel), VALUE, validAfter, validBefore, NONCE, v, r, s
        );
    }

    function _receiveSig(uint256 key, uint256 validAfter, uint256 validBefore, bytes32 nonce)
        internal
        view
        returns (uint8, bytes32, bytes32)
    {
        return _receiveAuthSig(key, payer, VALUE, validAfter, validBefore, nonce);
    }

    function _transferSig(
        uint256 key,
        address to,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce
    ) internal view returns (uint8 v, bytes32 r, bytes32 s) {
        return _authorizationSig(
            key,
            usd.TRANSFER_WITH_AUTHORIZATION_TYPEHASH(),
            payer,
            to,
            VALUE,
            validAfter,
            validBefore,
            nonce
        );
    }
}

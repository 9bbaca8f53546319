//! The official x402 `exact` EVM scheme, EIP-3009 flavour: the payer signs a
//! `TransferWithAuthorization` of the price to the provider under the TOKEN's EIP-712 domain,
//! and whoever holds it (here: the provider's node) submits it with `transferWithAuthorization`.
//!
//! ```text
//! TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)
//! domain: { name: <token's>, version: <token's>, chainId, verifyingContract: <token> }
//! ```
//!
//! The wire shapes (defined in [`crate::wire`], re-exported here) are the ones `ExactEvmScheme`
//! of `@x402/evm` sends and expects:
//! requirements `{ scheme: "exact", network, amount, asset, payTo, maxTimeoutSeconds,
//! extra: { name, version } }` ([`ExactRequirements`]), payload `{ signature, authorization:
//! { from, to, value, validAfter, validBefore, nonce } }` ([`ExactPayload`]), amounts and times
//! as decimal strings.
// `transferWithAuthorization` has nine arguments, as EIP-3009 defines it.
#![allow(clippy::too_many_arguments)]

use alloy::{
    primitives::{B256, Bytes},
    signers::SignerSync,
    sol,
    sol_types::{SolCall, SolStruct},
};

pub use crate::wire::{
    EXACT_SCHEME as SCHEME, ExactAuthorization, ExactExtra, ExactPayload, ExactRequirements,
};
use crate::{Error, Result, open::TokenDomain};

sol! {
    /// EIP-3009, the variant anyone may submit.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct TransferWithAuthorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }

    /// What the node calls on an EIP-3009 token.
    #[sol(rpc)]
    interface IEip3009Token {
        /// Emitted by every ERC-20 transfer.
        event Transfer(address indexed from, address indexed to, uint256 value);

        function transferWithAuthorization(
            address from,
            address to,
            uint256 value,
            uint256 validAfter,
            uint256 validBefore,
            bytes32 nonce,
            uint8 v,
            bytes32 r,
            bytes32 s
        ) external;

        function authorizationState(address authorizer, bytes32 nonce) external view returns (bool);

        function balanceOf(address account) external view returns (uint256);
    }
}

impl From<&ExactAuthorization> for TransferWithAuthorization {
    fn from(a: &ExactAuthorization) -> Self {
        Self {
            from: a.from,
            to: a.to,
            value: a.value,
            validAfter: a.valid_after,
            validBefore: a.valid_before,
            nonce: a.nonce,
        }
    }
}

impl ExactAuthorization {
    /// The EIP-712 digest the payer signs, under the token's `domain`.
    pub fn signing_hash(&self, domain: &TokenDomain) -> B256 {
        TransferWithAuthorization::from(self).eip712_signing_hash(domain.domain())
    }

    /// Signs this authorisation with `signer` (who must be `from`) under `domain`, producing
    /// the payload the official client would send.
    pub fn sign<S: SignerSync + ?Sized>(self, signer: &S, domain: &TokenDomain) -> Result<ExactPayload> {
        let sig = signer.sign_hash_sync(&self.signing_hash(domain))?;
        Ok(ExactPayload { signature: Bytes::from(sig.as_bytes().to_vec()), authorization: self })
    }
}

impl ExactPayload {
    /// The calldata of `transferWithAuthorization(from, to, value, validAfter, validBefore,
    /// nonce, v, r, s)`; refuses a signature that is not 65 bytes.
    pub fn calldata(&self) -> Result<Bytes> {
        let sig: &[u8; 65] =
            self.signature.as_ref().try_into().map_err(|_| Error::SignatureLength(self.signature.len()))?;
        let a = &self.authorization;
        Ok(IEip3009Token::transferWithAuthorizationCall {
            from: a.from,
            to: a.to,
            value: a.value,
            validAfter: a.valid_after,
            validBefore: a.valid_before,
            nonce: a.nonce,
            v: sig[64],
            r: B256::from_slice(&sig[..32]),
            s: B256::from_slice(&sig[32..64]),
        }
        .abi_encode()
        .into())
    }
}

#[cfg(test)]
mod tests {
    use alloy::{
        primitives::{Address, U256, address, b256, keccak256},
        signers::local::PrivateKeySigner,
    };

    use super::*;

    fn authorization() -> ExactAuthorization {
        ExactAuthorization {
            from: address!("70997970C51812dc3A010C7d01b50e0d17dc79C8"),
            to: address!("f39Fd6e51aad88F6F4ce6aB8827279cffFb92266"),
            value: U256::from(1000),
            valid_after: U256::ZERO,
            valid_before: U256::from(1_900_000_000u64),
            nonce: b256!("0101010101010101010101010101010101010101010101010101010101010101"),
        }
    }

    fn domain() -> TokenDomain {
        TokenDomain::new(
            "Test USD".into(),
            "1".into(),
            31337,
            address!("e7f1725E7734CE288F8367e1Bb143E90bb3F0512"),
        )
    }

    const VIEM_DIGEST: B256 = b256!("086690d420ee20015c95ab58aaab2a38e261982215c7bd95d479e1b87a0bc447");
    const VIEM_SIGNATURE: [u8; 65] = alloy::primitives::hex!(
        "22c403f2a80d5861e4bdd6aea44208fe0fe06647e791eae31502a95f45ff6a92543e1161dbd09370b2c63a73b95bf3b5403dc01fbfb9205f01672fdb71731ef51b"
    );

    #[test]
    fn typehash_matches_eip3009() {
        assert_eq!(
            TransferWithAuthorization::default().eip712_type_hash(),
            keccak256(
                "TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
            )
        );
    }

    /// The digest and signature viem's `hashTypedData` / `signTypedData` give for the same
    /// typed data (computed with viem 2 from node_modules, anvil key 1 signing):
    /// ```js
    /// hashTypedData({ domain: { name: "Test USD", version: "1", chainId: 31337,
    ///   verifyingContract: "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512" },
    ///   types: { TransferWithAuthorization: [...] }, primaryType: "TransferWithAuthorization",
    ///   message: { from: "0x7099…79C8", to: "0xf39F…2266", value: 1000n, validAfter: 0n,
    ///   validBefore: 1900000000n, nonce: "0x0101…01" } })
    /// ```
    #[test]
    fn signing_hash_matches_viem() {
        let auth = authorization();
        assert_eq!(auth.signing_hash(&domain()), VIEM_DIGEST);
        let key: PrivateKeySigner =
            "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d".parse().unwrap();
        assert_eq!(key.address(), auth.from);
        let payload = auth.sign(&key, &domain()).unwrap();
        assert_eq!(payload.signature, Bytes::from_static(&VIEM_SIGNATURE));
    }

    #[test]
    fn the_domain_binds_name_version_chain_and_token() {
        let auth = authorization();
        let base = auth.signing_hash(&domain());
        let token = address!("e7f1725E7734CE288F8367e1Bb143E90bb3F0512");
        for other in [
            TokenDomain::new("USD Coin".into(), "1".into(), 31337, token),
            TokenDomain::new("Test USD".into(), "2".into(), 31337, token),
            TokenDomain::new("Test USD".into(), "1".into(), 1, token),
            TokenDomain::new("Test USD".into(), "1".into(), 31337, Address::repeat_byte(1)),
        ] {
            assert_ne!(auth.signing_hash(&other), base);
        }
    }

    #[test]
    fn payload_json_is_the_official_shape() {
        let json = serde_json::json!({
            "signature": "0x1234",
            "authorization": {
                "from": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
                "to": "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
                "value": "1000",
                "validAfter": "0",
                "validBefore": "1900000000",
                "nonce": "0x0101010101010101010101010101010101010101010101010101010101010101"
            }
        });
        let payload: ExactPayload = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(payload.authorization, authorization());
        assert_eq!(serde_json::to_value(&payload).unwrap(), json);
        let mut extra = json.clone();
        extra["authorization"]["extra"] = serde_json::json!(1);
        assert!(serde_json::from_value::<ExactPayload>(extra).is_err(), "unknown fields are refused");
        let mut number = json;
        number["authorization"]["value"] = serde_json::json!(1000);
        assert!(serde_json::from_value::<ExactPayload>(number).is_err(), "amounts are strings");
    }

    #[test]
    fn calldata_splits_the_signature() {
        let key = PrivateKeySigner::random();
        let auth = ExactAuthorization { from: key.address(), ..authorization() };
        let payload = auth.sign(&key, &domain()).unwrap();
        let call =
            IEip3009Token::transferWithAuthorizationCall::abi_decode(&payload.calldata().unwrap()).unwrap();
        assert_eq!((call.from, call.value, call.nonce), (key.address(), U256::from(1000), auth_nonce()));
        assert_eq!(call.v, payload.signature[64]);
        assert_eq!(call.r.as_slice(), &payload.signature[..32]);
        assert_eq!(call.s.as_slice(), &payload.signature[32..64]);
        let short = ExactPayload { signature: Bytes::from_static(&[1; 64]), ..payload };
        assert!(short.calldata().is_err());
    }

    fn auth_nonce() -> B256 {
        authorization().nonce
    }
}

//! Cooperative close: a client asks the provider's node to close its channel.
//!
//! The request is signed by the channel's signer with EIP-712 under the channel contract's
//! domain, so it cannot be forged by anyone who does not hold the key that signs vouchers:
//!
//! ```text
//! CloseRequest(bytes32 channelId,uint256 deadline)
//! ```
//!
//! The node stops accepting vouchers on the channel, queues it for its next batch close, and,
//! if it holds the provider's key, answers with a provider-signed
//! `CloseAuthorization(bytes32 channelId,uint256 finalAmount,uint256 deadline)` that the client
//! may submit itself with `closeWithAuthorization`.

use alloy::{
    primitives::{B256, Bytes, U256},
    signers::SignerSync,
    sol,
};
use serde::{Deserialize, Serialize};

use crate::{ChannelDomain, Result, wire::u256_dec};

/// The path of the node's cooperative close endpoint (`POST`, JSON [`CloseRequestBody`]).
pub const CLOSE_PATH: &str = "/x402/close";

sol! {
    /// A client's request that the provider close a channel. Signed by the channel's signer.
    #[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
    struct CloseRequest {
        bytes32 channelId;
        uint256 deadline;
    }

    /// The provider's consent to a cooperative close at `finalAmount`, valid until `deadline`,
    /// exactly as `PaymentChannel.closeWithAuthorization` checks it.
    #[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
    struct CloseAuthorization {
        bytes32 channelId;
        uint256 finalAmount;
        uint256 deadline;
    }
}

/// The JSON body of a close request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloseRequestBody {
    /// The channel to close.
    pub channel_id: B256,
    /// Unix time after which the request is void.
    pub deadline: u64,
    /// The channel signer's EIP-712 signature over [`CloseRequest`].
    pub signature: Bytes,
}

impl CloseRequestBody {
    /// Signs a close request for `channel_id` valid until `deadline`.
    pub fn sign<S: SignerSync + ?Sized>(
        domain: &ChannelDomain,
        signer: &S,
        channel_id: B256,
        deadline: u64,
    ) -> Result<Self> {
        let request = CloseRequest { channelId: channel_id, deadline: U256::from(deadline) };
        let sig = signer.sign_hash_sync(&domain.hash_typed(&request))?;
        Ok(Self { channel_id, deadline, signature: Bytes::from(sig.as_bytes().to_vec()) })
    }

    /// The EIP-712 digest the signature must cover.
    pub fn digest(&self, domain: &ChannelDomain) -> B256 {
        domain.hash_typed(&CloseRequest { channelId: self.channel_id, deadline: U256::from(self.deadline) })
    }
}

/// The node's answer to a close request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloseResponse {
    /// The channel.
    pub channel_id: B256,
    /// What the provider is paid in total when the channel closes.
    #[serde(with = "u256_dec")]
    pub final_amount: U256,
    /// What the payer gets back.
    #[serde(with = "u256_dec")]
    pub refund: U256,
    /// Whether the node will close the channel in its next settlement batch (paying the gas).
    pub queued: bool,
    /// A provider-signed close authorisation the client may submit itself, if the node holds
    /// the provider's key.
    pub authorization: Option<SignedCloseAuthorization>,
}

/// A [`CloseAuthorization`] with the payee's signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignedCloseAuthorization {
    /// The payee's final total.
    #[serde(with = "u256_dec")]
    pub final_amount: U256,
    /// Unix time until which the authorisation can be submitted.
    pub deadline: u64,
    /// The payee's 65-byte signature.
    pub signature: Bytes,
}

impl SignedCloseAuthorization {
    /// Signs a close authorisation of `channel_id` at `final_amount` valid until `deadline`.
    pub fn sign<S: SignerSync + ?Sized>(
        domain: &ChannelDomain,
        signer: &S,
        channel_id: B256,
        final_amount: U256,
        deadline: u64,
    ) -> Result<Self> {
        let auth = CloseAuthorization {
            channelId: channel_id,
            finalAmount: final_amount,
            deadline: U256::from(deadline),
        };
        let sig = signer.sign_hash_sync(&domain.hash_typed(&auth))?;
        Ok(Self { final_amount, deadline, signature: Bytes::from(sig.as_bytes().to_vec()) })
    }
}

#[cfg(test)]
mod tests {
    use alloy::{
        primitives::{Address, keccak256},
        signers::local::PrivateKeySigner,
        sol_types::SolStruct,
    };

    use super::*;

    #[test]
    fn type_hashes_match_the_contract() {
        assert_eq!(
            CloseAuthorization::default().eip712_type_hash(),
            keccak256("CloseAuthorization(bytes32 channelId,uint256 finalAmount,uint256 deadline)")
        );
        assert_eq!(
            CloseRequest::default().eip712_type_hash(),
            keccak256("CloseRequest(bytes32 channelId,uint256 deadline)")
        );
    }

    #[test]
    fn request_signature_recovers_to_the_signer_and_binds_the_fields() {
        let key = PrivateKeySigner::random();
        let domain = ChannelDomain::new(1, Address::repeat_byte(7));
        let body = CloseRequestBody::sign(&domain, &key, B256::repeat_byte(1), 99).unwrap();
        let sig = alloy::primitives::Signature::from_raw(&body.signature).unwrap();
        assert_eq!(sig.recover_address_from_prehash(&body.digest(&domain)).unwrap(), key.address());
        let other = CloseRequestBody { deadline: 100, ..body.clone() };
        assert_ne!(other.digest(&domain), body.digest(&domain));
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(json["channelId"], serde_json::json!(B256::repeat_byte(1)));
        assert_eq!(serde_json::from_value::<CloseRequestBody>(json).unwrap(), body);
    }
}

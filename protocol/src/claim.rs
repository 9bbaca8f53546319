//! Payee-authorised claims: the provider's consent to a claim that someone else (a watcher)
//! submits with `settleAuthorized` / `settleManyAuthorized`.
//!
//! ```text
//! ClaimAuthorization(bytes32 channelId,uint64 nonce,uint256 claimed)
//! ```
//!
//! signed by the payee under the channel contract's EIP-712 domain. It binds the voucher's
//! nonce and the total the payee is paid (what it charged, not the voucher's ceiling), so a
//! submitter can neither claim more than the payee asked for nor swap in another voucher.

use alloy::{
    primitives::{B256, Bytes, U256},
    signers::SignerSync,
    sol,
};

use crate::{ChannelDomain, Result};

sol! {
    /// The payee's consent to a claim of `claimed` in total with the voucher of nonce `nonce`.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct ClaimAuthorization {
        bytes32 channelId;
        uint64 nonce;
        uint256 claimed;
    }
}

/// The digest a payee signs to authorise a claim.
pub fn digest(domain: &ChannelDomain, channel_id: B256, nonce: u64, claimed: U256) -> B256 {
    domain.hash_typed(&ClaimAuthorization { channelId: channel_id, nonce, claimed })
}

/// Signs a claim authorisation with the payee's key: 65 bytes `r ‖ s ‖ v`, low `s`.
pub fn sign<S: SignerSync + ?Sized>(
    domain: &ChannelDomain,
    payee: &S,
    channel_id: B256,
    nonce: u64,
    claimed: U256,
) -> Result<Bytes> {
    let sig = payee.sign_hash_sync(&digest(domain, channel_id, nonce, claimed))?;
    Ok(Bytes::from(sig.as_bytes().to_vec()))
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
    fn type_hash_matches_the_contract() {
        assert_eq!(
            ClaimAuthorization::default().eip712_type_hash(),
            keccak256("ClaimAuthorization(bytes32 channelId,uint64 nonce,uint256 claimed)")
        );
    }

    #[test]
    fn signature_recovers_to_the_payee_and_binds_every_field() {
        let key = PrivateKeySigner::random();
        let domain = ChannelDomain::new(1, Address::repeat_byte(7));
        let id = B256::repeat_byte(1);
        let sig = sign(&domain, &key, id, 3, U256::from(10)).unwrap();
        let recovered = alloy::primitives::Signature::from_raw(&sig)
            .unwrap()
            .recover_address_from_prehash(&digest(&domain, id, 3, U256::from(10)))
            .unwrap();
        assert_eq!(recovered, key.address());
        let base = digest(&domain, id, 3, U256::from(10));
        assert_ne!(base, digest(&domain, B256::repeat_byte(2), 3, U256::from(10)));
        assert_ne!(base, digest(&domain, id, 4, U256::from(10)));
        assert_ne!(base, digest(&domain, id, 3, U256::from(11)));
        assert_ne!(base, digest(&ChannelDomain::new(2, Address::repeat_byte(7)), id, 3, U256::from(10)));
    }
}

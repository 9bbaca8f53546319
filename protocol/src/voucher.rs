//! The EIP-712 voucher, hashed exactly as `PaymentChannel` hashes it.
//!
//! ```text
//! Voucher(bytes32 channelId,uint64 nonce,uint256 cumulativeAmount)
//! domain: { name: "x402 Payment Channel", version: "2", chainId, verifyingContract }
//! ```

use alloy::{
    primitives::{Address, B256, Bytes, U256},
    signers::SignerSync,
    sol,
    sol_types::{Eip712Domain, SolStruct, eip712_domain},
};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

sol! {
    /// A voucher: the payer authorises the payee to be paid, in total, up to
    /// `cumulativeAmount` from channel `channelId`. Higher `nonce`s supersede lower ones.
    #[derive(Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
    struct Voucher {
        bytes32 channelId;
        uint64 nonce;
        uint256 cumulativeAmount;
    }
}

/// `keccak256("Voucher(bytes32 channelId,uint64 nonce,uint256 cumulativeAmount)")`, computed once.
fn voucher_type_hash() -> B256 {
    static TYPE_HASH: std::sync::LazyLock<B256> =
        std::sync::LazyLock::new(|| alloy::primitives::keccak256(Voucher::eip712_encode_type().as_bytes()));
    *TYPE_HASH
}

/// The EIP-712 domain name of the `PaymentChannel` contract.
pub const DOMAIN_NAME: &str = "x402 Payment Channel";
/// The EIP-712 domain version of the `PaymentChannel` contract.
pub const DOMAIN_VERSION: &str = "2";

/// The EIP-712 domain of one `PaymentChannel` deployment, with its separator precomputed.
#[derive(Clone, Debug)]
pub struct ChannelDomain {
    domain: Eip712Domain,
    separator: B256,
}

impl ChannelDomain {
    /// The domain of the contract at `contract` on chain `chain_id`.
    pub fn new(chain_id: u64, contract: Address) -> Self {
        let domain = eip712_domain! {
            name: DOMAIN_NAME,
            version: DOMAIN_VERSION,
            chain_id: chain_id,
            verifying_contract: contract,
        };
        let separator = domain.separator();
        Self { domain, separator }
    }

    /// The alloy domain.
    pub const fn domain(&self) -> &Eip712Domain {
        &self.domain
    }

    /// The chain id.
    pub fn chain_id(&self) -> u64 {
        self.domain.chain_id.map(|id| id.to::<u64>()).unwrap_or_default()
    }

    /// The contract address.
    pub fn contract(&self) -> Address {
        self.domain.verifying_contract.unwrap_or_default()
    }

    /// The digest the channel's signer signs: `keccak256(0x1901 ‖ separator ‖ hashStruct)`,
    /// with the type hash and the separator computed once: two keccaks per voucher.
    pub fn signing_hash(&self, voucher: &Voucher) -> B256 {
        let mut data = [0u8; 128];
        data[..32].copy_from_slice(voucher_type_hash().as_slice());
        data[32..64].copy_from_slice(voucher.channelId.as_slice());
        data[88..96].copy_from_slice(&voucher.nonce.to_be_bytes());
        data[96..].copy_from_slice(&voucher.cumulativeAmount.to_be_bytes::<32>());
        let mut buf = [0u8; 66];
        buf[0] = 0x19;
        buf[1] = 0x01;
        buf[2..34].copy_from_slice(self.separator.as_slice());
        buf[34..].copy_from_slice(alloy::primitives::keccak256(data).as_slice());
        alloy::primitives::keccak256(buf)
    }

    /// The EIP-712 digest of any typed struct under this domain (close requests and
    /// authorisations; vouchers use the faster [`Self::signing_hash`]).
    pub fn hash_typed<T: SolStruct>(&self, value: &T) -> B256 {
        value.eip712_signing_hash(&self.domain)
    }

    /// Signs `voucher` with `signer`, producing a 65-byte `r ‖ s ‖ v` signature (`v` ∈ {27, 28},
    /// low `s`), the form the contract accepts.
    pub fn sign<S: SignerSync + ?Sized>(&self, signer: &S, voucher: Voucher) -> Result<SignedVoucher> {
        let sig = signer.sign_hash_sync(&self.signing_hash(&voucher))?;
        Ok(SignedVoucher { voucher, signature: Bytes::from(sig.as_bytes().to_vec()) })
    }
}

/// A voucher with its signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedVoucher {
    /// The voucher.
    pub voucher: Voucher,
    /// The signer's signature: 65 bytes `r ‖ s ‖ v` for an EOA, anything for an EIP-1271 wallet.
    pub signature: Bytes,
}

impl SignedVoucher {
    /// The channel id.
    pub const fn channel_id(&self) -> B256 {
        self.voucher.channelId
    }

    /// The nonce.
    pub const fn nonce(&self) -> u64 {
        self.voucher.nonce
    }

    /// The cumulative amount.
    pub const fn cumulative_amount(&self) -> U256 {
        self.voucher.cumulativeAmount
    }

    /// The signature as 65 bytes, or an error if it is not that long.
    pub fn signature_65(&self) -> Result<[u8; 65]> {
        self.signature.as_ref().try_into().map_err(|_| Error::SignatureLength(self.signature.len()))
    }
}

#[cfg(test)]
mod tests {
    use alloy::{
        primitives::{address, b256, keccak256},
        signers::local::PrivateKeySigner,
        sol_types::SolValue,
    };

    use super::*;

    #[test]
    fn typehash_matches_contract() {
        assert_eq!(
            Voucher::eip712_type_hash(&Voucher::default()),
            keccak256("Voucher(bytes32 channelId,uint64 nonce,uint256 cumulativeAmount)")
        );
    }

    #[test]
    fn signing_hash_matches_manual_encoding() {
        let domain = ChannelDomain::new(31337, address!("5FbDB2315678afecb367f032d93F642f64180aa3"));
        let v = Voucher {
            channelId: b256!("1111111111111111111111111111111111111111111111111111111111111111"),
            nonce: 7,
            cumulativeAmount: U256::from(123_456u64),
        };
        let type_hash = keccak256("Voucher(bytes32 channelId,uint64 nonce,uint256 cumulativeAmount)");
        let struct_hash =
            keccak256((type_hash, v.channelId, U256::from(v.nonce), v.cumulativeAmount).abi_encode());
        let domain_type =
            keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
        let separator = keccak256(
            (
                domain_type,
                keccak256(DOMAIN_NAME),
                keccak256(DOMAIN_VERSION),
                U256::from(31337u64),
                domain.contract(),
            )
                .abi_encode(),
        );
        let mut pre = vec![0x19, 0x01];
        pre.extend_from_slice(separator.as_slice());
        pre.extend_from_slice(struct_hash.as_slice());
        assert_eq!(domain.signing_hash(&v), keccak256(pre));
        assert_eq!(domain.signing_hash(&v), v.eip712_signing_hash(domain.domain()));
    }

    proptest::proptest! {
        #[test]
        fn signing_hash_matches_alloy_for_any_voucher(
            id in proptest::prelude::any::<[u8; 32]>(),
            nonce in proptest::prelude::any::<u64>(),
            amount in proptest::prelude::any::<[u8; 32]>(),
            chain_id in proptest::prelude::any::<u64>(),
        ) {
            let domain = ChannelDomain::new(chain_id, Address::repeat_byte(0x5f));
            let v = Voucher { channelId: B256::from(id), nonce, cumulativeAmount: U256::from_be_bytes(amount) };
            proptest::prop_assert_eq!(domain.signing_hash(&v), v.eip712_signing_hash(domain.domain()));
        }
    }

    #[test]
    fn signature_is_65_bytes_low_s_and_recovers() {
        let signer = PrivateKeySigner::random();
        let domain = ChannelDomain::new(1, Address::repeat_byte(0xaa));
        let signed = domain
            .sign(
                &signer,
                Voucher { channelId: B256::repeat_byte(1), nonce: 1, cumulativeAmount: U256::from(5) },
            )
            .unwrap();
        let raw = signed.signature_65().unwrap();
        assert!(raw[64] == 27 || raw[64] == 28);
        let sig = alloy::primitives::Signature::from_raw(&raw).unwrap();
        assert!(sig.normalize_s().is_none(), "signature must already be low-s");
        let recovered = sig.recover_address_from_prehash(&domain.signing_hash(&signed.voucher)).unwrap();
        assert_eq!(recovered, signer.address());
    }

    #[test]
    fn domain_binds_chain_and_contract() {
        let v = Voucher { channelId: B256::repeat_byte(2), nonce: 3, cumulativeAmount: U256::from(9) };
        let a = ChannelDomain::new(1, Address::repeat_byte(1)).signing_hash(&v);
        let b = ChannelDomain::new(2, Address::repeat_byte(1)).signing_hash(&v);
        let c = ChannelDomain::new(1, Address::repeat_byte(2)).signing_hash(&v);
        assert_ne!(a, b);
        assert_ne!(a, c);
    }
}

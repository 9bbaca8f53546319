//! Signature verification, the hot path, with exactly the contract's rule.
//!
//! The rule (vouchers, and the claim, close and open authorisations alike):
//! 1. **ECDSA first.** A signature that is 65 bytes `r ‖ s ‖ v` with `v ∈ {27, 28}`,
//!    `0 < r < n`, `0 < s ≤ n/2`, and for which `ecrecover(digest, v, r, s)` is the signer, is
//!    valid *whatever code the signer has now*. An EOA that later delegates itself with EIP-7702
//!    (code `0xef0100 ‖ address`) cannot void what it signed. [`VoucherVerifier::verify_eoa`]
//!    implements this with libsecp256k1.
//! 2. **ERC-1271 only otherwise**, and only if the signer has code: `isValidSignature(digest,
//!    signature)` with a fixed gas stipend ([`ERC1271_GAS_STIPEND`]), of whose answer only the
//!    first 32 bytes count ([`erc1271_accepts`]). A wallet decides at redemption time, so it
//!    can revoke what it signed: the node takes such channels only when
//!    `payment.accept_contract_signers` is set ([`signed_by_channel_signer`]).
//!
//! Why recover rather than verify against the cached key: plain ECDSA verification checks
//! `(r, s)` against a public key but cannot see `v` (the parity of `R.y`), so it would accept a
//! signature with a flipped `v` that `ecrecover` maps to another address and the contract
//! refuses: the provider would serve a request it can never be paid for. Recovery checks `v`
//! too and, measured by `benches/verify.rs`, costs about 16% more than verification with
//! libsecp256k1, and less than half of k256 verification or alloy's k256 recovery. The per-channel cache keeps the recovered *public key*, so every voucher after
//! the first is a recovery plus a 64-byte compare, without the keccak256 of address derivation.

use alloy::primitives::{Address, B256, Bytes, keccak256};
use secp256k1::{
    Message, PublicKey, SECP256K1,
    ecdsa::{RecoverableSignature, RecoveryId},
};
use x402_protocol::{ChannelDomain, Voucher};

use crate::{channel::OnchainChannel, error::ChainError, reader::ChainReader};

/// `n / 2` for secp256k1: the largest `s` the contract accepts.
const HALF_N: [u8; 32] = [
    0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x5D,
    0x57, 0x6E, 0x73, 0x57, 0xA4, 0x50, 0x1D, 0xDF, 0xE9, 0x2F, 0x46, 0x68, 0x1B, 0x20, 0xA0,
];

/// Verifies vouchers of one `PaymentChannel` deployment.
#[derive(Clone, Debug)]
pub struct VoucherVerifier {
    domain: ChannelDomain,
}

impl VoucherVerifier {
    /// A verifier for the contract at `contract` on chain `chain_id`.
    pub fn new(chain_id: u64, contract: Address) -> Self {
        Self { domain: ChannelDomain::new(chain_id, contract) }
    }

    /// The EIP-712 domain.
    pub const fn domain(&self) -> &ChannelDomain {
        &self.domain
    }

    /// The digest the signer signs for `voucher`.
    pub fn digest(&self, voucher: &Voucher) -> B256 {
        self.domain.signing_hash(voucher)
    }

    /// Whether `signature` over `voucher` is a valid signature of the EOA `signer`, exactly as
    /// the contract decides. `cache` holds the signer's public key once known: pass the same
    /// slot for every voucher of a channel.
    pub fn verify_eoa(
        &self,
        voucher: &Voucher,
        signature: &[u8],
        signer: Address,
        cache: &mut Option<PublicKey>,
    ) -> bool {
        verify_digest(&self.digest(voucher), signature, signer, cache)
    }
}

/// Whether `signature` over `digest` is a valid signature of the EOA `signer` under the
/// contract's rules; `cache` as in [`VoucherVerifier::verify_eoa`].
pub fn verify_digest(
    digest: &B256,
    signature: &[u8],
    signer: Address,
    cache: &mut Option<PublicKey>,
) -> bool {
    let Some(key) = recover(digest, signature) else { return false };
    match cache {
        Some(known) => *known == key,
        None if address_of(&key) == signer => {
            *cache = Some(key);
            true
        }
        None => false,
    }
}

/// Why a signature could not be checked (as opposed to being invalid).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The EIP-1271 wallet could not be asked.
    #[error("chain unavailable: {0}")]
    Chain(#[from] ChainError),
}

/// The gas the contract gives an ERC-1271 `isValidSignature` call (its public constant
/// `ERC1271_GAS_STIPEND`; the differential test checks they agree).
pub const ERC1271_GAS_STIPEND: u64 = 12_000;

/// The ERC-1271 magic value, `isValidSignature.selector`.
pub const ERC1271_MAGIC: [u8; 4] = [0x16, 0x26, 0xba, 0x7e];

/// The EIP-7702 delegation designator's prefix: a delegated EOA's code is
/// `0xef0100 ‖ address` (23 bytes).
pub const DELEGATION_PREFIX: [u8; 3] = [0xef, 0x01, 0x00];

/// What code an account has, as far as signatures are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignerCode {
    /// No code: an EOA (or an address nobody controls).
    None,
    /// An EIP-7702 delegation designator: an EOA whose key still signs.
    Delegated,
    /// Contract code: an ERC-1271 wallet (or any other contract).
    Contract,
}

impl SignerCode {
    /// Classifies an account's code.
    pub fn of(code: &[u8]) -> Self {
        if code.is_empty() {
            Self::None
        } else if code.len() == 23 && code.starts_with(&DELEGATION_PREFIX) {
            Self::Delegated
        } else {
            Self::Contract
        }
    }
}

/// Whether an ERC-1271 call's return data says "valid" as the contract reads it: at least
/// 32 bytes, the first word being the magic value left-aligned (the ABI encoding of `bytes4`).
/// Bytes after the first word are never read.
pub fn erc1271_accepts(output: &[u8]) -> bool {
    let Some(word) = output.get(..32) else { return false };
    word[..4] == ERC1271_MAGIC && word[4..].iter().all(|b| *b == 0)
}

/// The gas limit of an `eth_call` that gives the wallet exactly [`ERC1271_GAS_STIPEND`]: the
/// stipend plus the transaction's intrinsic cost (21,000 and the calldata), at least the
/// EIP-7623 calldata floor.
pub fn erc1271_call_gas(input: &[u8]) -> u64 {
    let zeros = input.iter().filter(|b| **b == 0).count() as u64;
    let nonzeros = input.len() as u64 - zeros;
    let standard = 21_000 + 4 * zeros + 16 * nonzeros + ERC1271_GAS_STIPEND;
    let floor = 21_000 + 10 * (zeros + 4 * nonzeros);
    standard.max(floor)
}

/// Whether `signature` over `digest` is the signer's of `channel`, exactly as the contract
/// decides: ECDSA recovery first (inline: it is short; compared with `cache`, see
/// [`VoucherVerifier::verify_eoa`]), valid whatever code the signer has; only if that fails,
/// and only with `accept_contract_signers`, the signer's ERC-1271 `isValidSignature` on-chain.
pub async fn signed_by_channel_signer(
    chain: &impl ChainReader,
    channel: &OnchainChannel,
    digest: B256,
    signature: &Bytes,
    cache: &mut Option<PublicKey>,
    accept_contract_signers: bool,
) -> Result<bool, CheckError> {
    signed_by(chain, channel.signer(), digest, signature, cache, accept_contract_signers).await
}

/// [`signed_by_channel_signer`] for any expected `signer` (a payee's claim or close
/// authorisation, a payer's open authorisation).
pub async fn signed_by(
    chain: &impl ChainReader,
    signer: Address,
    digest: B256,
    signature: &Bytes,
    cache: &mut Option<PublicKey>,
    accept_contract_signers: bool,
) -> Result<bool, CheckError> {
    // Inline on the async worker: one recovery is ~40 µs of CPU, while a hop to the blocking
    // pool and back costs two thread wake-ups, which the benchmark measured as the larger cost
    // on a loaded machine (docs/BENCHMARKS.md).
    if verify_digest(&digest, signature, signer, cache) {
        return Ok(true);
    }
    if !accept_contract_signers {
        return Ok(false);
    }
    Ok(chain.is_valid_contract_signature(signer, digest, signature.clone()).await?)
}

/// Recovers the public key of a 65-byte `r ‖ s ‖ v` signature under the contract's rules, or
/// `None` if the contract would refuse the signature whoever the signer.
pub fn recover(digest: &B256, signature: &[u8]) -> Option<PublicKey> {
    let sig: &[u8; 65] = signature.try_into().ok()?;
    let recid = match sig[64] {
        27 => RecoveryId::Zero,
        28 => RecoveryId::One,
        _ => return None,
    };
    // Low-s only: malleable high-s signatures are refused (EIP-2, OpenZeppelin ECDSA).
    let s: &[u8; 32] = sig[32..64].try_into().ok()?;
    if s.as_slice() > HALF_N.as_slice() {
        return None;
    }
    // `from_compact` refuses r or s ≥ n; recovery fails for r = 0 or s = 0.
    let sig = RecoverableSignature::from_compact(&sig[..64], recid).ok()?;
    SECP256K1.recover_ecdsa(&Message::from_digest(digest.0), &sig).ok()
}

/// The Ethereum address of a public key.
pub fn address_of(key: &PublicKey) -> Address {
    let uncompressed = key.serialize_uncompressed();
    Address::from_slice(&keccak256(&uncompressed[1..])[12..])
}

#[cfg(test)]
mod tests {
    use alloy::{
        primitives::U256,
        signers::{SignerSync, local::PrivateKeySigner},
    };

    use super::*;

    const N: [u8; 32] = [
        0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE, 0xBA,
        0xAE, 0xDC, 0xE6, 0xAF, 0x48, 0xA0, 0x3B, 0xBF, 0xD2, 0x5E, 0x8C, 0xD0, 0x36, 0x41, 0x41,
    ];

    fn fixture() -> (VoucherVerifier, PrivateKeySigner, Voucher, Vec<u8>) {
        let verifier = VoucherVerifier::new(31337, Address::repeat_byte(0x42));
        let signer = PrivateKeySigner::random();
        let voucher =
            Voucher { channelId: B256::repeat_byte(9), nonce: 5, cumulativeAmount: U256::from(777) };
        let sig = signer.sign_hash_sync(&verifier.digest(&voucher)).unwrap().as_bytes().to_vec();
        (verifier, signer, voucher, sig)
    }

    fn high_s(sig: &[u8]) -> Vec<u8> {
        let s = U256::from_be_slice(&sig[32..64]);
        let flipped = U256::from_be_bytes(N) - s;
        let mut out = sig[..32].to_vec();
        out.extend_from_slice(&flipped.to_be_bytes::<32>());
        out.push(if sig[64] == 27 { 28 } else { 27 });
        out
    }

    #[test]
    fn accepts_exactly_the_contract_rules() {
        let (verifier, signer, voucher, sig) = fixture();
        let mut flipped_v = sig.clone();
        flipped_v[64] ^= 0x03; // 27 <-> 28
        let mut v_raw = sig.clone();
        v_raw[64] -= 27; // 0/1 encoding: ecrecover refuses it
        let mut zero_r = sig.clone();
        zero_r[..32].fill(0);
        let mut r_over_n = sig.clone();
        r_over_n[..32].copy_from_slice(&N);
        let mut tampered = voucher.clone();
        tampered.cumulativeAmount += U256::from(1);

        let cases: Vec<(&str, &Voucher, Vec<u8>, bool)> = vec![
            ("valid", &voucher, sig.clone(), true),
            ("high s", &voucher, high_s(&sig), false),
            ("flipped v", &voucher, flipped_v, false),
            ("v in 0/1", &voucher, v_raw, false),
            ("r = 0", &voucher, zero_r, false),
            ("r >= n", &voucher, r_over_n, false),
            ("64 bytes", &voucher, sig[..64].to_vec(), false),
            ("66 bytes", &voucher, [sig.clone(), vec![0]].concat(), false),
            ("empty", &voucher, vec![], false),
            ("tampered amount", &tampered, sig.clone(), false),
        ];
        for (name, v, s, expected) in cases {
            let mut cache = None;
            assert_eq!(verifier.verify_eoa(v, &s, signer.address(), &mut cache), expected, "{name}");
            assert_eq!(cache.is_some(), expected, "{name}: cache filled only on success");
        }
    }

    #[test]
    fn wrong_signer_refused_and_cache_used() {
        let (verifier, signer, voucher, sig) = fixture();
        let mut cache = None;
        assert!(!verifier.verify_eoa(&voucher, &sig, Address::repeat_byte(1), &mut cache));
        assert!(verifier.verify_eoa(&voucher, &sig, signer.address(), &mut cache));
        // With the key cached, the address argument no longer matters: the key decides.
        let other = PrivateKeySigner::random();
        let forged = other.sign_hash_sync(&verifier.digest(&voucher)).unwrap().as_bytes().to_vec();
        assert!(!verifier.verify_eoa(&voucher, &forged, other.address(), &mut cache));
        assert!(verifier.verify_eoa(&voucher, &sig, Address::ZERO, &mut cache));
    }

    #[test]
    fn erc1271_answers_read_as_the_contract_reads_them() {
        let magic_word = |tail: &[u8]| {
            let mut out = ERC1271_MAGIC.to_vec();
            out.extend_from_slice(&[0; 28]);
            out.extend_from_slice(tail);
            out
        };
        let mut dirty = magic_word(&[]);
        dirty[31] = 1;
        let mut right_aligned = vec![0; 28];
        right_aligned.extend_from_slice(&ERC1271_MAGIC);
        let cases: Vec<(&str, Vec<u8>, bool)> = vec![
            ("magic", magic_word(&[]), true),
            ("magic with a long tail (only the first word is read)", magic_word(&[0xff; 10_000]), true),
            ("4 bytes only", ERC1271_MAGIC.to_vec(), false),
            ("empty", vec![], false),
            ("31 bytes", magic_word(&[])[..31].to_vec(), false),
            ("dirty padding", dirty, false),
            ("right-aligned", right_aligned, false),
            ("another selector", [vec![0xff, 0xff, 0xff, 0xff], vec![0; 28]].concat(), false),
        ];
        for (name, output, expected) in cases {
            assert_eq!(erc1271_accepts(&output), expected, "{name}");
        }
    }

    #[test]
    fn signer_code_tells_delegations_from_contracts() {
        let mut delegation = DELEGATION_PREFIX.to_vec();
        delegation.extend_from_slice(&[0x11; 20]);
        assert_eq!(SignerCode::of(&[]), SignerCode::None);
        assert_eq!(SignerCode::of(&delegation), SignerCode::Delegated);
        assert_eq!(SignerCode::of(&delegation[..22]), SignerCode::Contract);
        assert_eq!(SignerCode::of(&[delegation.clone(), vec![0]].concat()), SignerCode::Contract);
        assert_eq!(SignerCode::of(&[0x60, 0x80, 0x60, 0x40]), SignerCode::Contract);
    }

    #[test]
    fn erc1271_call_gas_leaves_the_stipend() {
        let input = [vec![0u8; 100], vec![1u8; 50]].concat();
        assert_eq!(erc1271_call_gas(&input), 21_000 + 400 + 800 + ERC1271_GAS_STIPEND);
        // A huge calldata is bound by the EIP-7623 floor instead.
        let huge = vec![1u8; 10_000];
        assert_eq!(erc1271_call_gas(&huge), 21_000 + 400_000);
    }

    /// The rule through the chain: ECDSA of the signer wins whatever the wallet says; the
    /// wallet is asked only when ECDSA fails and contract signers are accepted.
    #[tokio::test]
    async fn ecdsa_first_then_erc1271_only_if_accepted() {
        use crate::test_utils::MemoryChain;
        let (verifier, signer, voucher, sig) = fixture();
        let digest = verifier.digest(&voucher);
        let chain = MemoryChain::default();
        // The wallet says "no" to everything, then "yes" to everything.
        chain.set_contract_signatures(false);
        let good = Bytes::from(sig.clone());
        let junk = Bytes::from(vec![7u8; 12]);
        let who = signer.address();
        for accept in [false, true] {
            assert!(signed_by(&chain, who, digest, &good, &mut None, accept).await.unwrap(), "{accept}");
            assert!(!signed_by(&chain, who, digest, &junk, &mut None, accept).await.unwrap(), "{accept}");
        }
        chain.set_contract_signatures(true);
        assert!(!signed_by(&chain, who, digest, &junk, &mut None, false).await.unwrap());
        assert!(signed_by(&chain, who, digest, &junk, &mut None, true).await.unwrap());
        assert_eq!(chain.contract_checks(), 2, "the wallet is asked only after ECDSA failed, if accepted");
    }

    #[test]
    fn address_derivation_matches_alloy() {
        let (verifier, signer, voucher, sig) = fixture();
        let key = recover(&verifier.digest(&voucher), &sig).unwrap();
        assert_eq!(address_of(&key), signer.address());
    }
}

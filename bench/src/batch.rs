//! Batch verification of voucher signatures (secp256k1 ECDSA, 65-byte `r ‖ s ‖ v`), and its
//! measurement against single verification.
//!
//! # What is accepted
//!
//! [`verify_batch`] accepts an item exactly when the node's single check
//! (`x402_node::verify::recover` followed by a compare with the expected key) would: `v ∈ {27, 28}`,
//! `0 < r < n`, `0 < s ≤ n/2`, and the point `R = (r, y)` with `y`'s parity `v − 27` equals
//! `u₁·G + u₂·Q` where `z` is the digest reduced mod `n`, `u₁ = z·s⁻¹` and `u₂ = r·s⁻¹`.
//! Because `v` fixes `R` (not only its x-coordinate) this is the recovery semantics, not plain
//! ECDSA verification: a valid `(r, s)` under the wrong `v` is refused. `R.x = r + n` (recovery ids
//! 2 and 3, probability ≈ 2⁻¹²⁸) is refused, as `v ∈ {27, 28}` cannot express it.
//!
//! # The batch equation
//!
//! Each item's equation, multiplied by `s⁻¹`, is `R_i − u₁ᵢ·G − u₂ᵢ·Q_i = 0`. With random
//! weights `a_i` the batch checks
//!
//! `Σ a_i·R_i − (Σ a_i·u₁ᵢ)·G − Σ_keys (Σ_{i: Q_i = Q} a_i·u₂ᵢ)·Q = 0`
//!
//! with one multi-scalar multiplication. This is the brief's `Σ a_i·s_i·R_i − (Σ a_i·z_i)·G −
//! Σ a_i·r_i·Q_i` with weights `a_i·s_i⁻¹` (one batched scalar inversion): `R_i` keeps a 128-bit
//! coefficient instead of a 256-bit one, which saves about a quarter of the point additions.
//! Coefficients of equal public keys are merged first, so a batch from one signer costs one
//! 256-bit term for the key in total instead of one per item.
//!
//! The weights are 128-bit values from a CSPRNG (`rand::rng()`: ChaCha12 seeded from the OS),
//! forced odd (non-zero), so a batch containing an invalid item passes with probability at
//! most 2⁻¹²⁷. They are not derived from the inputs: an attacker who knows them in advance
//! could build items that cancel.
//!
//! # The multi-scalar multiplication
//!
//! Straus (interleaved windowed NAF): every term gets a table of its odd multiples (window 5,
//! 8 entries; `G` has a cached window-8 table), all tables are normalized to affine with one
//! field inversion so that the main loop uses mixed additions, and one chain of ≤ 261
//! doublings is shared by all terms. Pippenger buckets would not pay off below a few thousand
//! terms.
//!
//! If the batch equation fails, every item is checked alone ([`verify_single`]) to name the
//! bad ones.

use std::{
    collections::HashMap,
    sync::OnceLock,
    time::{Duration, Instant},
};

use alloy::primitives::B256;
use k256::{
    AffinePoint, FieldBytes, ProjectivePoint, PublicKey, Scalar, U256,
    elliptic_curve::{
        BatchNormalize, PrimeField,
        group::Group,
        ops::{LinearCombination, Reduce},
        point::DecompressPoint,
        scalar::IsHigh,
        sec1::ToEncodedPoint,
        subtle::Choice,
    },
};
use rand::{CryptoRng, Rng, RngCore, SeedableRng, rngs::StdRng};
use secp256k1::{Message, SECP256K1};

/// One signature to check: the digest signed, the 65-byte `r ‖ s ‖ v` signature and the public
/// key it must belong to.
#[derive(Clone, Debug)]
pub struct Item {
    /// The signed digest (the voucher's EIP-712 signing hash).
    pub digest: B256,
    /// `r ‖ s ‖ v`, `v ∈ {27, 28}`.
    pub signature: [u8; 65],
    /// The expected signer's public key.
    pub key: PublicKey,
}

/// The window of the per-term tables: odd multiples `P, 3P, …, 15P`.
const W: usize = 5;
/// The window of the cached table of the generator: `G, 3G, …, 127G`.
const W_G: usize = 8;
/// Length of a wNAF digit array: 256 bits plus the final carry.
const NAF_LEN: usize = 256 + W_G + 1;

/// An item's values once its encoding is checked.
struct Parsed {
    r: Scalar,
    s: Scalar,
    z: Scalar,
    big_r: AffinePoint,
}

/// 32 bytes as a k256 field encoding.
fn field_bytes(bytes: &[u8]) -> FieldBytes {
    let array: [u8; 32] = bytes.try_into().expect("32 bytes");
    FieldBytes::from(array)
}

/// Decodes an item under the contract's rules, or `None` if it is refused whatever the key.
fn parse(item: &Item) -> Option<Parsed> {
    let sig = &item.signature;
    let odd = match sig[64] {
        27 => 0u8,
        28 => 1u8,
        _ => return None,
    };
    let r_bytes = field_bytes(&sig[..32]);
    let r = Option::<Scalar>::from(Scalar::from_repr(r_bytes))?;
    let s = Option::<Scalar>::from(Scalar::from_repr(field_bytes(&sig[32..64])))?;
    if bool::from(r.is_zero() | s.is_zero() | s.is_high()) {
        return None;
    }
    // r < n < p, so r is a valid x-coordinate encoding; decompression fails if no point has it.
    let big_r = Option::<AffinePoint>::from(AffinePoint::decompress(&r_bytes, Choice::from(odd)))?;
    let z = <Scalar as Reduce<U256>>::reduce_bytes(&FieldBytes::from(item.digest.0));
    Some(Parsed { r, s, z, big_r })
}

/// Whether the parsed item satisfies `R = z·s⁻¹·G + r·s⁻¹·Q` (k256, one item).
fn check_parsed(p: &Parsed, key: &PublicKey) -> bool {
    let s_inv = Option::<Scalar>::from(p.s.invert()).expect("s is non-zero");
    let sum = ProjectivePoint::lincomb(
        &ProjectivePoint::GENERATOR,
        &(p.z * s_inv),
        &key.to_projective(),
        &(p.r * s_inv),
    );
    sum == ProjectivePoint::from(p.big_r)
}

/// Single verification with k256 under exactly the rules [`verify_batch`] applies (including
/// `v`): the fallback that names bad items.
pub fn verify_single(item: &Item) -> bool {
    parse(item).is_some_and(|p| check_parsed(&p, &item.key))
}

/// Verifies all `items` at once with weights from `rand::rng()`. `Ok(())` if every item is
/// valid, otherwise the indices (ascending) of exactly the invalid ones.
pub fn verify_batch(items: &[Item]) -> Result<(), Vec<usize>> {
    verify_batch_with_rng(items, &mut rand::rng())
}

/// [`verify_batch`] with the weights drawn from `rng`.
pub fn verify_batch_with_rng<R: RngCore + CryptoRng>(items: &[Item], rng: &mut R) -> Result<(), Vec<usize>> {
    let mut bad = Vec::new();
    let mut good: Vec<(usize, Parsed)> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match parse(item) {
            Some(p) => good.push((i, p)),
            None => bad.push(i),
        }
    }
    if !good.is_empty() && !batch_equation_holds(items, &good, rng) {
        bad.extend(good.iter().filter(|(i, p)| !check_parsed(p, &items[*i].key)).map(|(i, _)| *i));
        bad.sort_unstable();
    }
    if bad.is_empty() { Ok(()) } else { Err(bad) }
}

/// The random linear combination of the equations of `good` (non-empty), as one MSM.
fn batch_equation_holds<R: RngCore + CryptoRng>(
    items: &[Item],
    good: &[(usize, Parsed)],
    rng: &mut R,
) -> bool {
    // s⁻¹ for all items with one inversion (Montgomery's trick).
    let mut prefix = Vec::with_capacity(good.len());
    let mut acc = Scalar::ONE;
    for (_, p) in good {
        prefix.push(acc);
        acc *= p.s;
    }
    let mut inv = Option::<Scalar>::from(acc.invert()).expect("product of non-zero scalars");
    let mut s_inv = vec![Scalar::ZERO; good.len()];
    for k in (0..good.len()).rev() {
        s_inv[k] = inv * prefix[k];
        inv *= good[k].1.s;
    }

    let mut points: Vec<AffinePoint> = Vec::with_capacity(2 * good.len());
    let mut scalars: Vec<Scalar> = Vec::with_capacity(2 * good.len());
    let mut short: Vec<bool> = Vec::with_capacity(2 * good.len());
    let mut g_coeff = Scalar::ZERO;
    let mut key_slot: HashMap<[u8; 33], usize> = HashMap::with_capacity(good.len());
    for ((i, p), s_inv) in good.iter().zip(&s_inv) {
        let a = Scalar::from(rng.random::<u128>() | 1);
        let a_s = a * s_inv;
        g_coeff -= a_s * p.z;
        let q_coeff = -(a_s * p.r);
        points.push(p.big_r);
        scalars.push(a);
        short.push(true);
        let key = &items[*i].key;
        let encoded = key.as_affine().to_encoded_point(true);
        let id: [u8; 33] = encoded.as_bytes().try_into().expect("33-byte compressed point");
        match key_slot.get(&id) {
            Some(&slot) => scalars[slot] += q_coeff,
            None => {
                key_slot.insert(id, points.len());
                points.push(*key.as_affine());
                scalars.push(q_coeff);
                short.push(false);
            }
        }
    }
    msm_with_generator(&points, &scalars, &short, &g_coeff).is_identity().into()
}

/// `Σ scalars[j]·points[j] + g·G` by Straus' method. `short[j]` says `scalars[j] < 2¹²⁸`.
fn msm_with_generator(
    points: &[AffinePoint],
    scalars: &[Scalar],
    short: &[bool],
    g: &Scalar,
) -> ProjectivePoint {
    const T: usize = 1 << (W - 2);
    // Odd multiples of every point, normalized together.
    let mut tables = Vec::with_capacity(points.len() * T);
    for p in points {
        let p = ProjectivePoint::from(*p);
        let p2 = p.double();
        let mut m = p;
        tables.push(m);
        for _ in 1..T {
            m += p2;
            tables.push(m);
        }
    }
    let tables: Vec<AffinePoint> = ProjectivePoint::batch_normalize(tables.as_slice());
    let g_table = generator_table();

    let mut nafs = vec![[0i8; NAF_LEN]; points.len()];
    let mut top = 0;
    for ((naf, s), &short) in nafs.iter_mut().zip(scalars).zip(short) {
        let len = wnaf(s, W, naf);
        debug_assert!(!short || len <= 128 + W);
        top = top.max(len);
    }
    let mut g_naf = [0i8; NAF_LEN];
    top = top.max(wnaf(g, W_G, &mut g_naf));

    let mut acc = ProjectivePoint::IDENTITY;
    for bit in (0..top).rev() {
        acc = acc.double();
        for (j, naf) in nafs.iter().enumerate() {
            let d = naf[bit];
            if d != 0 {
                acc = add_digit(acc, &tables[j * T..(j + 1) * T], d);
            }
        }
        let d = g_naf[bit];
        if d != 0 {
            acc = add_digit(acc, g_table, d);
        }
    }
    acc
}

/// `acc + d·P` for an odd digit `d` and the table `P, 3P, 5P, …`.
#[inline]
fn add_digit(acc: ProjectivePoint, table: &[AffinePoint], d: i8) -> ProjectivePoint {
    let idx = usize::from(d.unsigned_abs() >> 1);
    if d > 0 { acc + table[idx] } else { acc - table[idx] }
}

/// The cached table `G, 3G, …, (2^(W_G−1) − 1)·G` in affine form.
fn generator_table() -> &'static [AffinePoint] {
    static TABLE: OnceLock<Vec<AffinePoint>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let g = ProjectivePoint::GENERATOR;
        let g2 = g.double();
        let mut m = g;
        let mut table = vec![m];
        for _ in 1..(1 << (W_G - 2)) {
            m += g2;
            table.push(m);
        }
        ProjectivePoint::batch_normalize(table.as_slice())
    })
}

/// Width-`w` NAF of `s` into `out` (digit `i` weighs `2^i`; digits are 0 or odd with
/// `|d| < 2^(w−1)`). Returns the number of digits up to the highest non-zero one.
fn wnaf(s: &Scalar, w: usize, out: &mut [i8; NAF_LEN]) -> usize {
    let bytes = s.to_bytes();
    let mut limbs = [0u64; 4];
    for (k, limb) in limbs.iter_mut().enumerate() {
        let start = 32 - 8 * (k + 1);
        *limb = u64::from_be_bytes(bytes[start..start + 8].try_into().expect("8 bytes"));
    }
    let bits = |pos: usize, count: usize| -> u32 {
        if pos >= 256 {
            return 0;
        }
        let (i, o) = (pos / 64, pos % 64);
        let mut v = limbs[i] >> o;
        if o + count > 64 && i + 1 < 4 {
            v |= limbs[i + 1] << (64 - o);
        }
        (v & ((1u64 << count) - 1)) as u32
    };
    let mut carry = 0u32;
    let mut bit = 0usize;
    let mut len = 0usize;
    while bit < 256 || carry != 0 {
        if bits(bit, 1) == carry {
            bit += 1;
            continue;
        }
        let mut word = (bits(bit, w) + carry) as i32;
        carry = ((word >> (w - 1)) & 1) as u32;
        word -= (carry << w) as i32;
        out[bit] = word as i8;
        len = bit + 1;
        bit += w;
    }
    len
}

/// Microseconds per signature for one batch size and one signer pattern.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Figures {
    /// Items per batch.
    pub n: usize,
    /// `true`: every item has its own signer; `false`: one signer signed all `n` items.
    pub distinct: bool,
    /// libsecp256k1 `verify_ecdsa` against the known key, one item at a time (does not check
    /// `v`, so it accepts more than the node does).
    pub secp256k1_verify_us: f64,
    /// libsecp256k1 recovery and key compare under the contract's rules, one item at a time:
    /// what the node runs today (`x402_node::verify::recover`).
    pub secp256k1_recover_us: f64,
    /// k256 `VerifyingKey::verify_prehash`, one item at a time (does not check `v`).
    pub k256_verify_us: f64,
    /// [`verify_batch`] over the `n` items, per item.
    pub batch_us: f64,
}

/// A batch of `n` valid items: `n` signers if `distinct`, else one signer for all, from a
/// deterministic seed.
pub fn workload(n: usize, distinct: bool, seed: u64) -> Vec<Item> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut signer = None;
    (0..n)
        .map(|_| {
            let secret = match (&signer, distinct) {
                (Some(s), false) => *s,
                _ => {
                    let s = random_secret(&mut rng);
                    signer = Some(s);
                    s
                }
            };
            let digest = B256::from(rng.random::<[u8; 32]>());
            sign(&secret, digest)
        })
        .collect()
}

/// A random libsecp256k1 secret key.
fn random_secret(rng: &mut impl Rng) -> secp256k1::SecretKey {
    loop {
        if let Ok(k) = secp256k1::SecretKey::from_byte_array(&rng.random()) {
            return k;
        }
    }
}

/// A low-s signature `r ‖ s ‖ v` of `digest` by `secret` (libsecp256k1), as an [`Item`].
fn sign(secret: &secp256k1::SecretKey, digest: B256) -> Item {
    let sig = SECP256K1.sign_ecdsa_recoverable(&Message::from_digest(digest.0), secret);
    let (recid, rs) = sig.serialize_compact();
    let mut signature = [0u8; 65];
    signature[..64].copy_from_slice(&rs);
    signature[64] = 27 + i32::from(recid) as u8;
    let public = secp256k1::PublicKey::from_secret_key(SECP256K1, secret);
    let key = PublicKey::from_sec1_bytes(&public.serialize_uncompressed())
        .expect("libsecp256k1 key is a valid point");
    Item { digest, signature, key }
}

/// Runs `f` over `rounds` rounds and returns the best of 3 runs, in µs per signature.
fn time_per_sig(n: usize, rounds: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        for _ in 0..rounds {
            f();
        }
        best = best.min(start.elapsed());
    }
    best.as_secs_f64() * 1e6 / (rounds * n) as f64
}

/// Measures single and batch verification of `n` valid items (`n` signers if `distinct`, else
/// one), about 2048 signatures per method and run, best of 3 runs. Panics if any check fails.
pub fn measure(n: usize, distinct: bool) -> Figures {
    assert!(n > 0, "empty batch");
    let items = workload(n, distinct, 0x402 ^ n as u64);
    let rounds = 2048usize.div_ceil(n);

    let secp: Vec<(Message, secp256k1::ecdsa::Signature, secp256k1::PublicKey)> = items
        .iter()
        .map(|it| {
            let sig =
                secp256k1::ecdsa::Signature::from_compact(&it.signature[..64]).expect("valid signature");
            let key = secp256k1::PublicKey::from_slice(it.key.to_encoded_point(false).as_bytes())
                .expect("valid key");
            (Message::from_digest(it.digest.0), sig, key)
        })
        .collect();
    let libsecp_keys: Vec<secp256k1::PublicKey> = secp.iter().map(|(_, _, k)| *k).collect();
    let k256: Vec<(k256::ecdsa::VerifyingKey, k256::ecdsa::Signature)> = items
        .iter()
        .map(|it| {
            let sig = k256::ecdsa::Signature::from_slice(&it.signature[..64]).expect("valid signature");
            (k256::ecdsa::VerifyingKey::from(it.key), sig)
        })
        .collect();

    let secp256k1_verify_us = time_per_sig(n, rounds, || {
        for (msg, sig, key) in &secp {
            assert!(SECP256K1.verify_ecdsa(msg, sig, key).is_ok());
        }
    });
    let secp256k1_recover_us = time_per_sig(n, rounds, || {
        for (it, key) in items.iter().zip(&libsecp_keys) {
            assert!(x402_node::verify::recover(&it.digest, &it.signature).as_ref() == Some(key));
        }
    });
    let k256_verify_us = time_per_sig(n, rounds, || {
        use k256::ecdsa::signature::hazmat::PrehashVerifier;
        for ((key, sig), it) in k256.iter().zip(&items) {
            assert!(key.verify_prehash(it.digest.as_slice(), sig).is_ok());
        }
    });
    let batch_us = time_per_sig(n, rounds, || {
        assert!(verify_batch(&items).is_ok());
    });
    Figures { n, distinct, secp256k1_verify_us, secp256k1_recover_us, k256_verify_us, batch_us }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k256::elliptic_curve::Field as _;
    use proptest::prelude::{ProptestConfig, any, prop_assert_eq, proptest};
    use rand::Rng;

    /// The group order n, big-endian.
    const N: [u8; 32] = [
        0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE, 0xBA,
        0xAE, 0xDC, 0xE6, 0xAF, 0x48, 0xA0, 0x3B, 0xBF, 0xD2, 0x5E, 0x8C, 0xD0, 0x36, 0x41, 0x41,
    ];

    /// The node's rule (libsecp256k1 recovery under the contract's rules, then key compare).
    fn reference(item: &Item) -> bool {
        let expected = secp256k1::PublicKey::from_slice(item.key.to_encoded_point(false).as_bytes()).unwrap();
        x402_node::verify::recover(&item.digest, &item.signature) == Some(expected)
    }

    /// `n − s`, the high-s twin of a low-s signature (same `R`).
    fn negate_s(sig: &mut [u8; 65]) {
        let s = Scalar::from_repr(field_bytes(&sig[32..64])).unwrap();
        sig[32..64].copy_from_slice(&(-s).to_bytes());
    }

    /// Applies tampering number `kind` (0..=7) to `item`; `other` supplies a foreign key.
    fn tamper(item: &mut Item, kind: u8, other: &PublicKey, rng: &mut StdRng) {
        match kind {
            0 => item.key = *other,
            1 => item.signature[32 + rng.random_range(0..32)] ^= 1 << rng.random_range(0..8),
            2 => negate_s(&mut item.signature),
            3 => item.signature[64] ^= 27 ^ 28,
            4 => item.digest.0[rng.random_range(0..32)] ^= 1 << rng.random_range(0..8),
            5 => item.signature[rng.random_range(0..32)] ^= 1 << rng.random_range(0..8),
            6 => item.signature[64] = [0, 1, 29, 26][rng.random_range(0..4)],
            _ => item.signature[..32].copy_from_slice(&N),
        }
    }

    fn random_scalar(rng: &mut StdRng) -> Scalar {
        <Scalar as Reduce<U256>>::reduce_bytes(&FieldBytes::from(rng.random::<[u8; 32]>()))
    }

    #[test]
    fn wnaf_reconstructs_the_scalar() {
        let mut rng = StdRng::seed_from_u64(1);
        for w in [W, W_G] {
            for case in 0..200 {
                let s = match case {
                    0 => Scalar::ZERO,
                    1 => -Scalar::ONE,
                    2 => Scalar::from(u128::MAX),
                    _ => random_scalar(&mut rng),
                };
                let mut naf = [0i8; NAF_LEN];
                let len = wnaf(&s, w, &mut naf);
                let mut back = Scalar::ZERO;
                for &d in naf[..len].iter().rev() {
                    back = back.double();
                    back +=
                        if d >= 0 { Scalar::from(d as u64) } else { -Scalar::from(d.unsigned_abs() as u64) };
                    assert!(d == 0 || (d % 2 != 0 && d.unsigned_abs() < 1 << (w - 1)));
                }
                assert_eq!(back, s);
                assert!(naf[len..].iter().all(|&d| d == 0));
            }
        }
    }

    #[test]
    fn msm_matches_naive_sum() {
        let mut rng = StdRng::seed_from_u64(2);
        for n in [1usize, 2, 5, 33] {
            let points: Vec<AffinePoint> =
                (0..n).map(|_| (ProjectivePoint::GENERATOR * random_scalar(&mut rng)).to_affine()).collect();
            let scalars: Vec<Scalar> = (0..n)
                .map(
                    |j| if j % 2 == 0 { Scalar::from(rng.random::<u128>()) } else { random_scalar(&mut rng) },
                )
                .collect();
            let short: Vec<bool> = (0..n).map(|j| j % 2 == 0).collect();
            let g = random_scalar(&mut rng);
            let naive = points
                .iter()
                .zip(&scalars)
                .fold(ProjectivePoint::GENERATOR * g, |acc, (p, s)| acc + ProjectivePoint::from(*p) * s);
            assert_eq!(msm_with_generator(&points, &scalars, &short, &g), naive);
        }
    }

    #[test]
    fn valid_batches_verify() {
        for (n, distinct) in [(1, true), (2, true), (7, true), (64, true), (7, false), (64, false)] {
            let items = workload(n, distinct, n as u64);
            assert_eq!(verify_batch(&items), Ok(()), "n = {n}, distinct = {distinct}");
            assert!(items.iter().all(reference));
            assert!(items.iter().all(verify_single));
        }
    }

    #[test]
    fn one_bad_item_is_named() {
        let mut rng = StdRng::seed_from_u64(3);
        let foreign = workload(1, true, 99)[0].key;
        for kind in 0..8u8 {
            for (n, distinct) in [(1, true), (7, true), (64, true), (64, false)] {
                let mut items = workload(n, distinct, 10 + u64::from(kind));
                let bad = rng.random_range(0..n);
                tamper(&mut items[bad], kind, &foreign, &mut rng);
                assert!(!reference(&items[bad]), "kind {kind} did not break the item");
                assert_eq!(verify_batch(&items), Err(vec![bad]), "kind {kind}, n {n}");
            }
        }
    }

    #[test]
    fn wrong_key_of_a_repeated_signer() {
        // Two signers; one item of signer A claims signer B's key: merging must not hide it.
        let mut items = workload(8, false, 5);
        let other = workload(8, false, 6);
        items.extend(other.iter().cloned());
        items[3].key = other[0].key;
        assert_eq!(verify_batch(&items), Err(vec![3]));
    }

    #[test]
    fn several_bad_items_are_all_named() {
        let mut rng = StdRng::seed_from_u64(4);
        let foreign = workload(1, true, 98)[0].key;
        let mut items = workload(32, true, 7);
        for (k, i) in [2usize, 9, 10, 31].into_iter().enumerate() {
            tamper(&mut items[i], k as u8, &foreign, &mut rng);
        }
        assert_eq!(verify_batch(&items), Err(vec![2, 9, 10, 31]));
    }

    #[test]
    fn high_s_twin_is_refused_even_though_the_equation_holds() {
        let mut items = workload(3, true, 8);
        negate_s(&mut items[1].signature);
        // With s → n − s and the opposite parity the curve equation still holds.
        items[1].signature[64] ^= 27 ^ 28;
        assert_eq!(verify_batch(&items), Err(vec![1]));
        assert!(!reference(&items[1]));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Against libsecp256k1: per item, the batch's verdict is the node's single verdict.
        #[test]
        fn agrees_with_libsecp256k1(
            seed in any::<u64>(),
            n in 1usize..10,
            distinct in any::<bool>(),
            tampering in proptest::collection::vec(proptest::option::weighted(0.3, 0u8..8), 10),
        ) {
            let mut rng = StdRng::seed_from_u64(seed);
            let foreign = workload(1, true, seed ^ 1)[0].key;
            let mut items = workload(n, distinct, seed);
            for (item, t) in items.iter_mut().zip(&tampering) {
                if let Some(kind) = t {
                    tamper(item, *kind, &foreign, &mut rng);
                }
            }
            let expected: Vec<usize> = (0..n).filter(|&i| !reference(&items[i])).collect();
            let got = verify_batch(&items).err().unwrap_or_default();
            prop_assert_eq!(got, expected.clone());
            let single: Vec<usize> = (0..n).filter(|&i| !verify_single(&items[i])).collect();
            prop_assert_eq!(single, expected);
        }
    }
}

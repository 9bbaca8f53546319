//! Verification hot path: one voucher's signature check, by backend, and the node's full
//! check (EIP-712 hash + recovery + cached-key compare). Prints operations per second.
//!
//! `cargo bench -p x402-node --bench verify`
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use alloy::{
    primitives::{Address, B256, U256},
    signers::{SignerSync, local::PrivateKeySigner},
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use secp256k1::{Message, SECP256K1, ecdsa::Signature};
use x402_node::verify::{VoucherVerifier, recover};
use x402_protocol::Voucher;

fn bench(c: &mut Criterion) {
    let verifier = VoucherVerifier::new(31337, Address::repeat_byte(0x42));
    let signer = PrivateKeySigner::random();
    let voucher =
        Voucher { channelId: B256::repeat_byte(7), nonce: 42, cumulativeAmount: U256::from(1_000_000) };
    let digest = verifier.digest(&voucher);
    let sig = signer.sign_hash_sync(&digest).unwrap().as_bytes();
    let key = recover(&digest, &sig).unwrap();
    let compact = Signature::from_compact(&sig[..64]).unwrap();
    let msg = Message::from_digest(digest.0);
    let k256_key = k256::ecdsa::VerifyingKey::from_sec1_bytes(&key.serialize()).unwrap();
    let k256_sig = k256::ecdsa::Signature::from_slice(&sig[..64]).unwrap();
    let alloy_sig = alloy::primitives::Signature::from_raw(&sig).unwrap();

    let mut g = c.benchmark_group("verify");
    g.throughput(Throughput::Elements(1));
    g.bench_function("eip712_hash", |b| b.iter(|| verifier.digest(black_box(&voucher))));
    g.bench_function("libsecp256k1_verify", |b| {
        b.iter(|| SECP256K1.verify_ecdsa(black_box(&msg), black_box(&compact), black_box(&key)).is_ok())
    });
    g.bench_function("libsecp256k1_recover", |b| b.iter(|| recover(black_box(&digest), black_box(&sig))));
    g.bench_function("k256_verify", |b| {
        use k256::ecdsa::signature::hazmat::PrehashVerifier;
        b.iter(|| k256_key.verify_prehash(black_box(digest.as_slice()), black_box(&k256_sig)).is_ok())
    });
    g.bench_function("alloy_recover_address", |b| {
        b.iter(|| alloy_sig.recover_address_from_prehash(black_box(&digest)).unwrap())
    });
    g.bench_function("node_voucher_check_cached_key", |b| {
        let mut cache = Some(key);
        b.iter(|| verifier.verify_eoa(black_box(&voucher), black_box(&sig), signer.address(), &mut cache))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);

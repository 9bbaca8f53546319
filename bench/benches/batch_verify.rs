//! Batch against single verification of voucher signatures (`x402_bench::batch`): criterion
//! timings of every method at batch sizes 16, 64 and 256, then the [`measure`] figures.
#![allow(missing_docs, clippy::print_stdout, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use k256::{ecdsa::signature::hazmat::PrehashVerifier, elliptic_curve::sec1::ToEncodedPoint};
use secp256k1::{Message, SECP256K1};
use x402_bench::batch::{measure, verify_batch, workload};

const SIZES: [usize; 3] = [16, 64, 256];

fn batch_verify(c: &mut Criterion) {
    for n in SIZES {
        let mut group = c.benchmark_group(format!("verify/{n}"));
        group.throughput(Throughput::Elements(n as u64));
        let distinct = workload(n, true, 1);
        let repeated = workload(n, false, 2);

        let secp: Vec<_> = distinct
            .iter()
            .map(|it| {
                let sig = secp256k1::ecdsa::Signature::from_compact(&it.signature[..64]).unwrap();
                let key =
                    secp256k1::PublicKey::from_slice(it.key.to_encoded_point(false).as_bytes()).unwrap();
                (Message::from_digest(it.digest.0), sig, key)
            })
            .collect();
        group.bench_function("secp256k1_verify", |b| {
            b.iter(|| {
                for (m, s, k) in &secp {
                    assert!(SECP256K1.verify_ecdsa(m, s, k).is_ok());
                }
            })
        });
        group.bench_function("secp256k1_recover", |b| {
            b.iter(|| {
                for (it, (_, _, k)) in distinct.iter().zip(&secp) {
                    assert!(x402_node::verify::recover(&it.digest, &it.signature).as_ref() == Some(k));
                }
            })
        });
        let k256: Vec<_> = distinct
            .iter()
            .map(|it| {
                let sig = k256::ecdsa::Signature::from_slice(&it.signature[..64]).unwrap();
                (k256::ecdsa::VerifyingKey::from(it.key), sig)
            })
            .collect();
        group.bench_function("k256_verify", |b| {
            b.iter(|| {
                for ((k, s), it) in k256.iter().zip(&distinct) {
                    assert!(k.verify_prehash(it.digest.as_slice(), s).is_ok());
                }
            })
        });
        for (name, items) in [("batch_distinct", &distinct), ("batch_repeated", &repeated)] {
            group.bench_with_input(BenchmarkId::new(name, n), items, |b, items| {
                b.iter(|| assert!(verify_batch(black_box(items)).is_ok()))
            });
        }
        group.finish();
    }
}

fn figures() {
    println!(
        "\n{:>5} {:>9} {:>18} {:>19} {:>13} {:>10}",
        "n", "signers", "secp256k1_verify", "secp256k1_recover", "k256_verify", "batch"
    );
    for n in SIZES {
        for distinct in [true, false] {
            let f = measure(n, distinct);
            println!(
                "{:>5} {:>9} {:>15.2} µs {:>16.2} µs {:>10.2} µs {:>7.2} µs",
                f.n,
                if f.distinct { "distinct" } else { "one" },
                f.secp256k1_verify_us,
                f.secp256k1_recover_us,
                f.k256_verify_us,
                f.batch_us
            );
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = batch_verify
}

fn main() {
    benches();
    figures();
    Criterion::default().configure_from_args().final_summary();
}

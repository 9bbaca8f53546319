//! Differential test: the node's voucher check against the real contract, executed in revm.
//!
//! The compiled `PaymentChannel` bytecode (from `forge build`, in `out/`) is deployed into an
//! in-process revm. For random vouchers — valid, stale, over the deposit, signed by the wrong
//! key, tampered, high-s, for another channel — the node's own admission path on a record
//! fresh from the chain ([`ChannelRecord::admit`] at price zero, then
//! [`VoucherVerifier::verify_eoa`]) must equal the contract's verdict: `settle` succeeds
//! exactly when the node accepts, and pays exactly the amount above what the node counts as
//! charged. This guards the EIP-712 encoding and the acceptance rules on both sides.

use alloy::{
    primitives::{Address, B256, Bytes, U256},
    signers::{SignerSync, local::PrivateKeySigner},
    sol_types::{SolCall, SolValue},
};
use proptest::{prelude::*, strategy::ValueTree, test_runner::TestRunner};
use revm::{
    Context, ExecuteCommitEvm, ExecuteEvm, MainBuilder, MainContext,
    context::{TxEnv, result::ExecutionResult},
    database::{CacheDB, EmptyDB},
    primitives::TxKind,
    state::AccountInfo,
};
use x402_node::{
    channel::{ChannelRecord, OnchainChannel},
    verify::VoucherVerifier,
};
use x402_protocol::{Voucher, bindings::IPaymentChannel};

const CHAIN_ID: u64 = 31337;
const DEPOSIT: u64 = 1_000_000;

type Evm = revm::MainnetEvm<revm::handler::MainnetContext<CacheDB<EmptyDB>>>;

/// The deployed contract's creation bytecode, from forge's artifact.
fn creation_code() -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../out/PaymentChannel.sol/PaymentChannel.json");
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e}; run `forge build` (scripts/test does) first"));
    let json: serde_json::Value = serde_json::from_str(&text).expect("forge artifact is JSON");
    let hex = json["bytecode"]["object"].as_str().expect("artifact has bytecode.object");
    alloy::hex::decode(hex).expect("bytecode is hex")
}

struct Chain {
    evm: Evm,
    nonces: std::collections::HashMap<Address, u64>,
    contract: Address,
}

impl Chain {
    fn new(accounts: &[Address]) -> Self {
        let mut db = CacheDB::new(EmptyDB::default());
        for a in accounts {
            db.insert_account_info(
                *a,
                AccountInfo { balance: U256::from(10u128.pow(24)), ..Default::default() },
            );
        }
        let evm =
            Context::mainnet().with_db(db).modify_cfg_chained(|cfg| cfg.chain_id = CHAIN_ID).build_mainnet();
        let mut chain = Self { evm, nonces: Default::default(), contract: Address::ZERO };
        let mut code = creation_code();
        code.extend_from_slice(&(3600u32, 30 * 86_400u32).abi_encode_params());
        let result = chain.exec(accounts[0], TxKind::Create, code, U256::ZERO);
        chain.contract = match result {
            ExecutionResult::Success { output, .. } => output.address().copied().expect("created"),
            other => panic!("deploy failed: {other:?}"),
        };
        chain
    }

    fn exec(&mut self, from: Address, kind: TxKind, data: Vec<u8>, value: U256) -> ExecutionResult {
        let nonce = self.nonces.entry(from).or_default();
        let tx = TxEnv::builder()
            .caller(from)
            .kind(kind)
            .data(Bytes::from(data))
            .value(value)
            .gas_limit(5_000_000)
            .nonce(*nonce)
            .chain_id(Some(CHAIN_ID))
            .build()
            .expect("valid tx");
        let result = self.evm.transact_commit(tx).expect("tx executes");
        *nonce += 1;
        result
    }

    fn call<C: SolCall>(&mut self, from: Address, call: C, value: U256) -> ExecutionResult {
        self.exec(from, TxKind::Call(self.contract), call.abi_encode(), value)
    }

    fn view<C: SolCall>(&mut self, call: C) -> C::Return {
        let tx = TxEnv::builder()
            .caller(Address::repeat_byte(0xee))
            .kind(TxKind::Call(self.contract))
            .data(Bytes::from(call.abi_encode()))
            .gas_limit(5_000_000)
            .nonce(0)
            .chain_id(Some(CHAIN_ID))
            .build()
            .expect("valid tx");
        let out = self.evm.transact(tx).expect("view executes").result;
        match out {
            ExecutionResult::Success { output, .. } => C::abi_decode_returns(output.data()).expect("decodes"),
            other => panic!("view failed: {other:?}"),
        }
    }

    fn channel(&mut self, id: B256, signer: Address) -> OnchainChannel {
        let c = self.view(IPaymentChannel::getChannelCall { channelId: id });
        OnchainChannel {
            payer: c.payer,
            payee: c.payee,
            token: c.token,
            signer,
            signer_is_contract: false,
            deposit: U256::from(c.deposit),
            challenge_period: u64::from(c.challengePeriod),
            exit_at: c.exitAt.to::<u64>(),
            open: c.status == IPaymentChannel::Status::Open,
            nonce: c.nonce,
            paid: U256::from(c.paid),
            pending_close: false,
        }
    }
}

#[derive(Clone, Debug)]
enum Tamper {
    None,
    WrongKey,
    HighS,
    FlipV,
    FlipByte(usize),
    OtherChannel,
    Truncate,
}

fn tamper() -> impl Strategy<Value = Tamper> {
    prop_oneof![
        6 => Just(Tamper::None),
        1 => Just(Tamper::WrongKey),
        1 => Just(Tamper::HighS),
        1 => Just(Tamper::FlipV),
        1 => (0usize..64).prop_map(Tamper::FlipByte),
        1 => Just(Tamper::OtherChannel),
        1 => Just(Tamper::Truncate),
    ]
}

const N: U256 = U256::from_be_slice(&[
    0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE, 0xBA,
    0xAE, 0xDC, 0xE6, 0xAF, 0x48, 0xA0, 0x3B, 0xBF, 0xD2, 0x5E, 0x8C, 0xD0, 0x36, 0x41, 0x41,
]);

#[test]
fn node_and_contract_agree_on_random_vouchers() {
    let payer = PrivateKeySigner::random();
    let payee = Address::repeat_byte(0xbb);
    let stranger = PrivateKeySigner::random();
    let mut chain = Chain::new(&[payer.address(), payee]);
    let verifier = VoucherVerifier::new(CHAIN_ID, chain.contract);

    // Two native-token channels of the same payer, signed by the payer itself.
    let mut ids = Vec::new();
    for salt in [1u8, 2] {
        let params = IPaymentChannel::OpenParams {
            payee,
            token: Address::ZERO,
            signer: Address::ZERO,
            challengePeriod: 86_400,
            deposit: U256::from(DEPOSIT),
            salt: B256::repeat_byte(salt),
        };
        let id = chain
            .view(IPaymentChannel::computeChannelIdCall { payer: payer.address(), params: params.clone() });
        let opened = chain.call(payer.address(), IPaymentChannel::openCall { params }, U256::from(DEPOSIT));
        assert!(opened.is_success(), "open: {opened:?}");
        ids.push(id);
    }

    // The digests agree before anything else.
    let v = Voucher { channelId: ids[0], nonce: 1, cumulativeAmount: U256::from(5) };
    let onchain_digest = chain.view(IPaymentChannel::voucherDigestCall {
        channelId: v.channelId,
        nonce: v.nonce,
        cumulativeAmount: v.cumulativeAmount,
    });
    assert_eq!(onchain_digest, verifier.digest(&v));

    // A deterministic random sequence, so a failure reproduces.
    let mut runner = TestRunner::deterministic();
    let steps = prop::collection::vec((-3i64..6, -20_000i64..200_000, tamper(), 0usize..2), 300)
        .new_tree(&mut runner)
        .expect("strategy")
        .current();
    let mut accepted = 0;
    let mut refused = 0;
    for (dn, da, tamper, which) in steps {
        let id = ids[which];
        let before = chain.channel(id, payer.address());
        let nonce = (before.nonce as i64 + dn).max(0) as u64;
        let amount = U256::from((before.paid.to::<u64>() as i64 + da).max(0) as u64);
        let mut voucher = Voucher { channelId: id, nonce, cumulativeAmount: amount };
        let key = if matches!(tamper, Tamper::WrongKey) { &stranger } else { &payer };
        let mut sig = key.sign_hash_sync(&verifier.digest(&voucher)).expect("signs").as_bytes().to_vec();
        match tamper {
            Tamper::HighS => {
                let s = N - U256::from_be_slice(&sig[32..64]);
                sig[32..64].copy_from_slice(&s.to_be_bytes::<32>());
                sig[64] ^= 0x03;
            }
            Tamper::FlipV => sig[64] ^= 0x03,
            Tamper::FlipByte(i) => sig[i] ^= 0x01,
            Tamper::OtherChannel => voucher.channelId = ids[1 - which],
            Tamper::Truncate => sig.truncate(64),
            Tamper::None | Tamper::WrongKey => {}
        }
        let target = chain.channel(voucher.channelId, payer.address());

        // The node's verdict, through the code it runs on every request.
        let record = ChannelRecord::new(voucher.channelId, target.clone());
        let admitted = record.admit(&voucher, U256::ZERO, U256::ZERO, &Default::default()).is_ok()
            && verifier.verify_eoa(&voucher, &sig, payer.address(), &mut None);
        let node = admitted.then(|| voucher.cumulativeAmount - record.charged());

        // The contract's.
        let claim = IPaymentChannel::Claim {
            channelId: voucher.channelId,
            nonce: voucher.nonce,
            cumulativeAmount: voucher.cumulativeAmount,
            claimed: voucher.cumulativeAmount,
            signature: Bytes::from(sig),
        };
        let result = chain.call(payee, IPaymentChannel::settleCall { claim }, U256::ZERO);
        let after = chain.channel(voucher.channelId, payer.address());
        let contract = result.is_success().then(|| after.paid - target.paid);

        assert_eq!(node, contract, "voucher {voucher:?} tamper {tamper:?}: {result:?}");
        if node.is_some() {
            accepted += 1;
        } else {
            refused += 1;
        }
    }
    // The sequence exercised both outcomes.
    assert!(accepted >= 10 && refused >= 10, "accepted {accepted}, refused {refused}");
}

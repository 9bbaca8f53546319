//! Differential tests: the node's rules against the real contract, executed in revm.
//!
//! The compiled `PaymentChannel` bytecode (from `forge build`, in `out/`) is deployed into an
//! in-process revm on the Prague hardfork.
//!
//! - Random vouchers (valid, stale, over the deposit, signed by the wrong key, tampered,
//!   high-s, for another channel): the node's own admission path on a record fresh from the
//!   chain ([`ChannelRecord::admit`] at price zero, then [`VoucherVerifier::verify_eoa`]) must
//!   equal the contract's verdict: `settle` succeeds exactly when the node accepts, and pays
//!   exactly the amount above what the node counts as charged.
//! - The signature rule ([`signed_by_channel_signer`]) for every kind of signer: an EOA, the
//!   same EOA after an EIP-7702 delegation to a wallet that refuses (or accepts) everything,
//!   an ERC-1271 wallet, a wallet that burns all its gas, one that answers too briefly and one
//!   that answers at length. The node's ERC-1271 check runs here against the same revm state,
//!   with the gas and the return-data rule the node uses over RPC.
//!
//! This guards the EIP-712 encoding, the channel id and the acceptance rules on both sides.

use std::sync::{Arc, Mutex};

use alloy::{
    primitives::{Address, B256, Bytes, U256},
    signers::{SignerSync, local::PrivateKeySigner},
    sol_types::{SolCall, SolValue},
};
use proptest::{prelude::*, strategy::ValueTree, test_runner::TestRunner};
use revm::{
    Context, ExecuteCommitEvm, ExecuteEvm, MainBuilder, MainContext,
    bytecode::Bytecode,
    context::{TxEnv, result::ExecutionResult},
    context_interface::ContextTr,
    database::{CacheDB, EmptyDB},
    primitives::{TxKind, hardfork::SpecId},
    state::AccountInfo,
};
use x402_node::{
    chain::{ChainError, ChainReader},
    channel::{ChannelRecord, OnchainChannel},
    verify::{
        ERC1271_GAS_STIPEND, VoucherVerifier, erc1271_accepts, erc1271_call_gas, signed_by_channel_signer,
    },
};
use x402_protocol::{
    Voucher,
    bindings::IPaymentChannel::{self, ChannelParams},
};

const CHAIN_ID: u64 = 31337;
const DEPOSIT: u64 = 1_000_000;

type Evm = revm::MainnetEvm<revm::handler::MainnetContext<CacheDB<EmptyDB>>>;

/// A forge artifact's creation bytecode.
fn artifact(file: &str, name: &str) -> Vec<u8> {
    let path = format!("{}/../out/{file}/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path)
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
        let evm = Context::mainnet()
            .with_db(db)
            .modify_cfg_chained(|cfg| {
                cfg.chain_id = CHAIN_ID;
                cfg.spec = SpecId::PRAGUE;
            })
            .build_mainnet();
        let mut chain = Self { evm, nonces: Default::default(), contract: Address::ZERO };
        let mut code = artifact("PaymentChannel.sol", "PaymentChannel");
        code.extend_from_slice(&(3600u32, 30 * 86_400u32).abi_encode_params());
        chain.contract = chain.deploy(accounts[0], code);
        chain
    }

    fn deploy(&mut self, from: Address, code: Vec<u8>) -> Address {
        match self.exec(from, TxKind::Create, code, U256::ZERO, 10_000_000) {
            ExecutionResult::Success { output, .. } => output.address().copied().expect("created"),
            other => panic!("deploy failed: {other:?}"),
        }
    }

    /// Gives `account` `code` (raw runtime code, or an EIP-7702 designator).
    fn set_code(&mut self, account: Address, code: Bytecode) {
        let db = self.evm.ctx.db_mut();
        let mut info = db.load_account(account).expect("in memory").info.clone();
        info.code_hash = code.hash_slow();
        info.code = Some(code);
        db.insert_account_info(account, info);
    }

    fn exec(&mut self, from: Address, kind: TxKind, data: Vec<u8>, value: U256, gas: u64) -> ExecutionResult {
        let nonce = self.nonces.entry(from).or_default();
        let tx = TxEnv::builder()
            .caller(from)
            .kind(kind)
            .data(Bytes::from(data))
            .value(value)
            .gas_limit(gas)
            .nonce(*nonce)
            .chain_id(Some(CHAIN_ID))
            .build()
            .expect("valid tx");
        let result = self.evm.transact_commit(tx).expect("tx executes");
        *nonce += 1;
        result
    }

    fn call<C: SolCall>(&mut self, from: Address, call: C, value: U256) -> ExecutionResult {
        self.exec(from, TxKind::Call(self.contract), call.abi_encode(), value, 5_000_000)
    }

    /// A read-only call from an account without code, not committed.
    fn static_call(&mut self, to: Address, data: Vec<u8>, gas: u64) -> ExecutionResult {
        let tx = TxEnv::builder()
            .caller(Address::repeat_byte(0xee))
            .kind(TxKind::Call(to))
            .data(Bytes::from(data))
            .gas_limit(gas)
            .nonce(0)
            .chain_id(Some(CHAIN_ID))
            .build()
            .expect("valid tx");
        self.evm.transact(tx).expect("call executes").result
    }

    fn view<C: SolCall>(&mut self, call: C) -> C::Return {
        match self.static_call(self.contract, call.abi_encode(), 5_000_000) {
            ExecutionResult::Success { output, .. } => C::abi_decode_returns(output.data()).expect("decodes"),
            other => panic!("view failed: {other:?}"),
        }
    }

    fn channel(&mut self, params: &ChannelParams) -> OnchainChannel {
        let id = params.channel_id(CHAIN_ID, self.contract);
        let state = self.view(IPaymentChannel::getChannelCall { channelId: id });
        OnchainChannel::new(params.clone(), &state, false).expect("the channel exists")
    }

    fn open(&mut self, params: &ChannelParams) -> B256 {
        let id = self.view(IPaymentChannel::computeChannelIdCall { params: params.clone() });
        assert_eq!(id, params.channel_id(CHAIN_ID, self.contract), "the node computes the contract's id");
        let open = IPaymentChannel::openCall { params: params.clone(), deposit: U256::from(DEPOSIT) };
        let opened = self.call(params.payer, open, U256::from(DEPOSIT));
        assert!(opened.is_success(), "open: {opened:?}");
        id
    }
}

/// The node's chain reader over a snapshot of the revm state (revm's EVM is not `Send`):
/// ERC-1271 checks as `x402_node::chain::RpcChain` makes them: only if the signer has code,
/// with the stipend as the wallet's gas, the answer read by [`erc1271_accepts`].
#[derive(Clone, Default)]
struct Revm(Arc<Mutex<CacheDB<EmptyDB>>>);

impl Revm {
    /// Takes the chain's current state.
    fn sync(&self, chain: &mut Chain) {
        *self.0.lock().expect("not poisoned") = chain.evm.ctx.db_mut().clone();
    }
}

impl ChainReader for Revm {
    async fn channel(&self, _: B256) -> Result<Option<OnchainChannel>, ChainError> {
        Ok(None)
    }

    async fn learn_params(&self, _: B256, _: ChannelParams) -> Result<bool, ChainError> {
        Ok(true)
    }

    async fn is_valid_contract_signature(
        &self,
        signer: Address,
        digest: B256,
        signature: Bytes,
    ) -> Result<bool, ChainError> {
        let mut db = self.0.lock().expect("not poisoned").clone();
        let code = db.load_account(signer).expect("in memory").info.code.clone();
        if code.is_none_or(|c| c.is_empty()) {
            return Ok(false);
        }
        let input = IERC1271::isValidSignatureCall { hash: digest, signature }.abi_encode();
        let gas = erc1271_call_gas(&input);
        let mut evm = Context::mainnet()
            .with_db(db)
            .modify_cfg_chained(|cfg| {
                cfg.chain_id = CHAIN_ID;
                cfg.spec = SpecId::PRAGUE;
            })
            .build_mainnet();
        let tx = TxEnv::builder()
            .caller(Address::repeat_byte(0xee))
            .kind(TxKind::Call(signer))
            .data(Bytes::from(input))
            .gas_limit(gas)
            .nonce(0)
            .chain_id(Some(CHAIN_ID))
            .build()
            .expect("valid tx");
        Ok(match evm.transact(tx).expect("call executes").result {
            ExecutionResult::Success { output, .. } => erc1271_accepts(output.data()),
            _ => false,
        })
    }
}

alloy::sol! {
    interface IERC1271 {
        function isValidSignature(bytes32 hash, bytes signature) external view returns (bytes4);
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

fn native_params(payer: Address, payee: Address, signer: Address, salt: u8) -> ChannelParams {
    ChannelParams {
        payer,
        payee,
        token: Address::ZERO,
        signer,
        challengePeriod: 86_400,
        salt: B256::repeat_byte(salt),
    }
}

#[test]
fn node_and_contract_agree_on_random_vouchers() {
    let payer = PrivateKeySigner::random();
    let payee = Address::repeat_byte(0xbb);
    let stranger = PrivateKeySigner::random();
    let mut chain = Chain::new(&[payer.address(), payee]);
    let verifier = VoucherVerifier::new(CHAIN_ID, chain.contract);

    // Two native-token channels of the same payer, signed by the payer itself.
    let params: Vec<ChannelParams> =
        [1u8, 2].iter().map(|salt| native_params(payer.address(), payee, Address::ZERO, *salt)).collect();
    let ids: Vec<B256> = params.iter().map(|p| chain.open(p)).collect();

    // The digests agree before anything else.
    let v = Voucher { channelId: ids[0], nonce: 1, cumulativeAmount: U256::from(5) };
    let onchain_digest = chain.view(IPaymentChannel::voucherDigestCall {
        channelId: v.channelId,
        nonce: v.nonce,
        cumulativeAmount: v.cumulativeAmount,
    });
    assert_eq!(onchain_digest, verifier.digest(&v));
    let claim_digest = chain.view(IPaymentChannel::claimAuthorizationDigestCall {
        channelId: ids[0],
        nonce: 3,
        claimed: U256::from(7),
    });
    assert_eq!(claim_digest, x402_protocol::claim::digest(verifier.domain(), ids[0], 3, U256::from(7)));
    let stipend = chain.view(IPaymentChannel::ERC1271_GAS_STIPENDCall {});
    assert_eq!(stipend, U256::from(ERC1271_GAS_STIPEND), "the node gives wallets the contract's stipend");

    // A deterministic random sequence, so a failure reproduces. Voucher nonces are off-chain
    // only: any nonce above the node's (none yet, on a fresh record) is fine for both.
    let mut runner = TestRunner::deterministic();
    let steps = prop::collection::vec((1u64..1_000, -20_000i64..200_000, tamper(), 0usize..2), 300)
        .new_tree(&mut runner)
        .expect("strategy")
        .current();
    let mut accepted = 0;
    let mut refused = 0;
    for (nonce, da, tamper, which) in steps {
        let id = ids[which];
        let before = chain.channel(&params[which]);
        let amount = U256::from((before.paid.to::<u64>() as i64 + da).max(0) as u64);
        let mut voucher = Voucher { channelId: id, nonce, cumulativeAmount: amount };
        let key = if matches!(tamper, Tamper::WrongKey) { &stranger } else { &payer };
        let mut sig = key.sign_hash_sync(&verifier.digest(&voucher)).expect("signs").as_bytes().to_vec();
        let mut target = which;
        match tamper {
            Tamper::HighS => {
                let s = N - U256::from_be_slice(&sig[32..64]);
                sig[32..64].copy_from_slice(&s.to_be_bytes::<32>());
                sig[64] ^= 0x03;
            }
            Tamper::FlipV => sig[64] ^= 0x03,
            Tamper::FlipByte(i) => sig[i] ^= 0x01,
            Tamper::OtherChannel => {
                target = 1 - which;
                voucher.channelId = ids[target];
            }
            Tamper::Truncate => sig.truncate(64),
            Tamper::None | Tamper::WrongKey => {}
        }
        let onchain = chain.channel(&params[target]);

        // The node's verdict, through the code it runs on every request.
        let record = ChannelRecord::new(voucher.channelId, onchain.clone());
        let admitted = record.admit(&voucher, U256::ZERO, U256::ZERO, &Default::default()).is_ok()
            && verifier.verify_eoa(&voucher, &sig, payer.address(), &mut None);
        let node = admitted.then(|| voucher.cumulativeAmount - record.charged());

        // The contract's.
        let claim = IPaymentChannel::Claim {
            channel: params[target].clone(),
            nonce: voucher.nonce,
            cumulativeAmount: voucher.cumulativeAmount,
            claimed: voucher.cumulativeAmount,
            signature: Bytes::from(sig),
        };
        let result = chain.call(payee, IPaymentChannel::settleCall { claim }, U256::ZERO);
        let after = chain.channel(&params[target]);
        let contract = result.is_success().then(|| after.paid - onchain.paid);

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

/// Runtime code returning one 32-byte word: `PUSH32 word PUSH1 0 MSTORE PUSH1 len PUSH1 0
/// RETURN`, returning `len` bytes of memory.
fn returns(word: [u8; 32], len: u8) -> Bytecode {
    let mut code = vec![0x7f];
    code.extend_from_slice(&word);
    code.extend_from_slice(&[0x60, 0x00, 0x52, 0x60, len, 0x60, 0x00, 0xf3]);
    Bytecode::new_raw(code.into())
}

fn magic_word() -> [u8; 32] {
    let mut word = [0u8; 32];
    word[..4].copy_from_slice(&[0x16, 0x26, 0xba, 0x7e]);
    word
}

/// The signature rule for every kind of signer, node against contract: ECDSA of the signer is
/// valid whatever code it has (a 7702 delegation to a wallet that says no cannot revoke it);
/// otherwise only the signer's ERC-1271 answer, within the stipend and read from its first word.
#[tokio::test]
async fn node_and_contract_apply_the_same_signature_rule() {
    let payer = PrivateKeySigner::random();
    let owner = PrivateKeySigner::random();
    let payee = Address::repeat_byte(0xbb);
    let stranger = PrivateKeySigner::random();
    let mut chain = Chain::new(&[payer.address(), payee]);
    let verifier = VoucherVerifier::new(CHAIN_ID, chain.contract);

    // Wallets: an ERC-1271 wallet of `owner`, and code that answers alike for any signature.
    let mut wallet_code = artifact("ERC1271Wallet.sol", "ERC1271Wallet");
    wallet_code.extend_from_slice(&owner.address().abi_encode());
    let wallet = chain.deploy(payee, wallet_code);
    let says_no = Address::repeat_byte(0x01);
    chain.set_code(says_no, returns([0; 32], 32));
    let says_yes = Address::repeat_byte(0x02);
    chain.set_code(says_yes, returns(magic_word(), 32));
    let gas_bomb = Address::repeat_byte(0x03);
    // JUMPDEST PUSH1 0 JUMP: loops until its gas is gone.
    chain.set_code(gas_bomb, Bytecode::new_raw(vec![0x5b, 0x60, 0x00, 0x56].into()));
    let too_short = Address::repeat_byte(0x04);
    chain.set_code(too_short, returns(magic_word(), 4));
    let long_answer = Address::repeat_byte(0x05);
    chain.set_code(long_answer, returns(magic_word(), 0xff));

    // A channel signed by the payer (an EOA for now), and one per wallet as session signer.
    let eoa = native_params(payer.address(), payee, Address::ZERO, 1);
    let mut channels = vec![("payer EOA", eoa.clone())];
    for (i, (name, signer)) in [
        ("ERC-1271 wallet", wallet),
        ("wallet that says no", says_no),
        ("wallet that says yes", says_yes),
        ("gas bomb", gas_bomb),
        ("4-byte answer", too_short),
        ("long answer", long_answer),
    ]
    .into_iter()
    .enumerate()
    {
        channels.push((name, native_params(payer.address(), payee, signer, 10 + i as u8)));
    }
    for (_, params) in &channels {
        chain.open(params);
    }
    let reader = Revm::default();
    let mut world = World { chain, reader, verifier, payee, nonce: 0 };

    let (_, eoa) = &channels[0];
    assert!(world.check("EOA, its own key", eoa, &payer, false).await);
    assert!(!world.check("EOA, another key", eoa, &stranger, false).await);
    assert!(!world.check("EOA, junk", eoa, &payer, true).await);

    // The payer delegates its account (EIP-7702) to a wallet that refuses everything: what it
    // signs with its key stays valid; junk is still junk.
    world.chain.set_code(payer.address(), Bytecode::new_eip7702(says_no));
    assert!(world.check("7702 to a refusing wallet, the key", eoa, &payer, false).await);
    assert!(!world.check("7702 to a refusing wallet, another key", eoa, &stranger, false).await);
    assert!(!world.check("7702 to a refusing wallet, junk", eoa, &payer, true).await);
    // Delegated to a wallet that accepts everything, anything passes its ERC-1271 check, on
    // both sides (which is why the node takes contract-like signers only when told to).
    world.chain.set_code(payer.address(), Bytecode::new_eip7702(says_yes));
    assert!(world.check("7702 to an accepting wallet, the key", eoa, &payer, false).await);
    assert!(world.check("7702 to an accepting wallet, junk", eoa, &payer, true).await);

    let wallets = &channels[1..];
    let verdicts = [
        // (the owner's signature, junk)
        (true, false),  // ERC-1271 wallet: its owner's key
        (false, false), // says no
        (true, true),   // says yes
        (false, false), // gas bomb: out of its stipend
        (false, false), // 4-byte answer: not a word
        (true, true),   // long answer: only the first word is read
    ];
    for ((label, params), (owner_ok, junk_ok)) in wallets.iter().zip(verdicts) {
        assert_eq!(world.check(label, params, &owner, false).await, owner_ok, "{label}, the owner");
        assert_eq!(world.check(label, params, &owner, true).await, junk_ok, "{label}, junk");
    }
}

/// The signature-rule test's state: the chain, the node's reader of it, and the next nonce.
struct World {
    chain: Chain,
    reader: Revm,
    verifier: VoucherVerifier,
    payee: Address,
    nonce: u64,
}

impl World {
    /// Signs a voucher of the channel `params` (with `key`, or junk), asks the node's rule and
    /// the contract's `settle`, and requires them to agree; returns the verdict.
    async fn check(
        &mut self,
        label: &str,
        params: &ChannelParams,
        key: &PrivateKeySigner,
        junk: bool,
    ) -> bool {
        self.nonce += 1;
        let nonce = self.nonce;
        let id = params.channel_id(CHAIN_ID, self.chain.contract);
        let onchain = self.chain.channel(params);
        let voucher = Voucher { channelId: id, nonce, cumulativeAmount: onchain.paid + U256::from(1) };
        let digest = self.verifier.digest(&voucher);
        let signature = if junk {
            Bytes::from(vec![0xab; 65])
        } else {
            Bytes::from(key.sign_hash_sync(&digest).expect("signs").as_bytes().to_vec())
        };
        self.reader.sync(&mut self.chain);
        let node = signed_by_channel_signer(&self.reader, &onchain, digest, &signature, &mut None, true)
            .await
            .expect("the revm reader never fails");
        let claim = IPaymentChannel::Claim {
            channel: params.clone(),
            nonce,
            cumulativeAmount: voucher.cumulativeAmount,
            claimed: voucher.cumulativeAmount,
            signature,
        };
        let result = self.chain.call(self.payee, IPaymentChannel::settleCall { claim }, U256::ZERO);
        assert_eq!(node, result.is_success(), "{label}: {result:?}");
        node
    }
}

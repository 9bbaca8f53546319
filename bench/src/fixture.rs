//! What the server and the load generator agree on without talking: the channels (ids from a
//! counter, one voucher signer), the terms and the price.

use alloy::{
    primitives::{Address, B256, U256, keccak256},
    signers::local::PrivateKeySigner,
};
use x402_node::{Terms, channel::OnchainChannel};
use x402_protocol::{
    ChannelDomain, Voucher,
    wire::{self, PaymentPayload, PaymentRequirements},
};

/// The chain id of the benchmark's (in-memory) chain.
pub const CHAIN_ID: u64 = 31337;
/// The price of `/paid`.
pub const PRICE: u64 = 1_000;
/// Every channel's deposit: enough for any run.
pub const DEPOSIT: u64 = 1_000_000_000_000;

/// The node's terms.
pub fn terms() -> Terms {
    x402_node::test_utils::terms(CHAIN_ID)
}

/// The voucher signer of every channel. Verification costs the same whoever signs: the node
/// recovers the key from each signature and compares it with the channel's.
pub fn signer() -> PrivateKeySigner {
    PrivateKeySigner::from_bytes(&keccak256(b"x402-bench signer")).expect("a valid key")
}

/// The id of channel `i`.
pub fn channel_id(i: u64) -> B256 {
    keccak256(i.to_be_bytes())
}

/// A channel of `signer` as the chain has it.
pub fn onchain(signer: Address) -> OnchainChannel {
    x402_node::test_utils::open_channel(&terms(), signer, U256::from(DEPOSIT))
}

/// Signs vouchers and turns them into `PAYMENT-SIGNATURE` values.
#[derive(Debug)]
pub struct Vouchers {
    domain: ChannelDomain,
    signer: PrivateKeySigner,
    requirements: PaymentRequirements,
}

impl Vouchers {
    /// Vouchers paying `requirements` (from the server's 402).
    pub fn new(requirements: PaymentRequirements) -> Self {
        let t = terms();
        Self { domain: ChannelDomain::new(t.chain_id, t.contract), signer: signer(), requirements }
    }

    /// The header of the voucher `nonce` of channel `i` for `amount`.
    pub fn header(&self, i: u64, nonce: u64, amount: U256) -> String {
        let voucher = Voucher { channelId: channel_id(i), nonce, cumulativeAmount: amount };
        let signed = self.domain.sign(&self.signer, voucher).expect("a local key signs");
        wire::encode_header(&PaymentPayload::new(&self.requirements, &signed))
    }
}

//! Test helpers: an in-memory chain, and a store whose durable syncs can be made to fail.

use alloy::primitives::{Address, B256, U256};
use x402_protocol::bindings::IPaymentChannel::ChannelParams;

use crate::{Terms, channel::OnchainChannel};

/// The terms of a test node on chain `chain_id`: contract `0xcc…`, payee `0xbb…`, token
/// `0xaa…`, a challenge period of at least an hour, no minimum deposit, 30 s timeout.
pub fn terms(chain_id: u64) -> Terms {
    Terms {
        chain_id,
        contract: Address::repeat_byte(0xcc),
        payee: Address::repeat_byte(0xbb),
        asset: Address::repeat_byte(0xaa),
        min_challenge_period: 3600,
        min_deposit: U256::ZERO,
        max_timeout_seconds: 30,
        accept_contract_signers: false,
    }
}

/// An open channel on `terms` of `payer` (who also signs its vouchers), holding `deposit`,
/// with a day's challenge period and nothing paid yet.
pub fn open_channel(terms: &Terms, payer: Address, deposit: U256) -> OnchainChannel {
    OnchainChannel {
        params: ChannelParams {
            payer,
            payee: terms.payee,
            token: terms.asset,
            signer: Address::ZERO,
            challengePeriod: 86_400,
            salt: B256::ZERO,
        },
        signer_is_contract: false,
        deposit,
        exit_at: 0,
        open: true,
        paid: U256::ZERO,
        pending_close: false,
    }
}

pub use x402_chain::test_utils::{FlakyStore, MemoryChain};

//! A channel's on-chain facts and a voucher as kept for a claim.

use alloy::primitives::{Address, Bytes, U256};
use serde::{Deserialize, Serialize};
use x402_protocol::bindings::IPaymentChannel::{self, ChannelParams};

/// The contract's facts about a channel: its immutable parameters (from its `ChannelOpened`
/// log, checked against its id) and its state (from `getChannel`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnchainChannel {
    /// The parameters every call about the channel passes again.
    pub params: ChannelParams,
    /// Whether the voucher signer had contract code that is not an EIP-7702 delegation when
    /// the node read the channel. It decides only whether the node takes the channel at all
    /// (`payment.accept_contract_signers`), never how a signature is checked: an ECDSA
    /// signature of the signer is valid whatever code it has.
    pub signer_is_contract: bool,
    /// Total deposited.
    pub deposit: U256,
    /// When the payer may withdraw (0: no exit pending).
    pub exit_at: u64,
    /// Open, or closed and tombstoned.
    pub open: bool,
    /// Paid to the payee on-chain so far.
    pub paid: U256,
    /// Closed in a block that is not yet confirmed: the node accepts nothing more, but keeps
    /// the record open in case a reorg undoes the close.
    #[serde(default)]
    pub pending_close: bool,
}

impl OnchainChannel {
    /// A channel from its parameters and its `getChannel` state, or `None` if the state is of
    /// an id never used.
    pub fn new(
        params: ChannelParams,
        state: &IPaymentChannel::Channel,
        signer_is_contract: bool,
    ) -> Option<Self> {
        if state.status == IPaymentChannel::Status::None {
            return None;
        }
        Some(Self {
            params,
            signer_is_contract,
            deposit: U256::from(state.deposit),
            exit_at: state.exitAt.to::<u64>(),
            open: state.status == IPaymentChannel::Status::Open,
            paid: U256::from(state.paid),
            pending_close: false,
        })
    }

    /// The depositor.
    pub const fn payer(&self) -> Address {
        self.params.payer
    }

    /// The provider.
    pub const fn payee(&self) -> Address {
        self.params.payee
    }

    /// The token (zero for the native token).
    pub const fn token(&self) -> Address {
        self.params.token
    }

    /// Who signs vouchers: the session key, or the payer when none is set.
    pub fn signer(&self) -> Address {
        self.params.voucher_signer()
    }

    /// The challenge period in seconds.
    pub fn challenge_period(&self) -> u64 {
        u64::from(self.params.challengePeriod)
    }

    /// What the node may rely on, from a channel read at a confirmed block and at the chain
    /// head: whatever lets the node accept *more* (a larger deposit, a cancelled exit) counts
    /// only once confirmed; whatever makes it accept *less* (an exit, a close, a payment on
    /// chain) counts at once. A reorg can therefore never leave the node serving against a
    /// deposit that is gone.
    pub fn confirmed_view(confirmed: Self, latest: &Self) -> Self {
        let mut view = confirmed;
        if !view.open {
            return view;
        }
        if latest.open {
            view.deposit = view.deposit.min(latest.deposit);
            if view.exit_at == 0 {
                view.exit_at = latest.exit_at;
            }
            view.paid = view.paid.max(latest.paid);
        } else {
            view.pending_close = true;
        }
        view
    }
}

impl OnchainChannel {
    /// Takes a fresh read of the same channel; returns whether anything changed. A close is
    /// final, and the contract zeroes a closed channel's fields, so a read of a closed channel
    /// only marks it closed and keeps the facts known before.
    pub fn update_from(&mut self, fresh: Self) -> bool {
        if !self.open || *self == fresh {
            return false;
        }
        if fresh.open {
            *self = fresh;
        } else {
            self.open = false;
        }
        true
    }
}

/// A voucher as kept by whoever may claim it (the node, the watcher).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredVoucher {
    /// Its nonce.
    pub nonce: u64,
    /// Its cumulative amount (the signed ceiling).
    pub cumulative_amount: U256,
    /// The signature.
    pub signature: Bytes,
}

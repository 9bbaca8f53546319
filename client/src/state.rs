//! The client's view of one channel: what it has signed, what the node says it charged, and
//! the rules for signing the next voucher and for believing the node.
//!
//! This module is pure (no I/O); [`crate::Client`] keeps each [`ClientChannel`] behind a
//! per-channel lock and persists it before any voucher leaves the process.

use alloy::primitives::{Address, B256, Bytes, U256};
use serde::{Deserialize, Serialize};
use x402_protocol::{
    Network, Voucher,
    bindings::IPaymentChannel::ChannelParams,
    wire::{ChannelState, SessionGrant, SettlementExtra, u256_dec},
};

use crate::{Error, Result};

/// What identifies "the same provider" for reusing a channel: a channel is reused for a 402
/// only if all four match.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelTerms {
    /// The chain.
    pub network: Network,
    /// The `PaymentChannel` contract.
    pub contract: Address,
    /// The provider (payee).
    pub payee: Address,
    /// The token (`0x0` for the native token).
    pub asset: Address,
}

/// Where a channel stands, as far as the client knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", rename_all_fields = "camelCase", tag = "status")]
pub enum ChannelStatus {
    /// Open: vouchers can be signed.
    Open,
    /// A cooperative close was requested from the node; no more vouchers.
    Closing,
    /// A unilateral exit is pending; [`withdraw`](crate::Client::withdraw) is possible from
    /// `exit_at` (unix seconds) on.
    Exiting {
        /// When the challenge period ends.
        exit_at: u64,
    },
    /// Closed on-chain.
    Closed,
}

impl ChannelStatus {
    /// A short name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closing => "closing",
            Self::Exiting { .. } => "exiting",
            Self::Closed => "closed",
        }
    }
}

/// One channel as the client keeps it (persisted as JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientChannel {
    /// The channel id.
    pub id: B256,
    /// Who and what it pays.
    pub terms: ChannelTerms,
    /// The depositor (receives refunds).
    pub payer: Address,
    /// The voucher signer (the payer, or a session key).
    pub signer: Address,
    /// The challenge period in seconds.
    pub challenge_period: u32,
    /// The salt that made the channel id unique (with the fields above, the channel's
    /// parameters, which every call about the channel passes again).
    #[serde(default)]
    pub salt: B256,
    /// The deposit, as far as the client knows (its own opens and top-ups).
    #[serde(with = "u256_dec")]
    pub deposit: U256,
    /// The nonce of the latest voucher signed (0: none).
    pub nonce: u64,
    /// The cumulative amount of the latest voucher signed.
    #[serde(with = "u256_dec")]
    pub cumulative: U256,
    /// The highest cumulative amount ever signed: the most the provider could be paid.
    #[serde(with = "u256_dec")]
    pub max_signed: U256,
    /// What the node reported as charged in total (from `PAYMENT-RESPONSE` or a corrective
    /// 402).
    #[serde(with = "u256_dec")]
    pub spent: U256,
    /// The latest signed voucher's signature.
    pub signature: Option<Bytes>,
    /// The base URL of the node the channel was opened for (for cooperative closes).
    pub node: Option<String>,
    /// The status.
    #[serde(flatten)]
    pub status: ChannelStatus,
    /// Whether the client asked the node for a cooperative close (so an on-chain `open` does
    /// not make the channel usable again).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub close_requested: bool,
    /// When the channel was opened (unix seconds).
    pub opened_at: u64,
    /// The session of the current prepaid credit window, if the node granted one. Memory only:
    /// after a restart the client signs again.
    #[serde(skip)]
    pub session: Option<SessionGrant>,
}

/// What [`ClientChannel::resync`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resync {
    /// The node holds the client's latest voucher; the next one builds on what it charged.
    Rebased,
    /// Vouchers of the client are still in flight; the next one goes above all of them.
    Ahead,
}

impl ClientChannel {
    /// The channel's parameters, as the contract takes them.
    pub fn params(&self) -> ChannelParams {
        ChannelParams {
            payer: self.payer,
            payee: self.terms.payee,
            token: self.terms.asset,
            signer: self.signer,
            challengePeriod: self.challenge_period,
            salt: self.salt,
        }
    }

    /// A freshly opened channel.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: B256,
        terms: ChannelTerms,
        payer: Address,
        signer: Address,
        challenge_period: u32,
        deposit: U256,
        node: Option<String>,
        opened_at: u64,
    ) -> Self {
        Self {
            id,
            terms,
            payer,
            signer,
            challenge_period,
            salt: B256::ZERO,
            deposit,
            nonce: 0,
            cumulative: U256::ZERO,
            max_signed: U256::ZERO,
            spent: U256::ZERO,
            signature: None,
            node,
            status: ChannelStatus::Open,
            close_requested: false,
            opened_at,
            session: None,
        }
    }

    /// The deposit the node has not charged: what is left to pay with. `deposit = charged +
    /// remaining`; signed vouchers the node did not charge (a failed upstream) do not count.
    pub fn remaining(&self) -> U256 {
        self.deposit.saturating_sub(self.spent)
    }

    /// What the next voucher can still add (the deposit above the amount it builds on).
    pub fn available(&self) -> U256 {
        self.deposit.saturating_sub(self.cumulative)
    }

    /// Whether payments may use this channel: open, and no close requested.
    pub fn usable(&self) -> bool {
        self.status == ChannelStatus::Open && !self.close_requested
    }

    /// The node did not charge the request paid by voucher `nonce`, which was built on
    /// `base` (a failed upstream: the node does not keep the voucher). Unless a later voucher
    /// was signed on top of it, the next one builds on `base` again, so a request that was not
    /// charged does not count as spent.
    pub fn not_charged(&mut self, nonce: u64, base: U256) {
        if nonce == self.nonce && self.status == ChannelStatus::Open {
            self.cumulative = base;
            self.session = None;
        }
    }

    /// Takes the channel's on-chain state (`status`, `exit_at` 0 when no exit is pending): the
    /// chain is the authority on whether it is open, exiting or closed. An open channel
    /// without an exit is usable again (an exit cancelled by a top-up), unless the client
    /// asked for a cooperative close.
    pub fn chain_status(&mut self, open: bool, exit_at: u64, deposit: U256, paid: U256) {
        self.status = match (open, exit_at) {
            (false, _) => ChannelStatus::Closed,
            (true, 0) if self.close_requested => ChannelStatus::Closing,
            (true, 0) => ChannelStatus::Open,
            (true, exit_at) => ChannelStatus::Exiting { exit_at },
        };
        if open {
            self.deposit = self.deposit.max(deposit);
            self.spent = self.spent.max(paid);
        }
    }

    /// Whether a voucher for `price` more can be signed without a top-up.
    pub fn can_pay(&self, price: U256) -> bool {
        self.status == ChannelStatus::Open && self.cumulative.saturating_add(price) <= self.deposit
    }

    /// Advances to the next voucher, paying `price` on top of the latest one. The caller must
    /// persist the channel (with [`Self::signed`]) before the voucher is sent.
    pub fn next_voucher(&mut self, price: U256) -> Result<Voucher> {
        self.next_voucher_ahead(price, 1)
    }

    /// Advances to the next voucher, paying `price` on top of the latest one and, with a credit
    /// window `window > 1`, up to `window - 1` more requests ahead (as far as the deposit
    /// allows). The prepaid rest is what the client risks until it is used. Any session of the
    /// previous voucher is dropped: the node revokes it when the new voucher arrives.
    pub fn next_voucher_ahead(&mut self, price: U256, window: u32) -> Result<Voucher> {
        if self.status != ChannelStatus::Open {
            return Err(self.state_error("signing a voucher"));
        }
        let needed = self.cumulative.saturating_add(price);
        if needed > self.deposit {
            return Err(Error::ChannelExhausted { channel: self.id, needed, deposit: self.deposit });
        }
        let ahead = price.saturating_mul(U256::from(window.max(1) - 1));
        let amount = needed.saturating_add(ahead).min(self.deposit);
        let nonce = self.nonce.checked_add(1).ok_or_else(|| self.state_error("another voucher (nonce)"))?;
        self.nonce = nonce;
        self.cumulative = amount;
        self.max_signed = self.max_signed.max(amount);
        self.session = None;
        Ok(Voucher { channelId: self.id, nonce, cumulativeAmount: amount })
    }

    /// Takes one use of the session, if there is one: the token to present instead of a new
    /// voucher.
    pub fn take_session_use(&mut self) -> Option<alloy::primitives::B256> {
        if self.status != ChannelStatus::Open {
            return None;
        }
        let session = self.session.as_mut().filter(|s| s.uses > 0)?;
        session.uses -= 1;
        let token = session.token;
        if session.uses == 0 {
            self.session = None;
        }
        Some(token)
    }

    /// Records the signature of the voucher [`Self::next_voucher`] returned.
    pub fn signed(&mut self, signature: Bytes) {
        self.signature = Some(signature);
    }

    /// Takes the node's view from a corrective 402, if it is consistent with what was signed.
    ///
    /// The node may hold an older voucher than the client's latest (requests in flight, or a
    /// request that lost a race), never a newer one, and never more than the client signed.
    /// On an inconsistency nothing changes and [`Error::NodeClaimsUnsigned`] is returned.
    ///
    /// The state must carry this channel's signer's own signature of the voucher it claims
    /// (`extra.channel.signature`, under the channel's EIP-712 domain), and must not charge
    /// beyond it: otherwise nothing changes and [`Error::UnsignedState`] is returned.
    pub fn resync(&mut self, node: &ChannelState) -> Result<Resync> {
        if node.channel_id != self.id {
            return Err(Error::Malformed(format!(
                "channel state for {} sent for channel {}",
                node.channel_id, self.id
            )));
        }
        let claimed = node.cumulative_amount.max(node.charged);
        if node.nonce > self.nonce || claimed > self.max_signed {
            return Err(Error::NodeClaimsUnsigned {
                channel: self.id,
                node_nonce: node.nonce,
                node_amount: claimed,
                signed_nonce: self.nonce,
                signed_amount: self.max_signed,
            });
        }
        let domain = x402_protocol::ChannelDomain::new(self.terms.network.chain_id, self.terms.contract);
        if !node.signed_by(&domain, self.signer) || node.charged > node.cumulative_amount {
            return Err(Error::UnsignedState {
                channel: self.id,
                nonce: node.nonce,
                amount: node.cumulative_amount,
            });
        }
        self.spent = self.spent.max(node.charged);
        if node.nonce == self.nonce {
            // The node holds the latest voucher: anything signed before it is dead, so the
            // next voucher only needs to cover what the node charged.
            self.cumulative = node.charged;
            Ok(Resync::Rebased)
        } else {
            self.cumulative = self.cumulative.max(node.charged);
            Ok(Resync::Ahead)
        }
    }

    /// Takes the node's receipt of a paid request (`PAYMENT-RESPONSE`).
    pub fn receipt(&mut self, paid: &SettlementExtra) -> Result<()> {
        if paid.channel_id != self.id {
            return Err(Error::Malformed(format!("receipt for {} on channel {}", paid.channel_id, self.id)));
        }
        if paid.nonce > self.nonce
            || paid.total_charged > self.max_signed
            || paid.cumulative_amount > self.max_signed
        {
            return Err(Error::NodeClaimsUnsigned {
                channel: self.id,
                node_nonce: paid.nonce,
                node_amount: paid.total_charged.max(paid.cumulative_amount),
                signed_nonce: self.nonce,
                signed_amount: self.max_signed,
            });
        }
        self.spent = self.spent.max(paid.total_charged);
        if let Some(grant) = paid.session {
            match &mut self.session {
                // The same session: the node's count may be older than the uses taken since.
                Some(s) if s.token == grant.token => s.uses = s.uses.min(grant.uses),
                // A grant for the latest voucher; one for an older voucher is dead already.
                _ if paid.nonce == self.nonce => self.session = (grant.uses > 0).then_some(grant),
                _ => {}
            }
        }
        if paid.nonce == self.nonce {
            // The node holds the latest voucher: the next one builds on what it charged, which
            // is below the signed amount for upto pricing and grows through a prepaid window.
            self.cumulative = paid.total_charged;
        }
        Ok(())
    }

    /// Records a top-up of `amount`.
    pub fn topped_up(&mut self, amount: U256) {
        self.deposit = self.deposit.saturating_add(amount);
        if matches!(self.status, ChannelStatus::Exiting { .. } | ChannelStatus::Closing)
            && !self.close_requested
        {
            // A payer top-up cancels a pending exit on-chain (and a top-up succeeds only on an
            // open channel).
            self.status = ChannelStatus::Open;
        }
    }

    pub(crate) fn state_error(&self, what: &'static str) -> Error {
        Error::ChannelState { channel: self.id, status: self.status.as_str(), what }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The test channels' voucher signer.
    fn key() -> alloy::signers::local::PrivateKeySigner {
        alloy::signers::local::PrivateKeySigner::from_bytes(&B256::repeat_byte(0x42)).unwrap()
    }

    /// `state` as the node sends it: with the signer's signature of the voucher it claims.
    fn signed(mut state: ChannelState, c: &ClientChannel) -> ChannelState {
        let domain = x402_protocol::ChannelDomain::new(c.terms.network.chain_id, c.terms.contract);
        state.signature = domain.sign(&key(), state.voucher()).unwrap().signature;
        state
    }

    fn channel(deposit: u64) -> ClientChannel {
        ClientChannel::new(
            B256::repeat_byte(9),
            ChannelTerms {
                network: Network::new(31337),
                contract: Address::repeat_byte(1),
                payee: Address::repeat_byte(2),
                asset: Address::repeat_byte(3),
            },
            Address::repeat_byte(4),
            key().address(),
            3600,
            U256::from(deposit),
            None,
            0,
        )
    }

    fn state(c: &ClientChannel, nonce: u64, cumulative: u64, charged: u64) -> ChannelState {
        let state = ChannelState {
            channel_id: c.id,
            nonce,
            cumulative_amount: U256::from(cumulative),
            charged: U256::from(charged),
            deposit: c.deposit,
            signature: Bytes::new(),
        };
        signed(state, c)
    }

    #[test]
    fn vouchers_accumulate_until_the_deposit() {
        let mut c = channel(250);
        let p = U256::from(100);
        assert_eq!(c.next_voucher(p).unwrap().cumulativeAmount, U256::from(100));
        let v = c.next_voucher(p).unwrap();
        assert_eq!((v.nonce, v.cumulativeAmount), (2, U256::from(200)));
        assert!(matches!(c.next_voucher(p), Err(Error::ChannelExhausted { .. })));
        // A refusal leaves the state alone.
        assert_eq!((c.nonce, c.cumulative), (2, U256::from(200)));
        c.topped_up(U256::from(100));
        assert_eq!(c.next_voucher(p).unwrap().nonce, 3);
    }

    #[test]
    fn no_voucher_unless_open() {
        for status in [ChannelStatus::Closing, ChannelStatus::Exiting { exit_at: 1 }, ChannelStatus::Closed] {
            let mut c = channel(1000);
            c.status = status;
            assert!(matches!(c.next_voucher(U256::from(1)), Err(Error::ChannelState { .. })), "{status:?}");
        }
    }

    #[test]
    fn resync_rebases_or_refuses() {
        let mut c = channel(1000);
        for _ in 0..3 {
            c.next_voucher(U256::from(100)).unwrap();
        }
        // The node holds nonce 3 but charged only 250 (upto): rebase.
        assert_eq!(c.resync(&state(&c, 3, 300, 250)).unwrap(), Resync::Rebased);
        assert_eq!(c.next_voucher(U256::from(100)).unwrap().cumulativeAmount, U256::from(350));
        // Nonce 2 landed after 4 was signed: stay ahead.
        assert_eq!(c.resync(&state(&c, 2, 200, 200)).unwrap(), Resync::Ahead);
        assert_eq!(
            c.next_voucher(U256::from(100)).unwrap(),
            Voucher { channelId: c.id, nonce: 5, cumulativeAmount: U256::from(450) }
        );
        let before = c.clone();
        for (nonce, cum, charged) in [(6, 450, 450), (5, 451, 400), (5, 450, 451), (1, 10_000, 0)] {
            assert!(
                matches!(c.resync(&state(&c, nonce, cum, charged)), Err(Error::NodeClaimsUnsigned { .. })),
                "{nonce} {cum} {charged}"
            );
            assert_eq!(c, before);
        }
        let mut other = state(&c, 1, 1, 1);
        other.channel_id = B256::ZERO;
        assert!(matches!(c.resync(&other), Err(Error::Malformed(_))));
    }

    #[test]
    fn resync_refuses_a_state_the_signer_did_not_sign() {
        let mut c = channel(1000);
        for _ in 0..3 {
            c.next_voucher(U256::from(100)).unwrap();
        }
        let good = state(&c, 2, 200, 150);
        let other_key = alloy::signers::local::PrivateKeySigner::random();
        let domain = x402_protocol::ChannelDomain::new(c.terms.network.chain_id, c.terms.contract);
        let forged = [
            // No signature at all.
            ChannelState { signature: Bytes::new(), ..good.clone() },
            // Someone else's signature of the same voucher.
            ChannelState {
                signature: domain.sign(&other_key, good.voucher()).unwrap().signature,
                ..good.clone()
            },
            // The client's signature of another voucher (nonce 2, amount 200) moved onto a
            // claim of a lower amount: a node cannot rebase the client below what it signed.
            ChannelState { cumulative_amount: U256::from(150), ..good.clone() },
            // Signed, but charging beyond it.
            signed(ChannelState { charged: U256::from(201), ..good.clone() }, &c),
            // A signature under another contract's domain.
            ChannelState {
                signature: x402_protocol::ChannelDomain::new(
                    c.terms.network.chain_id,
                    Address::repeat_byte(0xEE),
                )
                .sign(&key(), good.voucher())
                .unwrap()
                .signature,
                ..good.clone()
            },
            // Nonce 0 claims no voucher, so it cannot claim a charge either.
            ChannelState { nonce: 0, cumulative_amount: U256::ZERO, signature: Bytes::new(), ..good.clone() },
        ];
        let before = c.clone();
        for f in forged {
            let err = c.resync(&f).unwrap_err();
            assert!(matches!(err, Error::UnsignedState { .. }), "{f:?}: {err}");
            assert!(err.to_string().contains("not signed by this client's signer"), "{err}");
            assert_eq!(c, before, "a refused state changes nothing");
        }
        assert_eq!(c.resync(&good).unwrap(), Resync::Ahead);
        // A node that holds no voucher and charged nothing has nothing to sign.
        let none = ChannelState { nonce: 0, cumulative_amount: U256::ZERO, charged: U256::ZERO, ..good };
        assert_eq!(c.resync(&none).unwrap(), Resync::Ahead);
    }

    #[test]
    fn a_credit_window_prepays_within_the_deposit_and_sessions_follow_the_node() {
        let mut c = channel(1_000);
        let v = c.next_voucher_ahead(U256::from(100), 4).unwrap();
        assert_eq!((v.nonce, v.cumulativeAmount), (1, U256::from(400)));
        assert_eq!(c.max_signed, U256::from(400), "the prepaid rest is at risk");
        assert_eq!(c.take_session_use(), None, "no session before the node grants one");
        let token = B256::repeat_byte(0x77);
        let id = c.id;
        let receipt = |nonce, total: u64, uses| SettlementExtra {
            channel_id: id,
            nonce,
            cumulative_amount: U256::from(400),
            charged: U256::from(100),
            total_charged: U256::from(total),
            session: Some(SessionGrant { token, uses }),
        };
        let first = receipt(1, 100, 3);
        c.receipt(&first).unwrap();
        assert_eq!(c.session, Some(SessionGrant { token, uses: 3 }));
        assert_eq!(c.take_session_use(), Some(token));
        assert_eq!(c.take_session_use(), Some(token));
        // A late receipt with an older count does not give uses back.
        c.receipt(&receipt(1, 200, 2)).unwrap();
        assert_eq!(c.session.map(|s| s.uses), Some(1));
        assert_eq!(c.take_session_use(), Some(token));
        assert_eq!(c.take_session_use(), None, "used up");
        // The deposit caps what is prepaid; the minimum is one price.
        let v = c.next_voucher_ahead(U256::from(100), 10).unwrap();
        assert_eq!(v.cumulativeAmount, U256::from(1_000));
        // A grant for an older voucher is dead on arrival.
        c.receipt(&receipt(1, 400, 3)).unwrap();
        assert_eq!(c.session, None);
        c.status = ChannelStatus::Closing;
        c.session = Some(SessionGrant { token, uses: 5 });
        assert_eq!(c.take_session_use(), None, "no payments on a closing channel");
        assert!(matches!(c.next_voucher_ahead(U256::from(1), 2), Err(Error::ChannelState { .. })));
        let mut full = channel(100);
        full.next_voucher(U256::from(100)).unwrap();
        assert!(matches!(full.next_voucher_ahead(U256::from(1), 5), Err(Error::ChannelExhausted { .. })));
    }

    #[test]
    fn receipts_track_spending_and_rebase() {
        let mut c = channel(1000);
        c.next_voucher(U256::from(100)).unwrap();
        let id = c.id;
        let extra = |nonce, cum: u64, total: u64| SettlementExtra {
            channel_id: id,
            nonce,
            cumulative_amount: U256::from(cum),
            charged: U256::from(40),
            total_charged: U256::from(total),
            session: None,
        };
        c.receipt(&extra(1, 100, 40)).unwrap();
        assert_eq!((c.spent, c.cumulative, c.max_signed), (U256::from(40), U256::from(40), U256::from(100)));
        assert!(matches!(c.receipt(&extra(1, 100, 101)), Err(Error::NodeClaimsUnsigned { .. })));
        assert!(matches!(c.receipt(&extra(2, 100, 40)), Err(Error::NodeClaimsUnsigned { .. })));
    }

    #[test]
    fn uncharged_vouchers_void_and_the_chain_decides_the_status() {
        let mut c = channel(1000);
        let p = U256::from(100);
        c.next_voucher(p).unwrap();
        c.cumulative = U256::from(100); // charged
        c.spent = U256::from(100);
        let base = c.cumulative;
        let v = c.next_voucher(p).unwrap();
        // The node did not charge nonce 2: the next voucher builds on 100 again.
        c.not_charged(v.nonce, base);
        assert_eq!(c.next_voucher(p).unwrap().cumulativeAmount, U256::from(200));
        // A stale report (a later voucher was signed on top) changes nothing.
        c.not_charged(v.nonce, base);
        assert_eq!(c.cumulative, U256::from(200));
        assert_eq!((c.remaining(), c.available()), (U256::from(900), U256::from(800)));

        // Exiting, then the chain says open without an exit (a top-up cancelled it): usable.
        c.status = ChannelStatus::Exiting { exit_at: 9 };
        c.chain_status(true, 0, U256::from(1500), U256::ZERO);
        assert_eq!((c.status, c.deposit), (ChannelStatus::Open, U256::from(1500)));
        assert!(c.usable());
        c.chain_status(true, 77, U256::ZERO, U256::from(100));
        assert_eq!(c.status, ChannelStatus::Exiting { exit_at: 77 });
        c.topped_up(U256::from(1));
        assert_eq!(c.status, ChannelStatus::Open, "a top-up cancels the exit");
        // A cooperative close requested stays closing while the chain says open.
        c.close_requested = true;
        c.status = ChannelStatus::Closing;
        c.chain_status(true, 0, U256::ZERO, U256::ZERO);
        assert_eq!(c.status, ChannelStatus::Closing);
        assert!(!c.usable());
        c.chain_status(false, 0, U256::ZERO, U256::ZERO);
        assert_eq!(c.status, ChannelStatus::Closed);
    }

    #[test]
    fn json_round_trip() {
        let mut c = channel(1000);
        c.status = ChannelStatus::Exiting { exit_at: 77 };
        c.signature = Some(Bytes::from_static(&[1, 2, 3]));
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains(r#""status":"exiting","exitAt":77"#), "{json}");
        assert_eq!(serde_json::from_str::<ClientChannel>(&json).unwrap(), c);
    }

    /// A model of the node's acceptance rule (`x402-node`'s `ChannelRecord::admit` + `apply`)
    /// for a fixed price.
    #[derive(Debug, Default)]
    struct ModelNode {
        nonce: u64,
        cumulative: U256,
        charged: U256,
        accepted: u64,
    }

    impl ModelNode {
        /// The refusal's channel state, or `None` when accepted.
        fn offer(&mut self, v: &Voucher, price: U256, deposit: U256) -> Option<ChannelState> {
            if v.nonce <= self.nonce
                || v.cumulativeAmount < self.charged + price
                || v.cumulativeAmount > deposit
            {
                return Some(ChannelState {
                    channel_id: v.channelId,
                    nonce: self.nonce,
                    cumulative_amount: self.cumulative,
                    charged: self.charged,
                    deposit,
                    signature: Bytes::new(),
                });
            }
            self.nonce = v.nonce;
            self.cumulative = v.cumulativeAmount;
            self.charged += price;
            self.accepted += 1;
            None
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Sign a voucher and put it in flight.
        Sign,
        /// Deliver the in-flight voucher at this index (mod len) to the node.
        Deliver(usize),
        /// The node lies: it claims this much more than the client signed.
        Lie(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![4 => Just(Op::Sign), 4 => any::<usize>().prop_map(Op::Deliver), 1 => (1u64..1000).prop_map(Op::Lie)]
    }

    proptest! {
        /// Vouchers signed concurrently and delivered in any order: every request is paid
        /// exactly once (the node charges `price` per accepted voucher and every refused one is
        /// retried after a resync until accepted), nonces only grow, nothing above the deposit
        /// is ever signed, and a lying node is always refused without changing the state.
        #[test]
        fn concurrent_requests_are_paid_exactly_once(ops in prop::collection::vec(op(), 1..200)) {
            let price = U256::from(7);
            let mut c = channel(1_000_000);
            let mut node = ModelNode::default();
            let mut in_flight: Vec<Voucher> = Vec::new();
            let mut requests = 0u64;
            let mut last_nonce = 0;
            let sign = |c: &mut ClientChannel, last_nonce: &mut u64| {
                let v = c.next_voucher(price).unwrap();
                prop_assert!(v.nonce > *last_nonce);
                prop_assert!(v.cumulativeAmount <= c.deposit && v.cumulativeAmount <= c.max_signed);
                *last_nonce = v.nonce;
                Ok(v)
            };
            for op in ops {
                match op {
                    Op::Sign => {
                        requests += 1;
                        in_flight.push(sign(&mut c, &mut last_nonce)?);
                    }
                    Op::Deliver(i) if !in_flight.is_empty() => {
                        let v = in_flight.remove(i % in_flight.len());
                        if let Some(st) = node.offer(&v, price, c.deposit) {
                            c.resync(&signed(st, &c)).unwrap();
                            in_flight.push(sign(&mut c, &mut last_nonce)?);
                        }
                    }
                    Op::Deliver(_) => {}
                    Op::Lie(extra) => {
                        let before = c.clone();
                        let lie = ChannelState {
                            channel_id: c.id,
                            nonce: node.nonce,
                            cumulative_amount: c.max_signed + U256::from(extra),
                            charged: node.charged,
                            deposit: c.deposit,
                            signature: Bytes::new(),
                        };
                        prop_assert!(c.resync(&signed(lie, &c)).is_err());
                        prop_assert_eq!(&c, &before);
                    }
                }
            }
            // Drain: every request is eventually paid.
            let mut rounds = 0;
            while let Some(v) = in_flight.pop() {
                rounds += 1;
                prop_assert!(rounds < 10_000);
                if let Some(st) = node.offer(&v, price, c.deposit) {
                    c.resync(&signed(st, &c)).unwrap();
                    in_flight.insert(0, sign(&mut c, &mut last_nonce)?);
                }
            }
            prop_assert_eq!(node.accepted, requests);
            prop_assert_eq!(node.charged, price * U256::from(requests));
            prop_assert!(node.cumulative <= c.max_signed);
        }
    }
}

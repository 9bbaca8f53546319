//! A channel as the node sees it, and the rules a voucher must pass.

use std::collections::VecDeque;

use alloy::primitives::{B256, Bytes, U256};
use serde::{Deserialize, Serialize};
use x402_protocol::{
    Voucher,
    wire::{ChannelState, ErrorCode},
};

pub use x402_chain::channel::{OnchainChannel, StoredVoucher};

use crate::Refusal;

/// Lifecycle of a channel, from the node's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelStatus {
    /// Accepting vouchers.
    Open,
    /// An exit or a close was requested: no new vouchers.
    Closing,
    /// Closed on-chain: forgotten except for its tombstone.
    Closed,
}

/// A cooperative close the node agreed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseState {
    /// When the client asked (unix seconds).
    pub requested_at: u64,
    /// The latest deadline of a close authorisation the node signed (0: none signed). The node
    /// accepts no vouchers on the channel until it has passed, whatever the chain says.
    pub authorization_deadline: u64,
}

/// How many nonces above its floor the served window tells apart (anti-replay): a voucher
/// whose nonce is in the window, or at or below its floor, is never served again.
pub const SERVED_WINDOW: usize = 128;

/// The voucher nonces a channel has used: every nonce at or below `floor`, and those of the
/// 128 above it whose bit is set (bit `i` is nonce `floor + 1 + i`). Serving a nonce beyond
/// the window slides it up, so a nonce more than 128 below the highest one served counts as
/// used: concurrent requests' vouchers arrive within a few nonces of each other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServedWindow {
    floor: u64,
    bits: u128,
}

impl ServedWindow {
    /// A window with every nonce up to `floor` used and none above.
    pub const fn from_floor(floor: u64) -> Self {
        Self { floor, bits: 0 }
    }

    /// A window from its stored parts, or `None` if a bit stands for a nonce beyond `u64`.
    pub fn from_parts(floor: u64, bits: u128) -> Option<Self> {
        let room = u64::MAX - floor;
        if room < SERVED_WINDOW as u64 && bits >> room != 0 {
            return None;
        }
        Some(Self { floor, bits })
    }

    /// Every nonce at or below it is used.
    pub const fn floor(&self) -> u64 {
        self.floor
    }

    /// The used nonces above the floor.
    pub const fn bits(&self) -> u128 {
        self.bits
    }

    /// Whether `nonce` counts as used.
    pub const fn contains(&self, nonce: u64) -> bool {
        if nonce <= self.floor {
            return true;
        }
        let offset = nonce - self.floor - 1;
        offset < SERVED_WINDOW as u64 && self.bits >> offset & 1 == 1
    }

    /// Marks `nonce` used, sliding the window up if it lies beyond it.
    pub fn insert(&mut self, nonce: u64) {
        if nonce <= self.floor {
            return;
        }
        let beyond = (nonce - self.floor).saturating_sub(SERVED_WINDOW as u64);
        if beyond >= SERVED_WINDOW as u64 {
            self.bits = 0;
        } else {
            self.bits >>= beyond;
        }
        self.floor += beyond;
        self.bits |= 1 << (nonce - self.floor - 1);
    }

    /// Forgets that `nonce` was used (its service was undone), if it is above the floor.
    pub fn remove(&mut self, nonce: u64) {
        if nonce > self.floor && nonce - self.floor <= SERVED_WINDOW as u64 {
            self.bits &= !(1 << (nonce - self.floor - 1));
        }
    }
}

/// A voucher the node served a request for: enough to answer a resend of the very same
/// voucher (whose response was lost) with that request's receipt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Served {
    /// The voucher's nonce.
    pub nonce: u64,
    /// The voucher's cumulative amount.
    pub amount: U256,
    /// What the request was charged.
    pub cost: U256,
    /// What the channel had been charged in total once it was.
    pub total: U256,
}

/// How a voucher that passed [`ChannelRecord::admit`] pays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Its nonce is the highest seen: it becomes the channel's latest voucher (the new
    /// ceiling) and the request is served on it.
    Latest,
    /// An older nonce not used yet (vouchers of concurrent requests arriving out of order): the
    /// request is served on the unspent amount of the latest voucher.
    Covered,
    /// The very voucher of a request already served: answer with its receipt, charge nothing.
    Replay(Served),
}

/// Everything the node stores about a channel (stored by the [book](crate::book)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelRecord {
    /// The channel id.
    pub id: B256,
    /// The contract's facts, as last seen.
    pub chain: OnchainChannel,
    /// The latest voucher accepted.
    pub latest: Option<StoredVoucher>,
    /// What the node has charged in total (≤ the latest voucher's amount; what it claims).
    pub charged: U256,
    /// The node's status of the channel.
    pub status: ChannelStatus,
    /// The cooperative close the client requested, if any: the channel accepts no more
    /// vouchers and is closed in the next batch.
    pub close: Option<CloseState>,
    /// When the node last settled this channel on-chain, or first saw it (unix seconds).
    pub settled_at: u64,
    /// The receipts of the vouchers served most recently, at most [`SERVED_WINDOW`], in
    /// commit order, for answering a resend with its receipt. Only the last one is stored:
    /// after a restart, a resend of an older one is refused as a used nonce.
    pub served: VecDeque<Served>,
    /// The nonces used (anti-replay; stored).
    pub window: ServedWindow,
}

impl ChannelRecord {
    /// A record for a channel just read from the chain.
    pub fn new(id: B256, chain: OnchainChannel) -> Self {
        let status = Self::status_of(&chain);
        let charged = chain.paid;
        Self {
            id,
            chain,
            latest: None,
            charged,
            status,
            close: None,
            settled_at: 0,
            served: VecDeque::new(),
            window: ServedWindow::default(),
        }
    }

    fn status_of(chain: &OnchainChannel) -> ChannelStatus {
        if !chain.open {
            ChannelStatus::Closed
        } else if chain.exit_at != 0 || chain.pending_close {
            ChannelStatus::Closing
        } else {
            ChannelStatus::Open
        }
    }

    /// The nonce a new voucher must exceed (vouchers' nonces are checked off-chain only: the
    /// contract keeps none, and a claim can pay at most the voucher's amount, never less than
    /// what was paid).
    pub fn nonce(&self) -> u64 {
        self.latest.as_ref().map_or(0, |v| v.nonce)
    }

    /// The signed ceiling of the latest voucher (or what was paid on-chain).
    pub fn cumulative_amount(&self) -> U256 {
        self.latest.as_ref().map_or(U256::ZERO, |v| v.cumulative_amount).max(self.chain.paid)
    }

    /// What a new voucher must cover before the price: everything charged so far.
    pub fn charged(&self) -> U256 {
        self.charged.max(self.chain.paid)
    }

    /// What the node has charged but not yet been paid on-chain, and may still claim (nothing,
    /// once the channel is closed).
    pub fn unsettled(&self) -> U256 {
        if self.status == ChannelStatus::Closed || !self.chain.open {
            return U256::ZERO;
        }
        self.charged().saturating_sub(self.chain.paid)
    }

    /// The channel state sent to clients in a 402.
    pub fn state(&self) -> ChannelState {
        ChannelState {
            channel_id: self.id,
            nonce: self.nonce(),
            cumulative_amount: self.cumulative_amount(),
            charged: self.charged(),
            deposit: self.chain.deposit,
            // The payer's own signature of (nonce, cumulative amount): a client that lost its
            // state checks it before trusting the rest.
            signature: self.latest.as_ref().map(|v| v.signature.clone()).unwrap_or_default(),
        }
    }

    /// The highest nonce that counts as used whether or not it is in the served window.
    pub const fn floor(&self) -> u64 {
        self.window.floor()
    }

    /// Whether the voucher with `nonce` was served (or can no longer be told apart from one).
    pub const fn used(&self, nonce: u64) -> bool {
        self.window.contains(nonce)
    }

    /// Checks everything about `voucher` but its signature, for a request costing at most
    /// `price`, while requests reserving `reserved` in total are in flight on the channel and
    /// `in_flight` holds their vouchers' nonces. Vouchers may arrive in any order: one is
    /// served if its nonce was never used and the unspent amount of the newest voucher (itself,
    /// if it is the newest) covers everything charged and reserved plus `price`. A node that
    /// accepts a voucher here (and its signature) can redeem the latest voucher on-chain.
    pub fn admit(
        &self,
        voucher: &Voucher,
        price: U256,
        reserved: U256,
        in_flight: &std::collections::HashSet<u64>,
    ) -> Result<Admission, Refusal> {
        let refuse = |code, message: String| Err(Refusal::new(code, message).with_state(self.state()));
        match self.status {
            ChannelStatus::Open => {}
            ChannelStatus::Closing => {
                return refuse(
                    ErrorCode::ChannelClosing,
                    "an exit or close is pending on this channel".into(),
                );
            }
            ChannelStatus::Closed => return refuse(ErrorCode::ChannelClosed, "the channel is closed".into()),
        }
        // A nonce above the floor and unused in the window was never served: the receipts need
        // not be searched (the common case, a fresh voucher, stays O(1)).
        let fresh = voucher.nonce > self.floor() && !self.used(voucher.nonce);
        if !fresh && let Some(served) = self.served.iter().rev().find(|s| s.nonce == voucher.nonce) {
            if served.amount == voucher.cumulativeAmount {
                return Ok(Admission::Replay(served.clone()));
            }
            return refuse(ErrorCode::NonceTooLow, format!("nonce {} was already used", voucher.nonce));
        }
        if in_flight.contains(&voucher.nonce) {
            return refuse(
                ErrorCode::NonceTooLow,
                format!("nonce {} is paying for a request in progress", voucher.nonce),
            );
        }
        if voucher.nonce <= self.floor() {
            return refuse(
                ErrorCode::NonceTooLow,
                format!("nonce {} is not above the node's {}", voucher.nonce, self.floor()),
            );
        }
        if self.used(voucher.nonce) {
            return refuse(ErrorCode::NonceTooLow, format!("nonce {} was already used", voucher.nonce));
        }
        if voucher.cumulativeAmount > self.chain.deposit {
            return refuse(
                ErrorCode::InsufficientDeposit,
                format!(
                    "cumulative amount {} exceeds the deposit {}",
                    voucher.cumulativeAmount, self.chain.deposit
                ),
            );
        }
        let committed = self.charged().saturating_add(reserved);
        let needed = committed.saturating_add(price);
        // A voucher of the latest's nonce but another amount (the latest's request failed and
        // the client signed again) may replace it, like a newer one.
        let replaces = voucher.nonce == self.nonce()
            && self.latest.as_ref().is_some_and(|l| l.cumulative_amount != voucher.cumulativeAmount);
        if voucher.nonce > self.nonce() || replaces {
            if voucher.cumulativeAmount < needed {
                return refuse(
                    ErrorCode::AmountBelowPrice,
                    format!(
                        "cumulative amount {} does not cover {} charged and reserved plus the price {price}",
                        voucher.cumulativeAmount, committed
                    ),
                );
            }
            return Ok(Admission::Latest);
        }
        if self.cumulative_amount() < needed {
            return refuse(
                ErrorCode::AmountBelowPrice,
                format!(
                    "nonce {} is older than the node's {}, whose amount {} does not cover {} charged and \
                     reserved plus the price {price}",
                    voucher.nonce,
                    self.nonce(),
                    self.cumulative_amount(),
                    committed
                ),
            );
        }
        Ok(Admission::Covered)
    }

    /// Takes fresh on-chain facts, keeping the node's vouchers. The status follows the chain:
    /// an exit makes the channel `Closing`, a top-up that cancels the exit makes it `Open`
    /// again, and a close is final. A channel whose close the client requested stays
    /// `Closing` until it is closed on-chain. Returns whether anything changed.
    pub fn sync_chain(&mut self, chain: OnchainChannel) -> bool {
        if self.status == ChannelStatus::Closed {
            return false;
        }
        let changed = self.chain.update_from(chain);
        let mut status = Self::status_of(&self.chain);
        if status == ChannelStatus::Open && self.close.is_some() {
            status = ChannelStatus::Closing;
        }
        let changed = changed || status != self.status;
        self.status = status;
        changed
    }

    /// Takes a payment the chain reports in an event: `paid` in total (never lowered), a close
    /// (no more vouchers; final once the follower reads it confirmed), and when the node
    /// settled it (`settled_at`). Returns whether anything changed.
    pub fn paid_onchain(&mut self, paid: U256, closed: bool, settled_at: Option<u64>) -> bool {
        let mut changed = false;
        if paid > self.chain.paid {
            self.chain.paid = paid;
            changed = true;
        }
        if let Some(at) = settled_at.filter(|at| *at != self.settled_at) {
            self.settled_at = at;
            changed = true;
        }
        if closed && self.status != ChannelStatus::Closed && !self.chain.pending_close {
            self.chain.pending_close = true;
            self.status = ChannelStatus::Closing;
            changed = true;
        }
        changed
    }

    /// The channel disappeared from the confirmed chain (a reorg undid its opening): accept
    /// nothing until it is seen again.
    pub fn vanish(&mut self) -> bool {
        if self.status == ChannelStatus::Open {
            self.status = ChannelStatus::Closing;
            self.chain.pending_close = true;
            return true;
        }
        false
    }

    /// Records the client's cooperative close request: no more vouchers from now on.
    pub fn request_close(&mut self, now: u64) {
        if self.status == ChannelStatus::Closed {
            return;
        }
        self.status = ChannelStatus::Closing;
        let requested_at = self.close.map_or(now, |c| c.requested_at);
        let authorization_deadline = self.close.map_or(0, |c| c.authorization_deadline);
        self.close = Some(CloseState { requested_at, authorization_deadline });
    }

    /// What the provider is owed when the channel closes now: everything charged.
    pub fn final_amount(&self) -> U256 {
        self.charged()
    }

    /// The voucher to claim on-chain for what is unsettled, if any: the latest voucher, if the
    /// node charged more than was paid on-chain. A voucher already used on-chain can be used
    /// again for more: a claim moves `paid` up to what was charged, never beyond the voucher.
    pub fn claimable(&self) -> Option<&StoredVoucher> {
        self.latest
            .as_ref()
            .filter(|v| self.charged() > self.chain.paid && v.cumulative_amount >= self.charged())
    }

    /// Makes `voucher` the latest (the ceiling of what may be charged). Call only for an
    /// [`Admission::Latest`] voucher.
    pub fn adopt(&mut self, voucher: &Voucher, signature: Bytes) {
        self.latest = Some(StoredVoucher {
            nonce: voucher.nonce,
            cumulative_amount: voucher.cumulativeAmount,
            signature,
        });
    }

    /// Adds `cost` to what is charged (never above the latest voucher's amount).
    pub fn charge(&mut self, cost: U256) {
        self.charged = self.charged().saturating_add(cost).min(self.cumulative_amount());
    }

    /// Records that the voucher `nonce` of amount `amount` paid a request charged `cost`: its
    /// nonce joins the window (which slides up if it lies beyond it) and its receipt the
    /// receipts kept. Returns the receipt.
    pub fn serve(&mut self, nonce: u64, amount: U256, cost: U256) -> Served {
        let served = Served { nonce, amount, cost, total: self.charged() };
        let floor = self.window.floor();
        self.window.insert(nonce);
        self.served.push_back(served.clone());
        // Receipts of nonces the window no longer tells apart are of no use. They are mostly at
        // the front (commit order is about nonce order): popped without moving the others.
        let floor_now = self.window.floor();
        if floor_now != floor {
            while self.served.front().is_some_and(|s| s.nonce <= floor_now) {
                self.served.pop_front();
            }
            if self.served.iter().any(|s| s.nonce <= floor_now) {
                self.served.retain(|s| s.nonce > floor_now);
            }
        }
        if self.served.len() > SERVED_WINDOW {
            self.served.pop_front();
        }
        served
    }

    /// Undoes [`Self::serve`] and its charge (the response was not released).
    pub fn unserve(&mut self, nonce: u64, cost: U256) {
        self.served.retain(|s| s.nonce != nonce);
        self.window.remove(nonce);
        self.charged = self.charged().saturating_sub(cost);
    }

    /// Records an accepted voucher and what this request cost (admission, adoption when it is
    /// the newest, charge and service in one step).
    pub fn apply(&mut self, voucher: &Voucher, signature: Bytes, cost: U256) {
        let replaces = voucher.nonce == self.nonce()
            && self.latest.as_ref().is_some_and(|l| l.cumulative_amount != voucher.cumulativeAmount);
        if voucher.nonce > self.nonce() || replaces {
            self.adopt(voucher, signature);
        }
        self.charge(cost);
        self.serve(voucher.nonce, voucher.cumulativeAmount, cost);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use alloy::primitives::Address;
    use proptest::prelude::*;
    use x402_protocol::bindings::IPaymentChannel::ChannelParams;

    use super::*;

    pub(crate) fn onchain(deposit: u64) -> OnchainChannel {
        OnchainChannel {
            params: ChannelParams {
                payer: Address::repeat_byte(1),
                payee: Address::repeat_byte(2),
                token: Address::repeat_byte(3),
                signer: Address::ZERO,
                challengePeriod: 86_400,
                salt: B256::ZERO,
            },
            signer_is_contract: false,
            deposit: U256::from(deposit),
            exit_at: 0,
            open: true,
            paid: U256::ZERO,
            pending_close: false,
        }
    }

    fn voucher(nonce: u64, amount: u64) -> Voucher {
        Voucher { channelId: B256::ZERO, nonce, cumulativeAmount: U256::from(amount) }
    }

    #[test]
    fn admit_table() {
        let mut rec = ChannelRecord::new(B256::ZERO, onchain(1000));
        rec.apply(&voucher(5, 300), Bytes::new(), U256::from(300));
        let mut closing = rec.clone();
        closing.status = ChannelStatus::Closing;
        let mut closed = rec.clone();
        closed.status = ChannelStatus::Closed;

        let price = U256::from(100);
        let cases = [
            ("next", &rec, voucher(6, 400), None),
            ("skip nonces", &rec, voucher(60, 400), None),
            ("overpay", &rec, voucher(6, 1000), None),
            ("same nonce", &rec, voucher(5, 400), Some(ErrorCode::NonceTooLow)),
            // Older and unused, but the latest voucher's unspent amount does not cover it.
            ("lower nonce", &rec, voucher(4, 400), Some(ErrorCode::AmountBelowPrice)),
            ("below price", &rec, voucher(6, 399), Some(ErrorCode::AmountBelowPrice)),
            ("replayed amount", &rec, voucher(6, 300), Some(ErrorCode::AmountBelowPrice)),
            ("over deposit", &rec, voucher(6, 1001), Some(ErrorCode::InsufficientDeposit)),
            ("closing", &closing, voucher(6, 400), Some(ErrorCode::ChannelClosing)),
            ("closed", &closed, voucher(6, 400), Some(ErrorCode::ChannelClosed)),
        ];
        for (name, rec, v, expected) in cases {
            let got = rec.admit(&v, price, U256::ZERO, &Default::default()).err().map(|r| r.code);
            assert_eq!(got, expected, "{name}");
        }
        let refusal = rec.admit(&voucher(5, 400), price, U256::ZERO, &Default::default()).unwrap_err();
        let state = *refusal.state.unwrap();
        assert_eq!(
            (state.nonce, state.charged, state.cumulative_amount),
            (5, U256::from(300), U256::from(300))
        );
    }

    #[test]
    fn a_latest_voucher_never_served_may_be_replaced_by_one_of_its_nonce() {
        let none = std::collections::HashSet::new();
        let mut rec = ChannelRecord::new(B256::ZERO, onchain(1000));
        rec.apply(&voucher(1, 100), Bytes::new(), U256::from(100));
        // Adopted by a request that failed: not served.
        rec.adopt(&voucher(2, 500), Bytes::new());
        let price = U256::from(100);
        let admit = |v| rec.admit(&v, price, U256::ZERO, &none).map_err(|r| r.code);
        assert_eq!(admit(voucher(2, 500)), Ok(Admission::Covered), "the same voucher again");
        assert_eq!(admit(voucher(2, 200)), Ok(Admission::Latest), "another amount replaces it");
        assert_eq!(admit(voucher(2, 199)), Err(ErrorCode::AmountBelowPrice));
        // With 250 reserved by requests in flight, a replacement must cover that too.
        assert_eq!(
            rec.admit(&voucher(2, 449), price, U256::from(250), &none).map_err(|r| r.code),
            Err(ErrorCode::AmountBelowPrice)
        );
        // In flight: refused.
        let flying = std::collections::HashSet::from([2]);
        assert_eq!(
            rec.admit(&voucher(2, 500), price, U256::ZERO, &flying).map_err(|r| r.code),
            Err(ErrorCode::NonceTooLow)
        );
    }

    #[test]
    fn onchain_progress_raises_floor() {
        let mut chain = onchain(1000);
        chain.paid = U256::from(500);
        let rec = ChannelRecord::new(B256::ZERO, chain);
        assert_eq!(rec.nonce(), 0);
        assert_eq!(rec.charged(), U256::from(500));
        assert!(rec.admit(&voucher(1, 550), U256::from(50), U256::ZERO, &Default::default()).is_ok());
        assert!(rec.admit(&voucher(1, 549), U256::from(50), U256::ZERO, &Default::default()).is_err());
    }

    #[test]
    fn chain_sync_follows_exits_and_their_cancellation() {
        let mut rec = ChannelRecord::new(B256::ZERO, onchain(1000));
        rec.apply(&voucher(1, 100), Bytes::new(), U256::from(100));
        let mut exiting = onchain(1000);
        exiting.exit_at = 99;
        rec.sync_chain(exiting);
        assert_eq!(rec.status, ChannelStatus::Closing);
        // A top-up cancels the exit: the channel accepts vouchers again, keeping its state.
        rec.sync_chain(onchain(2000));
        assert_eq!(rec.status, ChannelStatus::Open);
        assert_eq!((rec.nonce(), rec.charged()), (1, U256::from(100)));
        assert!(rec.admit(&voucher(2, 1500), U256::from(100), U256::ZERO, &Default::default()).is_ok());
        // A close is final, whatever is read later, and the tombstone keeps the channel's
        // facts although the contract zeroes them.
        let closed = OnchainChannel { deposit: U256::ZERO, open: false, ..onchain(0) };
        assert!(rec.sync_chain(closed));
        assert!(!rec.sync_chain(onchain(2000)));
        assert_eq!(rec.status, ChannelStatus::Closed);
        assert_eq!(rec.chain.deposit, U256::from(2000));
    }

    #[test]
    fn confirmed_view_is_conservative() {
        let confirmed = onchain(1000);
        // A top-up not yet confirmed does not count; an exit counts at once.
        let mut latest = onchain(1500);
        latest.exit_at = 77;
        latest.paid = U256::from(40);
        let view = OnchainChannel::confirmed_view(confirmed.clone(), &latest);
        assert_eq!((view.deposit, view.exit_at, view.paid), (U256::from(1000), 77, U256::from(40)));
        // A reorg that removed a confirmed top-up: the smaller deposit wins.
        let view = OnchainChannel::confirmed_view(onchain(1500), &onchain(1000));
        assert_eq!(view.deposit, U256::from(1000));
        // A confirmed exit that a newer, unconfirmed top-up cancelled still counts.
        let mut exiting = onchain(1000);
        exiting.exit_at = 9;
        assert_eq!(OnchainChannel::confirmed_view(exiting, &onchain(2000)).exit_at, 9);
        // Closed in an unconfirmed block: no more vouchers, but not tombstoned yet.
        let mut closed = onchain(0);
        closed.open = false;
        let view = OnchainChannel::confirmed_view(confirmed, &closed);
        assert!(view.open && view.pending_close);
        assert_eq!(ChannelRecord::new(B256::ZERO, view).status, ChannelStatus::Closing);
    }

    #[test]
    fn a_requested_close_holds_whatever_the_chain_says() {
        let mut rec = ChannelRecord::new(B256::ZERO, onchain(1000));
        rec.apply(&voucher(1, 100), Bytes::new(), U256::from(60));
        rec.request_close(5);
        assert_eq!(rec.status, ChannelStatus::Closing);
        assert_eq!(rec.final_amount(), U256::from(60));
        // A top-up (which would reopen an exiting channel) does not reopen it.
        rec.sync_chain(onchain(3000));
        assert_eq!(rec.status, ChannelStatus::Closing);
        assert_eq!(
            rec.admit(&voucher(2, 200), U256::from(10), U256::ZERO, &Default::default()).unwrap_err().code,
            ErrorCode::ChannelClosing
        );
        // Asking again keeps the first request time.
        rec.request_close(9);
        assert_eq!(rec.close.map(|c| c.requested_at), Some(5));
        // The latest voucher is claimable until the chain has paid what was charged.
        assert_eq!(rec.claimable().map(|v| v.nonce), Some(1));
        let mut settled = onchain(3000);
        settled.paid = U256::from(60);
        rec.sync_chain(settled);
        assert!(rec.claimable().is_none());
    }

    #[test]
    fn dynamic_charge_tracked_below_ceiling() {
        let mut rec = ChannelRecord::new(B256::ZERO, onchain(1000));
        // Ceiling 100, actual cost 30.
        rec.apply(&voucher(1, 100), Bytes::new(), U256::from(30));
        assert_eq!(rec.charged(), U256::from(30));
        assert_eq!(rec.cumulative_amount(), U256::from(100));
        // The next voucher only has to cover 30 + max price.
        assert!(rec.admit(&voucher(2, 130), U256::from(100), U256::ZERO, &Default::default()).is_ok());
        assert_eq!(
            rec.admit(&voucher(2, 129), U256::from(100), U256::ZERO, &Default::default()).unwrap_err().code,
            ErrorCode::AmountBelowPrice
        );
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// A voucher relative to the node's state: nonce delta, amount delta (may be negative).
        Relative { dn: i8, da: i16, valid_sig: bool },
        /// A replay of an earlier accepted voucher.
        Replay(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (-2i8..4, -50i16..300, prop::bool::weighted(0.9))
                .prop_map(|(dn, da, valid_sig)| Op::Relative { dn, da, valid_sig }),
            1 => (0usize..64).prop_map(Op::Replay),
        ]
    }

    proptest! {
        /// The node serves exactly the valid vouchers whose nonce was never used and that the
        /// newest voucher (themselves, if newest) covers within the deposit, answers a resend
        /// of a served voucher with its receipt, and its state always follows the newest
        /// voucher served.
        #[test]
        fn serves_exactly_unused_covered_vouchers(ops in prop::collection::vec(op(), 1..64), deposit in 100u64..5_000) {
            let price = U256::from(25);
            let mut rec = ChannelRecord::new(B256::ZERO, onchain(deposit));
            let mut accepted: Vec<Voucher> = Vec::new();
            let none = std::collections::HashSet::new();
            for op in ops {
                let (v, valid_sig) = match op {
                    Op::Relative { dn, da, valid_sig } => {
                        let nonce = (rec.nonce() as i64 + dn as i64).max(0) as u64;
                        let amount = (rec.charged().to::<u64>() as i64 + da as i64).max(0) as u64;
                        (voucher(nonce, amount), valid_sig)
                    }
                    Op::Replay(i) if !accepted.is_empty() => (accepted[i % accepted.len()].clone(), true),
                    Op::Replay(_) => continue,
                };
                let newest = accepted.iter().max_by_key(|a| a.nonce);
                let charged = U256::from(accepted.len() as u64 * 25);
                let replay = accepted.iter().any(|a| a.nonce == v.nonce && a.cumulativeAmount == v.cumulativeAmount);
                let ceiling = match newest {
                    Some(n) if n.nonce >= v.nonce => n.cumulativeAmount,
                    _ => v.cumulativeAmount,
                };
                let model_ok = valid_sig
                    && v.nonce > 0
                    && !accepted.iter().any(|a| a.nonce == v.nonce)
                    && ceiling >= charged + price
                    && v.cumulativeAmount <= U256::from(deposit);
                let admission = rec.admit(&v, price, U256::ZERO, &none);
                prop_assert_eq!(matches!(admission, Ok(Admission::Replay(_))), replay, "voucher {:?}", v);
                let node_ok = matches!(admission, Ok(Admission::Latest | Admission::Covered)) && valid_sig;
                prop_assert_eq!(node_ok, model_ok, "voucher {:?}", v);
                if node_ok {
                    rec.apply(&v, Bytes::new(), price);
                    accepted.push(v);
                }
                let best = accepted.iter().max_by_key(|a| a.nonce);
                prop_assert_eq!(rec.nonce(), best.map_or(0, |b| b.nonce));
                prop_assert_eq!(rec.cumulative_amount(), best.map_or(U256::ZERO, |b| b.cumulativeAmount));
                prop_assert_eq!(rec.charged(), U256::from(accepted.len() as u64 * 25));
                prop_assert!(rec.charged() <= rec.cumulative_amount());
                prop_assert!(rec.cumulative_amount() <= U256::from(deposit));
            }
        }
    }
}

//! What the client may spend without asking, and how it sizes deposits.

use alloy::primitives::U256;

use crate::{Error, Result};

/// Limits that guard the user's money. A payment requirement or a deposit above a limit is an
/// error, never a silent payment. All amounts are in the token's base units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most one request may cost.
    pub max_price: U256,
    /// The most one channel may hold (after top-ups).
    pub max_deposit: U256,
    /// The most all channels in one token that are not closed may hold together.
    pub max_total_deposit: U256,
}

impl Limits {
    /// Limits from the three amounts.
    pub const fn new(max_price: U256, max_deposit: U256, max_total_deposit: U256) -> Self {
        Self { max_price, max_deposit, max_total_deposit }
    }

    /// Limits from amounts that fit in 128 bits (every practical amount).
    pub fn from_units(max_price: u128, max_deposit: u128, max_total_deposit: u128) -> Self {
        Self::new(U256::from(max_price), U256::from(max_deposit), U256::from(max_total_deposit))
    }

    /// Fails unless `price` is within [`Self::max_price`].
    pub fn check_price(&self, price: U256) -> Result<()> {
        if price > self.max_price {
            return Err(Error::PriceAboveLimit { price, limit: self.max_price });
        }
        Ok(())
    }
}

/// How the client funds channels it opens by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DepositPolicy {
    /// A new channel (or a top-up) is sized for this many requests at the route's price, but
    /// never below the provider's minimum deposit nor above [`Limits::max_deposit`]. Default 100.
    pub requests: u64,
    /// Whether an exhausted channel is topped up (within the limits) instead of failing.
    /// Default on. When a top-up would exceed the per-channel limit a new channel is opened.
    pub auto_top_up: bool,
    /// Whether a payment with no usable channel opens one (default on). Off, it fails with
    /// [`Error::NoChannel`] and channels are opened only explicitly.
    pub auto_open: bool,
    /// The challenge period of new channels, in seconds. Default: the provider's minimum. A
    /// longer period gives a watcher more time; a shorter one returns an exit's refund sooner.
    pub challenge_period: Option<u32>,
}

impl Default for DepositPolicy {
    fn default() -> Self {
        Self { requests: 100, auto_top_up: true, auto_open: true, challenge_period: None }
    }
}

impl DepositPolicy {
    /// The deposit of a new channel for a route costing `price` whose provider asks at least
    /// `min_deposit`, bounded by `limits`.
    pub fn deposit(&self, price: U256, min_deposit: U256, limits: &Limits) -> Result<U256> {
        let floor = min_deposit.max(price);
        if floor > limits.max_deposit {
            return Err(Error::DepositAboveLimit { deposit: floor, limit: limits.max_deposit });
        }
        let wanted = price.saturating_mul(U256::from(self.requests.max(1)));
        Ok(wanted.max(floor).min(limits.max_deposit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deposits_are_sized_and_bounded() {
        let limits = Limits::from_units(100, 5_000, 10_000);
        let policy = DepositPolicy { requests: 10, ..Default::default() };
        let d = |price: u64, min: u64| policy.deposit(U256::from(price), U256::from(min), &limits);
        assert_eq!(d(100, 0).unwrap(), U256::from(1_000));
        assert_eq!(d(100, 2_000).unwrap(), U256::from(2_000), "provider minimum");
        assert_eq!(d(1_000, 0).unwrap(), U256::from(5_000), "capped by the limit");
        assert!(matches!(d(1, 6_000), Err(Error::DepositAboveLimit { .. })));
        assert!(limits.check_price(U256::from(100)).is_ok());
        assert!(matches!(limits.check_price(U256::from(101)), Err(Error::PriceAboveLimit { .. })));
    }
}

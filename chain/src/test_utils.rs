//! Test helpers (feature `test-utils`): an in-memory chain, and a store whose durable syncs can
//! be made to fail.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use alloy::primitives::{Address, B256, Bytes};
use parking_lot::Mutex;
use x402_protocol::bindings::IPaymentChannel::ChannelParams;

use crate::{channel::OnchainChannel, error::ChainError, reader::ChainReader};

/// A [`ChainReader`] over a map, counting lookups. Its ERC-1271 wallets answer every
/// signature alike: "not valid" unless [`MemoryChain::set_contract_signatures`] says otherwise.
#[derive(Clone, Debug, Default)]
pub struct MemoryChain {
    channels: Arc<Mutex<HashMap<B256, OnchainChannel>>>,
    lookups: Arc<AtomicUsize>,
    down: Arc<std::sync::atomic::AtomicBool>,
    wallets_accept: Arc<std::sync::atomic::AtomicBool>,
    contract_checks: Arc<AtomicUsize>,
}

impl MemoryChain {
    /// Sets (or replaces) a channel.
    pub fn set(&self, id: B256, channel: OnchainChannel) {
        self.channels.lock().insert(id, channel);
    }

    /// Changes a channel in place.
    pub fn update(&self, id: B256, f: impl FnOnce(&mut OnchainChannel)) {
        if let Some(c) = self.channels.lock().get_mut(&id) {
            f(c);
        }
    }

    /// How many channel lookups were made.
    pub fn lookups(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }

    /// Makes every ERC-1271 check answer `valid` (or not).
    pub fn set_contract_signatures(&self, valid: bool) {
        self.wallets_accept.store(valid, Ordering::SeqCst);
    }

    /// How many ERC-1271 checks were made.
    pub fn contract_checks(&self) -> usize {
        self.contract_checks.load(Ordering::SeqCst)
    }

    /// Makes every call fail, as if the RPC were down.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
}

impl ChainReader for MemoryChain {
    async fn channel(&self, id: B256) -> Result<Option<OnchainChannel>, ChainError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(ChainError::Unavailable("chain down".into()));
        }
        Ok(self.channels.lock().get(&id).cloned())
    }

    async fn learn_params(&self, _: B256, _: ChannelParams) -> Result<bool, ChainError> {
        Ok(true)
    }

    async fn is_valid_contract_signature(&self, _: Address, _: B256, _: Bytes) -> Result<bool, ChainError> {
        self.contract_checks.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(ChainError::Unavailable("chain down".into()));
        }
        Ok(self.wallets_accept.load(Ordering::SeqCst))
    }
}

/// A [`MemoryStore`](x402_store::MemoryStore) whose `sync` fails while [`FlakyStore::fail`] is
/// set, as a disk that stopped accepting writes would.
#[derive(Debug, Default)]
pub struct FlakyStore {
    inner: x402_store::MemoryStore,
    failing: std::sync::atomic::AtomicBool,
}

impl FlakyStore {
    /// Makes every following `sync` fail (or succeed again).
    pub fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    fn check(&self) -> x402_store::Result<()> {
        if self.failing.load(Ordering::SeqCst) { Err(x402_store::Error::Closed) } else { Ok(()) }
    }
}

impl x402_store::KvStore for FlakyStore {
    fn get(&self, ns: &str, key: &[u8]) -> x402_store::Result<Option<Vec<u8>>> {
        self.inner.get(ns, key)
    }

    fn put(&self, ns: &str, key: &[u8], value: &[u8]) -> x402_store::Result<()> {
        self.inner.put(ns, key, value)
    }

    fn remove(&self, ns: &str, key: &[u8]) -> x402_store::Result<()> {
        self.inner.remove(ns, key)
    }

    fn list(&self, ns: &str) -> x402_store::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.list(ns)
    }

    async fn sync(&self) -> x402_store::Result<()> {
        self.check()
    }

    fn sync_blocking(&self) -> x402_store::Result<()> {
        self.check()
    }
}

//! Test helpers: an in-memory chain.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use alloy::primitives::{Address, B256, Bytes};
use parking_lot::Mutex;

use crate::{
    chain::{ChainError, ChainReader},
    channel::OnchainChannel,
};

/// A [`ChainReader`] over a map, counting lookups.
#[derive(Clone, Debug, Default)]
pub struct MemoryChain {
    channels: Arc<Mutex<HashMap<B256, OnchainChannel>>>,
    lookups: Arc<AtomicUsize>,
    down: Arc<std::sync::atomic::AtomicBool>,
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

    /// Makes every call fail, as if the RPC were down.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
}

impl ChainReader for MemoryChain {
    async fn channel(&self, id: B256) -> Result<Option<OnchainChannel>, ChainError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(ChainError::Rpc("chain down".into()));
        }
        Ok(self.channels.lock().get(&id).cloned())
    }

    async fn is_valid_contract_signature(&self, _: Address, _: B256, _: Bytes) -> Result<bool, ChainError> {
        Ok(false)
    }
}

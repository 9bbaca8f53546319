//! The client's durable state: every channel with its latest signed voucher.
//!
//! A voucher is written and synced to disk before it is sent, so a client that restarts (or
//! crashes) mid-channel continues above every nonce it ever signed and knows the most it may
//! owe.

use std::path::Path;

use alloy::primitives::B256;
use x402_store::{KvStore, MemoryStore, SledStore};

use crate::{ClientChannel, Error, Result};

const CHANNELS: &str = "channels";

/// Where the client keeps its channels.
#[derive(Clone, Debug)]
pub struct StateStore {
    inner: std::sync::Arc<Backend>,
}

#[derive(Debug)]
enum Backend {
    Sled(SledStore),
    Memory(MemoryStore),
}

impl StateStore {
    /// A durable store in `dir` (created if missing). Only one process may open it at a time.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Ok(Self { inner: std::sync::Arc::new(Backend::Sled(SledStore::open(dir)?)) })
    }

    /// A store that forgets everything when dropped (tests, one-shot scripts).
    pub fn in_memory() -> Self {
        Self { inner: std::sync::Arc::new(Backend::Memory(MemoryStore::new())) }
    }

    /// Writes a channel; durable once [`Self::sync`] returns.
    pub fn put(&self, channel: &ClientChannel) -> Result<()> {
        let value = serde_json::to_vec(channel)
            .map_err(|e| Error::Corrupt { key: channel.id.to_string(), reason: e.to_string() })?;
        match &*self.inner {
            Backend::Sled(s) => s.put(CHANNELS, channel.id.as_slice(), &value)?,
            Backend::Memory(s) => s.put(CHANNELS, channel.id.as_slice(), &value)?,
        }
        Ok(())
    }

    /// Waits until every earlier [`Self::put`] is on disk.
    pub async fn sync(&self) -> Result<()> {
        match &*self.inner {
            Backend::Sled(s) => s.sync().await?,
            Backend::Memory(s) => s.sync().await?,
        }
        Ok(())
    }

    /// Writes a channel and waits until it is on disk.
    pub async fn save(&self, channel: &ClientChannel) -> Result<()> {
        self.put(channel)?;
        self.sync().await
    }

    /// One channel.
    pub fn get(&self, id: B256) -> Result<Option<ClientChannel>> {
        let raw = match &*self.inner {
            Backend::Sled(s) => s.get(CHANNELS, id.as_slice())?,
            Backend::Memory(s) => s.get(CHANNELS, id.as_slice())?,
        };
        raw.map(|v| decode(id.as_slice(), &v)).transpose()
    }

    /// Every channel, in id order. A record that cannot be decoded is an error, never skipped:
    /// skipping it could make the client reuse a nonce or forget money it owes.
    pub fn channels(&self) -> Result<Vec<ClientChannel>> {
        let entries = match &*self.inner {
            Backend::Sled(s) => s.list(CHANNELS)?,
            Backend::Memory(s) => s.list(CHANNELS)?,
        };
        entries.iter().map(|(k, v)| decode(k, v)).collect()
    }
}

fn decode(key: &[u8], value: &[u8]) -> Result<ClientChannel> {
    serde_json::from_slice(value)
        .map_err(|e| Error::Corrupt { key: alloy::hex::encode_prefixed(key), reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use alloy::primitives::{Address, U256};
    use x402_protocol::Network;

    use super::*;
    use crate::{ChannelStatus, ChannelTerms};

    fn channel(byte: u8) -> ClientChannel {
        let terms = ChannelTerms {
            network: Network::new(1),
            contract: Address::ZERO,
            payee: Address::ZERO,
            asset: Address::ZERO,
        };
        ClientChannel::new(
            B256::repeat_byte(byte),
            terms,
            Address::ZERO,
            Address::ZERO,
            60,
            U256::from(10),
            None,
            5,
        )
    }

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = channel(1);
        a.next_voucher(U256::from(3)).unwrap();
        a.status = ChannelStatus::Exiting { exit_at: 99 };
        {
            let store = StateStore::open(dir.path()).unwrap();
            store.save(&a).await.unwrap();
            store.save(&channel(2)).await.unwrap();
        }
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.get(a.id).unwrap(), Some(a.clone()));
        assert_eq!(store.channels().unwrap().len(), 2);
        assert_eq!(store.get(B256::ZERO).unwrap(), None);
    }

    #[tokio::test]
    async fn corrupt_records_are_errors() {
        let store = StateStore::in_memory();
        let Backend::Memory(inner) = &*store.inner else { unreachable!() };
        inner.put(CHANNELS, &[7; 32], b"{not json").unwrap();
        assert!(matches!(store.channels(), Err(Error::Corrupt { .. })));
        assert!(matches!(store.get(B256::repeat_byte(7)), Err(Error::Corrupt { .. })));
    }
}

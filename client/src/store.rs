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
/// The state's metadata (`payer`: the depositor whose channels it holds).
const META: &str = "meta";
const PAYER: &[u8] = b"payer";

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
    /// A durable store in `dir` (created if missing). Only one process may open it at a time:
    /// while another holds it, this waits a few seconds (saying so in a warning) and then
    /// fails with [`Error::StateLocked`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let started = std::time::Instant::now();
        let (done, waiting) = std::sync::mpsc::channel::<()>();
        let shown = dir.display().to_string();
        let announcer = std::thread::spawn(move || {
            if waiting.recv_timeout(std::time::Duration::from_millis(300)).is_err() {
                tracing::warn!(target: "x402_client::state", dir = %shown, "waiting for the state directory: another process is using it");
            }
        });
        let opened = SledStore::open(dir);
        let _ = done.send(());
        let _ = announcer.join();
        match opened {
            Ok(store) => Ok(Self { inner: std::sync::Arc::new(Backend::Sled(store)) }),
            Err(e) if is_lock_error(&e) => Err(Error::StateLocked {
                dir: dir.display().to_string(),
                waited_secs: started.elapsed().as_secs_f64().round() as u64,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Records `payer` as the depositor of this state, or fails with [`Error::OtherPayer`] if
    /// it holds another payer's channels. A state written before payers were recorded takes
    /// the payer of its channels.
    pub fn bind_payer(&self, payer: alloy::primitives::Address) -> Result<()> {
        let stored = self.meta(PAYER)?;
        let known = match &stored {
            Some(raw) if raw.len() == 20 => Some(alloy::primitives::Address::from_slice(raw)),
            Some(raw) => {
                return Err(Error::Corrupt {
                    key: "meta/payer".into(),
                    reason: format!("{} bytes, not an address", raw.len()),
                });
            }
            None => self.channels()?.first().map(|ch| ch.payer),
        };
        match known {
            Some(state) if state != payer => Err(Error::OtherPayer { state, key: payer }),
            Some(_) if stored.is_some() => Ok(()),
            _ => {
                match &*self.inner {
                    Backend::Sled(s) => s.put(META, PAYER, payer.as_slice())?,
                    Backend::Memory(s) => s.put(META, PAYER, payer.as_slice())?,
                }
                Ok(())
            }
        }
    }

    /// The payer recorded by [`Self::bind_payer`], if any.
    pub fn payer(&self) -> Result<Option<alloy::primitives::Address>> {
        Ok(self
            .meta(PAYER)?
            .filter(|raw| raw.len() == 20)
            .map(|raw| alloy::primitives::Address::from_slice(&raw)))
    }

    fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(match &*self.inner {
            Backend::Sled(s) => s.get(META, key)?,
            Backend::Memory(s) => s.get(META, key)?,
        })
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

/// Whether opening failed because another process holds the directory's lock.
fn is_lock_error(e: &x402_store::Error) -> bool {
    let text = e.to_string();
    text.contains("could not acquire lock") || text.contains("WouldBlock") || text.contains("would block")
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
    async fn a_state_keeps_to_its_payer() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Address::repeat_byte(0xaa), Address::repeat_byte(0xbb));
        {
            let store = StateStore::open(dir.path()).unwrap();
            assert_eq!(store.payer().unwrap(), None);
            store.bind_payer(a).unwrap();
            store.bind_payer(a).unwrap();
            store.save(&channel(1)).await.unwrap();
        }
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.payer().unwrap(), Some(a));
        assert!(
            matches!(store.bind_payer(b), Err(Error::OtherPayer { state, key }) if state == a && key == b)
        );
        // A state from before payers were recorded takes its channels' payer.
        let old = StateStore::in_memory();
        let mut ch = channel(2);
        ch.payer = a;
        old.save(&ch).await.unwrap();
        assert!(matches!(old.bind_payer(b), Err(Error::OtherPayer { .. })));
        old.bind_payer(a).unwrap();
        assert_eq!(old.payer().unwrap(), Some(a));
    }

    #[test]
    fn a_busy_state_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let _held = StateStore::open(dir.path()).unwrap();
        let err = StateStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, Error::StateLocked { waited_secs, .. } if waited_secs >= 1), "{err}");
        assert!(err.to_string().contains("in use by another process"), "{err}");
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

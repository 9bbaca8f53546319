//! The channel book: the one owner of how channel records are laid out in the store.
//!
//! Every channel is one entry of the [`CHANNELS`] namespace, keyed by its 32-byte id, whose
//! value is the record in the compact binary codec below ([`encode`], [`decode`]). No other
//! module or crate reads or writes those entries: they ask the book.
//!
//! The book also keeps an in-memory [index](BookIndex) of what the settlement planner and the
//! metrics need (the channels with something to claim or close, the unsettled amount per
//! token, how many channels are open), updated on every write, so that neither has to list
//! and decode the whole store.
//!
//! # Codec, version 2
//!
//! All integers big-endian; `varint` is unsigned LEB128 (at most 10 bytes); an `amount` is a
//! `U256` as one length byte (0–32) and that many big-endian bytes with no leading zero.
//!
//! | field | bytes |
//! |---|---|
//! | version (`2`) | 1 |
//! | flags: signer is a contract, open, pending close, has latest voucher, has close, has last receipt, status (2 bits) | 1 |
//! | more flags: the receipt's nonce / amount is the latest voucher's, its total is `charged`; signer is zero, signer is the payer; the signature has 65 bytes; `charged` is stored as what the latest voucher pays beyond it; the salt is stored as an amount | 1 |
//! | address references: payee (high 4 bits), token (low 4 bits); `n > 0` is entry `n - 1` of the [dictionary](#address-dictionary), `0` an address inline | 1 |
//! | payer; payee, token, signer unless referenced or flagged | 20 + 0–3 × 20 |
//! | challenge period (varint), salt (32, or an amount if flagged) | ≤ 5 + ≤ 33 |
//! | deposit, paid, charged (or the latest voucher's amount less it, if flagged) (amounts) | 3 × (1 + ≤ 32) |
//! | exit at, settled at (varints) | 2 × ≤ 10 |
//! | served window: floor (varint); the run `r` of low ones of its bitmap (nonces served in order, 0–128); unless `r` is 128, the bitmap shifted right by `r` as a length byte (0–16) and that many bytes | ≤ 10 + 1 + ≤ 17 |
//! | latest voucher, if flagged: nonce (varint), amount, signature (varint length unless 65 bytes, then the bytes) | |
//! | close, if flagged: requested at, authorisation deadline (varints) | |
//! | last receipt, if flagged: nonce, amount, total unless flagged equal, cost | |
//!
//! A paid channel with a 65-byte voucher signature, the node's payee and token and amounts
//! of a few bytes takes about 150 bytes (version 1 took about 235); about 100 of them are the
//! payer, the salt and the signature, which are random. The receipt of the last served
//! voucher, which a resend after a restart is answered with, costs a few bytes: its nonce,
//! amount and total are nearly always the record's.
//!
//! ## Address dictionary
//!
//! A node's channels nearly all have its payee and its token. The book keeps up to
//! [`MAX_ADDRESSES`] addresses in a dictionary, the entry `addresses` of the [`BOOK`]
//! namespace (the addresses, 20 bytes each), and records name them by their place in it.
//! The book adds the payee and token of a record it writes when they are new and there is
//! room, and syncs the store before any record names them, so that a record never outlives
//! an entry it refers to. Entries are never removed or changed: a node whose terms change
//! adds entries, and its older records still decode to what they held. Without the
//! dictionary ([`decode`]) a record that names an entry is refused, never misread.
//!
//! ## Earlier versions
//!
//! Records of version 1 (the same fields with every address inline, the challenge period as
//! 4 bytes, the salt as 32, the window's bitmap as 16) and of the JSON codec before it
//! (starting with `{`) are decoded as they are read, and written in version 2 at their next
//! write. A JSON record's 128-entry served list becomes the window (a nonce more than 128
//! below the highest served one counts as used, which only ever refuses more).

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use alloy::primitives::{Address, B256, Bytes, FixedBytes, U256};
use x402_protocol::bindings::IPaymentChannel::ChannelParams;
use x402_store::KvStore;

use crate::{
    Error,
    channel::{
        ChannelRecord, ChannelStatus, CloseState, OnchainChannel, Served, ServedWindow, StoredVoucher,
    },
};

/// The store namespace holding one record per channel id.
pub const CHANNELS: &str = "channels";

/// The store namespace of the book's own entries: its address dictionary.
pub const BOOK: &str = "book";

/// The key of the address dictionary in [`BOOK`].
const ADDRESSES: &[u8] = b"addresses";

/// The most addresses the dictionary holds (a record names one in 4 bits).
pub const MAX_ADDRESSES: usize = 15;

/// The codec's version byte.
pub const VERSION: u8 = 2;

/// The version byte of the first binary codec, still decoded.
const VERSION_1: u8 = 1;

/// The channel records of a store, and the index of what settlement needs.
#[derive(Debug)]
pub struct ChannelBook<S> {
    store: Arc<S>,
    index: parking_lot::Mutex<BookIndex>,
    /// Whether the index covers every stored record (see [`Self::build_index`]).
    indexed: AtomicBool,
    /// Serialises index builds.
    building: parking_lot::Mutex<()>,
    /// The address dictionary, read from the store at first use.
    addresses: parking_lot::RwLock<Addresses>,
}

/// The book's address dictionary: the addresses (the node's payee and tokens) that records
/// name by their place in it rather than spell out. Append-only, and durable before any
/// record names an entry, so a record never outlives what it refers to, and a change of the
/// node's terms only adds entries.
#[derive(Debug, Default)]
struct Addresses {
    loaded: bool,
    list: Vec<Address>,
}

impl<S: KvStore> ChannelBook<S> {
    /// The book of the records in `store`. The index is empty until [`Self::build_index`].
    pub fn new(store: Arc<S>) -> Self {
        Self {
            store,
            index: parking_lot::Mutex::new(BookIndex::default()),
            indexed: AtomicBool::new(false),
            building: parking_lot::Mutex::new(()),
            addresses: parking_lot::RwLock::new(Addresses::default()),
        }
    }

    /// The address dictionary, read from the store the first time.
    fn addresses(&self) -> Result<parking_lot::RwLockReadGuard<'_, Addresses>, Error> {
        {
            let addresses = self.addresses.read();
            if addresses.loaded {
                return Ok(addresses);
            }
        }
        let mut addresses = self.addresses.write();
        if !addresses.loaded {
            addresses.list = match self.store.get(BOOK, ADDRESSES)? {
                None => Vec::new(),
                Some(bytes) if bytes.len() % 20 == 0 && bytes.len() / 20 <= MAX_ADDRESSES => {
                    bytes.chunks_exact(20).map(Address::from_slice).collect()
                }
                Some(_) => return Err(Error::RecordInvalid("address dictionary")),
            };
            addresses.loaded = true;
        }
        Ok(parking_lot::RwLockWriteGuard::downgrade(addresses))
    }

    /// Adds the record's payee and token to the dictionary if they are new and there is room,
    /// durably (a sync, once per address in the life of the store) before any record names
    /// them. If the sync fails, the record is written with its addresses inline instead.
    fn learn(&self, record: &ChannelRecord) -> Result<(), Error> {
        let wanted = [record.chain.params.payee, record.chain.params.token];
        {
            let addresses = self.addresses()?;
            if addresses.list.len() >= MAX_ADDRESSES || wanted.iter().all(|a| addresses.list.contains(a)) {
                return Ok(());
            }
        }
        let mut addresses = self.addresses.write();
        let before = addresses.list.len();
        for a in wanted {
            if addresses.list.len() < MAX_ADDRESSES && !addresses.list.contains(&a) {
                addresses.list.push(a);
            }
        }
        if addresses.list.len() == before {
            return Ok(());
        }
        let bytes: Vec<u8> = addresses.list.iter().flat_map(|a| a.0).collect();
        let stored = self.store.put(BOOK, ADDRESSES, &bytes).and_then(|()| self.store.sync_blocking());
        if let Err(e) = stored {
            addresses.list.truncate(before);
            tracing::warn!(target: "node::book", error = %e, "address dictionary not stored; records spell the addresses out");
        }
        Ok(())
    }

    /// Decodes a record met in a scan with a copy of the dictionary (a scan must not hold
    /// its lock while writers learn), refreshing the copy if the record names an entry
    /// learned since.
    fn decode_scanned(
        &self,
        id: B256,
        bytes: &[u8],
        addresses: &mut Vec<Address>,
    ) -> Result<ChannelRecord, Error> {
        match decode_with(id, bytes, addresses) {
            Err(Error::RecordInvalid("address reference")) => {
                let now = self.addresses()?.list.clone();
                if now.len() == addresses.len() {
                    return Err(Error::RecordInvalid("address reference"));
                }
                *addresses = now;
                decode_with(id, bytes, addresses)
            }
            decoded => decoded,
        }
    }

    /// A record as the book stores it.
    pub fn encode(&self, record: &ChannelRecord) -> Result<Vec<u8>, Error> {
        Ok(encode_with(record, &self.addresses()?.list))
    }

    /// A stored record of channel `id`, as [`Self::get`] reads it.
    pub fn decode(&self, id: B256, bytes: &[u8]) -> Result<ChannelRecord, Error> {
        decode_with(id, bytes, &self.addresses()?.list)
            .map_err(|source| Error::CorruptRecord { id, source: Box::new(source) })
    }

    /// The store underneath (for its sync and for other namespaces: never for [`CHANNELS`] or
    /// [`BOOK`]).
    pub const fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// One channel's record.
    pub fn get(&self, id: B256) -> Result<Option<ChannelRecord>, Error> {
        self.store.get(CHANNELS, id.as_slice())?.map(|b| self.decode(id, &b)).transpose()
    }

    /// Whether the store has a record of the channel.
    pub fn contains(&self, id: B256) -> Result<bool, Error> {
        Ok(self.store.get(CHANNELS, id.as_slice())?.is_some())
    }

    /// Writes a record (not synced: call the store's `sync`) and updates the index.
    pub fn put(&self, record: &ChannelRecord) -> Result<(), Error> {
        self.learn(record)?;
        let bytes = self.encode(record)?;
        if self.indexed.load(Ordering::Acquire) {
            self.store.put(CHANNELS, record.id.as_slice(), &bytes)?;
            self.index.lock().apply(record);
        } else {
            // While the index is built, a write and its index entry go together, so that the
            // build never overwrites a newer entry with the older record it listed.
            let mut index = self.index.lock();
            self.store.put(CHANNELS, record.id.as_slice(), &bytes)?;
            index.apply(record);
            index.written.insert(record.id);
        }
        Ok(())
    }

    /// Every record (a full scan: for listings and reorg recovery, never per request).
    pub fn list(&self) -> Result<Vec<ChannelRecord>, Error> {
        let mut addresses = self.addresses()?.list.clone();
        self.store
            .list(CHANNELS)?
            .into_iter()
            .map(|(k, v)| {
                let id = B256::try_from(k.as_slice()).unwrap_or_default();
                self.decode_scanned(id, &v, &mut addresses)
                    .map_err(|source| Error::CorruptRecord { id, source: Box::new(source) })
            })
            .collect()
    }

    /// Fills the index from the store once (one scan, decoding every record); later calls
    /// return at once. Blocking: call it off the async runtime's workers.
    pub fn build_index(&self) -> Result<(), Error> {
        let _building = self.building.lock();
        if self.indexed.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut fresh = BookIndex::default();
        let mut corrupt = None;
        let mut addresses = self.addresses()?.list.clone();
        self.store.for_each(CHANNELS, &mut |k, v| {
            let id = B256::try_from(k).unwrap_or_default();
            match self.decode_scanned(id, v, &mut addresses) {
                Ok(record) => fresh.apply(&record),
                Err(source) => {
                    corrupt.get_or_insert(Error::CorruptRecord { id, source: Box::new(source) });
                }
            }
        })?;
        if let Some(e) = corrupt {
            return Err(e);
        }
        let mut index = self.index.lock();
        // Records written since the scan started are indexed already, and newer than what
        // the scan read of them.
        for id in std::mem::take(&mut index.written) {
            if let Some(status) = index.status.get(&id) {
                fresh.status.insert(id, *status);
            }
            fresh.set(id, index.entries.get(&id).cloned());
        }
        fresh.recount();
        *index = fresh;
        self.indexed.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether [`Self::build_index`] has completed.
    pub fn indexed(&self) -> bool {
        self.indexed.load(Ordering::Acquire)
    }

    /// The channels that may need a settlement or a close: an open channel with something
    /// claimable, or whose client asked for a close. A superset of what the planner selects.
    pub fn due(&self) -> Vec<B256> {
        self.index.lock().entries.keys().copied().collect()
    }

    /// What the index says now.
    pub fn summary(&self) -> IndexSummary {
        let index = self.index.lock();
        IndexSummary {
            open: index.counts[0],
            closing: index.counts[1],
            closed: index.counts[2],
            unsettled: index.unsettled.clone(),
            due: index.entries.len(),
        }
    }
}

/// Counts from the index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexSummary {
    /// Channels accepting vouchers.
    pub open: u64,
    /// Channels with an exit or close pending.
    pub closing: u64,
    /// Channels closed on-chain.
    pub closed: u64,
    /// What was charged and not yet paid on-chain, per token.
    pub unsettled: HashMap<Address, U256>,
    /// Channels the settlement planner looks at.
    pub due: usize,
}

/// What the planner needs to know of a due channel without reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    token: Address,
    unsettled: U256,
}

/// The in-memory index of the book.
#[derive(Debug, Default)]
pub struct BookIndex {
    entries: HashMap<B256, Entry>,
    /// Every channel's status, as a compact code (0 open, 1 closing, 2 closed).
    status: HashMap<B256, u8>,
    counts: [u64; 3],
    unsettled: HashMap<Address, U256>,
    /// Ids written while the index was being built.
    written: HashSet<B256>,
}

impl BookIndex {
    fn apply(&mut self, record: &ChannelRecord) {
        let status = status_code(record.status);
        if let Some(old) = self.status.insert(record.id, status) {
            self.counts[usize::from(old)] = self.counts[usize::from(old)].saturating_sub(1);
        }
        self.counts[usize::from(status)] += 1;
        let due = record.status != ChannelStatus::Closed
            && record.chain.open
            && !record.chain.pending_close
            && (record.claimable().is_some() || record.close.is_some());
        let entry = due.then(|| Entry { token: record.chain.token(), unsettled: record.unsettled() });
        self.set(record.id, entry);
    }

    fn set(&mut self, id: B256, entry: Option<Entry>) {
        let old = match entry {
            Some(entry) => {
                let add = (entry.token, entry.unsettled);
                let old = self.entries.insert(id, entry);
                let sum = self.unsettled.entry(add.0).or_default();
                *sum = sum.saturating_add(add.1);
                old
            }
            None => self.entries.remove(&id),
        };
        if let Some(old) = old {
            let sum = self.unsettled.entry(old.token).or_default();
            *sum = sum.saturating_sub(old.unsettled);
        }
    }

    fn recount(&mut self) {
        self.counts = [0; 3];
        for status in self.status.values() {
            self.counts[usize::from(*status)] += 1;
        }
    }
}

const fn status_code(status: ChannelStatus) -> u8 {
    match status {
        ChannelStatus::Open => 0,
        ChannelStatus::Closing => 1,
        ChannelStatus::Closed => 2,
    }
}

// Flags.
const SIGNER_IS_CONTRACT: u8 = 1;
const OPEN: u8 = 1 << 1;
const PENDING_CLOSE: u8 = 1 << 2;
const HAS_LATEST: u8 = 1 << 3;
const HAS_CLOSE: u8 = 1 << 4;
const HAS_RECEIPT: u8 = 1 << 5;
const STATUS_SHIFT: u8 = 6;
// Receipt flags (version 1's third byte; the low bits of version 2's).
const RECEIPT_NONCE_IS_LATEST: u8 = 1;
const RECEIPT_AMOUNT_IS_LATEST: u8 = 1 << 1;
const RECEIPT_TOTAL_IS_CHARGED: u8 = 1 << 2;
// Version 2's other flags.
const SIGNER_IS_ZERO: u8 = 1 << 3;
const SIGNER_IS_PAYER: u8 = 1 << 4;
const SIGNATURE_65: u8 = 1 << 5;
const CHARGED_BELOW_LATEST: u8 = 1 << 6;
const SHORT_SALT: u8 = 1 << 7;

/// Encodes a record in the current codec with every address inline (the id is the key, not
/// part of the value). The book encodes with its address dictionary: [`ChannelBook::encode`].
pub fn encode(record: &ChannelRecord) -> Vec<u8> {
    encode_with(record, &[])
}

/// Encodes a record in the current codec, naming its payee and token by their place in
/// `addresses` (at most the first [`MAX_ADDRESSES`]) when they are there.
pub fn encode_with(record: &ChannelRecord, addresses: &[Address]) -> Vec<u8> {
    let c = &record.chain;
    let p = &c.params;
    let receipt = record.served.back();
    let latest = record.latest.as_ref();
    let mut flags = status_code(record.status) << STATUS_SHIFT;
    for (set, bit) in [
        (c.signer_is_contract, SIGNER_IS_CONTRACT),
        (c.open, OPEN),
        (c.pending_close, PENDING_CLOSE),
        (latest.is_some(), HAS_LATEST),
        (record.close.is_some(), HAS_CLOSE),
        (receipt.is_some(), HAS_RECEIPT),
    ] {
        if set {
            flags |= bit;
        }
    }
    let mut more = receipt.map_or(0, |r| receipt_flags(r, latest, record.charged));
    if p.signer == Address::ZERO {
        more |= SIGNER_IS_ZERO;
    } else if p.signer == p.payer {
        more |= SIGNER_IS_PAYER;
    }
    if latest.is_some_and(|l| l.signature.len() == 65) {
        more |= SIGNATURE_65;
    }
    // What the latest voucher pays beyond the charges: nothing, for most channels.
    let below = latest.and_then(|l| l.cumulative_amount.checked_sub(record.charged));
    if below.is_some() {
        more |= CHARGED_BELOW_LATEST;
    }
    if p.salt[..2] == [0, 0] {
        more |= SHORT_SALT;
    }
    let reference =
        |a: Address| addresses.iter().take(MAX_ADDRESSES).position(|d| *d == a).map_or(0, |i| i as u8 + 1);
    let refs = reference(p.payee) << 4 | reference(p.token);

    let mut out = Vec::with_capacity(192);
    out.extend_from_slice(&[VERSION, flags, more, refs]);
    out.extend_from_slice(p.payer.as_slice());
    if refs >> 4 == 0 {
        out.extend_from_slice(p.payee.as_slice());
    }
    if refs & 0x0f == 0 {
        out.extend_from_slice(p.token.as_slice());
    }
    if more & (SIGNER_IS_ZERO | SIGNER_IS_PAYER) == 0 {
        out.extend_from_slice(p.signer.as_slice());
    }
    put_varint(&mut out, u64::from(p.challengePeriod));
    if more & SHORT_SALT != 0 {
        put_amount(&mut out, U256::from_be_bytes(p.salt.0));
    } else {
        out.extend_from_slice(p.salt.as_slice());
    }
    for a in [c.deposit, c.paid, below.unwrap_or(record.charged)] {
        put_amount(&mut out, a);
    }
    put_varint(&mut out, c.exit_at);
    put_varint(&mut out, record.settled_at);
    put_varint(&mut out, record.window.floor());
    // The bitmap as its run of low ones (nonces served in order) and what lies above it.
    let bits = record.window.bits();
    let ones = bits.trailing_ones();
    out.push(ones as u8);
    if ones < 128 {
        let above = (bits >> ones).to_be_bytes();
        let skip = above.iter().take_while(|b| **b == 0).count();
        out.push((16 - skip) as u8);
        out.extend_from_slice(&above[skip..]);
    }
    if let Some(l) = latest {
        put_varint(&mut out, l.nonce);
        put_amount(&mut out, l.cumulative_amount);
        if more & SIGNATURE_65 == 0 {
            put_varint(&mut out, l.signature.len() as u64);
        }
        out.extend_from_slice(&l.signature);
    }
    if let Some(close) = record.close {
        put_varint(&mut out, close.requested_at);
        put_varint(&mut out, close.authorization_deadline);
    }
    if let Some(r) = receipt {
        put_receipt(&mut out, r, more);
    }
    out
}

/// Which of the receipt's fields repeat the latest voucher's or the record's.
fn receipt_flags(r: &Served, latest: Option<&StoredVoucher>, charged: U256) -> u8 {
    let mut flags = 0;
    if latest.is_some_and(|l| l.nonce == r.nonce) {
        flags |= RECEIPT_NONCE_IS_LATEST;
    }
    if latest.is_some_and(|l| l.cumulative_amount == r.amount) {
        flags |= RECEIPT_AMOUNT_IS_LATEST;
    }
    if r.total == charged {
        flags |= RECEIPT_TOTAL_IS_CHARGED;
    }
    flags
}

fn put_receipt(out: &mut Vec<u8>, r: &Served, flags: u8) {
    if flags & RECEIPT_NONCE_IS_LATEST == 0 {
        put_varint(out, r.nonce);
    }
    if flags & RECEIPT_AMOUNT_IS_LATEST == 0 {
        put_amount(out, r.amount);
    }
    if flags & RECEIPT_TOTAL_IS_CHARGED == 0 {
        put_amount(out, r.total);
    }
    put_amount(out, r.cost);
}

/// Decodes the record of channel `id` written with no address dictionary (see
/// [`decode_with`]). Never panics, whatever the bytes.
pub fn decode(id: B256, bytes: &[u8]) -> Result<ChannelRecord, Error> {
    decode_with(id, bytes, &[])
}

/// Decodes the record of channel `id`, its address references naming entries of `addresses`:
/// the current codec, version 1, or (once, as a migration) the JSON of earlier versions.
/// Never panics, whatever the bytes.
pub fn decode_with(id: B256, bytes: &[u8], addresses: &[Address]) -> Result<ChannelRecord, Error> {
    match bytes.first() {
        Some(&VERSION) => decode_v2(id, bytes, addresses),
        Some(&VERSION_1) => decode_v1(id, bytes),
        Some(b'{') => decode_legacy(id, bytes),
        Some(&v) => Err(Error::RecordVersion(v)),
        None => Err(Error::RecordTruncated),
    }
}

fn status_of_flags(flags: u8) -> Result<ChannelStatus, Error> {
    match flags >> STATUS_SHIFT {
        0 => Ok(ChannelStatus::Open),
        1 => Ok(ChannelStatus::Closing),
        2 => Ok(ChannelStatus::Closed),
        _ => Err(Error::RecordInvalid("status")),
    }
}

fn decode_v2(id: B256, bytes: &[u8], addresses: &[Address]) -> Result<ChannelRecord, Error> {
    let mut r = Reader { bytes, at: 1 };
    let flags = r.byte()?;
    let more = r.byte()?;
    let refs = r.byte()?;
    let status = status_of_flags(flags)?;
    let has_latest = flags & HAS_LATEST != 0;
    if !has_latest && more & (SIGNATURE_65 | CHARGED_BELOW_LATEST) != 0 {
        return Err(Error::RecordInvalid("flags of a missing voucher"));
    }
    let address = |r: &mut Reader<'_>, reference: u8| match reference {
        0 => r.address(),
        i => addresses.get(usize::from(i) - 1).copied().ok_or(Error::RecordInvalid("address reference")),
    };
    let payer = r.address()?;
    let payee = address(&mut r, refs >> 4)?;
    let token = address(&mut r, refs & 0x0f)?;
    let signer = match (more & SIGNER_IS_ZERO != 0, more & SIGNER_IS_PAYER != 0) {
        (true, true) => return Err(Error::RecordInvalid("signer flags")),
        (true, false) => Address::ZERO,
        (false, true) => payer,
        (false, false) => r.address()?,
    };
    let challenge_period =
        u32::try_from(r.varint()?).map_err(|_| Error::RecordInvalid("challenge period"))?;
    let salt = if more & SHORT_SALT != 0 {
        B256::from(r.amount()?.to_be_bytes::<32>())
    } else {
        B256::from(r.array::<32>()?)
    };
    let params = ChannelParams { payer, payee, token, signer, challengePeriod: challenge_period, salt };
    let deposit = r.amount()?;
    let paid = r.amount()?;
    let charged_or_below = r.amount()?;
    let exit_at = r.varint()?;
    let settled_at = r.varint()?;
    let floor = r.varint()?;
    let ones = u32::from(r.byte()?);
    let bits = match ones {
        128 => u128::MAX,
        0..128 => {
            let len = usize::from(r.byte()?);
            if len > 16 {
                return Err(Error::RecordInvalid("served window length"));
            }
            let above = r.take(len)?;
            if above.first() == Some(&0) {
                return Err(Error::RecordInvalid("served window with a leading zero"));
            }
            let mut be = [0; 16];
            be[16 - len..].copy_from_slice(above);
            let above = u128::from_be_bytes(be);
            // The run of ones is whole, and shifting it back loses nothing.
            if above & 1 != 0 || above.leading_zeros() < ones {
                return Err(Error::RecordInvalid("served window"));
            }
            above << ones | ((1u128 << ones) - 1)
        }
        _ => return Err(Error::RecordInvalid("served window")),
    };
    let window = ServedWindow::from_parts(floor, bits).ok_or(Error::RecordInvalid("served window"))?;
    let latest = if has_latest {
        let nonce = r.varint()?;
        let cumulative_amount = r.amount()?;
        let len = if more & SIGNATURE_65 != 0 {
            65
        } else {
            usize::try_from(r.varint()?).map_err(|_| Error::RecordInvalid("signature length"))?
        };
        let signature = Bytes::copy_from_slice(r.take(len)?);
        Some(StoredVoucher { nonce, cumulative_amount, signature })
    } else {
        None
    };
    let charged = match (&latest, more & CHARGED_BELOW_LATEST != 0) {
        (Some(l), true) => l
            .cumulative_amount
            .checked_sub(charged_or_below)
            .ok_or(Error::RecordInvalid("charged beyond the voucher"))?,
        _ => charged_or_below,
    };
    let close = if flags & HAS_CLOSE != 0 {
        Some(CloseState { requested_at: r.varint()?, authorization_deadline: r.varint()? })
    } else {
        None
    };
    let served = if flags & HAS_RECEIPT != 0 {
        vec![read_receipt(&mut r, more, latest.as_ref(), charged)?]
    } else {
        Vec::new()
    };
    if r.at != bytes.len() {
        return Err(Error::RecordTrailing(bytes.len() - r.at));
    }
    let chain = OnchainChannel {
        params,
        signer_is_contract: flags & SIGNER_IS_CONTRACT != 0,
        deposit,
        exit_at,
        open: flags & OPEN != 0,
        paid,
        pending_close: flags & PENDING_CLOSE != 0,
    };
    Ok(ChannelRecord { id, chain, latest, charged, status, close, settled_at, served: served.into(), window })
}

/// The receipt of the last voucher served, its fields flagged in `flags` taken from the
/// latest voucher or the record.
fn read_receipt(
    r: &mut Reader<'_>,
    flags: u8,
    latest: Option<&StoredVoucher>,
    charged: U256,
) -> Result<Served, Error> {
    let from_latest =
        |flag: u8| (flags & flag != 0).then_some(latest.ok_or(Error::RecordInvalid("receipt flags")));
    let nonce = match from_latest(RECEIPT_NONCE_IS_LATEST) {
        Some(l) => l?.nonce,
        None => r.varint()?,
    };
    let amount = match from_latest(RECEIPT_AMOUNT_IS_LATEST) {
        Some(l) => l?.cumulative_amount,
        None => r.amount()?,
    };
    let total = if flags & RECEIPT_TOTAL_IS_CHARGED != 0 { charged } else { r.amount()? };
    let cost = r.amount()?;
    Ok(Served { nonce, amount, cost, total })
}

fn decode_v1(id: B256, bytes: &[u8]) -> Result<ChannelRecord, Error> {
    let mut r = Reader { bytes, at: 1 };
    let flags = r.byte()?;
    let receipt_flags = r.byte()?;
    let status = status_of_flags(flags)?;
    let payer = r.address()?;
    let payee = r.address()?;
    let token = r.address()?;
    let signer = r.address()?;
    let challenge_period = u32::from_be_bytes(r.array()?);
    let salt = B256::from(r.array::<32>()?);
    let params = ChannelParams { payer, payee, token, signer, challengePeriod: challenge_period, salt };
    let deposit = r.amount()?;
    let paid = r.amount()?;
    let charged = r.amount()?;
    let exit_at = r.varint()?;
    let settled_at = r.varint()?;
    let floor = r.varint()?;
    let bits = u128::from_be_bytes(r.array()?);
    let window = ServedWindow::from_parts(floor, bits).ok_or(Error::RecordInvalid("served window"))?;
    let latest = if flags & HAS_LATEST != 0 {
        let nonce = r.varint()?;
        let cumulative_amount = r.amount()?;
        let len = usize::try_from(r.varint()?).map_err(|_| Error::RecordInvalid("signature length"))?;
        let signature = Bytes::copy_from_slice(r.take(len)?);
        Some(StoredVoucher { nonce, cumulative_amount, signature })
    } else {
        None
    };
    let close = if flags & HAS_CLOSE != 0 {
        Some(CloseState { requested_at: r.varint()?, authorization_deadline: r.varint()? })
    } else {
        None
    };
    let served = if flags & HAS_RECEIPT != 0 {
        vec![read_receipt(&mut r, receipt_flags, latest.as_ref(), charged)?]
    } else {
        Vec::new()
    };
    if r.at != bytes.len() {
        return Err(Error::RecordTrailing(bytes.len() - r.at));
    }
    let chain = OnchainChannel {
        params,
        signer_is_contract: flags & SIGNER_IS_CONTRACT != 0,
        deposit,
        exit_at,
        open: flags & OPEN != 0,
        paid,
        pending_close: flags & PENDING_CLOSE != 0,
    };
    Ok(ChannelRecord { id, chain, latest, charged, status, close, settled_at, served: served.into(), window })
}

/// A record as earlier versions stored it (JSON).
#[derive(serde::Deserialize)]
struct LegacyRecord {
    id: B256,
    chain: OnchainChannel,
    latest: Option<StoredVoucher>,
    charged: U256,
    status: ChannelStatus,
    #[serde(default)]
    close: Option<CloseState>,
    #[serde(default)]
    settled_at: u64,
    #[serde(default)]
    served: Vec<Served>,
    #[serde(default)]
    floor: Option<u64>,
}

fn decode_legacy(id: B256, bytes: &[u8]) -> Result<ChannelRecord, Error> {
    let old: LegacyRecord = serde_json::from_slice(bytes).map_err(Error::RecordLegacy)?;
    if old.id != id {
        return Err(Error::RecordInvalid("legacy record id"));
    }
    let floor = old.floor.unwrap_or_else(|| old.latest.as_ref().map_or(0, |v| v.nonce));
    let mut window = ServedWindow::from_floor(floor);
    let mut served: std::collections::VecDeque<Served> = old.served.into();
    for s in &served {
        window.insert(s.nonce);
    }
    // The served list was in commit order: the last entry is the receipt kept.
    if served.len() > crate::channel::SERVED_WINDOW {
        served.drain(..served.len() - crate::channel::SERVED_WINDOW);
    }
    Ok(ChannelRecord {
        id,
        chain: old.chain,
        latest: old.latest,
        charged: old.charged,
        status: old.status,
        close: old.close,
        settled_at: old.settled_at,
        served,
        window,
    })
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_amount(out: &mut Vec<u8>, a: U256) {
    let bytes = a.to_be_bytes::<32>();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    out.push((32 - skip) as u8);
    out.extend_from_slice(&bytes[skip..]);
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end =
            self.at.checked_add(n).filter(|&end| end <= self.bytes.len()).ok_or(Error::RecordTruncated)?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn byte(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn address(&mut self) -> Result<Address, Error> {
        Ok(Address::from(FixedBytes::<20>::from(self.array::<20>()?)))
    }

    fn varint(&mut self) -> Result<u64, Error> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let part = u64::from(b & 0x7f);
            if shift == 63 && part > 1 {
                return Err(Error::RecordInvalid("varint"));
            }
            v |= part << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Error::RecordInvalid("varint"))
    }

    fn amount(&mut self) -> Result<U256, Error> {
        let len = usize::from(self.byte()?);
        if len > 32 {
            return Err(Error::RecordInvalid("amount length"));
        }
        let bytes = self.take(len)?;
        if bytes.first() == Some(&0) {
            return Err(Error::RecordInvalid("amount with a leading zero"));
        }
        Ok(U256::from_be_slice(bytes))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use x402_store::MemoryStore;

    use super::*;
    use crate::channel::{SERVED_WINDOW, tests::onchain};

    /// Encodes a record in codec version 1 (what earlier versions of the node wrote).
    fn encode_v1(record: &ChannelRecord) -> Vec<u8> {
        let c = &record.chain;
        let p = &c.params;
        let receipt = record.served.back();
        let latest = record.latest.as_ref();
        let mut flags = status_code(record.status) << STATUS_SHIFT;
        for (set, bit) in [
            (c.signer_is_contract, SIGNER_IS_CONTRACT),
            (c.open, OPEN),
            (c.pending_close, PENDING_CLOSE),
            (latest.is_some(), HAS_LATEST),
            (record.close.is_some(), HAS_CLOSE),
            (receipt.is_some(), HAS_RECEIPT),
        ] {
            if set {
                flags |= bit;
            }
        }
        let receipt_flags = receipt.map_or(0, |r| receipt_flags(r, latest, record.charged));
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&[VERSION_1, flags, receipt_flags]);
        for a in [p.payer, p.payee, p.token, p.signer] {
            out.extend_from_slice(a.as_slice());
        }
        out.extend_from_slice(&p.challengePeriod.to_be_bytes());
        out.extend_from_slice(p.salt.as_slice());
        for a in [c.deposit, c.paid, record.charged] {
            put_amount(&mut out, a);
        }
        put_varint(&mut out, c.exit_at);
        put_varint(&mut out, record.settled_at);
        put_varint(&mut out, record.window.floor());
        out.extend_from_slice(&record.window.bits().to_be_bytes());
        if let Some(l) = latest {
            put_varint(&mut out, l.nonce);
            put_amount(&mut out, l.cumulative_amount);
            put_varint(&mut out, l.signature.len() as u64);
            out.extend_from_slice(&l.signature);
        }
        if let Some(close) = record.close {
            put_varint(&mut out, close.requested_at);
            put_varint(&mut out, close.authorization_deadline);
        }
        if let Some(r) = receipt {
            put_receipt(&mut out, r, receipt_flags);
        }
        out
    }

    fn amount() -> impl Strategy<Value = U256> {
        prop_oneof![
            Just(U256::ZERO),
            any::<u64>().prop_map(U256::from),
            any::<[u8; 32]>().prop_map(U256::from_be_bytes),
        ]
    }

    /// Windows of nonces served in order (a run of ones) and then some, or anything.
    fn window_bits() -> impl Strategy<Value = u128> {
        prop_oneof![
            any::<u128>(),
            (0u32..=128, any::<u128>()).prop_map(|(run, above)| {
                let ones = u128::MAX.checked_shr(128 - run).unwrap_or(0);
                ones | above.checked_shl(run + 1).unwrap_or(0)
            }),
        ]
    }

    fn record() -> impl Strategy<Value = ChannelRecord> {
        // Addresses: the node's (as onchain() has them) or others; a signer that is none,
        // the payer or another key; salts with leading zeros or not.
        let addresses = (
            (0u8..3, any::<[u8; 20]>()),
            (any::<bool>(), any::<[u8; 20]>()),
            (any::<bool>(), any::<[u8; 20]>()),
            (0usize..=32, any::<[u8; 32]>()),
        );
        let chain = (
            addresses,
            any::<u32>(),
            (amount(), amount(), any::<u64>()),
            (any::<bool>(), any::<bool>(), any::<bool>()),
        )
            .prop_map(
                |(
                    ((signer_kind, signer), (own_payee, payee), (own_token, token), (zeros, mut salt)),
                    period,
                    (deposit, paid, exit_at),
                    (contract, open, pending),
                )| {
                    let mut c = onchain(0);
                    c.params.signer = match signer_kind {
                        0 => Address::ZERO,
                        1 => c.params.payer,
                        _ => Address::from(signer),
                    };
                    if !own_payee {
                        c.params.payee = Address::from(payee);
                    }
                    if !own_token {
                        c.params.token = Address::from(token);
                    }
                    salt[..zeros].fill(0);
                    c.params.challengePeriod = period;
                    c.params.salt = B256::from(salt);
                    c.deposit = deposit;
                    c.paid = paid;
                    c.exit_at = exit_at;
                    c.signer_is_contract = contract;
                    c.open = open;
                    c.pending_close = pending;
                    c
                },
            );
        let latest =
            prop::option::of((any::<u64>(), amount(), prop::collection::vec(any::<u8>(), 0..200)).prop_map(
                |(nonce, a, sig)| StoredVoucher { nonce, cumulative_amount: a, signature: Bytes::from(sig) },
            ));
        let close = prop::option::of((any::<u64>(), any::<u64>()).prop_map(
            |(requested_at, authorization_deadline)| CloseState { requested_at, authorization_deadline },
        ));
        let receipt = prop::option::of((any::<u64>(), amount(), amount(), amount(), 0u8..8));
        (
            any::<[u8; 32]>(),
            chain,
            latest,
            amount(),
            0u8..3,
            close,
            any::<u64>(),
            receipt,
            any::<u64>(),
            window_bits(),
            (0u8..3, any::<u16>()),
        )
            .prop_map(
                |(id, chain, latest, mut charged, status, close, settled_at, receipt, floor, bits, below)| {
                    // Charges that are the latest voucher's amount, or a little below it.
                    if let Some(l) = latest.as_ref().filter(|_| below.0 > 0) {
                        charged =
                            l.cumulative_amount.saturating_sub(U256::from(below.1) * U256::from(below.0 - 1));
                    }
                    let status = [ChannelStatus::Open, ChannelStatus::Closing, ChannelStatus::Closed]
                        [usize::from(status)];
                    let window =
                        ServedWindow::from_parts(floor, bits).unwrap_or(ServedWindow::from_floor(floor));
                    // Receipts that repeat the latest voucher or the total, as most do.
                    let served = receipt
                        .map(|(nonce, amount, cost, total, same)| {
                            let l = latest.as_ref();
                            Served {
                                nonce: l.filter(|_| same & 1 != 0).map_or(nonce, |l| l.nonce),
                                amount: l.filter(|_| same & 2 != 0).map_or(amount, |l| l.cumulative_amount),
                                cost,
                                total: if same & 4 != 0 { charged } else { total },
                            }
                        })
                        .into_iter()
                        .collect();
                    ChannelRecord {
                        id: B256::from(id),
                        chain,
                        latest,
                        charged,
                        status,
                        close,
                        settled_at,
                        served,
                        window,
                    }
                },
            )
    }

    /// The node's payee and token (as `onchain()` has them) and another address.
    fn dictionary() -> Vec<Address> {
        vec![Address::repeat_byte(9), Address::repeat_byte(2), Address::repeat_byte(3)]
    }

    proptest! {
        #[test]
        fn round_trips(record in record()) {
            for addresses in [vec![], dictionary()] {
                let bytes = encode_with(&record, &addresses);
                prop_assert_eq!(bytes[0], VERSION);
                prop_assert_eq!(decode_with(record.id, &bytes, &addresses).ok(), Some(record.clone()));
                // Every proper prefix is refused, never misread.
                for cut in 0..bytes.len() {
                    prop_assert!(decode_with(record.id, &bytes[..cut], &addresses).is_err());
                }
                let mut longer = bytes.clone();
                longer.push(0);
                prop_assert!(matches!(
                    decode_with(record.id, &longer, &addresses),
                    Err(Error::RecordTrailing(1))
                ));
            }
            // A record naming dictionary entries is refused without them, never misread.
            let named = encode_with(&record, &dictionary());
            let p = &record.chain.params;
            let own = [p.payee, p.token].iter().any(|a| dictionary().contains(a));
            prop_assert_eq!(named.len() < encode(&record).len(), own);
            prop_assert_eq!(decode(record.id, &named).is_err(), own);
            prop_assert!(decode_with(record.id, &named, &dictionary()[..1]).is_err() || !own);
        }

        #[test]
        fn decodes_version_1(record in record()) {
            prop_assert_eq!(decode(record.id, &encode_v1(&record)).ok(), Some(record));
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode(B256::ZERO, &bytes);
            for version in [VERSION_1, VERSION] {
                let mut versioned = bytes.clone();
                versioned.insert(0, version);
                for addresses in [vec![], dictionary()] {
                    if let Ok(record) = decode_with(B256::ZERO, &versioned, &addresses) {
                        // What decodes encodes back to a record that decodes the same.
                        let again = encode_with(&record, &addresses);
                        prop_assert_eq!(decode_with(B256::ZERO, &again, &addresses).ok(), Some(record));
                    }
                }
            }
        }

        #[test]
        fn flipped_bytes_never_panic(record in record(), at in any::<prop::sample::Index>(), xor in 1u8..) {
            for mut bytes in [encode(&record), encode_with(&record, &dictionary()), encode_v1(&record)] {
                let i = at.index(bytes.len());
                bytes[i] ^= xor;
                let _ = decode_with(record.id, &bytes, &dictionary());
            }
        }
    }

    #[test]
    fn a_paid_channel_takes_about_160_bytes() {
        let mut chain = onchain(10_000_000_000);
        chain.params.salt = B256::repeat_byte(0xa7);
        let mut record = ChannelRecord::new(B256::repeat_byte(1), chain);
        record.settled_at = 1_764_000_000;
        for n in 1..=100u64 {
            let v = x402_protocol::Voucher {
                channelId: record.id,
                nonce: n,
                cumulativeAmount: U256::from(n * 1_000_000),
            };
            record.apply(&v, Bytes::from(vec![0x5a; 65]), U256::from(1_000_000));
        }
        record.request_close(1_764_000_100);
        // version 1 took 236 bytes; inline, the payee and token take 40 of these.
        assert_eq!(encode_v1(&record).len(), 236);
        assert_eq!(encode(&record).len(), 197);
        let bytes = encode_with(&record, &dictionary());
        assert_eq!(bytes.len(), 157);
        let back = decode_with(record.id, &bytes, &dictionary()).unwrap();
        // Only the last receipt is stored; the window is whole.
        assert_eq!(back.served, record.served.range(record.served.len() - 1..).cloned().collect::<Vec<_>>());
        assert_eq!(back.window, record.window);
        assert_eq!((back.latest, back.charged), (record.latest, record.charged));
    }

    #[test]
    fn refuses_unknown_versions_and_corrupt_legacy_records() {
        assert!(matches!(decode(B256::ZERO, &[]), Err(Error::RecordTruncated)));
        assert!(matches!(decode(B256::ZERO, &[3, 0, 0]), Err(Error::RecordVersion(3))));
        assert!(matches!(decode(B256::ZERO, &[VERSION, 0, 0]), Err(Error::RecordTruncated)));
        assert!(matches!(decode(B256::ZERO, b"{not json"), Err(Error::RecordLegacy(_))));
    }

    #[test]
    fn migrates_version_1_records() {
        let mut record = ChannelRecord::new(B256::repeat_byte(4), onchain(1_000_000));
        record.apply(
            &x402_protocol::Voucher { channelId: record.id, nonce: 3, cumulativeAmount: U256::from(300) },
            Bytes::from(vec![7; 65]),
            U256::from(100),
        );
        let book = ChannelBook::new(Arc::new(MemoryStore::new()));
        book.store().put(CHANNELS, record.id.as_slice(), &encode_v1(&record)).unwrap();
        let read = book.get(record.id).unwrap().unwrap();
        assert_eq!(read, record);
        book.put(&read).unwrap();
        let raw = book.store().get(CHANNELS, record.id.as_slice()).unwrap().unwrap();
        assert_eq!(raw[0], VERSION);
        assert!(raw.len() + 80 < encode_v1(&record).len(), "{} bytes", raw.len());
        assert_eq!(book.get(record.id).unwrap().unwrap(), record);
    }

    #[test]
    fn the_dictionary_is_learned_once_and_survives_a_restart_and_new_terms() {
        let store = Arc::new(MemoryStore::new());
        let book = ChannelBook::new(Arc::clone(&store));
        let ours = ChannelRecord::new(B256::repeat_byte(1), onchain(1000));
        book.put(&ours).unwrap();
        let (payee, token) = (ours.chain.params.payee, ours.chain.params.token);
        let stored = store.get(BOOK, ADDRESSES).unwrap().unwrap();
        assert_eq!(stored, [payee.as_slice(), token.as_slice()].concat());
        let raw = store.get(CHANNELS, ours.id.as_slice()).unwrap().unwrap();
        assert_eq!(raw[3], 0x12, "payee and token named by the first two entries");
        assert_eq!(raw.len() + 40, encode(&ours).len());
        // The node's terms change: new entries are added, old records keep theirs.
        let mut theirs = ChannelRecord::new(B256::repeat_byte(2), onchain(1000));
        theirs.chain.params.payee = Address::repeat_byte(0x44);
        book.put(&theirs).unwrap();
        let stored = store.get(BOOK, ADDRESSES).unwrap().unwrap();
        assert_eq!(stored.len(), 60);
        assert_eq!(&stored[..40], [payee.as_slice(), token.as_slice()].concat());
        // After a restart the records decode as they were.
        let restarted = ChannelBook::new(Arc::clone(&store));
        assert_eq!(restarted.get(ours.id).unwrap(), Some(ours.clone()));
        assert_eq!(restarted.get(theirs.id).unwrap(), Some(theirs.clone()));
        restarted.build_index().unwrap();
        assert_eq!(restarted.list().unwrap(), vec![ours.clone(), theirs]);
        // Without the dictionary, a record naming it is refused, not misread.
        let raw = store.get(CHANNELS, ours.id.as_slice()).unwrap().unwrap();
        assert!(matches!(decode(ours.id, &raw), Err(Error::RecordInvalid("address reference"))));
        // A damaged dictionary is an error, not a misreading.
        store.put(BOOK, ADDRESSES, &[1; 21]).unwrap();
        assert!(ChannelBook::new(Arc::clone(&store)).get(ours.id).is_err());
    }

    #[test]
    fn a_scan_meets_entries_learned_after_it_started() {
        let book = ChannelBook::new(Arc::new(MemoryStore::new()));
        let first = ChannelRecord::new(B256::repeat_byte(1), onchain(1000));
        book.put(&first).unwrap();
        let mut copy = book.addresses().unwrap().list.clone();
        let mut later = ChannelRecord::new(B256::repeat_byte(2), onchain(1000));
        later.chain.params.token = Address::repeat_byte(0x55);
        book.put(&later).unwrap();
        let raw = book.store().get(CHANNELS, later.id.as_slice()).unwrap().unwrap();
        assert!(decode_with(later.id, &raw, &copy).is_err(), "names the new entry");
        assert_eq!(book.decode_scanned(later.id, &raw, &mut copy).unwrap(), later);
        assert_eq!(copy.len(), 3);
        // A reference to an entry that does not exist is still refused.
        let mut bad = raw.clone();
        bad[3] = 0x1f;
        assert!(book.decode_scanned(later.id, &bad, &mut copy).is_err());
    }

    #[test]
    fn the_dictionary_is_bounded() {
        let book = ChannelBook::new(Arc::new(MemoryStore::new()));
        for i in 0..20u8 {
            let mut record = ChannelRecord::new(B256::repeat_byte(i), onchain(1000));
            record.chain.params.payee = Address::repeat_byte(i);
            record.chain.params.token = Address::repeat_byte(0x80 | i);
            book.put(&record).unwrap();
            assert_eq!(book.get(record.id).unwrap(), Some(record));
        }
        let stored = book.store().get(BOOK, ADDRESSES).unwrap().unwrap();
        assert_eq!(stored.len(), 20 * MAX_ADDRESSES);
        // Full: a new payee is spelled out.
        let raw = book.store().get(CHANNELS, B256::repeat_byte(19).as_slice()).unwrap().unwrap();
        assert_eq!(raw[3], 0);
    }

    #[test]
    fn a_dictionary_entry_that_is_not_durable_is_never_named() {
        let store = Arc::new(crate::test_utils::FlakyStore::default());
        let book = ChannelBook::new(Arc::clone(&store));
        store.fail(true);
        let record = ChannelRecord::new(B256::repeat_byte(1), onchain(1000));
        book.put(&record).unwrap();
        let raw = store.get(CHANNELS, record.id.as_slice()).unwrap().unwrap();
        assert_eq!(raw, encode(&record), "addresses inline");
        // Once syncs work again, the next write learns them.
        store.fail(false);
        book.put(&record).unwrap();
        let raw = store.get(CHANNELS, record.id.as_slice()).unwrap().unwrap();
        assert_eq!(raw.len() + 40, encode(&record).len());
        assert_eq!(ChannelBook::new(store).get(record.id).unwrap(), Some(record));
    }

    /// A record as the JSON codec of earlier versions wrote it: its fields, with the served
    /// window as a list and an optional floor.
    fn legacy_json(record: &ChannelRecord, served: &[Served], floor: Option<u64>) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "id": record.id,
            "chain": record.chain,
            "latest": record.latest,
            "charged": record.charged,
            "status": record.status,
            "close": record.close,
            "settled_at": record.settled_at,
            "served": served,
            "floor": floor,
        }))
        .unwrap()
    }

    #[test]
    fn migrates_legacy_json_records() {
        let mut record = ChannelRecord::new(B256::repeat_byte(3), onchain(1_000_000));
        let served: Vec<Served> = (10..=137u64)
            .map(|n| Served { nonce: n, amount: U256::from(n), cost: U256::from(1), total: U256::from(n) })
            .collect();
        record.latest =
            Some(StoredVoucher { nonce: 137, cumulative_amount: U256::from(137), signature: Bytes::new() });
        let back = decode(record.id, &legacy_json(&record, &served, Some(9))).unwrap();
        assert_eq!(back.served, served);
        for n in 0..=140 {
            assert_eq!(back.used(n), n <= 137, "nonce {n}");
        }
        // Before the window existed: everything up to the latest nonce is used.
        let back = decode(record.id, &legacy_json(&record, &[], None)).unwrap();
        assert!(back.used(137) && !back.used(138));
        // The record of another channel is refused.
        assert!(decode(B256::ZERO, &legacy_json(&record, &[], None)).is_err());
        // A migrated record is written back in the compact codec through the book.
        let book = ChannelBook::new(Arc::new(MemoryStore::new()));
        book.store().put(CHANNELS, record.id.as_slice(), &legacy_json(&record, &served, Some(9))).unwrap();
        let read = book.get(record.id).unwrap().unwrap();
        book.put(&read).unwrap();
        let raw = book.store().get(CHANNELS, record.id.as_slice()).unwrap().unwrap();
        assert_eq!(raw[0], VERSION);
        assert_eq!(book.get(record.id).unwrap().unwrap().window, read.window);
    }

    /// The served list of earlier versions, as the model of the window: at most 128 nonces,
    /// the smallest leaving (and raising the floor) when a 129th arrives.
    #[derive(Default)]
    struct OldList {
        floor: u64,
        served: Vec<u64>,
    }

    impl OldList {
        fn serve(&mut self, nonce: u64) {
            self.served.push(nonce);
            while self.served.len() > SERVED_WINDOW {
                let (i, oldest) =
                    self.served.iter().copied().enumerate().min_by_key(|(_, n)| *n).unwrap_or_default();
                self.served.remove(i);
                self.floor = self.floor.max(oldest);
            }
        }

        fn used(&self, nonce: u64) -> bool {
            nonce <= self.floor || self.served.contains(&nonce)
        }
    }

    proptest! {
        /// For the 128 nonces below the highest one served and every nonce above, the window
        /// says exactly what the old list said (vouchers of concurrent requests arrive within
        /// a few nonces of each other). Below them it never says less: a nonce the list took
        /// as used is used in the window.
        #[test]
        fn the_window_keeps_the_old_lists_semantics(
            steps in prop::collection::vec((-40i64..8, any::<bool>()), 1..400),
            far in prop::collection::vec(0u64..2_000, 0..4),
        ) {
            let mut list = OldList::default();
            let mut window = ServedWindow::default();
            let mut top = 0u64;
            let mut served = Vec::new();
            for (delta, unserve) in steps {
                let nonce = top.saturating_add_signed(delta).max(1);
                if list.used(nonce) {
                    prop_assert!(window.contains(nonce), "nonce {} used in the list only", nonce);
                    continue;
                }
                if unserve && served.contains(&nonce) {
                    continue;
                }
                list.serve(nonce);
                window.insert(nonce);
                served.push(nonce);
                top = top.max(nonce);
            }
            for n in far {
                let nonce = top + n;
                if !list.used(nonce) {
                    list.serve(nonce);
                    window.insert(nonce);
                    top = top.max(nonce);
                }
            }
            for n in 0..top + 130 {
                if n + 128 > top {
                    prop_assert_eq!(window.contains(n), list.used(n), "nonce {}", n);
                } else if list.used(n) {
                    prop_assert!(window.contains(n), "nonce {} used in the list only", n);
                }
            }
            prop_assert!(window.contains(0));
        }
    }

    #[test]
    fn the_window_slides_and_forgets_undone_services() {
        let mut w = ServedWindow::default();
        w.insert(5);
        assert!(w.contains(5) && !w.contains(4) && !w.contains(6));
        w.insert(5 + 128);
        assert!(w.contains(5) && w.contains(133) && !w.contains(132));
        w.insert(1000);
        assert_eq!(w.floor(), 1000 - 128);
        assert!(w.contains(872) && !w.contains(873) && w.contains(1000));
        w.remove(1000);
        assert!(!w.contains(1000));
        w.insert(u64::MAX);
        assert!(w.contains(u64::MAX));
        assert_eq!(ServedWindow::from_parts(u64::MAX - 1, 2), None);
        assert!(ServedWindow::from_parts(u64::MAX - 1, 1).is_some());
    }

    #[test]
    fn the_index_follows_every_write_and_a_build_keeps_newer_writes() {
        let store = Arc::new(MemoryStore::new());
        let book = ChannelBook::new(Arc::clone(&store));
        let mut owing = ChannelRecord::new(B256::repeat_byte(1), onchain(1000));
        owing.apply(
            &x402_protocol::Voucher { channelId: owing.id, nonce: 1, cumulativeAmount: U256::from(300) },
            Bytes::from(vec![1; 65]),
            U256::from(200),
        );
        let idle = ChannelRecord::new(B256::repeat_byte(2), onchain(1000));
        book.put(&owing).unwrap();
        book.put(&idle).unwrap();
        // A second book over the same store (a restart) knows nothing until built.
        let restarted = ChannelBook::new(Arc::clone(&store));
        assert!(restarted.due().is_empty());
        // A write before the build is kept over what the build reads.
        let mut paid = owing.clone();
        paid.chain.paid = U256::from(200);
        restarted.put(&paid).unwrap();
        restarted.build_index().unwrap();
        assert!(restarted.due().is_empty(), "settled: nothing due");
        let token = owing.chain.token();
        assert_eq!(restarted.summary().unsettled.get(&token).copied().unwrap_or_default(), U256::ZERO);
        assert_eq!(restarted.summary().open, 2);
        book.build_index().unwrap();
        assert_eq!(book.due(), vec![owing.id]);
        assert_eq!(book.summary().unsettled[&token], U256::from(200));
        // A close request makes an idle channel due; a close on-chain takes it out.
        let mut closing = idle.clone();
        closing.request_close(5);
        book.put(&closing).unwrap();
        assert_eq!(book.summary().due, 2);
        assert_eq!((book.summary().open, book.summary().closing), (1, 1));
        let mut closed = closing.clone();
        closed.chain.open = false;
        closed.status = ChannelStatus::Closed;
        book.put(&closed).unwrap();
        let summary = book.summary();
        assert_eq!((summary.open, summary.closing, summary.closed, summary.due), (1, 0, 1, 1));
    }
}

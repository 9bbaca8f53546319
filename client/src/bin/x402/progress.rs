//! Progress on stderr while a transaction waits for its confirmations: on a terminal a
//! spinner with the count (`1/3 confirmations`), elsewhere one line per transaction when it is
//! sent. And the record of every transaction sent (part of the result, so scripts get the
//! hashes).

use std::{io::IsTerminal, sync::Arc, time::Duration};

use alloy::{
    primitives::TxHash,
    providers::{DynProvider, Provider},
};
use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;
use serde_json::{Value, json};
use x402_client::{TxEvent, TxObserver};

/// A transaction the command sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Tx {
    /// What it did (`approve`, `open`, ...).
    pub(crate) what: &'static str,
    /// Its hash.
    pub(crate) hash: TxHash,
    /// The block it was mined in, once confirmed.
    pub(crate) block: Option<u64>,
}

/// Watches the transactions of one command.
#[derive(Debug)]
pub(crate) struct Progress {
    /// Whether to draw (stderr is a terminal).
    draw: bool,
    spinner: Mutex<Option<ProgressBar>>,
    sent: Mutex<Vec<Tx>>,
    /// Reads the chain for the confirmation count (set once connected).
    provider: Mutex<Option<DynProvider>>,
    /// Channels opened or topped up, as JSON.
    events: Mutex<Vec<Value>>,
}

impl Progress {
    /// Draws only when stderr is a terminal: in a pipe or a log file a spinner is noise (the
    /// transactions are logged with `-v` and listed in the result).
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            draw: std::io::stderr().is_terminal(),
            spinner: Mutex::new(None),
            sent: Mutex::new(Vec::new()),
            provider: Mutex::new(None),
            events: Mutex::new(Vec::new()),
        })
    }

    /// Records a channel event (opened, topped up) for the JSON result.
    pub(crate) fn event(&self, event: Value) {
        self.events.lock().push(event);
    }

    /// The channel events, as JSON.
    pub(crate) fn events(&self) -> Value {
        Value::Array(self.events.lock().clone())
    }

    /// Counts confirmations on `provider`'s chain.
    pub(crate) fn watch(&self, provider: DynProvider) {
        *self.provider.lock() = Some(provider);
    }

    /// The observer to give the chain client.
    pub(crate) fn observer(self: &Arc<Self>) -> TxObserver {
        let this = self.clone();
        Arc::new(move |event| this.on(event))
    }

    fn on(&self, event: TxEvent) {
        match event {
            TxEvent::Sent { what, hash, confirmations } => {
                self.sent.lock().push(Tx { what, hash, block: None });
                if !self.draw {
                    let blocks = if confirmations == 1 {
                        "1 confirmation".into()
                    } else {
                        format!("{confirmations} confirmations")
                    };
                    crate::output::progress_line(&format!("tx {what} {hash} sent; waiting for {blocks}"));
                }
                if self.draw {
                    let bar = ProgressBar::new_spinner();
                    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
                        bar.set_style(style);
                    }
                    let blocks = if confirmations == 1 {
                        "1 confirmation".into()
                    } else {
                        format!("{confirmations} confirmations")
                    };
                    bar.set_message(format!("{what}: waiting for {blocks} of {hash:#}"));
                    bar.enable_steady_tick(Duration::from_millis(100));
                    if let (Some(provider), Ok(runtime)) =
                        (self.provider.lock().clone(), tokio::runtime::Handle::try_current())
                    {
                        runtime.spawn(count_confirmations(provider, bar.clone(), what, hash, confirmations));
                    }
                    if let Some(old) = self.spinner.lock().replace(bar) {
                        old.finish_and_clear();
                    }
                }
            }
            TxEvent::Confirmed { what, hash, block } => {
                if let Some(tx) = self.sent.lock().iter_mut().rev().find(|t| t.hash == hash) {
                    tx.block = Some(block);
                }
                if let Some(bar) = self.spinner.lock().take() {
                    // The spinner gives way to a line that stays, a record of the transaction
                    // (written, not left as the bar's last frame: that would leave the cursor
                    // at the end of its line, under whatever is written next).
                    bar.finish_and_clear();
                    crate::output::progress_line(&format!("✓ {what}: {hash} confirmed in block {block}"));
                }
            }
        }
    }

    /// Clears a spinner left by a transaction that failed.
    pub(crate) fn finish(&self) {
        if let Some(bar) = self.spinner.lock().take() {
            bar.finish_and_clear();
        }
    }

    /// The transactions sent so far.
    pub(crate) fn transactions(&self) -> Vec<Tx> {
        self.sent.lock().clone()
    }

    /// The transactions sent, as JSON.
    pub(crate) fn json(&self) -> Value {
        Value::Array(
            self.transactions()
                .iter()
                .map(|t| json!({ "what": t.what, "hash": t.hash, "block": t.block }))
                .collect(),
        )
    }

    /// The transactions sent, one line each (empty if none).
    pub(crate) fn text(&self) -> String {
        self.transactions()
            .iter()
            .map(|t| match t.block {
                Some(block) => format!("\n  tx {:<9}{} (block {block})", t.what, t.hash),
                None => format!("\n  tx {:<9}{} (unconfirmed)", t.what, t.hash),
            })
            .collect()
    }
}

/// Updates `bar` with the confirmations `hash` has (`1/3`) until the bar is finished.
async fn count_confirmations(
    provider: DynProvider,
    bar: ProgressBar,
    what: &'static str,
    hash: TxHash,
    wanted: u64,
) {
    while !bar.is_finished() {
        if let (Ok(Some(receipt)), Ok(head)) =
            (provider.get_transaction_receipt(hash).await, provider.get_block_number().await)
            && let Some(mined) = receipt.block_number
        {
            let have = head.saturating_sub(mined).saturating_add(1).min(wanted);
            bar.set_message(format!("{what}: {have}/{wanted} confirmations of {hash:#}"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_are_recorded_with_their_block() {
        let p = Arc::new(Progress {
            draw: false,
            spinner: Mutex::new(None),
            sent: Mutex::new(Vec::new()),
            provider: Mutex::new(None),
            events: Mutex::new(Vec::new()),
        });
        let observe = p.observer();
        let (a, b) = (TxHash::repeat_byte(1), TxHash::repeat_byte(2));
        observe(TxEvent::Sent { what: "approve", hash: a, confirmations: 1 });
        observe(TxEvent::Confirmed { what: "approve", hash: a, block: 7 });
        observe(TxEvent::Sent { what: "open", hash: b, confirmations: 2 });
        assert_eq!(
            p.transactions(),
            [Tx { what: "approve", hash: a, block: Some(7) }, Tx { what: "open", hash: b, block: None }]
        );
        assert_eq!(p.json()[0]["block"], 7);
        assert!(p.text().contains("(unconfirmed)"));
    }
}

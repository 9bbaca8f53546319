//! Everything the tool writes: the result on stdout (text, or one JSON document with
//! `--json`), everything else on stderr.
//!
//! This is the only module that writes to stdout or stderr (the workspace lints flag `print!`
//! elsewhere). It writes through locked handles rather than `println!`, so a closed pipe
//! (`x402 channels | head -1`) ends the output quietly instead of panicking.

use std::{
    fmt::Write as _,
    io::{self, Write},
};

use alloy::primitives::U256;
use serde_json::{Value, json};
use x402_client::{ChannelEvent, ChannelStatus, ClientChannel, NotCharged, Payment};

use crate::error::CliError;

/// What a command produced.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// A result: `human` as text, or `json` with `--json`.
    Report {
        /// The text form.
        human: String,
        /// The JSON form.
        json: Value,
    },
    /// An HTTP response: the body as is on stdout and `note` (the payment) on stderr, or
    /// `json` (which holds both) with `--json`.
    Body {
        /// The response body.
        body: Vec<u8>,
        /// Lines for stderr.
        note: String,
        /// The JSON form.
        json: Value,
    },
}

/// Writes results and errors in the chosen format.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Output {
    json: bool,
}

impl Output {
    pub(crate) fn new(json: bool) -> Self {
        Self { json }
    }

    /// Whether the result is a JSON document.
    pub(crate) fn is_json(&self) -> bool {
        self.json
    }

    /// Writes a command's result.
    pub(crate) fn outcome(&self, outcome: Outcome) {
        match (outcome, self.json) {
            (Outcome::Report { json, .. } | Outcome::Body { json, .. }, true) => stdout(&document(&json)),
            (Outcome::Report { human, .. }, false) => {
                if !human.is_empty() {
                    stdout(format!("{}\n", human.trim_end()).as_bytes());
                }
            }
            (Outcome::Body { body, note, .. }, false) => {
                stdout(&body);
                if !note.is_empty() {
                    stderr(&note);
                }
            }
        }
    }

    /// Writes an error: `error: …` on stderr, and with `--json` a JSON document on stdout.
    pub(crate) fn error(&self, e: &CliError) {
        let mut text = format!("error: {e}\n");
        if let Some(hint) = e.hint() {
            let _ = writeln!(text, "hint: {hint}");
        }
        stderr(&text);
        if self.json {
            stdout(&document(&error_json(e.code(), &e.to_string(), e.exit_code())));
        }
    }

    /// A line of progress or information on stderr (not part of the result).
    pub(crate) fn note(&self, line: &str) {
        stderr(&format!("{line}\n"));
    }
}

/// A usage error (or `--help` / `--version`) from clap. `json` is whether `--json` was among
/// the arguments (they could not be parsed, so the flag was looked for by hand).
pub(crate) fn clap_error(e: &clap::Error, json: bool) -> u8 {
    // clap renders help, version and errors itself, to the right stream and with colour.
    let _ = e.print();
    if e.use_stderr() && json {
        let first = e.render().to_string();
        let message = first.lines().next().unwrap_or("").trim_start_matches("error: ").to_owned();
        stdout(&document(&error_json("usage", &message, e.exit_code() as u8)));
    }
    u8::try_from(e.exit_code()).unwrap_or(2)
}

/// A line of progress on stderr, for the spinner's owner (`progress.rs`).
pub(crate) fn progress_line(line: &str) {
    stderr(&format!("{line}\n"));
}

fn error_json(code: &str, message: &str, exit_code: u8) -> Value {
    json!({ "error": { "code": code, "message": message, "exitCode": exit_code } })
}

fn document(value: &Value) -> Vec<u8> {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".into());
    text.push('\n');
    text.into_bytes()
}

fn stdout(bytes: &[u8]) {
    let mut out = io::stdout().lock();
    let _ = out.write_all(bytes).and_then(|()| out.flush());
}

fn stderr(text: &str) {
    let _ = io::stderr().lock().write_all(text.as_bytes());
}

// -----------------------------------------------------------------------------------------
// Rendering
// -----------------------------------------------------------------------------------------

/// A channel as JSON (amounts as decimal strings: they may not fit a JSON number).
pub(crate) fn channel_json(ch: &ClientChannel) -> Value {
    json!({
        "id": ch.id,
        "status": ch.status.as_str(),
        "exitAt": match ch.status { ChannelStatus::Exiting { exit_at } => Some(exit_at), _ => None },
        "deposit": ch.deposit.to_string(),
        "signed": ch.max_signed.to_string(),
        "charged": ch.spent.to_string(),
        "remaining": remaining(ch).to_string(),
        "nonce": ch.nonce,
        "chainId": ch.terms.network.chain_id,
        "contract": ch.terms.contract,
        "payee": ch.terms.payee,
        "asset": ch.terms.asset,
        "payer": ch.payer,
        "signer": ch.signer,
        "challengePeriod": ch.challenge_period,
        "node": ch.node,
        "openedAt": ch.opened_at,
    })
}

/// What is left in the channel for payments: nothing once it is closed (the rest was
/// refunded), else the deposit the node has not charged (`deposit = charged + remaining`).
fn remaining(ch: &ClientChannel) -> U256 {
    if ch.status == ChannelStatus::Closed { U256::ZERO } else { ch.remaining() }
}

/// The status column: `exiting` says when withdrawing becomes possible.
fn status_text(status: ChannelStatus) -> String {
    match status {
        ChannelStatus::Exiting { exit_at } => format!("exiting (withdraw from {})", utc(exit_at)),
        other => other.as_str().to_owned(),
    }
}

/// The channel table of `x402 channels`: `DEPOSIT = CHARGED + REMAINING` while a channel is
/// not closed; `SIGNED` is the most any voucher signed commits (at least `CHARGED`).
pub(crate) fn channel_table(channels: &[ClientChannel]) -> String {
    if channels.is_empty() {
        return "no channels".into();
    }
    const COLUMNS: usize = 9;
    let header = ["CHANNEL", "DEPOSIT", "SIGNED", "CHARGED", "REMAINING", "NONCE", "PAYEE", "NODE", "STATUS"]
        .map(str::to_owned);
    let rows: Vec<[String; COLUMNS]> = channels
        .iter()
        .map(|ch| {
            [
                ch.id.to_string(),
                ch.deposit.to_string(),
                ch.max_signed.to_string(),
                ch.spent.to_string(),
                remaining(ch).to_string(),
                ch.nonce.to_string(),
                ch.terms.payee.to_string(),
                ch.node.clone().unwrap_or_else(|| "-".into()),
                status_text(ch.status),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            // Text left-aligned, numbers right-aligned.
            let _ = match i {
                1..=5 => write!(line, "{cell:>w$}  "),
                _ => write!(line, "{cell:<w$}  "),
            };
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One channel, for `open` and `topup`.
pub(crate) fn channel_summary(verb: &str, ch: &ClientChannel) -> String {
    format!(
        "{verb} channel {id}\n  deposit    {deposit}\n  charged    {spent}\n  remaining  {remaining}\n  \
         status     {status}\n  payee      {payee}\n  token      {asset}\n  challenge  {period} s\n  node       {node}",
        id = ch.id,
        deposit = ch.deposit,
        spent = ch.spent,
        remaining = remaining(ch),
        status = status_text(ch.status),
        payee = ch.terms.payee,
        asset = ch.terms.asset,
        period = ch.challenge_period,
        node = ch.node.as_deref().unwrap_or("-"),
    )
}

/// A payment, as JSON.
pub(crate) fn payment_json(p: &Payment) -> Value {
    json!({
        "channelId": p.channel_id,
        "nonce": p.nonce,
        "charged": p.charged.to_string(),
        "totalCharged": p.total_charged.to_string(),
        "cumulativeAmount": p.cumulative_amount.to_string(),
        "deposit": p.deposit.to_string(),
        "asset": p.asset,
        "attempts": p.attempts,
    })
}

/// A payment, for stderr. "left" is always the deposit minus what the node charged in total.
pub(crate) fn payment_line(p: &Payment) -> String {
    format!(
        "paid: channel {} nonce {} charged {} total {} (deposit {}, {} left)",
        p.channel_id,
        p.nonce,
        p.charged,
        p.total_charged,
        p.deposit,
        p.deposit.saturating_sub(p.total_charged),
    )
}

/// A request whose voucher the node did not charge, for stderr.
pub(crate) fn not_charged_line(n: &NotCharged, status: reqwest::StatusCode) -> String {
    format!(
        "not charged: the server answered {status}, so the node charged nothing (channel {}: total {}, deposit {}, \
         {} left)",
        n.channel_id,
        n.total_charged,
        n.deposit,
        n.deposit.saturating_sub(n.total_charged),
    )
}

/// A request not charged, as JSON.
pub(crate) fn not_charged_json(n: &NotCharged) -> Value {
    json!({
        "channelId": n.channel_id,
        "charged": "0",
        "totalCharged": n.total_charged.to_string(),
        "deposit": n.deposit.to_string(),
    })
}

/// A channel opened or topped up, one line for stderr.
pub(crate) fn event_line(e: &ChannelEvent) -> String {
    match e {
        ChannelEvent::Opened { channel_id, payee, deposit, challenge_period, raised_from, automatic } => {
            let how = if *automatic { "opened a channel automatically" } else { "opened a channel" };
            let raised = raised_from
                .map(|asked| {
                    format!(
                        ", raised from the {asked} s asked: the provider's minimum is {challenge_period} s"
                    )
                })
                .unwrap_or_default();
            format!(
                "{how}: {channel_id} with provider {payee}, deposit {deposit}, challenge period {challenge_period} s{raised}"
            )
        }
        ChannelEvent::ToppedUp { channel_id, amount, deposit, automatic } => {
            let how = if *automatic { "topped up automatically" } else { "topped up" };
            format!("{how}: channel {channel_id} by {amount} (deposit now {deposit})")
        }
        _ => format!("{e:?}"),
    }
}

/// A channel event as JSON.
pub(crate) fn event_json(e: &ChannelEvent) -> Value {
    match e {
        ChannelEvent::Opened { channel_id, payee, deposit, challenge_period, raised_from, automatic } => {
            json!({
                "event": "opened", "channelId": channel_id, "payee": payee, "deposit": deposit.to_string(),
                "challengePeriod": challenge_period, "raisedFrom": raised_from, "automatic": automatic,
            })
        }
        ChannelEvent::ToppedUp { channel_id, amount, deposit, automatic } => json!({
            "event": "toppedUp", "channelId": channel_id, "amount": amount.to_string(),
            "deposit": deposit.to_string(), "automatic": automatic,
        }),
        _ => json!({ "event": "other" }),
    }
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub(crate) fn utc(unix: u64) -> String {
    let days = i64::try_from(unix / 86_400).unwrap_or(i64::MAX / 2);
    let secs = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", secs / 3600, secs / 60 % 60, secs % 60)
}

/// A duration in seconds as `1h 2m 3s`.
pub(crate) fn duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s}s"),
        _ => format!("{h}h {m}m {s}s"),
    }
}

#[cfg(test)]
mod tests {
    use alloy::primitives::{Address, B256};
    use x402_client::ChannelTerms;
    use x402_protocol::Network;

    use super::*;

    #[test]
    fn dates_and_durations() {
        for (unix, want) in [
            (0, "1970-01-01 00:00:00 UTC"),
            (951_782_400, "2000-02-29 00:00:00 UTC"),
            (1_700_000_000, "2023-11-14 22:13:20 UTC"),
            (4_102_444_799, "2099-12-31 23:59:59 UTC"),
        ] {
            assert_eq!(utc(unix), want);
        }
        for (secs, want) in [(0, "0s"), (59, "59s"), (61, "1m 1s"), (3600, "1h 0m 0s"), (90_061, "25h 1m 1s")]
        {
            assert_eq!(duration(secs), want);
        }
    }

    #[test]
    fn the_channel_table_aligns_and_says_when_an_exit_ends() {
        let terms = ChannelTerms {
            network: Network::new(1),
            contract: Address::ZERO,
            payee: Address::ZERO,
            asset: Address::ZERO,
        };
        let mut a = ClientChannel::new(
            B256::repeat_byte(1),
            terms,
            Address::ZERO,
            Address::ZERO,
            3600,
            U256::from(50_000),
            None,
            0,
        );
        a.next_voucher(U256::from(1000)).unwrap();
        a.spent = U256::from(1000);
        let mut b = a.clone();
        b.id = B256::repeat_byte(2);
        b.status = ChannelStatus::Exiting { exit_at: 0 };
        let table = channel_table(&[a.clone(), b]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("CHANNEL "));
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        let payee = Address::ZERO.to_string();
        assert_eq!(
            cells,
            [a.id.to_string().as_str(), "50000", "1000", "1000", "49000", "1", &payee, "-", "open"]
        );
        assert!(lines[2].ends_with("exiting (withdraw from 1970-01-01 00:00:00 UTC)"), "{}", lines[2]);
        assert_eq!(channel_table(&[]), "no channels");
        let json = channel_json(&a);
        assert_eq!((json["deposit"].as_str(), json["remaining"].as_str()), (Some("50000"), Some("49000")));
        assert!(json["exitAt"].is_null());
    }
}

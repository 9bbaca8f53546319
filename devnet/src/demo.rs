//! The story `scripts/demo` tells, end to end on a fresh anvil:
//!
//! 1. Alice opens a channel and makes a few hundred paid requests through the provider's
//!    `x402-node` gateway (the client SDK pays every 402 by itself);
//! 2. Bob does the same, a few dozen times;
//! 3. the provider's node batch-settles both channels in one `settleMany`
//!    (`POST /admin/settle?force=true`);
//! 4. Alice closes cooperatively (`POST /x402/close`): the node's settler closes her channel in
//!    a `closeMany` and refunds the rest of her deposit;
//! 5. Bob pays for a few more requests, and the node pushes his vouchers to a watcher;
//! 6. the provider's node goes offline;
//! 7. Bob exits unilaterally; the watcher settles his latest voucher within the challenge
//!    period;
//! 8. the chain's clock is moved past the challenge period and Bob withdraws the rest.
//!
//! It then prints the balances before and after, the gas of every transaction from its
//! receipt, and the gas per paid request overall, and checks that everything adds up to the
//! unit. Everything it starts is stopped and its temporary directory removed, also when it
//! fails.

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::Instant,
};

use alloy::{
    primitives::{Address, B256, U256},
    providers::Provider,
    signers::local::PrivateKeySigner,
};
use x402_client::{Client, DepositPolicy, Payment};
use x402_node::config::WatcherTarget;
use x402_protocol::{
    bindings::IPaymentChannel,
    close::{CLOSE_PATH, CloseRequestBody, CloseResponse},
};

use crate::{
    Artifacts, Devnet, Error, Gateway, ITestStablecoin, PRICE, Result, Runner, TOKEN_UNIT, Watchtower,
    ledger::{self, Step},
    sample_api, wait_for,
};

/// The watcher's bearer token in the demo (a test value).
const WATCHER_TOKEN: &str = "demo-watcher-token-0123456789";

/// What the demo does.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// How the gateway and the watcher run.
    pub runner: Runner,
    /// Where the contracts' forge artifacts are.
    pub artifacts: Artifacts,
    /// The anvil binary (default: the project's npm-installed Foundry).
    pub anvil_path: Option<PathBuf>,
    /// Alice's paid requests. Default 300.
    pub alice_requests: u64,
    /// Bob's paid requests before the batch settlement, and after it. Default 30 and 20.
    pub bob_requests: (u64, u64),
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            runner: Runner::InProcess,
            artifacts: Artifacts::default(),
            anvil_path: None,
            alice_requests: 300,
            bob_requests: (30, 20),
        }
    }
}

/// A party's token balance before and after the story.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Party {
    /// Its name in the story.
    pub name: &'static str,
    /// Its address.
    pub address: Address,
    /// Its test-stablecoin balance before the story.
    pub before: U256,
    /// And after it.
    pub after: U256,
}

/// What a paying client did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientOutcome {
    /// Its balances.
    pub party: Party,
    /// Its channel.
    pub channel: B256,
    /// Paid requests.
    pub requests: u64,
    /// What the node charged for them in total.
    pub charged: U256,
    /// The channel's deposit.
    pub deposit: U256,
    /// What came back when the channel ended.
    pub refund: U256,
}

/// What happened, for the caller to check.
#[derive(Clone, Debug)]
pub struct DemoOutcome {
    /// The provider's balances.
    pub provider: Party,
    /// Alice, who closed cooperatively.
    pub alice: ClientOutcome,
    /// Bob, who exited while the provider was offline.
    pub bob: ClientOutcome,
    /// The watcher's account (it pays the gas of its settlement).
    pub watcher: Address,
    /// Every transaction of the story, from the receipts.
    pub steps: Vec<Step>,
    /// The watcher's settlement of Bob's latest voucher.
    pub watcher_settlement: Option<Step>,
    /// What the channel contract holds at the end (nothing: both channels are closed).
    pub contract_balance: U256,
    /// What one ERC-20 transfer would cost instead (`eth_estimateGas`).
    pub transfer_gas: u64,
    /// anvil's process id (no longer running when the story returns).
    pub anvil_pid: u32,
    /// The temporary directory of the stores, keys and logs (removed when the story returns).
    pub work_dir: PathBuf,
}

impl DemoOutcome {
    /// Paid requests in all.
    pub fn requests(&self) -> u64 {
        self.alice.requests + self.bob.requests
    }

    /// The gas of every transaction of the story.
    pub fn total_gas(&self) -> u64 {
        self.steps.iter().map(|s| s.gas_used).sum()
    }
}

/// Runs the story, telling it on `out`.
pub async fn run(options: &DemoOptions, out: &mut (dyn Write + Send)) -> Result<DemoOutcome> {
    let work =
        tempfile::Builder::new().prefix("x402-demo-").tempdir().map_err(Error::io(std::env::temp_dir()))?;
    let mut devnet = Devnet::builder().artifacts(options.artifacts.clone()).funds(U256::ZERO);
    if let Some(path) = &options.anvil_path {
        devnet = devnet.anvil_path(path);
    }
    let devnet = devnet.start().await?;
    let anvil_pid = devnet.anvil.child().id();
    let outcome = story(&devnet, options, work.path(), out).await?;
    drop(devnet);
    let work_dir = work.path().to_path_buf();
    work.close().map_err(Error::io(&work_dir))?;
    #[cfg(target_os = "linux")]
    if Path::new(&format!("/proc/{anvil_pid}")).exists() {
        return Err(Error::Demo(format!("anvil (pid {anvil_pid}) is still running")));
    }
    say(
        out,
        format_args!(
            "Cleaned up: anvil (pid {anvil_pid}), the gateway and the watcher stopped; {} removed.",
            work_dir.display()
        ),
    )?;
    Ok(outcome)
}

/// Everything between starting anvil and stopping it.
async fn story(
    devnet: &Devnet,
    options: &DemoOptions,
    dir: &Path,
    out: &mut (dyn Write + Send),
) -> Result<DemoOutcome> {
    let provider = devnet.provider_key.address();
    let watcher_key = devnet.account(3);
    let (alice_key, bob_key) = (PrivateKeySigner::random(), PrivateKeySigner::random());
    let funds = U256::from(10 * TOKEN_UNIT);
    for who in [alice_key.address(), bob_key.address()] {
        devnet.fund(who, U256::from(10u64).pow(U256::from(18)), funds).await?;
    }

    // The provider: a watcher, and the gateway in front of a sample API, pushing to it.
    let api = sample_api().await?;
    let watcher_config = devnet.watcher_config(&dir.join("watcher-data"), WATCHER_TOKEN)?;
    let watcher = Watchtower::run(&options.runner, watcher_config, watcher_key.clone(), dir).await?;
    let mut config = devnet.node_config(&format!("http://{api}"), dir)?;
    // Rounds only when asked for (or woken by a close request), so that the story decides.
    config.settlement.interval_secs = 3600;
    config.watchers.push(WatcherTarget {
        url: watcher.url().into(),
        token: WATCHER_TOKEN.into(),
        every: 1,
        interval_secs: 1,
    });
    let gateway = Gateway::run(&options.runner, config, dir).await?;

    say(out, format_args!("x402 Channels demo\n"))?;
    say(
        out,
        format_args!(
            "anvil      {} (chain {}, pid {}), mining each transaction as it arrives",
            devnet.rpc_url(),
            devnet.chain_id(),
            devnet.anvil.child().id()
        ),
    )?;
    say(
        out,
        format_args!(
            "contracts  PaymentChannel {}, TestStablecoin {} (tUSD, 6 decimals)",
            devnet.contract, devnet.token
        ),
    )?;
    say(
        out,
        format_args!(
            "provider   {provider} (anvil account 0): GET /weather of a sample API at {} tUSD a request",
            units(U256::from(PRICE))
        ),
    )?;
    say(out, format_args!("gateway    {}", how(&options.runner, "run --config node.toml", gateway.pid())))?;
    say(
        out,
        format_args!(
            "watcher    {}, paying gas from {} (anvil account 3)",
            how(&options.runner, "watch", watcher.pid()),
            watcher_key.address()
        ),
    )?;
    say(
        out,
        format_args!(
            "clients    alice {}, bob {}: fresh keys, given 1 ETH and {} tUSD each\n",
            alice_key.address(),
            bob_key.address(),
            units(funds)
        ),
    )?;

    let balance = |who: Address| devnet.balance(who);
    let before =
        (balance(provider).await?, balance(alice_key.address()).await?, balance(bob_key.address()).await?);
    let first_block = block_number(devnet).await? + 1;
    let url = format!("{}/weather", gateway.url());

    // 1. Alice pays per request.
    let alice = devnet
        .client_builder(alice_key.clone())
        .deposit_policy(DepositPolicy { requests: 500, ..DepositPolicy::default() })
        .build()
        .await?;
    let started = Instant::now();
    let paid = pay(&alice, &url, options.alice_requests).await?;
    let secs = started.elapsed().as_secs_f64();
    let alice_channel = paid.channel_id;
    let alice_deposit = paid.deposit;
    let alice_charged = paid.total_charged;
    say(
        out,
        format_args!(
            "1. Alice opens a channel with {} tUSD and makes {} paid requests in {secs:.1} s ({:.0}/s): charged {}",
            units(alice_deposit),
            options.alice_requests,
            options.alice_requests as f64 / secs.max(1e-3),
            units(alice_charged)
        ),
    )?;

    // 2. Bob pays per request.
    let bob = devnet
        .client_builder(bob_key.clone())
        .deposit_policy(DepositPolicy { requests: 100, ..DepositPolicy::default() })
        .build()
        .await?;
    let paid = pay(&bob, &url, options.bob_requests.0).await?;
    let bob_channel = paid.channel_id;
    let bob_deposit = paid.deposit;
    say(
        out,
        format_args!(
            "2. Bob opens a channel with {} tUSD and makes {} paid requests: charged {}",
            units(bob_deposit),
            options.bob_requests.0,
            units(paid.total_charged)
        ),
    )?;

    // 3. The provider's node settles both in one batch.
    let report = gateway.settle(true).await?;
    let batches = report["batches"].as_array().cloned().unwrap_or_default();
    let described: Vec<String> = batches
        .iter()
        .map(|b| {
            let n = b["applied"].as_array().map_or(0, Vec::len);
            format!(
                "{}Many of {n} channel{}",
                b["kind"].as_str().unwrap_or("?"),
                if n == 1 { "" } else { "s" }
            )
        })
        .collect();
    let settled = U256::from(devnet.channel(alice_channel).await?.paid)
        + U256::from(devnet.channel(bob_channel).await?.paid);
    if settled != alice_charged + paid.total_charged {
        return Err(Error::Demo(format!(
            "the batch settled {settled}, not the {} charged",
            alice_charged + paid.total_charged
        )));
    }
    say(
        out,
        format_args!(
            "3. The provider's node batch-settles (POST /admin/settle?force=true): {} in one transaction, {} tUSD",
            described.join(", "),
            units(settled)
        ),
    )?;

    // 4. Alice closes cooperatively: the node's settler closes her channel.
    let answer = request_close(devnet, &gateway, &alice_key, alice_channel).await?;
    wait_for(30, "the node's settler to close Alice's channel", || async {
        devnet.channel(alice_channel).await.is_ok_and(|c| c.status == IPaymentChannel::Status::Closed)
    })
    .await?;
    alice.refresh(alice_channel).await?;
    if answer.final_amount != alice_charged {
        return Err(Error::Demo(format!(
            "the node closes Alice's channel at {}, but charged {alice_charged}",
            answer.final_amount
        )));
    }
    say(
        out,
        format_args!(
            "4. Alice closes cooperatively (POST /x402/close): the node's settler closes her channel in a closeMany, refunding {} tUSD",
            units(answer.refund)
        ),
    )?;

    // 5. Bob pays for more; the node pushes every voucher to the watcher.
    let paid = pay(&bob, &url, options.bob_requests.1).await?;
    let bob_charged = paid.total_charged;
    let latest = paid.nonce;
    wait_for(30, "the watcher to hold Bob's latest voucher", || async {
        watcher
            .channels(WATCHER_TOKEN)
            .await
            .is_ok_and(|list| list.iter().any(|c| c.channel_id == bob_channel && c.nonce == latest))
    })
    .await?;
    say(
        out,
        format_args!(
            "5. Bob makes {} more paid requests; the node pushes each voucher to the watcher, which holds nonce {latest} ({} tUSD)",
            options.bob_requests.1,
            units(bob_charged)
        ),
    )?;

    // 6. The provider goes offline.
    gateway.stop().await?;
    say(out, format_args!("6. The provider's node goes offline (stopped)"))?;

    // 7. Bob exits; the watcher answers with his latest voucher.
    let exit_at = bob.exit(bob_channel).await?;
    let period = exit_at.saturating_sub(devnet.now().await?);
    wait_for(60, "the watcher to settle Bob's latest voucher", || async {
        devnet.channel(bob_channel).await.is_ok_and(|c| U256::from(c.paid) == bob_charged)
    })
    .await?;
    let pushed = watcher.channels(WATCHER_TOKEN).await?;
    let watcher_tx = pushed.iter().find(|c| c.channel_id == bob_channel).and_then(|c| c.last_tx);
    say(
        out,
        format_args!(
            "7. Bob exits unilaterally (requestExit, challenge period {period} s); the watcher settles his latest voucher (nonce {latest}) on-chain{}",
            watcher_tx.map(|tx| format!(", tx {tx}")).unwrap_or_default()
        ),
    )?;

    // 8. The challenge period passes; Bob withdraws.
    let now = devnet.now().await?;
    devnet.increase_time(exit_at.saturating_sub(now) + 1).await?;
    let bob_refund = bob.withdraw(bob_channel).await?;
    say(
        out,
        format_args!(
            "8. Time passes (evm_increaseTime {} s); Bob withdraws the rest: {} tUSD\n",
            exit_at.saturating_sub(now) + 1,
            units(bob_refund)
        ),
    )?;
    watcher.stop().await?;

    // The accounts.
    let after =
        (balance(provider).await?, balance(alice_key.address()).await?, balance(bob_key.address()).await?);
    let party = |name, address, before, after| Party { name, address, before, after };
    let provider_party = party("provider", provider, before.0, after.0);
    let alice = ClientOutcome {
        party: party("alice", alice_key.address(), before.1, after.1),
        channel: alice_channel,
        requests: options.alice_requests,
        charged: alice_charged,
        deposit: alice_deposit,
        refund: answer.refund,
    };
    let bob = ClientOutcome {
        party: party("bob", bob_key.address(), before.2, after.2),
        channel: bob_channel,
        requests: options.bob_requests.0 + options.bob_requests.1,
        charged: bob_charged,
        deposit: bob_deposit,
        refund: bob_refund,
    };
    let steps =
        ledger::steps(&devnet.chain, first_block, block_number(devnet).await?, devnet.contract, devnet.token)
            .await?;
    let watcher_settlement = steps
        .iter()
        .find(|s| s.from == watcher_key.address() && s.what.starts_with("settle") && s.success)
        .cloned();
    let transfer_gas = ITestStablecoin::new(devnet.token, devnet.provider(alice_key.clone()))
        .transfer(provider, U256::from(PRICE))
        .estimate_gas()
        .await
        .map_err(|e| Error::chain("estimate a transfer", e))?;
    let outcome = DemoOutcome {
        provider: provider_party,
        alice,
        bob,
        watcher: watcher_key.address(),
        steps,
        watcher_settlement,
        contract_balance: devnet.balance(devnet.contract).await?,
        transfer_gas,
        anvil_pid: devnet.anvil.child().id(),
        work_dir: dir.to_path_buf(),
    };
    tell_accounts(&outcome, out)?;
    check(&outcome)?;
    say(
        out,
        format_args!(
            "Everything adds up: the provider received exactly what was charged, each client got back its deposit minus what it spent, and the watcher settled Bob's channel while the node was offline."
        ),
    )?;
    Ok(outcome)
}

/// `n` paid `GET url` requests; the last payment.
async fn pay(client: &Client, url: &str, n: u64) -> Result<Payment> {
    let mut last = None;
    for i in 1..=n {
        let what = format!("paid request {i} of {n}");
        let resp = client.http().get(url).send().await.map_err(|e| Error::http(&what, e))?;
        if !resp.status().is_success() {
            return Err(Error::http(what, resp.status()));
        }
        last = resp.extensions().get::<Payment>().cloned();
    }
    last.ok_or_else(|| Error::Demo(format!("no payment in {n} requests")))
}

/// Asks the gateway for a cooperative close of `channel`, signed by `key`.
async fn request_close(
    devnet: &Devnet,
    gateway: &Gateway,
    key: &PrivateKeySigner,
    channel: B256,
) -> Result<CloseResponse> {
    let what = format!("POST {CLOSE_PATH}");
    let deadline = devnet.now().await? + 300;
    let body = CloseRequestBody::sign(&devnet.domain(), key, channel, deadline)
        .map_err(|e| Error::Demo(format!("cannot sign a close request: {e}")))?;
    let resp = reqwest::Client::new()
        .post(format!("{}{CLOSE_PATH}", gateway.url()))
        .json(&body)
        .send()
        .await
        .map_err(|e| Error::http(&what, e))?;
    if !resp.status().is_success() {
        let status = resp.status();
        return Err(Error::http(what, format!("{status}: {}", resp.text().await.unwrap_or_default())));
    }
    resp.json().await.map_err(|e| Error::http(what, e))
}

/// Prints the balances and the gas ledger.
fn tell_accounts(o: &DemoOutcome, out: &mut (dyn Write + Send)) -> Result<()> {
    say(out, format_args!("Balances (tUSD)        before        after       change"))?;
    let change = |p: &Party| {
        if p.after >= p.before {
            format!("+{}", units(p.after - p.before))
        } else {
            format!("-{}", units(p.before - p.after))
        }
    };
    let client = |c: &ClientOutcome| {
        let note =
            format!("= {} requests (deposit {}, refund {})", c.requests, units(c.deposit), units(c.refund));
        (c.party.clone(), note)
    };
    let rows = [
        (o.provider.clone(), format!("= {} requests at {}", o.requests(), units(U256::from(PRICE)))),
        client(&o.alice),
        client(&o.bob),
    ];
    for (p, note) in rows {
        say(
            out,
            format_args!(
                "  {:<10} {:>14} {:>12} {:>12}   {note}",
                p.name,
                units(p.before),
                units(p.after),
                change(&p)
            ),
        )?;
    }
    let name = |who: Address| {
        if who == o.provider.address {
            "provider"
        } else if who == o.alice.party.address {
            "alice"
        } else if who == o.bob.party.address {
            "bob"
        } else if who == o.watcher {
            "watcher"
        } else {
            "other"
        }
    };
    say(
        out,
        format_args!(
            "\nOn-chain steps (gas from the receipts)\n  block  sender     call                          gas"
        ),
    )?;
    for s in &o.steps {
        let failed = if s.success { "" } else { "  (reverted)" };
        say(
            out,
            format_args!(
                "  {:>5}  {:<10} {:<24} {:>9}{failed}",
                s.block,
                name(s.from),
                s.what,
                gas(s.gas_used)
            ),
        )?;
    }
    say(out, format_args!("  {:<42} {:>9}\n", "total", gas(o.total_gas())))?;
    let per_request = o.total_gas() as f64 / o.requests().max(1) as f64;
    say(
        out,
        format_args!(
            "{} paid requests, {} transactions: {} gas per paid request overall; one ERC-20 transfer per request would cost {} gas each ({:.0}x more).\n",
            o.requests(),
            o.steps.len(),
            gas(per_request.round() as u64),
            gas(o.transfer_gas),
            o.transfer_gas as f64 / per_request.max(1.0)
        ),
    )
}

/// The story's own checks: every balance to the unit.
fn check(o: &DemoOutcome) -> Result<()> {
    let fail = |what: String| Err(Error::Demo(what));
    let earned = o.provider.after.saturating_sub(o.provider.before);
    if o.provider.after < o.provider.before || earned != o.alice.charged + o.bob.charged {
        return fail(format!(
            "the provider earned {earned}, but {} was charged",
            o.alice.charged + o.bob.charged
        ));
    }
    for c in [&o.alice, &o.bob] {
        let p = &c.party;
        if p.after + c.charged != p.before || c.refund + c.charged != c.deposit {
            return fail(format!(
                "{} went from {} to {} with {} charged (deposit {}, refund {})",
                p.name, p.before, p.after, c.charged, c.deposit, c.refund
            ));
        }
        if c.charged != U256::from(c.requests * PRICE) {
            return fail(format!("{} was charged {} for {} requests", p.name, c.charged, c.requests));
        }
    }
    if o.watcher_settlement.is_none() {
        return fail("the watcher did not settle Bob's channel".into());
    }
    if !o.contract_balance.is_zero() {
        return fail(format!("the channel contract still holds {}", o.contract_balance));
    }
    Ok(())
}

/// How a service runs, for the story.
fn how(runner: &Runner, args: &str, pid: Option<u32>) -> String {
    match (runner, pid) {
        (Runner::Binary(bin), Some(pid)) => {
            let name =
                bin.file_name().map_or_else(|| bin.display().to_string(), |n| n.to_string_lossy().into());
            format!("{name} {args} (a process, pid {pid})")
        }
        _ => "in this process (x402-node's library code, as the binary runs it)".into(),
    }
}

async fn block_number(devnet: &Devnet) -> Result<u64> {
    devnet.chain.get_block_number().await.map_err(|e| Error::chain("eth_blockNumber", e))
}

fn say(out: &mut (dyn Write + Send), line: std::fmt::Arguments<'_>) -> Result<()> {
    writeln!(out, "{line}").and_then(|()| out.flush()).map_err(Error::Output)
}

/// `amount` base units of a 6-decimals token, as `1.234567`.
pub fn units(amount: U256) -> String {
    let unit = U256::from(TOKEN_UNIT);
    format!("{}.{:06}", amount / unit, (amount % unit).to::<u64>())
}

/// `n` with thousands separators.
pub fn gas(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_formatted() {
        assert_eq!(units(U256::from(350_000)), "0.350000");
        assert_eq!(units(U256::from(10 * TOKEN_UNIT + 1)), "10.000001");
        for (n, text) in
            [(0, "0"), (999, "999"), (1_000, "1,000"), (159_125, "159,125"), (5_388_820, "5,388,820")]
        {
            assert_eq!(gas(n), text);
        }
    }
}

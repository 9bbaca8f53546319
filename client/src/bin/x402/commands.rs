//! The subcommands, each a thin call into `x402_client` that returns its [`Outcome`].

use std::{io::Read, path::PathBuf, sync::Arc, time::Duration};

use alloy::{
    primitives::{Address, B256, U256},
    signers::local::PrivateKeySigner,
    sol,
};
use reqwest::{Method, Request};
use serde_json::json;
use x402_client::{
    ChainClient, ChannelEvent, ChannelStatus, Client, ClientChannel, Error, GaslessKind, NotCharged, Payment,
    Relayer, Settings, StateStore,
};

use crate::{
    args::{AmountText, ChannelRef, Cli, Command, GetArgs, KeyArgs, RequestArgs, find_channel},
    config::Config,
    error::CliError,
    keys::{self, ProcessEnv, Terminal},
    output::{self, Outcome, Output},
    progress::Progress,
};

/// How long to wait for a TCP connection to a node before calling it unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the command. Every [`Client`] is dropped before this returns, which flushes the state
/// store.
pub(crate) async fn run(cli: Cli, out: Output, progress: Arc<Progress>) -> Result<Outcome, CliError> {
    let settings = cli.settings();
    let config = Config::resolve(
        &settings,
        std::env::var_os("HOME").map(PathBuf::from),
        std::env::var("ETH_RPC_URL").ok(),
    )?;
    tracing::debug!(target: "x402::cli", rpc = %config.rpc_url, state = %config.state_dir().display(), "configuration");
    let ctx = Ctx { config, progress, out };
    let (job, keys, pin) = match cli.command {
        Command::Config { .. } => return ctx.show_config(),
        Command::Channels { refresh, .. } => return ctx.channels(refresh).await,
        Command::Quote { url, .. } => return ctx.quote(&http_url(&url)?).await,
        Command::Balance { url, token, contract, keys, .. } => {
            let url = url.as_deref().map(http_url).transpose()?;
            let payer = keys::payer(&keys, &ProcessEnv, &Terminal)?;
            return ctx.balance(payer, url, token, contract).await;
        }
        // Everything the user gave (URL, body, then the keys) is checked before anything is
        // contacted.
        command => Job::from(command)?,
    };
    let payer = keys::payer(&keys, &ProcessEnv, &Terminal)?;
    let session = keys::session(&keys, &ProcessEnv)?;
    let address = payer.address();
    let pinned = match &pin {
        Some(text) => Some(ctx.channel_id(text)?),
        None => None,
    };
    let client = ctx.client(payer, session, pinned).await.map_err(|e| e.with_payer(address))?;
    let result = match job {
        Job::Request { request, fail } => ctx.request(&client, request, fail).await,
        Job::Open { url, deposit, node, gasless, relay } => {
            ctx.open(&client, &url, deposit, node, gasless, relay).await
        }
        Job::Topup { channel, amount } => match ctx.resolve_id(&client, &channel).await {
            Ok(id) => ctx.top_up(&client, id, amount).await,
            Err(e) => Err(e),
        },
        Job::Close { channel, node } => match ctx.resolve_id(&client, &channel).await {
            Ok(id) => ctx.close(&client, id, node.as_deref()).await,
            Err(e) => Err(e),
        },
        Job::Exit { channel } => match ctx.resolve_id(&client, &channel).await {
            Ok(id) => ctx.exit(&client, id).await,
            Err(e) => Err(e),
        },
        Job::Withdraw { channel } => match ctx.resolve_id(&client, &channel).await {
            Ok(id) => ctx.withdraw(&client, id).await,
            Err(e) => Err(e),
        },
    };
    result.map_err(|e| e.with_payer(address))
}

/// A command that needs the key and the chain, its input checked.
#[derive(Debug)]
enum Job {
    Request {
        request: Request,
        fail: bool,
    },
    Open {
        url: url::Url,
        deposit: Option<AmountText>,
        node: Option<String>,
        gasless: Option<GaslessKind>,
        relay: Option<String>,
    },
    Topup {
        channel: String,
        amount: AmountText,
    },
    Close {
        channel: String,
        node: Option<String>,
    },
    Exit {
        channel: String,
    },
    Withdraw {
        channel: String,
    },
}

impl Job {
    /// The job, the key sources, and the channel `--channel` named.
    fn from(command: Command) -> Result<(Self, KeyArgs, Option<String>), CliError> {
        Ok(match command {
            Command::Get(args) => {
                let request = build_request(&args, None, None)?;
                (Self::Request { request, fail: args.fail }, args.common.keys, args.pay.channel)
            }
            Command::Request(RequestArgs { get, method, data }) => {
                let request = build_request(&get, method, data.as_deref())?;
                (Self::Request { request, fail: get.fail }, get.common.keys, get.pay.channel)
            }
            Command::Open { url, deposit, node, gasless, relay, common, .. } => (
                Self::Open {
                    url: http_url(&url)?,
                    deposit,
                    node: node
                        .map(|n| http_url(&n).map(|u| u.as_str().trim_end_matches('/').to_owned()))
                        .transpose()?,
                    gasless: gasless.map(GaslessKind::from),
                    relay: relay
                        .map(|r| http_url(&r).map(|u| u.as_str().trim_end_matches('/').to_owned()))
                        .transpose()?,
                },
                common.keys,
                None,
            ),
            Command::Topup { channel, amount, common, .. } => {
                (Self::Topup { channel, amount }, common.keys, None)
            }
            Command::Close { channel, node, common } => (Self::Close { channel, node }, common.keys, None),
            Command::Exit { channel, common } => (Self::Exit { channel }, common.keys, None),
            Command::Withdraw { channel, common } => (Self::Withdraw { channel }, common.keys, None),
            Command::Config { .. }
            | Command::Channels { .. }
            | Command::Quote { .. }
            | Command::Balance { .. } => {
                return Err(CliError::Other("this command needs no chain connection".into()));
            }
        })
    }
}

/// The HTTP request of `get` / `request`.
fn build_request(args: &GetArgs, method: Option<Method>, data: Option<&str>) -> Result<Request, CliError> {
    let url = http_url(&args.url)?;
    let body = data.map(read_data).transpose()?;
    let method = method.unwrap_or(if body.is_some() { Method::POST } else { Method::GET });
    let mut request = Request::new(method, url);
    for (name, value) in &args.headers {
        request.headers_mut().append(name.clone(), value.clone());
    }
    if let Some(body) = body {
        *request.body_mut() = Some(body.into());
    }
    Ok(request)
}

sol! {
    /// ERC-20's optional metadata.
    #[sol(rpc)]
    interface IERC20Metadata {
        function decimals() external view returns (uint8);
        function symbol() external view returns (string);
    }
}

/// What every command needs.
struct Ctx {
    config: Config,
    progress: Arc<Progress>,
    out: Output,
}

impl Ctx {
    /// Connects to the RPC endpoint, telling apart an endpoint that is not there from one that
    /// is not a chain (a gateway's URL given as the RPC URL answers, but not JSON-RPC).
    async fn connect(&self, key: PrivateKeySigner) -> Result<ChainClient, CliError> {
        let c = &self.config;
        let chain = match ChainClient::connect(&c.rpc_url, key).await {
            Ok(chain) => chain,
            Err(Error::Chain(message)) => {
                return Err(CliError::RpcUnreachable(self.probe_rpc(&message).await));
            }
            Err(other) => return Err(other.into()),
        };
        let chain = chain
            .with_confirmations(c.confirmations)
            .with_receipt_timeout(Duration::from_secs(c.timeout.max(1)))
            .with_auto_approve(c.auto_approve)
            .with_observer(self.progress.observer());
        self.progress.watch(chain.provider().clone());
        tracing::debug!(target: "x402::cli", chain_id = chain.chain_id(), payer = %chain.payer(), "connected");
        Ok(chain)
    }

    /// Why the RPC endpoint did not answer `eth_chainId`, in words.
    async fn probe_rpc(&self, fallback: &str) -> String {
        let url = &self.config.rpc_url;
        let http = reqwest::Client::builder().timeout(CONNECT_TIMEOUT).build().unwrap_or_default();
        let body = json!({ "jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": [] });
        match http.post(url).json(&body).send().await {
            Err(e) => format!("cannot reach the RPC endpoint {url}: {}", x402_client::transport_reason(&e)),
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                let json_rpc = serde_json::from_str::<serde_json::Value>(&text)
                    .is_ok_and(|v| v.get("jsonrpc").is_some());
                if json_rpc {
                    // An Ethereum node that refused: its own words.
                    format!("the RPC endpoint {url} did not give its chain id: {}", first_line(fallback))
                } else {
                    format!(
                        "{url} is not a JSON-RPC endpoint (it answered HTTP {status} without a JSON-RPC reply); \
                         is it the gateway's or an API's URL? --rpc-url takes the chain's RPC URL"
                    )
                }
            }
        }
    }

    /// Connects to the chain and opens the state.
    async fn client(
        &self,
        payer: PrivateKeySigner,
        session: Option<PrivateKeySigner>,
        pinned: Option<B256>,
    ) -> Result<Client, CliError> {
        let c = &self.config;
        let chain = self.connect(payer.clone()).await?;
        let out = self.out;
        let json = self.out.is_json();
        let events = self.progress.clone();
        let mut builder = Client::builder(payer)
            .chain(chain)
            .limits(c.limits())
            .deposit_policy(c.deposit_policy())
            .settings(Settings { credit_window: c.credit_window, ..Settings::default() })
            .state_dir(c.state_dir())
            .http_client(http_client()?)
            .on_event(Arc::new(move |e: &ChannelEvent| {
                events.event(output::event_json(e));
                if !json {
                    out.note(&output::event_line(e));
                }
            }));
        if let Some(session) = session {
            builder = builder.session_key(session);
        }
        if let Some(id) = pinned {
            builder = builder.channel(id);
        }
        Ok(builder.build().await?)
    }

    /// The channel `text` names (an id or a unique prefix) among those of the state.
    fn channel_id(&self, text: &str) -> Result<B256, CliError> {
        let dir = self.config.state_dir();
        let ids: Vec<B256> = if dir.exists() {
            StateStore::open(dir)?.channels()?.iter().map(|ch| ch.id).collect()
        } else {
            Vec::new()
        };
        lookup(text, &ids)
    }

    /// As [`Self::channel_id`], with the state the client holds open.
    async fn resolve_id(&self, client: &Client, text: &str) -> Result<B256, CliError> {
        let ids: Vec<B256> = client.channels().await.iter().map(|ch| ch.id).collect();
        lookup(text, &ids)
    }

    fn show_config(&self) -> Result<Outcome, CliError> {
        let human = toml::to_string_pretty(&self.config).map_err(|e| CliError::Other(e.to_string()))?;
        let json = serde_json::to_value(&self.config).map_err(|e| CliError::Other(e.to_string()))?;
        Ok(Outcome::Report { human, json })
    }

    async fn channels(&self, refresh: bool) -> Result<Outcome, CliError> {
        let mut channels = if refresh {
            // Refreshing only reads the chain: a throwaway signer stands in for the key, so
            // listing never needs it.
            let chain = self.connect(PrivateKeySigner::random()).await?;
            let client = Client::builder(PrivateKeySigner::random())
                .chain(chain)
                .limits(self.config.limits())
                .state_dir(self.config.state_dir())
                .inspect_only()
                .build()
                .await?;
            for ch in client.channels().await {
                if ch.status == ChannelStatus::Closed {
                    continue;
                }
                match client.refresh(ch.id).await {
                    Ok(_) => {}
                    Err(Error::WrongNetwork { .. }) => {
                        self.out.note(&format!(
                            "channel {} not refreshed: it is on chain {}, the RPC endpoint on another",
                            ch.id, ch.terms.network.chain_id
                        ));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            client.channels().await
        } else {
            let dir = self.config.state_dir();
            if dir.exists() { StateStore::open(dir)?.channels()? } else { Vec::new() }
        };
        channels.sort_by_key(|ch| (ch.opened_at, ch.id));
        let json = json!({ "channels": channels.iter().map(output::channel_json).collect::<Vec<_>>() });
        Ok(Outcome::Report { human: output::channel_table(&channels), json })
    }

    /// `x402 quote`: the route's 402, without paying or a key.
    async fn quote(&self, url: &url::Url) -> Result<Outcome, CliError> {
        let http = http_client()?;
        let response = http
            .get(url.clone())
            .send()
            .await
            .map_err(|e| CliError::Client(Error::Unreachable { url: url.to_string(), source: e }))?;
        if response.status() != reqwest::StatusCode::PAYMENT_REQUIRED {
            let human =
                format!("{url} is free: it answered {} without asking for payment", response.status());
            return Ok(Outcome::Report {
                human,
                json: json!({ "url": url.as_str(), "free": true, "status": response.status().as_u16() }),
            });
        }
        let required = x402_client::read_402(response).await?;
        let mut token = None;
        if let Ok(chain) = self.connect(PrivateKeySigner::random()).await
            && let Some(offer) = required.accepts.iter().find(|a| a.scheme == x402_protocol::wire::SCHEME)
        {
            token = token_info(&chain, offer.asset).await;
        }
        let mut human = format!("{url}\n");
        let mut offers = Vec::new();
        for a in &required.accepts {
            let price = match &token {
                Some((decimals, symbol)) => {
                    format!("{} ({} {symbol})", a.amount, decimal(a.amount, *decimals))
                }
                None => a.amount.to_string(),
            };
            human.push_str(&format!(
                "  scheme     {}\n  price      {price} per request ({:?})\n  network    chain {}\n  payee      {}\n  token      {}\n  \
                 contract   {}\n  min deposit {}\n  min challenge period {} s\n",
                a.scheme,
                a.extra.pricing,
                a.network.chain_id,
                a.pay_to,
                a.asset,
                a.extra.contract,
                a.extra.min_deposit,
                a.extra.min_challenge_period,
            ));
            offers.push(json!({
                "scheme": a.scheme, "price": a.amount.to_string(), "pricing": a.extra.pricing, "chainId": a.network.chain_id,
                "payee": a.pay_to, "asset": a.asset, "contract": a.extra.contract,
                "minDeposit": a.extra.min_deposit.to_string(), "minChallengePeriod": a.extra.min_challenge_period,
                "decimals": token.as_ref().map(|t| t.0), "symbol": token.as_ref().map(|t| t.1.clone()),
            }));
        }
        let limit = self.config.limits().max_price;
        if required.accepts.iter().any(|a| a.amount > limit) {
            human.push_str(&format!("  (above your --max-price of {limit}: `get` would refuse to pay it)\n"));
        }
        Ok(Outcome::Report { human, json: json!({ "url": url.as_str(), "free": false, "accepts": offers }) })
    }

    /// `x402 balance`: the payer's token balance, allowance and ETH.
    async fn balance(
        &self,
        payer: PrivateKeySigner,
        url: Option<url::Url>,
        token: Option<Address>,
        contract: Option<Address>,
    ) -> Result<Outcome, CliError> {
        let address = payer.address();
        let chain = self.connect(payer).await?;
        let (token, contract) = match url {
            Some(url) => {
                let response =
                    http_client()?.get(url.clone()).send().await.map_err(|e| {
                        CliError::Client(Error::Unreachable { url: url.to_string(), source: e })
                    })?;
                if response.status() != reqwest::StatusCode::PAYMENT_REQUIRED {
                    return Err(CliError::Client(Error::NoAcceptableRequirements(format!(
                        "{url} answered {} without asking for payment: give --token and --contract",
                        response.status()
                    ))));
                }
                let required = x402_client::read_402(response).await?;
                let offer =
                    required.accepts.iter().find(|a| a.scheme == x402_protocol::wire::SCHEME).ok_or_else(
                        || Error::NoAcceptableRequirements("no `channel-voucher` scheme".into()),
                    )?;
                (token.unwrap_or(offer.asset), contract.unwrap_or(offer.extra.contract))
            }
            None => match (token, contract) {
                (Some(t), Some(c)) => (t, c),
                _ => return Err(CliError::Usage("give a URL, or --token and --contract".into())),
            },
        };
        let eth = chain.balance(Address::ZERO, address).await?;
        let balance = chain.balance(token, address).await?;
        let allowance = if token.is_zero() {
            U256::MAX
        } else {
            x402_client::IERC20::new(token, chain.provider())
                .allowance(address, contract)
                .call()
                .await
                .map_err(|e| Error::Chain(e.to_string()))?
        };
        let info = token_info(&chain, token).await;
        let show = |v: U256| match &info {
            Some((d, symbol)) => format!("{v} ({} {symbol})", decimal(v, *d)),
            None => v.to_string(),
        };
        let human = format!(
            "payer      {address}\n  token      {token}\n  balance    {}\n  allowance  {} (to the channel contract {contract})\n  ETH        {} wei ({} ETH, for gas)",
            show(balance),
            if allowance == U256::MAX { "unlimited".into() } else { show(allowance) },
            eth,
            decimal(eth, 18),
        );
        let json = json!({
            "payer": address, "token": token, "contract": contract, "balance": balance.to_string(),
            "allowance": allowance.to_string(), "eth": eth.to_string(),
            "decimals": info.as_ref().map(|i| i.0), "symbol": info.as_ref().map(|i| i.1.clone()),
        });
        Ok(Outcome::Report { human, json })
    }

    async fn open(
        &self,
        client: &Client,
        url: &url::Url,
        deposit: Option<AmountText>,
        node: Option<String>,
        gasless: Option<GaslessKind>,
        relay: Option<String>,
    ) -> Result<Outcome, CliError> {
        let offer = client.offer_for(url.as_str()).await?;
        let deposit = match deposit {
            Some(d) => self.amount(client, &d, offer.asset).await?,
            None => self.config.deposit_policy().deposit(
                offer.amount,
                offer.extra.min_deposit,
                client.limits(),
            )?,
        };
        let node = node.unwrap_or_else(|| url.origin().ascii_serialization());
        // A second channel with the same provider: allowed, but said, since payments use one.
        let terms = (offer.network.chain_id, offer.extra.contract, offer.pay_to, offer.asset);
        let existing: Vec<ClientChannel> = client
            .channels()
            .await
            .into_iter()
            .filter(|ch| {
                ch.usable()
                    && (ch.terms.network.chain_id, ch.terms.contract, ch.terms.payee, ch.terms.asset) == terms
            })
            .collect();
        if let Some(best) = existing.iter().max_by_key(|ch| ch.remaining()) {
            self.out.note(&format!(
                "warning: {} open channel(s) with this provider already, e.g. {} with {} remaining; payments use the \
                 one with the most remaining (or --channel); `x402 topup` adds to one",
                existing.len(),
                best.id,
                best.remaining()
            ));
        }
        let ch = match gasless {
            Some(kind) => {
                let relayer = Relayer::Node(relay.unwrap_or_else(|| node.clone()));
                client.open_gasless(&offer, deposit, kind, &relayer, Some(node)).await?
            }
            None => client.open(&offer, deposit, Some(node)).await?,
        };
        let human = format!(
            "{}\n  price      {} per request{}",
            output::channel_summary("opened", &ch),
            offer.amount,
            self.progress.text()
        );
        let json = json!({
            "channel": output::channel_json(&ch),
            "price": offer.amount.to_string(),
            "transactions": self.progress.json(),
            "events": self.progress.events(),
        });
        Ok(Outcome::Report { human, json })
    }

    /// An amount given as text, in the base units of `token`.
    async fn amount(&self, client: &Client, amount: &AmountText, token: Address) -> Result<U256, CliError> {
        let decimals = match amount {
            AmountText::Units(_) => None,
            AmountText::Decimal { .. } => match client.chain() {
                Some(chain) => token_info(chain, token).await.map(|(d, _)| d),
                None => None,
            },
        };
        amount.resolve(decimals).map_err(CliError::Usage)
    }

    async fn top_up(&self, client: &Client, id: B256, amount: AmountText) -> Result<Outcome, CliError> {
        let before = client.channel(id).await?;
        let amount = self.amount(client, &amount, before.terms.asset).await?;
        let ch = client.top_up(id, amount).await?;
        let added = ch.deposit.saturating_sub(before.deposit);
        let human = format!("{}{}", output::channel_summary("topped up", &ch), self.progress.text());
        let json = json!({
            "channel": output::channel_json(&ch),
            "added": added.to_string(),
            "transactions": self.progress.json(),
        });
        Ok(Outcome::Report { human, json })
    }

    async fn request(&self, client: &Client, request: Request, fail: bool) -> Result<Outcome, CliError> {
        let response = client.execute(request).await?;
        let status = response.status();
        if fail && (status.is_client_error() || status.is_server_error()) {
            if let Some(n) = response.extensions().get::<NotCharged>() {
                self.out.note(&output::not_charged_line(n, status));
            }
            return Err(CliError::HttpStatus(status));
        }
        let payment = response.extensions().get::<Payment>().cloned();
        let not_charged = response.extensions().get::<NotCharged>().cloned();
        let body = response.bytes().await.map_err(Error::Http)?.to_vec();

        let mut note = String::new();
        if !status.is_success() {
            note.push_str(&format!("HTTP {status}\n"));
        }
        if let Some(p) = &payment {
            note.push_str(&output::payment_line(p));
            note.push('\n');
        }
        if let Some(n) = &not_charged {
            note.push_str(&output::not_charged_line(n, status));
            note.push('\n');
        }
        let txs = self.progress.text();
        if !txs.is_empty() {
            note.push_str(&format!("transactions:{txs}\n"));
        }
        let text = std::str::from_utf8(&body).ok();
        let json = json!({
            "status": status.as_u16(),
            "body": text,
            "bodyHex": if text.is_none() { Some(alloy::hex::encode(&body)) } else { None },
            "payment": payment.as_ref().map(output::payment_json),
            "notCharged": not_charged.as_ref().map(output::not_charged_json),
            "events": self.progress.events(),
            "transactions": self.progress.json(),
        });
        Ok(Outcome::Body { body, note, json })
    }

    async fn close(&self, client: &Client, id: B256, node: Option<&str>) -> Result<Outcome, CliError> {
        let closed = client.close(id, node).await?;
        let human = if closed.closed_on_chain {
            format!(
                "closed channel {id}\n  paid       {}\n  refunded   {}{}",
                closed.final_amount,
                closed.refund,
                self.progress.text()
            )
        } else {
            format!(
                "close requested for channel {id}\n  paid       {}\n  refund     {} when the node closes it in its next \
                 settlement round (`x402 channels --refresh` shows it closed)",
                closed.final_amount, closed.refund
            )
        };
        let json = json!({
            "channelId": id,
            "finalAmount": closed.final_amount.to_string(),
            "refund": closed.refund.to_string(),
            "closedOnChain": closed.closed_on_chain,
            "transactions": self.progress.json(),
        });
        Ok(Outcome::Report { human, json })
    }

    async fn exit(&self, client: &Client, id: B256) -> Result<Outcome, CliError> {
        let exit_at = client.exit(id).await?;
        let now = match client.chain() {
            Some(chain) => chain.now().await?,
            None => exit_at,
        };
        let human = format!(
            "exit started for channel {id}\n  withdraw from {} (in {}): x402 withdraw {id}{}",
            output::utc(exit_at),
            output::duration(exit_at.saturating_sub(now)),
            self.progress.text()
        );
        let json = json!({ "channelId": id, "exitAt": exit_at, "transactions": self.progress.json() });
        Ok(Outcome::Report { human, json })
    }

    async fn withdraw(&self, client: &Client, id: B256) -> Result<Outcome, CliError> {
        let refund = match client.withdraw(id).await {
            Ok(refund) => refund,
            Err(e @ Error::ChannelState { .. }) => {
                if let Ok(ChannelStatus::Exiting { exit_at }) = client.channel(id).await.map(|c| c.status) {
                    let now = match client.chain() {
                        Some(chain) => chain.now().await.unwrap_or(exit_at),
                        None => exit_at,
                    };
                    if now < exit_at {
                        self.out.note(&format!(
                            "the challenge period of channel {id} ends at {} (in {})",
                            output::utc(exit_at),
                            output::duration(exit_at - now)
                        ));
                    }
                }
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        // `Client::withdraw` marks the channel closed before it returns.
        let human = format!(
            "withdrew from channel {id}\n  refunded   {refund}\n  status     closed{}",
            self.progress.text()
        );
        let json =
            json!({ "channelId": id, "refund": refund.to_string(), "transactions": self.progress.json() });
        Ok(Outcome::Report { human, json })
    }
}

/// The HTTP client for nodes and APIs.
fn http_client() -> Result<reqwest::Client, CliError> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("x402/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| CliError::Other(format!("cannot build the HTTP client: {e}")))
}

/// A token's decimals and symbol (`None` if it does not say; 18 and ETH for the native token).
async fn token_info(chain: &ChainClient, token: Address) -> Option<(u8, String)> {
    if token.is_zero() {
        return Some((18, "ETH".into()));
    }
    let meta = IERC20Metadata::new(token, chain.provider());
    let decimals = meta.decimals().call().await.ok()?;
    let symbol = meta.symbol().call().await.unwrap_or_default();
    Some((decimals, symbol))
}

/// `value` base units of a token with `decimals`, as a decimal number.
fn decimal(value: U256, decimals: u8) -> String {
    let text = value.to_string();
    let d = usize::from(decimals);
    if d == 0 {
        return text;
    }
    let padded = format!("{text:0>width$}", width = d + 1);
    let (whole, fraction) = padded.split_at(padded.len() - d);
    let fraction = fraction.trim_end_matches('0');
    if fraction.is_empty() { whole.to_owned() } else { format!("{whole}.{fraction}") }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

/// The channel `text` names among `ids`, or the error that says why none.
fn lookup(text: &str, ids: &[B256]) -> Result<B256, CliError> {
    find_channel(text, ids).map_err(|why| match why {
        ChannelRef::Malformed => CliError::Usage(format!(
            "{text:?} is not a channel id: 0x and up to 64 hex digits, a unique prefix of one (see `x402 channels`)"
        )),
        ChannelRef::TooShort => {
            CliError::Usage(format!("{text:?}: give at least 4 hex digits of the channel id (see `x402 channels`)"))
        }
        ChannelRef::Unknown(Some(id)) => CliError::Client(Error::UnknownChannel(id)),
        ChannelRef::Unknown(None) => CliError::NoSuchChannel(format!("no channel id starts with {text}")),
        ChannelRef::Ambiguous(many) => CliError::Usage(format!(
            "{text} matches {} channels ({}): give more digits",
            many.len(),
            many.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        )),
    })
}

/// Parses an http(s) URL.
fn http_url(s: &str) -> Result<url::Url, CliError> {
    let url = url::Url::parse(s).map_err(|e| CliError::Usage(format!("invalid URL {s:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(CliError::Usage(format!("invalid URL {s:?}: only http and https are supported")));
    }
    Ok(url)
}

/// The body of `-d`: the text itself, `@FILE` or `@-` (stdin).
fn read_data(data: &str) -> Result<Vec<u8>, CliError> {
    match data.strip_prefix('@') {
        Some("-") => {
            let mut body = Vec::new();
            std::io::stdin()
                .read_to_end(&mut body)
                .map_err(|e| CliError::Usage(format!("cannot read the request body from stdin: {e}")))?;
            Ok(body)
        }
        Some(path) => std::fs::read(path)
            .map_err(|e| CliError::Usage(format!("cannot read the request body from {path}: {e}"))),
        None => Ok(data.as_bytes().to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_and_urls() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("body.json");
        std::fs::write(&file, b"{\"a\": 1}\n").unwrap();
        assert_eq!(read_data("x=1").unwrap(), b"x=1");
        assert_eq!(read_data(&format!("@{}", file.display())).unwrap(), b"{\"a\": 1}\n");
        let err = read_data("@/nonexistent/body").unwrap_err();
        assert!(matches!(err, CliError::Usage(_)) && err.to_string().contains("/nonexistent/body"), "{err}");

        assert!(http_url("http://127.0.0.1:8402/weather").is_ok());
        let args = |headers: Vec<&str>| GetArgs {
            url: "http://x/y".into(),
            headers: headers.into_iter().map(|h| crate::args::parse_header(h).unwrap()).collect(),
            fail: false,
            pay: Default::default(),
            common: Default::default(),
            limits: Default::default(),
            new_channel: Default::default(),
        };
        let get = build_request(&args(vec!["A: 1", "A: 2"]), None, None).unwrap();
        assert_eq!((get.method(), get.body().is_none()), (&Method::GET, true));
        assert_eq!(get.headers().get_all("a").iter().count(), 2, "a repeated header is sent twice");
        let post = build_request(&args(vec![]), None, Some("x=1")).unwrap();
        assert_eq!(
            (post.method(), post.body().and_then(|b| b.as_bytes())),
            (&Method::POST, Some(&b"x=1"[..]))
        );
        let put = build_request(&args(vec![]), Some(Method::PUT), Some("x")).unwrap();
        assert_eq!(put.method(), &Method::PUT);
        for bad in ["127.0.0.1:8402/weather", "ftp://x/y", "not a url", ""] {
            assert!(matches!(http_url(bad), Err(CliError::Usage(_))), "{bad:?}");
        }
    }
}

//! The subcommands, each a thin call into `x402_client` that returns its [`Outcome`].

use std::{io::Read, path::PathBuf, sync::Arc, time::Duration};

use alloy::{
    primitives::{B256, U256},
    signers::local::PrivateKeySigner,
};
use reqwest::{Method, Request};
use serde_json::json;
use x402_client::{
    ChainClient, ChannelStatus, Client, Error, GaslessKind, Payment, Relayer, Settings, StateStore,
};

use crate::{
    args::{Cli, Command, GetArgs, RequestArgs},
    config::Config,
    error::CliError,
    keys::{self, ProcessEnv},
    output::{self, Outcome, Output},
    progress::Progress,
};

/// How long to wait for a TCP connection to a node before calling it unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the command. Every [`Client`] is dropped before this returns, which flushes the state
/// store.
pub(crate) async fn run(cli: Cli, out: Output, progress: Arc<Progress>) -> Result<Outcome, CliError> {
    let config = Config::resolve(&cli.settings, std::env::var_os("HOME").map(PathBuf::from))?;
    tracing::debug!(target: "x402::cli", rpc = %config.rpc_url, state = %config.state_dir().display(), "configuration");
    let ctx = Ctx { config, progress };
    let job = match cli.command {
        Command::Config => return ctx.show_config(),
        Command::Channels { refresh } => return ctx.channels(refresh).await,
        // Everything the user gave (URL, body, then the keys) is checked before anything is
        // contacted.
        command => Job::from(command)?,
    };
    let payer = keys::payer(&cli.keys, &ProcessEnv)?;
    let session = keys::session(&cli.keys, &ProcessEnv)?;
    let client = ctx.client(payer, session).await?;
    match job {
        Job::Request { request, fail } => ctx.request(&client, request, fail).await,
        Job::Open { url, deposit, node, gasless, relay } => {
            ctx.open(&client, &url, deposit, node, gasless, relay).await
        }
        Job::Topup { channel, amount } => ctx.top_up(&client, channel, amount).await,
        Job::Close { channel, node } => ctx.close(&client, channel, node.as_deref()).await,
        Job::Exit { channel } => ctx.exit(&client, channel).await,
        Job::Withdraw { channel } => ctx.withdraw(&client, channel, out).await,
    }
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
        deposit: Option<U256>,
        node: Option<String>,
        gasless: Option<GaslessKind>,
        relay: Option<String>,
    },
    Topup {
        channel: B256,
        amount: U256,
    },
    Close {
        channel: B256,
        node: Option<String>,
    },
    Exit {
        channel: B256,
    },
    Withdraw {
        channel: B256,
    },
}

impl Job {
    fn from(command: Command) -> Result<Self, CliError> {
        Ok(match command {
            Command::Get(args) => {
                Self::Request { request: build_request(&args, None, None)?, fail: args.fail }
            }
            Command::Request(RequestArgs { get, method, data }) => {
                Self::Request { request: build_request(&get, method, data.as_deref())?, fail: get.fail }
            }
            Command::Open { url, deposit, node, gasless, relay } => Self::Open {
                url: http_url(&url)?,
                deposit,
                node,
                gasless: gasless.map(GaslessKind::from),
                relay: relay
                    .map(|r| http_url(&r).map(|u| u.as_str().trim_end_matches('/').to_owned()))
                    .transpose()?,
            },
            Command::Topup { channel, amount } => Self::Topup { channel, amount },
            Command::Close { channel, node } => Self::Close { channel, node },
            Command::Exit { channel } => Self::Exit { channel },
            Command::Withdraw { channel } => Self::Withdraw { channel },
            Command::Config | Command::Channels { .. } => {
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

/// What every command needs.
struct Ctx {
    config: Config,
    progress: Arc<Progress>,
}

impl Ctx {
    /// Connects to the chain and opens the state.
    async fn client(
        &self,
        payer: PrivateKeySigner,
        session: Option<PrivateKeySigner>,
    ) -> Result<Client, CliError> {
        let c = &self.config;
        // `connect`'s only failure after the URL (checked by `Config::resolve`) is the endpoint
        // not answering `eth_chainId`.
        let chain = ChainClient::connect(&c.rpc_url, payer.clone())
            .await
            .map_err(|e| match e {
                Error::Chain(message) => CliError::RpcUnreachable(message),
                other => other.into(),
            })?
            .with_confirmations(c.confirmations)
            .with_auto_approve(c.auto_approve)
            .with_observer(self.progress.observer());
        tracing::debug!(target: "x402::cli", chain_id = chain.chain_id(), payer = %chain.payer(), "connected");
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("x402/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Other(format!("cannot build the HTTP client: {e}")))?;
        let mut builder = Client::builder(payer)
            .chain(chain)
            .limits(c.limits())
            .deposit_policy(c.deposit_policy())
            .settings(Settings { credit_window: c.credit_window, ..Settings::default() })
            .state_dir(c.state_dir())
            .http_client(http);
        if let Some(session) = session {
            builder = builder.session_key(session);
        }
        Ok(builder.build().await?)
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
            let client = self.client(PrivateKeySigner::random(), None).await?;
            for ch in client.channels().await {
                if ch.status == ChannelStatus::Closed {
                    continue;
                }
                match client.refresh(ch.id).await {
                    Ok(_) => {}
                    Err(Error::WrongNetwork { .. }) => {
                        tracing::warn!(target: "x402::cli", channel = %ch.id, chain = ch.terms.network.chain_id, "not refreshed: on another chain than the RPC endpoint");
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

    async fn open(
        &self,
        client: &Client,
        url: &url::Url,
        deposit: Option<U256>,
        node: Option<String>,
        gasless: Option<GaslessKind>,
        relay: Option<String>,
    ) -> Result<Outcome, CliError> {
        let offer = client.offer_for(url.as_str()).await?;
        let deposit = match deposit {
            Some(d) => d,
            None => self.config.deposit_policy().deposit(
                offer.amount,
                offer.extra.min_deposit,
                client.limits(),
            )?,
        };
        let node = node.unwrap_or_else(|| url.origin().ascii_serialization());
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
        });
        Ok(Outcome::Report { human, json })
    }

    async fn top_up(&self, client: &Client, id: B256, amount: U256) -> Result<Outcome, CliError> {
        let before = client.channel(id).await?.deposit;
        let ch = client.top_up(id, amount).await?;
        let added = ch.deposit.saturating_sub(before);
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
            return Err(CliError::HttpStatus(status));
        }
        let payment = response.extensions().get::<Payment>().cloned();
        let body = response.bytes().await.map_err(Error::Http)?.to_vec();

        let mut note = String::new();
        if !status.is_success() {
            note.push_str(&format!("HTTP {status}\n"));
        }
        if let Some(p) = &payment {
            note.push_str(&output::payment_line(p));
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

    async fn withdraw(&self, client: &Client, id: B256, out: Output) -> Result<Outcome, CliError> {
        let refund = match client.withdraw(id).await {
            Ok(refund) => refund,
            Err(e @ Error::ChannelState { .. }) => {
                if let Ok(ChannelStatus::Exiting { exit_at }) = client.channel(id).await.map(|c| c.status) {
                    let now = match client.chain() {
                        Some(chain) => chain.now().await.unwrap_or(exit_at),
                        None => exit_at,
                    };
                    if now < exit_at {
                        out.note(&format!(
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

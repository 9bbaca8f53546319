//! The client's ledger against a model node with failing upstreams, lost requests, lost
//! responses and a node lagging a cancelled exit: the client never signs more than the node
//! charged plus one price times its credit window, never opens or tops up while a usable
//! channel has enough, and every request the node did not charge is reported as such.

use std::{collections::HashMap, sync::Arc, time::Duration};

use alloy::{
    primitives::{Address, B256, Bytes, U256},
    signers::local::PrivateKeySigner,
};
use parking_lot::Mutex;
use proptest::prelude::*;
use reqwest::{Response, StatusCode};
use x402_protocol::{
    Network, SignedVoucher,
    bindings::IPaymentChannel::ChannelParams,
    wire::{
        self, ChannelExtra, ChannelState, ErrorCode, PAYMENT_REQUIRED, PAYMENT_RESPONSE, PAYMENT_SIGNATURE,
        PaymentPayload, PaymentRequired, PaymentRequirements, Pricing, Resource, SettlementExtra,
        SettlementResponse,
    },
};

use crate::{Client, DepositPolicy, Error, Funding, Limits, NotCharged, Payment, Result, Settings};

const CHAIN: u64 = 31337;
const PRICE: u64 = 100;

/// What happens to one request.
#[derive(Clone, Copy, Debug)]
enum Fate {
    /// Served and charged.
    Served,
    /// The upstream fails (5xx): the node charges nothing and keeps no voucher.
    UpstreamFails,
    /// The request never reaches the node.
    LostRequest,
    /// The node charges it, but the answer is lost.
    LostResponse,
    /// The node has not seen that the payer's top-up cancelled its exit: `channel_closing`
    /// this many times, then it serves.
    LaggingExit(u8),
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        6 => Just(Fate::Served),
        2 => Just(Fate::UpstreamFails),
        1 => Just(Fate::LostRequest),
        1 => Just(Fate::LostResponse),
        1 => (1u8..4).prop_map(Fate::LaggingExit),
    ]
}

/// The node's view of one channel.
#[derive(Clone, Debug, Default)]
struct Held {
    nonce: u64,
    cumulative: U256,
    charged: U256,
    /// The signature of the latest voucher (sent back in corrective 402s).
    signature: Bytes,
}

/// The chain and the node, shared by the funding mock and the transport.
#[derive(Debug, Default)]
struct World {
    deposits: HashMap<B256, U256>,
    held: HashMap<B256, Held>,
    opens: usize,
    /// Violations found inside the mocks (reported by the test).
    violations: Vec<String>,
    /// `channel_closing` answers still owed (a node lagging a cancelled exit).
    closing: u8,
    /// The credit window of the route.
    window: u32,
}

impl World {
    /// Whether some channel can still pay a request, by the node's books.
    fn usable_with_enough(&self) -> Option<B256> {
        self.deposits.iter().find_map(|(id, deposit)| {
            let charged = self.held.get(id).map_or(U256::ZERO, |h| h.charged);
            (*deposit >= charged + U256::from(PRICE)).then_some(*id)
        })
    }
}

#[derive(Debug, Clone)]
struct ModelFunding {
    world: Arc<Mutex<World>>,
    payer: Address,
}

#[async_trait::async_trait]
impl Funding for ModelFunding {
    fn chain_id(&self) -> u64 {
        CHAIN
    }

    fn payer(&self) -> Address {
        self.payer
    }

    async fn open(&self, contract: Address, params: ChannelParams, deposit: U256) -> Result<(B256, U256)> {
        let mut w = self.world.lock();
        if let Some(id) = w.usable_with_enough() {
            let state = format!("{:?} {:?}", w.deposits, w.held);
            w.violations.push(format!("opened a channel while {id} could still pay: {state}"));
        }
        w.opens += 1;
        let id = params.channel_id(CHAIN, contract);
        w.deposits.insert(id, deposit);
        Ok((id, deposit))
    }

    async fn top_up(&self, contract: Address, params: &ChannelParams, amount: U256) -> Result<U256> {
        let channel = params.channel_id(CHAIN, contract);
        let mut w = self.world.lock();
        if let Some(id) = w.usable_with_enough() {
            w.violations.push(format!("topped up {channel} while {id} could still pay"));
        }
        let deposit = w.deposits.get_mut(&channel).ok_or(Error::UnknownChannel(channel))?;
        *deposit += amount;
        Ok(*deposit)
    }
}

fn requirements(window: u32, state: Option<ChannelState>) -> PaymentRequirements {
    PaymentRequirements {
        scheme: wire::SCHEME.into(),
        network: Network::new(CHAIN),
        amount: U256::from(PRICE),
        asset: Address::repeat_byte(0xA5),
        pay_to: Address::repeat_byte(0xBB),
        max_timeout_seconds: 60,
        extra: ChannelExtra {
            name: None,
            version: None,
            contract: Address::repeat_byte(0xC0),
            domain: wire::DomainInfo::channel(),
            min_challenge_period: 3600,
            min_deposit: U256::ZERO,
            pricing: Pricing::Exact,
            channel: state,
            max_credit_window: (window > 1).then_some(window),
        },
    }
}

fn refuse(window: u32, code: ErrorCode, state: Option<ChannelState>) -> Response {
    let body = PaymentRequired::new(
        Some(code),
        Resource { url: "http://node.test/paid".into(), description: None, mime_type: None },
        vec![requirements(window, state)],
    );
    http::Response::builder()
        .status(StatusCode::PAYMENT_REQUIRED)
        .header(PAYMENT_REQUIRED, wire::encode_header(&body))
        .body(Vec::new())
        .expect("a response")
        .into()
}

/// The node's answer to `request` under `fate` (`Err` when the transport loses it), and
/// whether the fate happened (it waits for a paid request the node would accept).
fn answer(world: &Mutex<World>, request: &reqwest::Request, fate: Fate) -> (Result<Response>, bool) {
    let mut consumed = false;
    let result = answer_inner(world, request, fate, &mut consumed);
    (result, consumed)
}

fn answer_inner(
    world: &Mutex<World>,
    request: &reqwest::Request,
    fate: Fate,
    consumed: &mut bool,
) -> Result<Response> {
    let mut w = world.lock();
    let window = w.window;
    let Some(value) = request.headers().get(PAYMENT_SIGNATURE) else {
        return Ok(refuse(window, ErrorCode::PaymentRequired, None));
    };
    let payload: PaymentPayload = wire::decode_header(value.as_bytes()).expect("a payload");
    let voucher: SignedVoucher = payload.payload.into();
    let id = voucher.channel_id();
    let held = w.held.get(&id).cloned().unwrap_or_default();
    let deposit = w.deposits.get(&id).copied().unwrap_or_default();
    // The bound: a voucher commits at most what was charged plus the credit window's prices.
    let bound = held.charged + U256::from(PRICE) * U256::from(window);
    if voucher.nonce() > held.nonce && voucher.cumulative_amount() > bound {
        w.violations.push(format!(
            "voucher {} for {} above charged {} + window {window} x {PRICE}",
            voucher.nonce(),
            voucher.cumulative_amount(),
            held.charged
        ));
    }
    if matches!(fate, Fate::LostRequest) {
        *consumed = true;
        return Err(Error::Malformed("lost on the way".into()));
    }
    if w.closing > 0 {
        w.closing -= 1;
        return Ok(refuse(window, ErrorCode::ChannelClosing, None));
    }
    let state = ChannelState {
        channel_id: id,
        nonce: held.nonce,
        cumulative_amount: held.cumulative,
        charged: held.charged,
        deposit,
        signature: held.signature.clone(),
    };
    if voucher.nonce() <= held.nonce {
        return Ok(refuse(window, ErrorCode::NonceTooLow, Some(state)));
    }
    if voucher.cumulative_amount() < held.charged + U256::from(PRICE) {
        return Ok(refuse(window, ErrorCode::AmountBelowPrice, Some(state)));
    }
    if voucher.cumulative_amount() > deposit {
        return Ok(refuse(window, ErrorCode::InsufficientDeposit, Some(state)));
    }
    *consumed = true;
    if matches!(fate, Fate::UpstreamFails) {
        // Not charged, the voucher not kept.
        return Ok(http::Response::builder().status(502).body(Vec::new()).expect("a response").into());
    }
    let held = w.held.entry(id).or_default();
    held.nonce = voucher.nonce();
    held.cumulative = voucher.cumulative_amount();
    held.charged += U256::from(PRICE);
    held.signature = voucher.signature.clone();
    let receipt = SettlementResponse {
        success: true,
        transaction: String::new(),
        network: Network::new(CHAIN),
        payer: Address::ZERO,
        amount: Some(U256::from(PRICE)),
        extra: Some(SettlementExtra {
            channel_id: id,
            nonce: held.nonce,
            cumulative_amount: held.cumulative,
            charged: U256::from(PRICE),
            total_charged: held.charged,
            session: None,
        }),
    };
    if matches!(fate, Fate::LostResponse) {
        return Err(Error::Malformed("answer lost".into()));
    }
    Ok(http::Response::builder()
        .status(200)
        .header(PAYMENT_RESPONSE, wire::encode_header(&receipt))
        .body(b"paid".to_vec())
        .expect("a response")
        .into())
}

async fn run(fates: Vec<Fate>, window: u32) -> std::result::Result<(), TestCaseError> {
    let world = Arc::new(Mutex::new(World { window, ..World::default() }));
    let key = PrivateKeySigner::random();
    let funding = ModelFunding { world: world.clone(), payer: key.address() };
    let client = Client::builder(key)
        .funding(Arc::new(funding))
        .limits(Limits::from_units(u128::from(PRICE), u128::from(PRICE) * 10, u128::from(PRICE) * 1_000))
        .deposit_policy(DepositPolicy { requests: 3, ..DepositPolicy::default() })
        .settings(Settings {
            node_wait: Duration::from_secs(5),
            backoff: Duration::from_millis(1),
            credit_window: window,
            ..Settings::default()
        })
        .build()
        .await
        .expect("builds");
    let mut served = 0u64;
    for fate in fates {
        if let Fate::LaggingExit(n) = fate {
            world.lock().closing = n;
        }
        let request =
            reqwest::Request::new(reqwest::Method::GET, "http://node.test/paid".parse().expect("a URL"));
        let w = world.clone();
        let mut pending = Some(fate);
        let result = client
            .execute_with(request, move |r| {
                // The fate meets the first paid attempt the node accepts; the others go through.
                let (answer, consumed) = answer(&w, &r, pending.unwrap_or(Fate::Served));
                if consumed {
                    pending = None;
                }
                Box::pin(async move { answer })
            })
            .await;
        match (fate, result) {
            (Fate::Served | Fate::LaggingExit(_), Ok(response)) => {
                prop_assert_eq!(response.status(), StatusCode::OK);
                prop_assert!(response.extensions().get::<Payment>().is_some());
                served += 1;
            }
            (Fate::UpstreamFails, Ok(response)) => {
                prop_assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
                prop_assert!(response.extensions().get::<Payment>().is_none());
                let not = response.extensions().get::<NotCharged>().cloned();
                prop_assert!(not.is_some(), "a request not charged is reported");
            }
            (Fate::LostRequest | Fate::LostResponse, Err(_)) => {
                if matches!(fate, Fate::LostResponse) {
                    served += 1;
                }
            }
            (fate, other) => prop_assert!(false, "{fate:?}: {:?}", other.map(|r| r.status())),
        }
        let violations = std::mem::take(&mut world.lock().violations);
        prop_assert!(
            violations.is_empty(),
            "{fate:?}: {violations:?}; client: {:?}",
            client
                .channels()
                .await
                .iter()
                .map(|c| (c.id, c.deposit, c.nonce, c.cumulative, c.max_signed, c.spent, c.status))
                .collect::<Vec<_>>()
        );
    }
    let charged: U256 = world.lock().held.values().map(|h| h.charged).sum();
    prop_assert_eq!(charged, U256::from(PRICE * served), "each served request charged once");
    for ch in client.channels().await {
        let held = world.lock().held.get(&ch.id).cloned().unwrap_or_default();
        prop_assert!(
            ch.max_signed <= held.charged + U256::from(PRICE) * U256::from(window),
            "signed {} on {}, charged {}",
            ch.max_signed,
            ch.id,
            held.charged
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn the_ledger_follows_what_the_node_charged(
        fates in prop::collection::vec(fate(), 1..40),
        window in prop_oneof![Just(1u32), Just(2), Just(4)],
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(run(fates, window))?;
    }
}

/// The case: a 5,000 deposit, 3,000 charged and three failed upstreams in between is
/// not "exhausted: 6000 needed".
#[tokio::test]
async fn failed_upstreams_do_not_count_as_spent() {
    let fates = [
        Fate::Served,
        Fate::UpstreamFails,
        Fate::Served,
        Fate::UpstreamFails,
        Fate::UpstreamFails,
        Fate::Served,
    ];
    run(fates.to_vec(), 1).await.expect("holds");
}

/// Found by the proptest: with every channel's deposit committed, the channel holding a voucher
/// lost on the way is used (the voucher pays) rather than a new channel opened.
#[tokio::test]
async fn a_lost_voucher_pays_before_a_new_channel_is_opened() {
    use Fate::*;
    run(
        vec![
            LostResponse,
            LostResponse,
            Served,
            Served,
            LostResponse,
            LostResponse,
            LostResponse,
            Served,
            Served,
            Served,
            Served,
            LostRequest,
            Served,
        ],
        2,
    )
    .await
    .expect("holds");
}

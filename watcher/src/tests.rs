//! Unit tests of the watcher's push side, over an in-memory chain and store.

use std::sync::Arc;

use alloy::{
    primitives::{Address, B256, U256},
    signers::local::PrivateKeySigner,
};
use axum::body::Body;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;
use x402_protocol::{
    ChannelDomain, Voucher,
    bindings::IPaymentChannel::ChannelParams,
    watch::{
        ApiError, ApiErrorCode, CHANNELS_PATH, MAX_VOUCHERS_PER_REQUEST, RejectCode, WATCH_PATH,
        WatchOutcome, WatchRequest, WatchResponse, WatchedChannel, WatchedStatus, WatchedVoucher,
    },
};
use x402_store::MemoryStore;

use super::*;
use x402_chain::test_utils::{FlakyStore, MemoryChain};

const TOKEN: &str = "watcher-test-token-0123456789";
const CHAIN_ID: u64 = 31_337;

fn contract() -> Address {
    Address::repeat_byte(0xcc)
}

fn params(payer: Address, payee: Address, salt: u8) -> ChannelParams {
    ChannelParams {
        payer,
        payee,
        token: Address::repeat_byte(3),
        signer: Address::ZERO,
        challengePeriod: 3_600,
        salt: B256::repeat_byte(salt),
    }
}

fn onchain(params: ChannelParams, deposit: u64) -> OnchainChannel {
    OnchainChannel {
        params,
        signer_is_contract: false,
        deposit: U256::from(deposit),
        exit_at: 0,
        open: true,
        paid: U256::ZERO,
        pending_close: false,
    }
}

fn id_of(params: &ChannelParams) -> B256 {
    params.channel_id(CHAIN_ID, contract())
}

struct Fixture<S: KvStore = MemoryStore> {
    watcher: Watcher<S, MemoryChain>,
    chain: MemoryChain,
    store: Arc<S>,
    payer: PrivateKeySigner,
    payee: PrivateKeySigner,
    params: ChannelParams,
    id: B256,
}

fn fixture() -> Fixture {
    fixture_with(Arc::new(MemoryStore::new()))
}

fn fixture_with<S: KvStore>(store: Arc<S>) -> Fixture<S> {
    let chain = MemoryChain::default();
    let payer = PrivateKeySigner::random();
    let payee = PrivateKeySigner::random();
    let params = params(payer.address(), payee.address(), 0x42);
    let id = id_of(&params);
    chain.set(id, onchain(params.clone(), 1_000));
    let watcher = Watcher::new(CHAIN_ID, contract(), TOKEN, Arc::clone(&store), chain.clone()).unwrap();
    Fixture { watcher, chain, store, payer, payee, params, id }
}

impl<S: KvStore> Fixture<S> {
    /// A claim of the whole voucher.
    fn sign(&self, nonce: u64, amount: u64) -> WatchedVoucher {
        self.claim(nonce, amount, amount)
    }

    /// A claim of `claimed` with a voucher of `amount`.
    fn claim(&self, nonce: u64, amount: u64, claimed: u64) -> WatchedVoucher {
        let keys = (&self.payer, &self.payee);
        claim_for(keys, &ChannelDomain::new(CHAIN_ID, contract()), &self.params, nonce, amount, claimed)
    }

    /// A channel of the same payer and payee with another salt, holding `deposit`.
    fn other_channel(&self, salt: u8, deposit: u64) -> ChannelParams {
        let params = params(self.payer.address(), self.payee.address(), salt);
        self.chain.set(id_of(&params), onchain(params.clone(), deposit));
        params
    }

    async fn push(&self, vouchers: Vec<WatchedVoucher>) -> Vec<WatchOutcome> {
        let response = self.watcher.watch(WatchRequest { vouchers }).await.unwrap();
        response.results.into_iter().map(|r| r.outcome).collect()
    }

    async fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: String,
    ) -> (StatusCode, Vec<u8>) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            req = req.header(header::AUTHORIZATION, token);
        }
        let resp = self.watcher.router().oneshot(req.body(Body::from(body)).unwrap()).await.unwrap();
        let status = resp.status();
        (status, resp.into_body().collect().await.unwrap().to_bytes().to_vec())
    }

    fn held(&self) -> (u64, U256) {
        let record = self.watcher.record(self.id).unwrap().expect("watched");
        (record.voucher.nonce, record.claimed)
    }
}

/// A claim of channel `params` signed by `(payer, payee)` under `domain`.
fn claim_for(
    (payer, payee): (&PrivateKeySigner, &PrivateKeySigner),
    domain: &ChannelDomain,
    params: &ChannelParams,
    nonce: u64,
    amount: u64,
    claimed: u64,
) -> WatchedVoucher {
    let id = params.channel_id(domain.chain_id(), domain.contract());
    let signed =
        domain.sign(payer, Voucher { channelId: id, nonce, cumulativeAmount: U256::from(amount) }).unwrap();
    let claimed = U256::from(claimed);
    WatchedVoucher {
        channel_id: id,
        nonce,
        cumulative_amount: signed.cumulative_amount(),
        signature: signed.signature,
        claimed,
        payee_signature: x402_protocol::claim::sign(domain, payee, id, nonce, claimed).unwrap(),
        params: params.clone(),
    }
}

fn body(vouchers: Vec<WatchedVoucher>) -> String {
    serde_json::to_string(&WatchRequest { vouchers }).unwrap()
}

fn code(outcome: &WatchOutcome) -> Option<RejectCode> {
    match outcome {
        WatchOutcome::Rejected { code, .. } => Some(*code),
        _ => None,
    }
}

fn kept(nonce: u64, amount: u64) -> WatchOutcome {
    WatchOutcome::Kept { held_nonce: nonce, held_amount: U256::from(amount) }
}

#[tokio::test]
async fn api_needs_the_bearer_token() {
    let f = fixture();
    let bearer = format!("Bearer {TOKEN}");
    let basic = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("provider:{TOKEN}"))
    };
    // Missing, empty, wrong, and the right token in the wrong form or under the wrong scheme.
    let refused = [
        None,
        Some(String::new()),
        Some("Bearer".to_owned()),
        Some("Bearer ".to_owned()),
        Some("Bearer wrong-token-wrong-token".to_owned()),
        Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("bearer {TOKEN}")),
        Some(format!("BEARER {TOKEN}")),
        Some(format!("Bearer  {TOKEN}")),
        Some(TOKEN.to_owned()),
        Some(format!("Basic {basic}")),
        Some(format!("Basic {TOKEN}")),
        Some(format!("Token {TOKEN}")),
    ];
    for token in &refused {
        for (method, path) in [("POST", WATCH_PATH), ("GET", CHANNELS_PATH)] {
            let (status, bytes) = f.http(method, path, token.as_deref(), body(vec![f.sign(1, 100)])).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} with {token:?}");
            let err: ApiError = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(err.error, ApiErrorCode::Unauthorized);
        }
    }
    // The token anywhere but in `Authorization`.
    for (method, path) in [("POST", WATCH_PATH), ("GET", CHANNELS_PATH)] {
        let req = Request::builder()
            .method(method)
            .uri(format!("{path}?token={TOKEN}&access_token={TOKEN}"))
            .header("x-watcher-token", TOKEN)
            .body(Body::from(body(vec![f.sign(1, 100)])))
            .unwrap();
        let resp = f.watcher.router().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{method} {path}: token outside Authorization");
        assert_eq!(resp.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
    // Nothing was stored by the refused pushes.
    assert!(f.watcher.channels().unwrap().is_empty());

    let (status, bytes) = f.http("POST", WATCH_PATH, Some(&bearer), body(vec![f.sign(1, 100)])).await;
    assert_eq!(status, StatusCode::OK);
    let response: WatchResponse = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(response.results[0].outcome, WatchOutcome::Stored);
    let (status, bytes) = f.http("GET", CHANNELS_PATH, Some(&bearer), String::new()).await;
    assert_eq!(status, StatusCode::OK);
    let listed: Vec<WatchedChannel> = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].channel_id, listed[0].nonce, listed[0].status), (f.id, 1, WatchedStatus::Open));

    let (status, _) = f.http("GET", "/healthz", None, String::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(f.watcher.authorized(TOKEN));
    assert!(!f.watcher.authorized(""));
}

#[tokio::test]
async fn keeps_the_voucher_paying_the_most() {
    let f = fixture();
    assert_eq!(
        f.push(vec![f.sign(1, 100), f.sign(3, 300)]).await,
        [WatchOutcome::Stored, WatchOutcome::Stored]
    );
    assert_eq!(f.held(), (3, U256::from(300)));
    // An older voucher arriving late does not replace the better one.
    assert_eq!(f.push(vec![f.sign(2, 200)]).await, [kept(3, 300)]);
    // A higher nonce that pays less loses: the claim paying the payee the most protects it.
    assert_eq!(f.push(vec![f.sign(9, 250)]).await, [kept(3, 300)]);
    // Same amount, higher nonce: taken.
    assert_eq!(f.push(vec![f.sign(4, 300)]).await, [WatchOutcome::Stored]);
    assert_eq!(f.held(), (4, U256::from(300)));
    // The same voucher again: idempotent.
    assert_eq!(f.push(vec![f.sign(4, 300)]).await, [WatchOutcome::Stored]);
    // A lower nonce that pays more wins.
    assert_eq!(f.push(vec![f.sign(2, 600)]).await, [WatchOutcome::Stored]);
    assert_eq!(f.held(), (2, U256::from(600)));
    // Within one batch too, whatever the order.
    assert_eq!(f.push(vec![f.sign(7, 900), f.sign(6, 800)]).await, [WatchOutcome::Stored, kept(7, 900)]);
    assert_eq!(f.held(), (7, U256::from(900)));
    assert_eq!(f.watcher.channels().unwrap().len(), 1);
}

#[tokio::test]
async fn bad_bodies_are_400_with_a_json_error() {
    let f = fixture();
    let bearer = format!("Bearer {TOKEN}");
    let mut bad_amount = serde_json::to_value(f.sign(1, 100)).unwrap();
    bad_amount["cumulativeAmount"] = serde_json::json!(100);
    let too_many = body(vec![f.sign(1, 100); MAX_VOUCHERS_PER_REQUEST + 1]);
    let cases = [
        ("not json", "{nope".to_owned()),
        ("empty", String::new()),
        ("wrong shape", r#"{"voucher":[]}"#.to_owned()),
        ("number amount", serde_json::json!({ "vouchers": [bad_amount] }).to_string()),
        ("too many", too_many),
    ];
    for (name, text) in cases {
        let (status, bytes) = f.http("POST", WATCH_PATH, Some(&bearer), text).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}");
        let err: ApiError = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(err.error, ApiErrorCode::InvalidRequest, "{name}");
    }
    let (status, bytes) = f.http("POST", WATCH_PATH, Some(&bearer), "x".repeat(2 * 1024 * 1024)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(serde_json::from_slice::<ApiError>(&bytes).unwrap().error, ApiErrorCode::InvalidRequest);
    assert!(f.watcher.channels().unwrap().is_empty());
    // An empty batch is fine.
    let (status, _) = f.http("POST", WATCH_PATH, Some(&bearer), body(vec![])).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn rejections_are_reported_per_voucher() {
    let f = fixture();
    let domain = ChannelDomain::new(CHAIN_ID, contract());
    let keys = (&f.payer, &f.payee);
    // Channels in every state.
    let paid = f.other_channel(1, 1_000);
    f.chain.update(id_of(&paid), |c| c.paid = U256::from(500));
    let closed = f.other_channel(2, 1_000);
    f.chain.update(id_of(&closed), |c| c.open = false);
    let unknown = params(f.payer.address(), f.payee.address(), 0x99);

    let stranger = PrivateKeySigner::random();
    let mut wrong_params = f.sign(1, 100);
    wrong_params.params.challengePeriod += 1;
    let mut swapped_amount = f.claim(1, 100, 50);
    swapped_amount.claimed = U256::from(60);
    let vouchers = vec![
        claim_for(keys, &domain, &unknown, 1, 100, 100),
        claim_for((&stranger, &f.payee), &domain, &f.params, 1, 100, 100),
        claim_for(keys, &ChannelDomain::new(CHAIN_ID + 1, contract()), &f.params, 1, 100, 100),
        claim_for(keys, &ChannelDomain::new(CHAIN_ID, Address::repeat_byte(0xdd)), &f.params, 1, 100, 100),
        f.sign(1, 1_001),
        claim_for(keys, &domain, &paid, 5, 900, 500),
        claim_for(keys, &domain, &paid, 6, 500, 500),
        claim_for(keys, &domain, &closed, 1, 100, 100),
        wrong_params,
        claim_for((&f.payer, &stranger), &domain, &f.params, 1, 100, 100),
        swapped_amount,
        f.claim(1, 100, 101),
        f.sign(1, 1_000),
    ];
    let outcomes = f.push(vouchers).await;
    let codes: Vec<_> = outcomes.iter().map(code).collect();
    assert_eq!(
        codes,
        [
            Some(RejectCode::ChannelUnknown),
            Some(RejectCode::InvalidSignature),
            Some(RejectCode::ParamsMismatch),
            Some(RejectCode::ParamsMismatch),
            Some(RejectCode::ExceedsDeposit),
            Some(RejectCode::Stale),
            Some(RejectCode::Stale),
            Some(RejectCode::ChannelClosed),
            Some(RejectCode::ParamsMismatch),
            Some(RejectCode::InvalidClaimAuthorization),
            Some(RejectCode::InvalidClaimAuthorization),
            Some(RejectCode::InvalidClaimAuthorization),
            None,
        ]
    );
    assert_eq!(outcomes[12], WatchOutcome::Stored);
    // Only the good voucher's channel is watched.
    let watched: Vec<B256> = f.watcher.channels().unwrap().iter().map(|r| r.id).collect();
    assert_eq!(watched, [f.id]);

    // A chain outage is reported as retryable, and nothing is stored.
    let other = f.other_channel(3, 1_000);
    f.chain.set_down(true);
    let outcomes = f.push(vec![claim_for(keys, &domain, &other, 1, 100, 100)]).await;
    assert_eq!(code(&outcomes[0]), Some(RejectCode::Unavailable));
    assert!(f.watcher.record(id_of(&other)).unwrap().is_none());
}

#[tokio::test]
async fn keeps_what_the_payee_charged_not_the_ceiling() {
    let f = fixture();
    // A voucher of 500 of which the provider charged 120.
    assert_eq!(f.push(vec![f.claim(2, 500, 120)]).await, [WatchOutcome::Stored]);
    let record = f.watcher.record(f.id).unwrap().unwrap();
    let claim = record.claim();
    assert_eq!((claim.cumulativeAmount, claim.claimed), (U256::from(500), U256::from(120)));
    assert_eq!(claim.channel, f.params);
    // A bigger ceiling with a smaller claim does not replace it; a bigger claim does.
    assert_eq!(f.push(vec![f.claim(3, 900, 110)]).await, [kept(2, 120)]);
    assert_eq!(f.push(vec![f.claim(3, 900, 130)]).await, [WatchOutcome::Stored]);
    assert_eq!(f.held(), (3, U256::from(130)));
}

#[tokio::test]
async fn deposit_is_reread_before_refusing() {
    let f = fixture();
    assert_eq!(f.push(vec![f.sign(1, 100)]).await, [WatchOutcome::Stored]);
    // The payer tops up; the watcher's cached deposit is 1,000.
    f.chain.update(f.id, |c| c.deposit = U256::from(2_000));
    assert_eq!(f.push(vec![f.sign(2, 1_500)]).await, [WatchOutcome::Stored]);
    assert_eq!(f.watcher.record(f.id).unwrap().unwrap().chain.deposit, U256::from(2_000));
    let lookups = f.chain.lookups();
    assert_eq!(code(&f.push(vec![f.sign(3, 2_001)]).await[0]), Some(RejectCode::ExceedsDeposit));
    assert_eq!(f.chain.lookups(), lookups + 1, "one re-read before refusing");
    // Within the cached deposit: no chain read at all.
    assert_eq!(f.push(vec![f.sign(3, 1_600)]).await, [WatchOutcome::Stored]);
    assert_eq!(f.chain.lookups(), lookups + 1);
}

#[tokio::test]
async fn storage_failure_is_503() {
    let f = fixture_with(Arc::new(FlakyStore::default()));
    f.store.fail(true);
    assert!(matches!(
        f.watcher.watch(WatchRequest { vouchers: vec![f.sign(1, 100)] }).await,
        Err(WatcherError::Storage(_))
    ));
    let (status, bytes) =
        f.http("POST", WATCH_PATH, Some(&format!("Bearer {TOKEN}")), body(vec![f.sign(1, 100)])).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let err: ApiError = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(err.error, ApiErrorCode::Unavailable);
    // Once the disk is back, the retried push is answered (and made durable).
    f.store.fail(false);
    assert_eq!(f.push(vec![f.sign(1, 100)]).await, [WatchOutcome::Stored]);
}

#[tokio::test]
async fn restart_keeps_vouchers_and_rechecks_open_channels() {
    let f = fixture();
    let closed_params = f.other_channel(5, 1_000);
    let closed = id_of(&closed_params);
    let domain = ChannelDomain::new(CHAIN_ID, contract());
    f.push(vec![f.sign(3, 300), claim_for((&f.payer, &f.payee), &domain, &closed_params, 1, 100, 100)]).await;
    // First vouchers queue their channel for a re-read; later ones do not.
    assert_eq!(f.watcher.take_rechecks(), {
        let mut ids = vec![f.id, closed];
        ids.sort();
        ids
    });
    f.push(vec![f.sign(4, 400)]).await;
    assert!(f.watcher.take_rechecks().is_empty());
    f.chain.update(closed, |c| c.open = false);
    f.watcher.refresh(closed).await.unwrap();

    let restarted = Watcher::new(CHAIN_ID, contract(), TOKEN, Arc::clone(&f.store), f.chain.clone()).unwrap();
    let record = restarted.record(f.id).unwrap().unwrap();
    assert_eq!((record.voucher.nonce, record.claimed), (4, U256::from(400)));
    // Every open channel is re-read on the guard's first round; closed ones are done.
    assert_eq!(restarted.take_rechecks(), [f.id]);
    assert_eq!(restarted.record(closed).unwrap().unwrap().summary().status, WatchedStatus::Closed);
    // An older voucher pushed after the restart does not replace the better one.
    let again = Fixture { watcher: restarted, chain: f.chain.clone(), ..f };
    assert_eq!(again.push(vec![again.sign(2, 200)]).await, [kept(4, 400)]);
}

#[tokio::test]
async fn refuses_a_store_of_another_deployment() {
    let f = fixture();
    let other =
        Watcher::new(CHAIN_ID, Address::repeat_byte(0xdd), TOKEN, Arc::clone(&f.store), f.chain.clone());
    assert!(matches!(other, Err(WatcherError::DeploymentMismatch { .. })));
    let other = Watcher::new(1, contract(), TOKEN, Arc::clone(&f.store), f.chain.clone());
    assert!(matches!(other, Err(WatcherError::DeploymentMismatch { .. })));
    assert!(Watcher::new(CHAIN_ID, contract(), TOKEN, Arc::clone(&f.store), f.chain.clone()).is_ok());
    assert!(matches!(
        Watcher::new(CHAIN_ID, contract(), "short", Arc::clone(&f.store), f.chain.clone()),
        Err(WatcherError::Config(_))
    ));
}

#[tokio::test]
async fn refresh_follows_the_chain() {
    let f = fixture();
    assert!(f.watcher.refresh(f.id).await.unwrap().is_none(), "not watched yet");
    f.push(vec![f.sign(1, 100)]).await;
    f.chain.update(f.id, |c| c.exit_at = 99_999);
    let record = f.watcher.refresh(f.id).await.unwrap().unwrap();
    assert!(record.exiting());
    assert_eq!(record.summary().status, WatchedStatus::Exiting);
    assert_eq!(f.watcher.record(f.id).unwrap().unwrap(), record, "stored");
    // An outage is an error, and the record is unchanged.
    f.chain.set_down(true);
    assert!(matches!(f.watcher.refresh(f.id).await, Err(WatcherError::Chain(_))));
    assert_eq!(f.watcher.record(f.id).unwrap().unwrap(), record);
    f.chain.set_down(false);
    // The contract zeroes a closed channel: the record keeps what it knew, marked closed.
    f.chain.update(f.id, |c| {
        c.open = false;
        c.deposit = U256::ZERO;
        c.exit_at = 0;
    });
    let closed = f.watcher.refresh(f.id).await.unwrap().unwrap();
    assert!(!closed.chain.open);
    assert_eq!(closed.chain.deposit, record.chain.deposit);
}

#[test]
fn config_validates_and_redacts_the_token() {
    let good = WatcherConfig { contract: contract(), token: TOKEN.into(), ..WatcherConfig::default() };
    good.validate().unwrap();
    let debug = format!("{good:?}");
    assert!(!debug.contains(TOKEN), "{debug}");
    assert!(debug.contains("<redacted>"));

    let bad = [
        ("no contract", WatcherConfig { contract: Address::ZERO, ..good.clone() }),
        ("no token", WatcherConfig { token: String::new(), ..good.clone() }),
        ("short token", WatcherConfig { token: "0123456789abcde".into(), ..good.clone() }),
        ("spaces in token", WatcherConfig { token: "0123456789 abcdef".into(), ..good.clone() }),
        ("zero poll", WatcherConfig { poll_interval: Duration::ZERO, ..good.clone() }),
        ("zero log range", WatcherConfig { max_log_range: 0, ..good.clone() }),
        ("zero receipt timeout", WatcherConfig { receipt_timeout: Duration::ZERO, ..good.clone() }),
        ("no rpc", WatcherConfig { rpc_url: " ".into(), ..good.clone() }),
    ];
    for (name, config) in bad {
        assert!(matches!(config.validate(), Err(WatcherError::Config(_))), "{name}");
    }
    assert_eq!(good.guard_settings().max_log_range, 2_000);
}

//! The `x402-node` gateway on anvil: deploy, open a channel, pay a route through the gateway in
//! front of a small upstream, refuse each kind of bad payment, restart the node and continue
//! the channel where it stopped, then redeem the last voucher on-chain.

use alloy::{
    primitives::{Address, B256, U256},
    providers::DynProvider,
    signers::local::PrivateKeySigner,
    sol,
};
use reqwest::StatusCode;
use x402_e2e::{
    account, anvil, deploy_channel, deploy_stablecoin,
    harness::{ADMIN, Gateway, ITestStablecoin, PRICE, gateway_config, paid, required},
    provider, upstream,
};
use x402_node::config::RouteConfig;
use x402_protocol::{
    ChannelDomain, SignedVoucher, Voucher,
    bindings::IPaymentChannel,
    wire::{self, ErrorCode, PaymentPayload, PaymentRequirements, SettlementResponse},
};

const DEPOSIT: u64 = 1_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_charges_refuses_restarts_and_settles() {
    let anvil = anvil();
    let provider_key = account(&anvil, 0);
    let payer = account(&anvil, 1);
    let node_chain: DynProvider = provider(&anvil, provider_key.clone());
    let payer_chain: DynProvider = provider(&anvil, payer.clone());

    let contract = deploy_channel(&node_chain).await.expect("deploys channel");
    let usd = deploy_stablecoin(&node_chain).await.expect("deploys token");
    let token = ITestStablecoin::new(usd, &payer_chain);
    token.mint(payer.address(), U256::from(10 * DEPOSIT)).send().await.unwrap().get_receipt().await.unwrap();
    token.approve(contract, U256::MAX).send().await.unwrap().get_receipt().await.unwrap();
    let channels = IPaymentChannel::new(contract, &payer_chain);
    let params = IPaymentChannel::ChannelParams {
        payer: payer.address(),
        payee: provider_key.address(),
        token: usd,
        signer: Address::ZERO,
        challengePeriod: 86_400,
        salt: B256::repeat_byte(1),
    };
    let id = channels.computeChannelId(params.clone()).call().await.unwrap();
    channels.open(params.clone(), U256::from(DEPOSIT)).send().await.unwrap().get_receipt().await.unwrap();

    let api = upstream().await;
    let data = tempfile::tempdir().unwrap();
    let mut config = gateway_config(&anvil, contract, usd, provider_key.address(), api, data.path());
    config.max_timeout_seconds = 2;
    config.routes.push(RouteConfig {
        path: "/slow".into(),
        methods: Vec::new(),
        price: U256::from(PRICE),
        pricing: Default::default(),
        description: None,
        mime_type: None,
        replay_body: false,
        schemes: None,
    });

    let gw = Gateway::start(config.clone()).await;
    let client = reqwest::Client::new();
    let weather = format!("{}/weather", gw.url);

    // Unpaid: a 402 with the terms.
    let resp = client.get(&weather).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYMENT_REQUIRED);
    let terms: PaymentRequirements = required(&resp).accepts.remove(0);
    assert_eq!((terms.asset, terms.pay_to, terms.extra.contract), (usd, provider_key.address(), contract));
    assert_eq!(terms.network.chain_id, anvil.chain_id());

    let domain = ChannelDomain::new(anvil.chain_id(), contract);
    let sign = |key: &PrivateKeySigner, nonce: u64, amount: u64| -> SignedVoucher {
        domain.sign(key, Voucher { channelId: id, nonce, cumulativeAmount: U256::from(amount) }).unwrap()
    };
    let header = |v: &SignedVoucher| wire::encode_header(&PaymentPayload::new(&terms, v));

    // Paid.
    let resp = paid(&client, &weather, header(&sign(&payer, 1, PRICE))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let s: SettlementResponse =
        wire::decode_header(resp.headers()[wire::PAYMENT_RESPONSE].as_bytes()).unwrap();
    assert_eq!(
        (
            s.payer,
            s.extra.as_ref().expect("channel extra").nonce,
            s.extra.as_ref().expect("channel extra").total_charged
        ),
        (payer.address(), 1, U256::from(PRICE))
    );
    assert_eq!(resp.json::<serde_json::Value>().await.unwrap()["forecast"], "sunny");

    // An upstream slower than maxTimeoutSeconds gets a 502, and the voucher is not consumed.
    let slow = paid(&client, &format!("{}/slow", gw.url), header(&sign(&payer, 2, 2 * PRICE))).await;
    assert_eq!(slow.status(), StatusCode::BAD_GATEWAY);
    assert!(slow.headers().get(wire::PAYMENT_RESPONSE).is_none());

    // Payment headers never reach the upstream.
    let echo = paid(&client, &format!("{}/echo", gw.url), header(&sign(&payer, 1, PRICE))).await;
    assert_eq!(echo.text().await.unwrap(), "payment-header-seen=false");

    // Every kind of bad payment.
    let stranger = PrivateKeySigner::random();
    let mut wrong_network = PaymentPayload::new(&terms, &sign(&payer, 2, 2 * PRICE));
    wrong_network.accepted.as_mut().unwrap().network = "eip155:1".into();
    let mut unknown = PaymentPayload::new(&terms, &sign(&payer, 2, 2 * PRICE));
    unknown.payload.channel_id = B256::repeat_byte(0x77);
    let bad: Vec<(&str, String, StatusCode, ErrorCode)> = vec![
        ("garbage", "not base64!".into(), StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload),
        (
            "network",
            wire::encode_header(&wrong_network),
            StatusCode::PAYMENT_REQUIRED,
            ErrorCode::InvalidNetwork,
        ),
        (
            "unknown channel",
            wire::encode_header(&unknown),
            StatusCode::PAYMENT_REQUIRED,
            ErrorCode::ChannelUnknown,
        ),
        (
            "a used nonce",
            header(&sign(&payer, 1, 2 * PRICE)),
            StatusCode::PAYMENT_REQUIRED,
            ErrorCode::NonceTooLow,
        ),
        (
            "underpaid",
            header(&sign(&payer, 2, PRICE + 1)),
            StatusCode::PAYMENT_REQUIRED,
            ErrorCode::AmountBelowPrice,
        ),
        (
            "over deposit",
            header(&sign(&payer, 2, DEPOSIT + 1)),
            StatusCode::PAYMENT_REQUIRED,
            ErrorCode::InsufficientDeposit,
        ),
        (
            "wrong signer",
            header(&sign(&stranger, 2, 2 * PRICE)),
            StatusCode::PAYMENT_REQUIRED,
            ErrorCode::InvalidSignature,
        ),
    ];
    for (name, h, status, code) in bad {
        let resp = paid(&client, &weather, h).await;
        assert_eq!(resp.status(), status, "{name}");
        assert_eq!(required(&resp).error, Some(code), "{name}");
    }

    // The very voucher served: its receipt again (409: the response is not kept), no charge.
    let resend = paid(&client, &weather, header(&sign(&payer, 1, PRICE))).await;
    assert_eq!(resend.status(), StatusCode::CONFLICT);
    assert!(resend.headers().contains_key(wire::PAYMENT_RESPONSE));

    // Admin needs the token.
    let admin = format!("{}/admin/channels", gw.url);
    assert_eq!(client.get(&admin).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let listed: serde_json::Value =
        client.get(&admin).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed[0]["charged"], PRICE.to_string());
    let metrics = client.get(format!("{}/metrics", gw.url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("x402_requests_paid_total 1"), "{metrics}");

    // Restart: the node continues the channel where it stopped.
    gw.stop().await;
    let gw = Gateway::start(config).await;
    let weather = format!("{}/weather", gw.url);
    assert_eq!(
        required(&paid(&client, &weather, header(&sign(&payer, 1, 2 * PRICE))).await).error,
        Some(ErrorCode::NonceTooLow)
    );
    let last = sign(&payer, 2, 2 * PRICE);
    assert_eq!(paid(&client, &weather, header(&last)).await.status(), StatusCode::OK);
    gw.stop().await;

    // What the node accepted is redeemable on-chain, for exactly what it charged.
    let node_channels = IPaymentChannel::new(contract, &node_chain);
    let claim = IPaymentChannel::Claim {
        channel: params,
        nonce: last.nonce(),
        cumulativeAmount: last.cumulative_amount(),
        claimed: last.cumulative_amount(),
        signature: last.signature.clone(),
    };
    node_channels.close(claim).send().await.unwrap().get_receipt().await.unwrap();
    let balance =
        ITestStablecoin::new(usd, &payer_chain).balanceOf(provider_key.address()).call().await.unwrap();
    assert_eq!(balance, U256::from(2 * PRICE));
}

sol! {
    #[sol(rpc)]
    interface IERC1271Wallet {
        function owner() external view returns (address);
    }
}

/// A smart-wallet payer (EIP-1271, no session key): refused by default (its wallet could revoke
/// its vouchers); with `payment.accept_contract_signers` the node verifies its vouchers by
/// asking the wallet on-chain, exactly as the contract does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_accepts_eip1271_wallet_vouchers() {
    use alloy::{
        network::TransactionBuilder,
        providers::{Provider, ProviderBuilder},
        rpc::types::TransactionRequest,
        sol_types::{SolCall, SolValue},
    };

    let anvil = anvil();
    let provider_key = account(&anvil, 0);
    let owner = PrivateKeySigner::random();
    let node_chain = provider(&anvil, provider_key.clone());
    let contract = deploy_channel(&node_chain).await.unwrap();
    let wallet = x402_e2e::deploy(
        &node_chain,
        x402_e2e::creation_code("ERC1271Wallet.sol", "ERC1271Wallet"),
        &owner.address().abi_encode(),
    )
    .await
    .unwrap();
    assert_eq!(IERC1271Wallet::new(wallet, &node_chain).owner().call().await.unwrap(), owner.address());

    // The wallet opens a native-token channel (anvil lets the test act as the wallet).
    let unsigned = ProviderBuilder::new().connect_http(anvil.endpoint_url());
    let _: () = unsigned.raw_request("anvil_impersonateAccount".into(), (wallet,)).await.unwrap();
    let _: () =
        unsigned.raw_request("anvil_setBalance".into(), (wallet, U256::from(10u128.pow(20)))).await.unwrap();
    let params = IPaymentChannel::ChannelParams {
        payer: wallet,
        payee: provider_key.address(),
        token: Address::ZERO,
        signer: Address::ZERO,
        challengePeriod: 86_400,
        salt: B256::repeat_byte(9),
    };
    let id =
        IPaymentChannel::new(contract, &node_chain).computeChannelId(params.clone()).call().await.unwrap();
    let open = TransactionRequest::default()
        .with_from(wallet)
        .with_to(contract)
        .with_value(U256::from(DEPOSIT))
        .with_input(IPaymentChannel::openCall { params, deposit: U256::from(DEPOSIT) }.abi_encode());
    let receipt = unsigned.send_transaction(open).await.unwrap().get_receipt().await.unwrap();
    assert!(receipt.status(), "the wallet opened the channel");

    let api = upstream().await;
    let data = tempfile::tempdir().unwrap();
    let config = gateway_config(&anvil, contract, Address::ZERO, provider_key.address(), api, data.path());
    let gw = Gateway::start(config.clone()).await;
    let client = reqwest::Client::new();
    let weather = format!("{}/weather", gw.url);
    let terms: PaymentRequirements = required(&client.get(&weather).send().await.unwrap()).accepts.remove(0);
    let domain = ChannelDomain::new(anvil.chain_id(), contract);
    let header = |key: &PrivateKeySigner, nonce: u64| {
        let v = domain
            .sign(key, Voucher { channelId: id, nonce, cumulativeAmount: U256::from(nonce * PRICE) })
            .unwrap();
        wire::encode_header(&PaymentPayload::new(&terms, &v))
    };

    // By default a contract signer is refused: its wallet decides at redemption time.
    let resp = paid(&client, &weather, header(&owner, 1)).await;
    let refusal = required(&resp);
    assert_eq!(refusal.error, Some(ErrorCode::ChannelMismatch));
    gw.stop().await;

    let mut config = config;
    config.payment.accept_contract_signers = true;
    let gw = Gateway::start(config).await;

    // The owner's signature is the wallet's; anyone else's is not.
    let resp = paid(&client, &weather, header(&PrivateKeySigner::random(), 1)).await;
    assert_eq!(required(&resp).error, Some(ErrorCode::InvalidSignature));
    assert_eq!(paid(&client, &weather, header(&owner, 1)).await.status(), StatusCode::OK);
    assert_eq!(paid(&client, &weather, header(&owner, 2)).await.status(), StatusCode::OK);
    gw.stop().await;
}

//! The x402 v2 wire format for the `channel-voucher` scheme (and the envelope of the official
//! `exact` scheme, which the node also takes).
//!
//! - A refused request gets `402` with a [`PaymentRequired`] in the `PAYMENT-REQUIRED` header
//!   (base64 JSON) and, as plain JSON, in the body.
//! - The client pays with a [`PaymentPayload`] in `PAYMENT-SIGNATURE` (v2) or `X-PAYMENT` (the
//!   v1 alias), base64 JSON.
//! - A paid response carries a [`SettlementResponse`] in `PAYMENT-RESPONSE`, base64 JSON.
//! - Credit windows: a voucher may pay ahead for several requests. The node then grants a
//!   [`SessionGrant`] in the `PAYMENT-RESPONSE`, and the next requests inside the prepaid
//!   window present `PAYMENT-SESSION: <channelId>:<token>` ([`encode_session`]) instead of a
//!   new signature.
//!
//! Amounts are decimal strings of token base units, as in x402.

use std::fmt;

use alloy::primitives::{Address, B256, Bytes, U256};
use base64::{Engine, engine::general_purpose::STANDARD};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{Error, Network, Result, SignedVoucher, Voucher};

/// The x402 protocol version this crate speaks.
pub const X402_VERSION: u32 = 2;
/// This project's payment scheme name. Not `channel`: a different proposal in the x402
/// specification repository already uses that name with another payload.
pub const SCHEME: &str = "channel-voucher";
/// The official x402 `exact` scheme name.
pub const EXACT_SCHEME: &str = "exact";
/// Header of a 402 response carrying a base64 [`PaymentRequired`].
pub const PAYMENT_REQUIRED: &str = "payment-required";
/// Header of a request carrying a base64 [`PaymentPayload`] (x402 v2).
pub const PAYMENT_SIGNATURE: &str = "payment-signature";
/// The x402 v1 alias of [`PAYMENT_SIGNATURE`].
pub const X_PAYMENT: &str = "x-payment";
/// Header of a paid response carrying a base64 [`SettlementResponse`].
pub const PAYMENT_RESPONSE: &str = "payment-response";
/// Header of a request paid from a prepaid credit window: `<channelId>:<token>`, both
/// `0x`-prefixed hex (see [`SessionGrant`]).
pub const PAYMENT_SESSION: &str = "payment-session";
/// The longest payment header accepted, in bytes (before base64 decoding).
pub const MAX_HEADER_LEN: usize = 8 * 1024;

/// Machine-readable reason a payment was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// No payment was presented.
    PaymentRequired,
    /// The payment header is malformed: bad base64, bad JSON, wrong types, too large.
    InvalidPayload,
    /// The x402 version is not supported.
    InvalidX402Version,
    /// The scheme is unknown or not accepted on this route.
    InvalidScheme,
    /// The network is not the node's.
    InvalidNetwork,
    /// The channel does not exist on-chain.
    ChannelUnknown,
    /// The channel pays another provider, token or contract, or its terms are not accepted
    /// (challenge period or deposit below the node's minimum).
    ChannelMismatch,
    /// The channel has an exit pending or a close requested: no new vouchers.
    ChannelClosing,
    /// The channel is closed.
    ChannelClosed,
    /// The voucher's nonce is not above the node's latest (corrective: see the channel state).
    NonceTooLow,
    /// The voucher's amount does not cover the price on top of the node's latest amount
    /// (corrective: see the channel state).
    AmountBelowPrice,
    /// The voucher's amount is above the channel's deposit.
    InsufficientDeposit,
    /// The voucher's signature is not the channel signer's.
    InvalidSignature,
    /// The session token is unknown, used up or revoked (a new voucher, a close, an exit, a
    /// node restart): pay with a new voucher (corrective: see the channel state).
    SessionInvalid,
    /// The node could not process the payment (storage or chain unavailable); retry later.
    Unavailable,
    /// `exact`: the authorisation does not match the offer (recipient, value, validity window),
    /// its nonce was used, or the token refuses it.
    InvalidAuthorization,
    /// `exact`: the payer's token balance does not cover the price.
    InsufficientFunds,
    /// `exact`: the transfer failed on-chain; the content was not released.
    SettlementFailed,
}

impl ErrorCode {
    /// The snake_case code.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::PaymentRequired => "payment_required",
            Self::InvalidPayload => "invalid_payload",
            Self::InvalidX402Version => "invalid_x402_version",
            Self::InvalidScheme => "invalid_scheme",
            Self::InvalidNetwork => "invalid_network",
            Self::ChannelUnknown => "channel_unknown",
            Self::ChannelMismatch => "channel_mismatch",
            Self::ChannelClosing => "channel_closing",
            Self::ChannelClosed => "channel_closed",
            Self::NonceTooLow => "nonce_too_low",
            Self::AmountBelowPrice => "amount_below_price",
            Self::InsufficientDeposit => "insufficient_deposit",
            Self::InvalidSignature => "invalid_signature",
            Self::SessionInvalid => "session_invalid",
            Self::Unavailable => "unavailable",
            Self::InvalidAuthorization => "invalid_authorization",
            Self::InsufficientFunds => "insufficient_funds",
            Self::SettlementFailed => "settlement_failed",
        }
    }

    /// Whether a client can retry at once after resynchronising to the channel state in the
    /// 402 (a *corrective* refusal).
    pub const fn is_corrective(self) -> bool {
        matches!(self, Self::NonceTooLow | Self::AmountBelowPrice | Self::SessionInvalid)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The payment schemes this crate knows. The node reads the scheme of a payment FIRST
/// ([`PaymentEnvelope::scheme`]) and only then decodes its payload strictly for that scheme:
/// this enum is the one dispatch point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Scheme {
    /// This project's scheme: EIP-712 vouchers on a `PaymentChannel` ([`SCHEME`]).
    #[serde(rename = "channel-voucher")]
    ChannelVoucher,
    /// The official x402 `exact` EVM scheme: an EIP-3009 `transferWithAuthorization`
    /// ([`EXACT_SCHEME`]).
    #[serde(rename = "exact")]
    Exact,
}

impl Scheme {
    /// The scheme's wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ChannelVoucher => SCHEME,
            Self::Exact => EXACT_SCHEME,
        }
    }

    /// The scheme named `name`, if this crate knows it (names are case-sensitive).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            SCHEME => Some(Self::ChannelVoucher),
            EXACT_SCHEME => Some(Self::Exact),
            _ => None,
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body and `PAYMENT-REQUIRED` header of a 402.
///
/// On the wire `accepts` is one list: the [`SCHEME`] offers first, then the `exact` ones.
/// Here they are kept apart by scheme, so that code about one scheme never has to look at the
/// other's `extra`. Decoding skips offers of schemes this crate does not know and decodes the
/// others strictly for their scheme.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "RawPaymentRequired", try_from = "RawPaymentRequired")]
pub struct PaymentRequired {
    /// Always [`X402_VERSION`].
    pub x402_version: u32,
    /// Why the presented payment was refused; absent when none was presented.
    pub error: Option<ErrorCode>,
    /// The resource that costs money.
    pub resource: Resource,
    /// The [`SCHEME`] offers; this node makes one per accepted token.
    pub accepts: Vec<PaymentRequirements>,
    /// The `exact` offers, when the route takes that scheme.
    pub exact: Vec<ExactRequirements>,
}

impl PaymentRequired {
    /// A 402 with only [`SCHEME`] offers.
    pub const fn new(
        error: Option<ErrorCode>,
        resource: Resource,
        accepts: Vec<PaymentRequirements>,
    ) -> Self {
        Self { x402_version: X402_VERSION, error, resource, accepts, exact: Vec::new() }
    }
}

/// The JSON shape of [`PaymentRequired`].
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPaymentRequired {
    x402_version: u32,
    /// A snake_case [`ErrorCode`]; other servers (the official middleware) put free text here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    resource: Resource,
    accepts: Vec<serde_json::Value>,
}

impl From<PaymentRequired> for RawPaymentRequired {
    fn from(p: PaymentRequired) -> Self {
        // Serialising these plain structs cannot fail.
        let ours = p.accepts.iter().map(|r| serde_json::to_value(r).unwrap_or_default());
        let exact = p.exact.iter().map(|r| serde_json::to_value(r).unwrap_or_default());
        Self {
            x402_version: p.x402_version,
            error: p.error.map(|e| e.as_str().to_owned()),
            resource: p.resource,
            accepts: ours.chain(exact).collect(),
        }
    }
}

impl TryFrom<RawPaymentRequired> for PaymentRequired {
    type Error = serde_json::Error;

    fn try_from(raw: RawPaymentRequired) -> Result<Self, Self::Error> {
        let (mut accepts, mut exact) = (Vec::new(), Vec::new());
        for offer in raw.accepts {
            match offer.get("scheme").and_then(|s| s.as_str()).and_then(Scheme::parse) {
                Some(Scheme::ChannelVoucher) => accepts.push(serde_json::from_value(offer)?),
                Some(Scheme::Exact) => exact.push(serde_json::from_value(offer)?),
                None => {}
            }
        }
        // An error that is not one of our codes (free text from another server) still says
        // that payment is required.
        let error = raw.error.map(|e| {
            serde_json::from_value(serde_json::Value::String(e)).unwrap_or(ErrorCode::PaymentRequired)
        });
        Ok(Self { x402_version: raw.x402_version, error, resource: raw.resource, accepts, exact })
    }
}

/// The resource a 402 is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    /// The absolute URL of the request (`<public base URL><path and query>`).
    pub url: String,
    /// What the route does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The MIME type of the paid response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
}

/// One way to pay: one scheme on one network, in one token. `E` is the scheme's `extra`:
/// [`ChannelExtra`] for [`SCHEME`], [`ExactExtra`] for `exact` ([`ExactRequirements`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequirements<E = ChannelExtra> {
    /// The scheme's name ([`SCHEME`] or [`EXACT_SCHEME`]).
    pub scheme: String,
    /// The chain.
    pub network: Network,
    /// The price in token base units; for dynamically priced routes, the most one request
    /// may cost (the voucher must cover it, the node charges what the request actually cost).
    #[serde(with = "u256_dec")]
    pub amount: U256,
    /// The token, or the zero address for the native token.
    #[serde(with = "checksummed")]
    pub asset: Address,
    /// The provider (the channel's payee, the transfer's recipient).
    #[serde(with = "checksummed")]
    pub pay_to: Address,
    /// How long the node takes at most to answer a paid request.
    pub max_timeout_seconds: u64,
    /// Scheme-specific terms.
    pub extra: E,
}

/// The requirements of the official `exact` EVM scheme.
pub type ExactRequirements = PaymentRequirements<ExactExtra>;

/// The `extra` of an `exact` offer: the token's EIP-712 domain, which the EIP-3009
/// authorisation is signed under.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExactExtra {
    /// The token's EIP-712 domain name.
    pub name: String,
    /// The token's EIP-712 domain version.
    pub version: String,
}

/// An EIP-712 domain's name and version (its chain id and contract are given elsewhere).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainInfo {
    /// The domain name.
    pub name: String,
    /// The domain version.
    pub version: String,
}

impl DomainInfo {
    /// The `PaymentChannel` contract's domain.
    pub fn channel() -> Self {
        Self { name: crate::voucher::DOMAIN_NAME.into(), version: crate::voucher::DOMAIN_VERSION.into() }
    }
}

/// The `extra` of a [`SCHEME`] offer: what a client needs to open a channel and pay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelExtra {
    /// The TOKEN's EIP-712 domain name, as in the other EVM schemes; absent if unknown or native.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The TOKEN's EIP-712 domain version; absent if unknown or native.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The `PaymentChannel` contract (the vouchers' `verifyingContract`).
    #[serde(with = "checksummed")]
    pub contract: Address,
    /// The `PaymentChannel` contract's EIP-712 domain.
    pub domain: DomainInfo,
    /// The shortest challenge period the node accepts, in seconds.
    pub min_challenge_period: u64,
    /// The smallest deposit the node accepts, in token base units.
    #[serde(with = "u256_dec")]
    pub min_deposit: U256,
    /// `"exact"` for a fixed price, `"upto"` when the node charges the actual cost up to `amount`.
    pub pricing: Pricing,
    /// The node's state of the channel the request named, if it knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<ChannelState>,
    /// The most requests one voucher may pay ahead for (a credit window; see
    /// [`SessionGrant`]). Absent: one voucher per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_credit_window: Option<u32>,
}

/// How a route is priced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pricing {
    /// Every request costs `amount`.
    #[default]
    Exact,
    /// A request costs what it actually cost, at most `amount`.
    Upto,
}

/// The node's view of a channel, sent so that a client can resynchronise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelState {
    /// The channel.
    pub channel_id: B256,
    /// The nonce of the latest voucher the node holds (0: none).
    pub nonce: u64,
    /// The cumulative amount of that voucher (the signed ceiling).
    #[serde(with = "u256_dec")]
    pub cumulative_amount: U256,
    /// What the node has actually charged in total (≤ `cumulative_amount`). The next voucher
    /// must cover `charged + price`.
    #[serde(with = "u256_dec")]
    pub charged: U256,
    /// The channel's deposit.
    #[serde(with = "u256_dec")]
    pub deposit: U256,
    /// The payer's own signature of that voucher (`channelId`, `nonce`, `cumulativeAmount`
    /// under the channel domain), so that a client can check the state it is handed is one it
    /// signed. Empty when `nonce` is 0.
    #[serde(default)]
    pub signature: Bytes,
}

impl ChannelState {
    /// The voucher this state claims the payer signed.
    pub const fn voucher(&self) -> Voucher {
        Voucher { channelId: self.channel_id, nonce: self.nonce, cumulativeAmount: self.cumulative_amount }
    }

    /// Whether `signature` is `signer`'s ECDSA signature of [`Self::voucher`] under `domain`
    /// (65 bytes `r ‖ s ‖ v`). A state with nonce 0 claims no voucher and has nothing to check:
    /// it is "signed" only if it also claims nothing (`cumulativeAmount` and `charged` zero).
    pub fn signed_by(&self, domain: &crate::ChannelDomain, signer: Address) -> bool {
        if self.nonce == 0 {
            return self.cumulative_amount.is_zero() && self.charged.is_zero();
        }
        let Ok(raw) = <[u8; 65]>::try_from(self.signature.as_ref()) else { return false };
        let Ok(sig) = alloy::primitives::Signature::from_raw(&raw) else { return false };
        sig.recover_address_from_prehash(&domain.signing_hash(&self.voucher())).is_ok_and(|a| a == signer)
    }
}

/// What a client sends in `PAYMENT-SIGNATURE` (or `X-PAYMENT`), with a typed payload `P`
/// ([`VoucherPayload`] for [`SCHEME`], [`ExactPayload`] for `exact`). The node does not decode
/// this type: it reads a [`PaymentEnvelope`] and decodes the payload once it knows the scheme.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentPayload<P = VoucherPayload> {
    /// The x402 version the client speaks (1 or 2).
    pub x402_version: u32,
    /// The requirements the client chose to pay (v2), echoed in full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted: Option<AcceptedRequirements>,
    /// The scheme (v1 puts it at the top level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// The network (v1 puts it at the top level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The scheme's payload.
    pub payload: P,
}

/// The chosen requirements, as echoed in a payment's `accepted`. A client sends every field
/// ([`From<&PaymentRequirements>`]); the node reads them leniently: it checks `scheme`,
/// `network`, `asset` and `payTo` against its offers, while `amount`, `maxTimeoutSeconds` and
/// `extra` are informative (the node prices each request itself) and may be absent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AcceptedRequirements {
    /// The scheme.
    pub scheme: String,
    /// The network, as sent (validated by the node).
    pub network: String,
    /// The price the client was offered (informative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    /// The token the client pays in.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "checksummed::option")]
    pub asset: Option<Address>,
    /// The provider the client pays.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "checksummed::option")]
    pub pay_to: Option<Address>,
    /// The offer's timeout (informative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_timeout_seconds: Option<u64>,
    /// The offer's `extra` (informative), kept as sent: the node never reads it, so it is not
    /// parsed into a tree on the paid path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<RawJson>,
}

/// JSON kept verbatim (validated, not parsed into a tree), compared by its text.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawJson(pub Box<serde_json::value::RawValue>);

impl RawJson {
    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Eq for RawJson {}

impl<E: Serialize> From<&PaymentRequirements<E>> for AcceptedRequirements {
    fn from(r: &PaymentRequirements<E>) -> Self {
        Self {
            scheme: r.scheme.clone(),
            network: r.network.to_string(),
            amount: Some(r.amount.to_string()),
            asset: Some(r.asset),
            pay_to: Some(r.pay_to),
            max_timeout_seconds: Some(r.max_timeout_seconds),
            // Serialising these plain structs cannot fail.
            extra: serde_json::value::to_raw_value(&r.extra).ok().map(RawJson),
        }
    }
}

impl<P> PaymentPayload<P> {
    /// A v2 payment of `requirements` with `payload`, echoing the requirements in full.
    pub fn with_payload<E: Serialize>(requirements: &PaymentRequirements<E>, payload: P) -> Self {
        Self {
            x402_version: X402_VERSION,
            accepted: Some(requirements.into()),
            scheme: None,
            network: None,
            payload,
        }
    }

    /// The scheme, from `accepted` (v2) or the top level (v1).
    pub fn scheme(&self) -> Option<&str> {
        self.accepted.as_ref().map(|a| a.scheme.as_str()).or(self.scheme.as_deref())
    }

    /// The network, from `accepted` (v2) or the top level (v1).
    pub fn network(&self) -> Option<&str> {
        self.accepted.as_ref().map(|a| a.network.as_str()).or(self.network.as_deref())
    }
}

impl PaymentPayload {
    /// A v2 payload paying `requirements` with `voucher`.
    pub fn new(requirements: &PaymentRequirements, voucher: &SignedVoucher) -> Self {
        Self::with_payload(requirements, voucher.into())
    }
}

/// A payment as the node first reads it: the envelope decoded leniently, the payload kept
/// raw. Read [`Self::scheme`] first, refuse a scheme the route does not take with
/// `invalid_scheme`, and only then decode the payload strictly ([`Self::payload`]) for that
/// scheme: an `exact` payload sent to a channel-only route is a wrong scheme, not a malformed
/// voucher.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentEnvelope {
    /// The x402 version the client speaks (1 or 2).
    pub x402_version: u32,
    /// The requirements the client chose to pay (v2).
    #[serde(default)]
    pub accepted: Option<AcceptedRequirements>,
    /// The scheme (v1).
    #[serde(default)]
    pub scheme: Option<String>,
    /// The network (v1).
    #[serde(default)]
    pub network: Option<String>,
    /// The scheme's payload, not yet decoded.
    pub payload: Box<serde_json::value::RawValue>,
}

impl PaymentEnvelope {
    /// Decodes a payment header (base64 JSON, at most [`MAX_HEADER_LEN`] bytes).
    pub fn decode(header: &[u8]) -> Result<Self> {
        decode_header(header)
    }

    /// The scheme's name as sent, from `accepted` (v2) or the top level (v1).
    pub fn scheme_name(&self) -> Option<&str> {
        self.accepted.as_ref().map(|a| a.scheme.as_str()).or(self.scheme.as_deref())
    }

    /// The scheme, if this crate knows it.
    pub fn scheme(&self) -> Option<Scheme> {
        self.scheme_name().and_then(Scheme::parse)
    }

    /// The network, from `accepted` (v2) or the top level (v1).
    pub fn network(&self) -> Option<&str> {
        self.accepted.as_ref().map(|a| a.network.as_str()).or(self.network.as_deref())
    }

    /// Decodes the payload strictly as `P` ([`VoucherPayload`] or [`ExactPayload`], both
    /// refusing unknown fields).
    pub fn payload<P: DeserializeOwned>(&self) -> Result<P> {
        Ok(serde_json::from_str(self.payload.get())?)
    }
}

/// The voucher inside a [`PaymentPayload`] (and pushed to watchers). Unknown fields are
/// refused: a field the node does not understand must not be silently ignored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VoucherPayload {
    /// The channel.
    pub channel_id: B256,
    /// The voucher's nonce.
    pub nonce: u64,
    /// The voucher's cumulative amount.
    #[serde(with = "u256_dec")]
    pub cumulative_amount: U256,
    /// The signature, hex.
    pub signature: Bytes,
}

impl From<&SignedVoucher> for VoucherPayload {
    fn from(v: &SignedVoucher) -> Self {
        Self {
            channel_id: v.voucher.channelId,
            nonce: v.voucher.nonce,
            cumulative_amount: v.voucher.cumulativeAmount,
            signature: v.signature.clone(),
        }
    }
}

impl From<VoucherPayload> for SignedVoucher {
    fn from(p: VoucherPayload) -> Self {
        Self {
            voucher: Voucher {
                channelId: p.channel_id,
                nonce: p.nonce,
                cumulativeAmount: p.cumulative_amount,
            },
            signature: p.signature,
        }
    }
}

/// The payload of the official `exact` EVM scheme: an EIP-3009 authorisation and its
/// signature. Unknown fields are refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExactPayload {
    /// The signature of the authorisation under the token's EIP-712 domain.
    pub signature: Bytes,
    /// The `transferWithAuthorization` arguments.
    pub authorization: ExactAuthorization,
}

/// The EIP-3009 `TransferWithAuthorization` message of an [`ExactPayload`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExactAuthorization {
    /// The payer.
    #[serde(with = "checksummed")]
    pub from: Address,
    /// The recipient (the provider).
    #[serde(with = "checksummed")]
    pub to: Address,
    /// The amount, in token base units.
    #[serde(with = "u256_dec")]
    pub value: U256,
    /// Valid after this unix time, in seconds.
    #[serde(with = "u256_dec")]
    pub valid_after: U256,
    /// Valid before this unix time, in seconds.
    #[serde(with = "u256_dec")]
    pub valid_before: U256,
    /// The authorisation's unique nonce.
    pub nonce: B256,
}

/// What a paid response carries in `PAYMENT-RESPONSE` (and a facilitator's settle answers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettlementResponse {
    /// Always true on a paid response.
    pub success: bool,
    /// Empty for [`SCHEME`] (channel payments settle later, in batches); the transaction hash
    /// for `exact`.
    pub transaction: String,
    /// The chain.
    pub network: Network,
    /// The payer.
    #[serde(with = "checksummed")]
    pub payer: Address,
    /// What this request was charged.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "u256_dec::option")]
    pub amount: Option<U256>,
    /// The channel state after this payment ([`SCHEME`] only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<SettlementExtra>,
}

impl SettlementResponse {
    /// The channel state after this payment; `None` for other schemes.
    pub const fn channel(&self) -> Option<&SettlementExtra> {
        self.extra.as_ref()
    }
}

/// The `extra` of a [`SettlementResponse`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettlementExtra {
    /// The channel.
    pub channel_id: B256,
    /// The nonce of the voucher that paid.
    pub nonce: u64,
    /// Its cumulative amount.
    #[serde(with = "u256_dec")]
    pub cumulative_amount: U256,
    /// What this request cost.
    #[serde(with = "u256_dec")]
    pub charged: U256,
    /// What the node has charged on this channel in total.
    #[serde(with = "u256_dec")]
    pub total_charged: U256,
    /// The session of the prepaid credit window, while it lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionGrant>,
}

/// A session over a prepaid credit window: the voucher that paid covered more than this
/// request, and the next `uses` requests may present `token` (in [`PAYMENT_SESSION`]) instead
/// of a new signature. The token is random, bound to its channel, and dies when the window is
/// used up, when a newer voucher arrives, or when the channel is closing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionGrant {
    /// The bearer token.
    pub token: B256,
    /// How many more requests the token may pay for.
    pub uses: u32,
}

/// The [`PAYMENT_SESSION`] header value of a session on `channel`.
pub fn encode_session(channel: B256, token: B256) -> String {
    format!("{channel}:{token}")
}

/// Parses a [`PAYMENT_SESSION`] header value into `(channel, token)`.
pub fn decode_session(value: &[u8]) -> Option<(B256, B256)> {
    // Exactly two 0x-prefixed 32-byte hex strings: 66 + 1 + 66 bytes.
    if value.len() != 133 || value[66] != b':' {
        return None;
    }
    let hex = |part: &[u8]| -> Option<B256> {
        let digits = part.strip_prefix(b"0x")?;
        let mut out = [0u8; 32];
        alloy::hex::decode_to_slice(digits, &mut out).ok()?;
        Some(B256::from(out))
    };
    Some((hex(&value[..66])?, hex(&value[67..])?))
}

/// Encodes `value` as a base64 JSON header value.
pub fn encode_header<T: Serialize>(value: &T) -> String {
    let mut json = Vec::with_capacity(512);
    // Serialising these plain structs cannot fail.
    if serde_json::to_writer(&mut json, value).is_err() {
        json.clear();
    }
    STANDARD.encode(json)
}

/// Decodes a base64 JSON header value, refusing values above [`MAX_HEADER_LEN`].
pub fn decode_header<T: DeserializeOwned>(value: &[u8]) -> Result<T> {
    if value.len() > MAX_HEADER_LEN {
        return Err(Error::HeaderTooLarge { len: value.len(), max: MAX_HEADER_LEN });
    }
    let trimmed = value.trim_ascii();
    let json = STANDARD.decode(trimmed)?;
    Ok(serde_json::from_slice(&json)?)
}

/// Serde for [`U256`] as a canonical decimal string (`"0"`, `"1000000"`).
pub mod u256_dec {
    use alloy::primitives::U256;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    /// Serialises as a decimal string.
    pub fn serialize<S: Serializer>(value: &U256, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    /// Deserialises a decimal string of at most 78 digits, without sign or leading zeros.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<U256, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        parse(&s).ok_or_else(|| D::Error::custom(format!("invalid decimal amount {s:?}")))
    }

    /// Parses a canonical decimal amount.
    pub fn parse(s: &str) -> Option<U256> {
        let ok = !s.is_empty()
            && s.len() <= 78
            && s.bytes().all(|b| b.is_ascii_digit())
            && !(s.len() > 1 && s.starts_with('0'));
        if !ok {
            return None;
        }
        U256::from_str_radix(s, 10).ok()
    }

    /// The same for an `Option<U256>` (use with `default`).
    pub mod option {
        use alloy::primitives::U256;
        use serde::{Deserialize, Deserializer, Serializer};

        /// Serialises `Some` as a decimal string.
        pub fn serialize<S: Serializer>(value: &Option<U256>, s: S) -> Result<S::Ok, S::Error> {
            match value {
                Some(v) => super::serialize(v, s),
                None => s.serialize_none(),
            }
        }

        /// Deserialises an optional decimal string.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<U256>, D::Error> {
            #[derive(Deserialize)]
            struct Dec(#[serde(with = "super")] U256);
            Ok(Option::<Dec>::deserialize(d)?.map(|Dec(v)| v))
        }
    }
}

/// Serde for [`Address`] as an EIP-55 checksummed string. Decoding accepts any case (a client
/// echoing a lower-case address is not refused for it).
pub mod checksummed {
    use alloy::primitives::Address;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialises with the EIP-55 checksum.
    pub fn serialize<S: Serializer>(value: &Address, s: S) -> Result<S::Ok, S::Error> {
        with_checksum(value, |text| s.serialize_str(text))
    }

    /// Slots of the per-thread cache of checksummed addresses.
    const CACHE_SLOTS: usize = 64;

    std::thread_local! {
        /// The checksummed text of recently serialised addresses, direct-mapped by the last
        /// byte: every receipt carries its payer, and the checksum is a keccak256 each time.
        static CACHE: std::cell::RefCell<[(Address, [u8; 42]); CACHE_SLOTS]> =
            const { std::cell::RefCell::new([(Address::ZERO, [0; 42]); CACHE_SLOTS]) };
    }

    /// Calls `f` with the EIP-55 text of `value`, computed at most once per cache slot.
    fn with_checksum<R>(value: &Address, f: impl FnOnce(&str) -> R) -> R {
        let slot = usize::from(value.0[19]) % CACHE_SLOTS;
        let cached = CACHE.try_with(|cache| {
            let mut cache = cache.try_borrow_mut().ok()?;
            let entry = &mut cache[slot];
            // The zero address's slot starts out empty: compute it rather than trust [0; 42].
            if entry.0 != *value || entry.1[0] != b'0' {
                entry.0 = *value;
                entry.1.copy_from_slice(value.to_checksum_buffer(None).as_str().as_bytes());
            }
            Some(entry.1)
        });
        match cached.ok().flatten() {
            // The buffer holds the ASCII text written just above or earlier for this address.
            Some(text) => f(std::str::from_utf8(&text).unwrap_or_default()),
            None => f(value.to_checksum_buffer(None).as_str()),
        }
    }

    /// Deserialises a 0x-prefixed hex address.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Address, D::Error> {
        Address::deserialize(d)
    }

    /// The same for an `Option<Address>` (use with `default`).
    pub mod option {
        use alloy::primitives::Address;
        use serde::{Deserialize, Deserializer, Serializer};

        /// Serialises `Some` with the EIP-55 checksum.
        pub fn serialize<S: Serializer>(value: &Option<Address>, s: S) -> Result<S::Ok, S::Error> {
            match value {
                Some(a) => super::serialize(a, s),
                None => s.serialize_none(),
            }
        }

        /// Deserialises an optional address.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Address>, D::Error> {
            Option::<Address>::deserialize(d)
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn requirements() -> PaymentRequirements {
        PaymentRequirements {
            scheme: SCHEME.into(),
            network: Network::new(31337),
            amount: U256::from(1000),
            asset: Address::repeat_byte(1),
            pay_to: Address::repeat_byte(2),
            max_timeout_seconds: 60,
            extra: ChannelExtra {
                name: Some("USD Coin".into()),
                version: Some("2".into()),
                contract: Address::repeat_byte(3),
                domain: DomainInfo::channel(),
                min_challenge_period: 3600,
                min_deposit: U256::from(1_000_000),
                pricing: Pricing::Exact,
                channel: None,
                max_credit_window: None,
            },
        }
    }

    #[test]
    fn session_header_round_trips_and_refuses_anything_else() {
        let (channel, token) = (B256::repeat_byte(0xab), B256::repeat_byte(0x01));
        let value = encode_session(channel, token);
        assert_eq!(decode_session(value.as_bytes()), Some((channel, token)));
        let bad = [
            String::new(),
            value[..132].to_owned(),
            format!("{value}0"),
            value.replace(':', ";"),
            value.replacen("0x", "0X", 1),
            format!("{channel}:{}", "zz".repeat(33)),
            format!("{}:{token}", &channel.to_string()[..64]),
        ];
        for b in bad {
            assert_eq!(decode_session(b.as_bytes()), None, "{b:?}");
        }
    }

    proptest! {
        #[test]
        fn session_header_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_session(&bytes);
        }
    }

    const CHECKSUMMED: &str = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed";

    fn envelope(json: serde_json::Value) -> PaymentEnvelope {
        PaymentEnvelope::decode(STANDARD.encode(json.to_string()).as_bytes()).unwrap()
    }

    #[test]
    fn payment_required_json_shape() {
        let mut ours = requirements();
        ours.pay_to = CHECKSUMMED.parse().unwrap();
        ours.extra.channel = Some(ChannelState {
            channel_id: B256::repeat_byte(9),
            nonce: 4,
            cumulative_amount: U256::from(4000),
            charged: U256::from(3500),
            deposit: U256::from(10_000),
            signature: Bytes::from(vec![0xab; 65]),
        });
        let exact = ExactRequirements {
            scheme: EXACT_SCHEME.into(),
            network: Network::new(31337),
            amount: U256::from(1000),
            asset: Address::repeat_byte(1),
            pay_to: CHECKSUMMED.parse().unwrap(),
            max_timeout_seconds: 60,
            extra: ExactExtra { name: "USD Coin".into(), version: "2".into() },
        };
        let mut pr = PaymentRequired::new(
            Some(ErrorCode::NonceTooLow),
            Resource { url: "https://api.example.com/x?y=1".into(), description: None, mime_type: None },
            vec![ours],
        );
        pr.exact = vec![exact];
        let json: serde_json::Value = serde_json::to_value(&pr).unwrap();
        let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["accepts", "error", "resource", "x402Version"], "only spec fields at the top");
        assert_eq!(json["x402Version"], 2);
        assert_eq!(json["error"], "nonce_too_low");
        let offer = &json["accepts"][0];
        assert_eq!(offer["scheme"], "channel-voucher");
        assert_eq!(offer["network"], "eip155:31337");
        assert_eq!(offer["amount"], "1000");
        assert_eq!(offer["maxTimeoutSeconds"], 60);
        assert_eq!(offer["payTo"], CHECKSUMMED, "EIP-55");
        assert_eq!(offer["asset"], Address::repeat_byte(1).to_checksum(None));
        assert_eq!(offer["extra"]["contract"], Address::repeat_byte(3).to_checksum(None));
        assert_eq!(offer["extra"]["name"], "USD Coin", "the token's domain");
        assert_eq!(offer["extra"]["version"], "2");
        assert_eq!(
            offer["extra"]["domain"],
            serde_json::json!({ "name": "x402 Payment Channel", "version": "2" })
        );
        assert_eq!(offer["extra"]["minChallengePeriod"], 3600);
        assert_eq!(offer["extra"]["pricing"], "exact");
        assert_eq!(offer["extra"]["channel"]["signature"], format!("0x{}", "ab".repeat(65)));
        assert_eq!(offer["extra"]["channel"]["charged"], "3500");
        assert_eq!(json["accepts"][1]["scheme"], "exact", "ours first, then exact");
        assert_eq!(json["accepts"][1]["extra"], serde_json::json!({ "name": "USD Coin", "version": "2" }));
        let header = encode_header(&pr);
        assert_eq!(decode_header::<PaymentRequired>(header.as_bytes()).unwrap(), pr);
    }

    #[test]
    fn payment_required_skips_unknown_schemes_and_decodes_known_ones_strictly() {
        let mut json = serde_json::to_value(PaymentRequired::new(
            None,
            Resource { url: "http://h/x".into(), description: None, mime_type: None },
            vec![requirements()],
        ))
        .unwrap();
        let other = serde_json::json!({ "scheme": "batch-settlement", "network": "eip155:1", "whatever": 1 });
        json["accepts"].as_array_mut().unwrap().insert(0, other);
        json["message"] = "ignored".into();
        json["error"] = "Payment required: no PAYMENT-SIGNATURE header".into();
        let pr: PaymentRequired = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(pr.error, Some(ErrorCode::PaymentRequired), "free text from another server");
        assert_eq!(pr.accepts, vec![requirements()]);
        assert!(pr.exact.is_empty());
        // Lower-case addresses are read.
        json["accepts"][1]["payTo"] = format!("{:x}", Address::repeat_byte(0xab)).into();
        let pr: PaymentRequired = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(pr.accepts[0].pay_to, Address::repeat_byte(0xab));
        // An offer of our scheme without its contract is an error, not skipped.
        json["accepts"][1]["extra"].as_object_mut().unwrap().remove("contract");
        assert!(serde_json::from_value::<PaymentRequired>(json).is_err());
    }

    #[test]
    fn client_payload_echoes_the_full_requirements() {
        let signed = SignedVoucher {
            voucher: Voucher {
                channelId: B256::repeat_byte(7),
                nonce: 1,
                cumulativeAmount: U256::from(1000),
            },
            signature: Bytes::from(vec![1; 65]),
        };
        let json = serde_json::to_value(PaymentPayload::new(&requirements(), &signed)).unwrap();
        let accepted = &json["accepted"];
        let want = serde_json::to_value(requirements()).unwrap();
        assert_eq!(accepted, &want, "accepted is the offer, echoed whole");
        for key in ["scheme", "network", "amount", "asset", "payTo", "maxTimeoutSeconds", "extra"] {
            assert!(accepted.get(key).is_some(), "{key}");
        }
        assert_eq!(json["payload"]["cumulativeAmount"], "1000");
    }

    #[test]
    fn envelope_reads_the_scheme_before_the_payload() {
        let voucher = serde_json::json!({
            "channelId": B256::repeat_byte(7), "nonce": 3, "cumulativeAmount": "42", "signature": "0x00"
        });
        let exact = serde_json::json!({
            "signature": "0x00",
            "authorization": {
                "from": Address::repeat_byte(1), "to": Address::repeat_byte(2), "value": "1000",
                "validAfter": "0", "validBefore": "99999999999", "nonce": B256::repeat_byte(5)
            }
        });
        // An exact payment: the envelope decodes; its scheme is `exact`; as a voucher it is
        // malformed, as an exact payload it is fine.
        let e = envelope(serde_json::json!({
            "x402Version": 2,
            "accepted": { "scheme": "exact", "network": "eip155:1" },
            "payload": exact,
            "resource": { "url": "http://h/x" },
            "extensions": {}
        }));
        assert_eq!(e.scheme(), Some(Scheme::Exact));
        assert!(e.payload::<VoucherPayload>().is_err());
        let p: ExactPayload = e.payload().unwrap();
        assert_eq!(p.authorization.value, U256::from(1000));
        // Unknown schemes are named but not known.
        let e = envelope(serde_json::json!({
            "x402Version": 2, "accepted": { "scheme": "channel", "network": "eip155:1" }, "payload": {}
        }));
        assert_eq!((e.scheme_name(), e.scheme()), (Some("channel"), None));
        // Our payload refuses unknown fields, at any depth of the payload.
        let mut extra = voucher.clone();
        extra["authorization"] = serde_json::json!({});
        let e = envelope(serde_json::json!({
            "x402Version": 2, "accepted": { "scheme": SCHEME, "network": "eip155:1" }, "payload": extra
        }));
        assert_eq!(e.scheme(), Some(Scheme::ChannelVoucher));
        let err = e.payload::<VoucherPayload>().unwrap_err().to_string();
        assert!(err.contains("unknown field `authorization`"), "{err}");
        let mut extra = exact;
        extra["authorization"]["extra"] = 1.into();
        assert!(
            envelope(serde_json::json!({ "x402Version": 2, "payload": extra }))
                .payload::<ExactPayload>()
                .is_err()
        );
        // The accepted echo is lenient about the informative fields.
        let e = envelope(serde_json::json!({
            "x402Version": 2,
            "accepted": {
                "scheme": SCHEME, "network": "eip155:1", "amount": "not checked", "maxTimeoutSeconds": 5,
                "extra": { "anything": [1, 2] }, "futureField": true,
                "payTo": format!("{:x}", Address::repeat_byte(0xcd)),
            },
            "payload": voucher
        }));
        assert_eq!(e.accepted.as_ref().and_then(|a| a.pay_to), Some(Address::repeat_byte(0xcd)));
        assert_eq!(e.payload::<VoucherPayload>().unwrap().nonce, 3);
    }

    #[test]
    fn the_checksum_cache_never_serves_another_address() {
        // Addresses sharing a cache slot (same last byte), the zero address first, and repeats.
        let mut addresses = vec![Address::ZERO];
        for i in 0..300u32 {
            let mut a = Address::repeat_byte((i % 7) as u8);
            a.0[0] = (i / 7) as u8;
            a.0[19] = (i % 3) as u8 * 64;
            addresses.push(a);
        }
        for _ in 0..2 {
            for a in &addresses {
                let json = serde_json::to_value(SettlementResponse {
                    success: true,
                    transaction: String::new(),
                    network: Network::new(1),
                    payer: *a,
                    amount: None,
                    extra: None,
                })
                .unwrap();
                assert_eq!(json["payer"], a.to_checksum(None), "{a}");
            }
        }
    }

    #[test]
    fn addresses_serialise_checksummed() {
        let a: Address = CHECKSUMMED.to_lowercase().parse().unwrap();
        let s = SettlementResponse {
            success: true,
            transaction: String::new(),
            network: Network::new(1),
            payer: a,
            amount: Some(U256::from(7)),
            extra: None,
        };
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["payer"], CHECKSUMMED);
        assert_eq!(json["amount"], "7");
        assert!(json.get("extra").is_none());
        assert_eq!(serde_json::from_value::<SettlementResponse>(json).unwrap(), s);
        let accepted = AcceptedRequirements::from(&requirements());
        let json = serde_json::to_value(&accepted).unwrap();
        assert_eq!(json["payTo"], Address::repeat_byte(2).to_checksum(None));
        // `extra` is kept verbatim: a round trip through the text gives the same value.
        let text = serde_json::to_string(&accepted).unwrap();
        assert_eq!(serde_json::from_str::<AcceptedRequirements>(&text).unwrap(), accepted);
    }

    #[test]
    fn channel_state_signature_is_checked_against_the_signer() {
        use alloy::signers::local::PrivateKeySigner;
        let (signer, other) = (PrivateKeySigner::random(), PrivateKeySigner::random());
        let domain = crate::ChannelDomain::new(31337, Address::repeat_byte(3));
        let voucher =
            Voucher { channelId: B256::repeat_byte(9), nonce: 4, cumulativeAmount: U256::from(4000) };
        let signed = domain.sign(&signer, voucher.clone()).unwrap();
        let state = ChannelState {
            channel_id: voucher.channelId,
            nonce: 4,
            cumulative_amount: U256::from(4000),
            charged: U256::from(3000),
            deposit: U256::from(10_000),
            signature: signed.signature.clone(),
        };
        assert!(state.signed_by(&domain, signer.address()));
        assert!(!state.signed_by(&domain, other.address()), "another signer");
        assert!(!state.signed_by(&crate::ChannelDomain::new(1, Address::repeat_byte(3)), signer.address()));
        let tampered = [
            ChannelState { nonce: 5, ..state.clone() },
            ChannelState { cumulative_amount: U256::from(4001), ..state.clone() },
            ChannelState { channel_id: B256::repeat_byte(8), ..state.clone() },
            ChannelState { signature: Bytes::new(), ..state.clone() },
            ChannelState { signature: domain.sign(&other, voucher).unwrap().signature, ..state.clone() },
        ];
        for t in tampered {
            assert!(!t.signed_by(&domain, signer.address()), "{t:?}");
        }
        let empty =
            ChannelState { nonce: 0, cumulative_amount: U256::ZERO, charged: U256::ZERO, ..state.clone() };
        assert!(empty.signed_by(&domain, signer.address()));
        assert!(!ChannelState { charged: U256::from(1), ..empty }.signed_by(&domain, signer.address()));
    }

    #[test]
    fn scheme_names() {
        for s in [Scheme::ChannelVoucher, Scheme::Exact] {
            assert_eq!(Scheme::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(SCHEME, "channel-voucher");
        assert_eq!(Scheme::parse("channel"), None);
        assert_eq!(Scheme::parse("Exact"), None);
    }

    #[test]
    fn v1_payload_reads_top_level_scheme() {
        let json = serde_json::json!({
            "x402Version": 1,
            "scheme": "channel-voucher",
            "network": "eip155:1",
            "payload": {
                "channelId": B256::repeat_byte(7),
                "nonce": 3,
                "cumulativeAmount": "42",
                "signature": "0x00"
            }
        });
        let header = STANDARD.encode(json.to_string());
        let p: PaymentPayload = decode_header(header.as_bytes()).unwrap();
        assert_eq!(p.scheme(), Some("channel-voucher"));
        assert_eq!(p.network(), Some("eip155:1"));
        assert_eq!(p.payload.cumulative_amount, U256::from(42));
        let e = PaymentEnvelope::decode(header.as_bytes()).unwrap();
        assert_eq!((e.scheme(), e.network()), (Some(Scheme::ChannelVoucher), Some("eip155:1")));
    }

    #[test]
    fn decode_rejects_bad_input() {
        let too_big = vec![b'A'; MAX_HEADER_LEN + 1];
        for bad in [&b"%%%"[..], b"e30", &too_big, &STANDARD.encode("{\"x402Version\":\"2\"}").into_bytes()] {
            assert!(decode_header::<PaymentPayload>(bad).is_err());
        }
    }

    #[test]
    fn amounts_are_canonical_decimals() {
        for (s, ok) in [
            ("0", true),
            ("10", true),
            ("010", false),
            ("0x10", false),
            ("-1", false),
            ("", false),
            ("1e3", false),
        ] {
            assert_eq!(u256_dec::parse(s).is_some(), ok, "{s}");
        }
        let max = U256::MAX.to_string();
        assert_eq!(u256_dec::parse(&max), Some(U256::MAX));
        assert_eq!(u256_dec::parse(&format!("{max}0")), None);
    }

    proptest! {
        #[test]
        fn payload_round_trips(nonce: u64, amount: [u8; 32], id: [u8; 32], sig in proptest::collection::vec(any::<u8>(), 0..100)) {
            let p = PaymentPayload {
                x402_version: 2,
                accepted: Some((&requirements()).into()),
                scheme: None,
                network: None,
                payload: VoucherPayload {
                    channel_id: B256::from(id),
                    nonce,
                    cumulative_amount: U256::from_be_bytes(amount),
                    signature: Bytes::from(sig),
                },
            };
            let decoded: PaymentPayload = decode_header(encode_header(&p).as_bytes()).unwrap();
            prop_assert_eq!(decoded, p);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = PaymentEnvelope::decode(STANDARD.encode(&bytes).as_bytes());
            let _ = decode_header::<PaymentRequired>(STANDARD.encode(&bytes).as_bytes());
            let _ = decode_header::<PaymentPayload>(&bytes);
            let _ = decode_header::<PaymentPayload>(STANDARD.encode(&bytes).as_bytes());
        }
    }
}

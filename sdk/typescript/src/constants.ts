/**
 * The x402 scheme name of channel payments: `channel-voucher` (a different proposal in the x402 specification
 * repository already uses `channel`, with another payload). The Rust node's `x402_protocol::wire::SCHEME`.
 */
export const SCHEME = "channel-voucher";
/** The x402 protocol version this package speaks. */
export const X402_VERSION = 2;
/** EIP-712 domain name of the `PaymentChannel` contract (`extra.domain.name` of a requirement). */
export const DOMAIN_NAME = "x402 Payment Channel";
/** EIP-712 domain version of the v2 `PaymentChannel` contract. */
export const DOMAIN_VERSION = "2";
/** Request header paying from a prepaid credit window: `<channelId>:<token>`. */
export const PAYMENT_SESSION = "PAYMENT-SESSION";
/** The node's relay for gasless opens (`POST`, JSON). */
export const OPEN_PATH = "/x402/open";
/** 402 error codes after which the client can retry at once, having resynchronised. */
export const CORRECTIVE_ERRORS = new Set(["nonce_too_low", "amount_below_price", "session_invalid"]);
/** 402 error codes that end a channel for this client: it opens a new one. */
export const DEAD_CHANNEL_ERRORS = new Set(["channel_closing", "channel_closed", "channel_unknown", "channel_mismatch"]);
/**
 * Response header (`1`) of the node's answer to a resend of a voucher it already served: with that request's receipt,
 * and either its kept response or `409 already_served` (pay the request again).
 */
export const REPLAYED = "x402-replayed";

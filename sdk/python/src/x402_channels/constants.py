"""Wire constants of the `channel-voucher` scheme (see the repository's wire decisions)."""

from __future__ import annotations

from typing import Final

SCHEME: Final = "channel-voucher"
"""The x402 scheme name of channel payments (`x402_protocol::wire::SCHEME` in the Rust node)."""

X402_VERSION: Final = 2
"""The x402 protocol version this package speaks."""

DOMAIN_NAME: Final = "x402 Payment Channel"
"""EIP-712 domain name of the `PaymentChannel` contract (`extra.domain.name`)."""

DOMAIN_VERSION: Final = "2"
"""EIP-712 domain version of the v2 `PaymentChannel` contract (`extra.domain.version`)."""

PAYMENT_SESSION: Final = "PAYMENT-SESSION"
"""Request header paying from a prepaid credit window: `<channelId>:<token>`."""

CORRECTIVE_ERRORS: Final = frozenset({"nonce_too_low", "amount_below_price", "session_invalid"})
"""402 error codes after which the client can retry at once, having resynchronised."""

WAIT_ERRORS: Final = frozenset({"insufficient_deposit", "channel_unknown"})
"""402 error codes meaning the node may not have followed the chain yet: when the chain shows the
channel open with a deposit covering the voucher, the client retries after a pause."""

DEAD_CHANNEL_ERRORS: Final = frozenset(
    {"channel_closing", "channel_closed", "channel_unknown", "channel_mismatch"}
)
"""402 error codes that end a channel for this client: it opens a new one."""

MAX_NONCE: Final = 2**53 - 1
"""The wire carries the nonce as a JSON number: stay where every JSON implementation is exact."""

ZERO_ADDRESS: Final = "0x0000000000000000000000000000000000000000"

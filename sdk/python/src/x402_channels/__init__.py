"""x402 Channels for the official x402 Python SDK: the `channel-voucher` scheme.

- Client: [`ChannelVoucherScheme`] for `x402Client` / `x402ClientSync` (httpx and requests).
- Server: [`ChannelVoucherServerScheme`] for `x402ResourceServer` (FastAPI and Flask middleware),
  with the Rust node as facilitator ([`node_facilitator`]).
"""

from .client import (
    ChannelVoucherScheme,
    channel_http_client,
    channel_http_client_sync,
    channel_httpx_client,
    channel_requests_session,
)
from .constants import DOMAIN_NAME, DOMAIN_VERSION, PAYMENT_SESSION, SCHEME, X402_VERSION
from .errors import ChannelPaymentError
from .server import (
    BearerAuth,
    ChannelVoucherServerScheme,
    NodeFacilitatorClient,
    NodeFacilitatorClientSync,
    node_facilitator,
    node_facilitator_sync,
)
from .store import ChannelRecord, ChannelStore, FileChannelStore, MemoryChannelStore
from .voucher import ChannelParams, compute_channel_id, is_voucher_signed_by, sign_voucher

__all__ = [
    "DOMAIN_NAME",
    "DOMAIN_VERSION",
    "PAYMENT_SESSION",
    "SCHEME",
    "X402_VERSION",
    "BearerAuth",
    "ChannelParams",
    "ChannelPaymentError",
    "ChannelRecord",
    "ChannelStore",
    "ChannelVoucherScheme",
    "ChannelVoucherServerScheme",
    "FileChannelStore",
    "MemoryChannelStore",
    "NodeFacilitatorClient",
    "NodeFacilitatorClientSync",
    "channel_http_client",
    "channel_http_client_sync",
    "channel_httpx_client",
    "channel_requests_session",
    "compute_channel_id",
    "is_voucher_signed_by",
    "node_facilitator",
    "node_facilitator_sync",
    "sign_voucher",
]

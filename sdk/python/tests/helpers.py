"""Shared test helpers: paying clients on the devnet."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
from x402 import x402Client, x402ClientSync

from x402_channels import ChannelStore, ChannelVoucherScheme

from .conftest import NETWORK, Devnet

PRICE = 1000
"""`/weather` on the node."""


def scheme_for(
    devnet: Devnet, account: int, store: ChannelStore | None = None, **options: Any
) -> ChannelVoucherScheme:
    options.setdefault("deposit_cap", 10_000_000)
    options.setdefault("contracts", [devnet.contract])
    return ChannelVoucherScheme(devnet.account(account), devnet.w3(), store=store, **options)


def spend_controls(devnet: Devnet, cap: str = "100000") -> Any:
    return {
        "allowed_assets": [
            {"network": NETWORK, "asset": devnet.token, "max_amount_per_payment": cap}
        ]
    }


def async_client(devnet: Devnet, scheme: ChannelVoucherScheme, cap: str = "100000") -> x402Client:
    client = x402Client()
    client.register(NETWORK, scheme)
    client.set_spend_controls(spend_controls(devnet, cap))
    return client


def sync_client(
    devnet: Devnet, scheme: ChannelVoucherScheme, cap: str = "100000"
) -> x402ClientSync:
    client = x402ClientSync()
    client.register(NETWORK, scheme)
    client.set_spend_controls(spend_controls(devnet, cap))
    return client


def decode(header: str | None) -> dict[str, Any]:
    assert header, "missing header"
    value = json.loads(base64.b64decode(header))
    assert isinstance(value, dict)
    return value


def receipt(response: httpx.Response) -> dict[str, Any]:
    return decode(response.headers.get("PAYMENT-RESPONSE"))

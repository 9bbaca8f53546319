"""Bad inputs get clear errors, before anything is signed, sent or deposited."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest
from x402.http.clients import PaymentError
from x402.interfaces import PaymentPayloadContext
from x402.schemas import NoMatchingRequirementsError, PaymentRequirements

from x402_channels import (
    SCHEME,
    ChannelPaymentError,
    ChannelVoucherServerScheme,
    channel_httpx_client,
)
from x402_channels.chain import ChannelChain

from .conftest import FACILITATOR_TOKEN, NETWORK, Node
from .helpers import PRICE, async_client, decode, scheme_for


def offer(node: Node) -> dict[str, Any]:
    r = httpx.get(f"{node.url}/weather")
    assert r.status_code == 402
    required = decode(r.headers["PAYMENT-REQUIRED"])
    [ours] = [a for a in required["accepts"] if a["scheme"] == SCHEME]
    assert isinstance(ours, dict)
    return ours


def test_the_nodes_402_is_what_the_sdk_expects(node: Node) -> None:
    r = httpx.get(f"{node.url}/weather?q=1")
    assert r.status_code == 402
    assert r.headers.get("cache-control") == "no-store"
    required = decode(r.headers["PAYMENT-REQUIRED"])
    assert required == r.json()
    assert set(required) <= {"x402Version", "error", "resource", "accepts", "extensions"}
    assert required["resource"]["url"] == f"{node.url}/weather?q=1"
    ours = offer(node)
    assert ours["payTo"] == node.devnet.provider and ours["asset"] == node.devnet.token  # EIP-55
    assert ours["extra"]["contract"] == node.devnet.contract
    assert ours["extra"]["domain"] == {"name": "x402 Payment Channel", "version": "2"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda o: o["extra"].update(domain={"name": "x402 Payment Channel", "version": "1"}),
            "unsupported channel contract domain",
        ),
        (lambda o: o["extra"].pop("domain"), "unsupported channel contract domain"),
        (lambda o: o["extra"].update(contract="0x1234"), "extra.contract is not an address"),
        (lambda o: o["extra"].update(minChallengePeriod="3600"), "minChallengePeriod"),
        (lambda o: o["extra"].update(minDeposit="-1"), "extra.minDeposit"),
        (lambda o: o["extra"].update(maxCreditWindow=0), "maxCreditWindow"),
        (lambda o: o.update(amount="1e3"), "invalid amount"),
        (lambda o: o.update(amount="0"), "price of zero"),
        (lambda o: o.update(network="eip155:0x7a69"), "unsupported network"),
        (lambda o: o.update(network="solana:mainnet"), "unsupported network"),
        (lambda o: o.update(payTo="nobody"), "is not an address"),
        (lambda o: o.update(extra={}), "without extra"),
    ],
)
def test_malformed_requirements_are_refused(node: Node, change: Any, message: str) -> None:
    o = offer(node)
    change(o)
    scheme = scheme_for(node.devnet, 8)
    with pytest.raises(ChannelPaymentError, match=message):
        scheme.create_payment_payload(PaymentRequirements.model_validate(o))
    assert scheme.store.list() == []


def test_untrusted_contract_cap_and_deposit_are_refused_before_any_transaction(node: Node) -> None:
    d = node.devnet
    o = PaymentRequirements.model_validate(offer(node))
    chain = ChannelChain(d.w3(), d.account(8))
    nonce = d.w3().eth.get_transaction_count(d.account(8).address)
    untrusting = scheme_for(d, 8, contracts=[d.token])
    with pytest.raises(ChannelPaymentError, match="not one this client trusts"):
        untrusting.create_payment_payload(o)
    with pytest.raises(ChannelPaymentError, match="above the spend cap 999"):
        scheme_for(d, 8).create_payment_payload(
            o, PaymentPayloadContext(max_amount_per_payment="999")
        )
    with pytest.raises(ChannelPaymentError, match="deposit cap 999 does not cover the price 1000"):
        scheme_for(d, 8, deposit_cap=999).create_payment_payload(o)
    assert d.w3().eth.get_transaction_count(d.account(8).address) == nonce
    assert chain.balance_of(d.token, d.account(8).address) > 0
    with pytest.raises(ValueError, match="deposit_cap must be positive"):
        scheme_for(d, 8, deposit_cap=0)


async def test_spend_controls_refuse_an_unknown_asset(node: Node) -> None:
    d = node.devnet
    scheme = scheme_for(d, 8)
    from x402 import x402Client

    bare = x402Client().register(NETWORK, scheme)  # default spend controls: known assets only
    async with channel_httpx_client(bare, scheme) as http:
        with pytest.raises(PaymentError) as err:
            await http.get(f"{node.url}/weather")
    assert isinstance(err.value.__cause__, NoMatchingRequirementsError)
    capped = async_client(d, scheme, cap=str(PRICE - 1))
    async with channel_httpx_client(capped, scheme) as http:
        with pytest.raises(PaymentError, match="max_amount_per_payment"):
            await http.get(f"{node.url}/weather")
    assert scheme.store.list() == []


def test_server_scheme_refuses_bad_prices() -> None:
    s = ChannelVoucherServerScheme(asset="0x" + "11" * 20, decimals=6)
    assert s.parse_price("$0.0025", NETWORK).amount == "2500"
    assert s.parse_price(7, NETWORK).amount == "7"
    for bad, message in [
        ("$0.0000001", "finer than the token's 6 decimals"),
        ("lots", "not an amount of money"),
        ({"amount": "-5", "asset": "0x" + "22" * 20}, "not a positive integer"),
        ({"amount": "5", "asset": "bob"}, "not an address"),
        ({"asset": "0x" + "22" * 20}, "has no amount"),
    ]:
        with pytest.raises(ValueError, match=message):
            s.parse_price(bad, NETWORK)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a token"):
        ChannelVoucherServerScheme().parse_price("$1", NETWORK)
    with pytest.raises(ValueError, match="at least 32 characters"):
        from x402_channels import node_facilitator

        node_facilitator("http://127.0.0.1:1", "short")


def _post(
    node: Node, path: str, body: bytes, token: str | None = FACILITATOR_TOKEN
) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return httpx.post(f"{node.url}/facilitator/{path}", content=body, headers=headers)


def test_facilitator_refuses_bad_inputs_clearly(node: Node) -> None:
    o = offer(node)
    payload = {
        "x402Version": 2,
        "accepted": o,
        "payload": {
            "channelId": "0x" + "ab" * 32,
            "nonce": 1,
            "cumulativeAmount": "1000",
            "signature": "0x" + "00" * 65,
        },
    }
    body = json.dumps(
        {"x402Version": 2, "paymentPayload": payload, "paymentRequirements": o}
    ).encode()
    assert _post(node, "verify", body, token=None).status_code == 401
    assert _post(node, "verify", body, token="x" * 40).status_code == 401
    bad_json = _post(node, "verify", b"{not json")
    assert bad_json.status_code == 400
    assert (
        bad_json.json()["isValid"] is False
        and bad_json.json()["invalidReason"] == "invalid_payload"
    )
    # A channel that does not exist.
    unknown = _post(node, "verify", body).json()
    assert unknown["isValid"] is False and unknown["invalidReason"] == "channel_unknown", unknown
    # Requirements paying somebody else.
    other = dict(o, payTo="0x" + "12" * 20)
    mismatch = _post(
        node,
        "verify",
        json.dumps(
            {"x402Version": 2, "paymentPayload": payload, "paymentRequirements": other}
        ).encode(),
    ).json()
    assert mismatch["isValid"] is False and mismatch["invalidReason"] == "channel_mismatch", (
        mismatch
    )
    # An unknown scheme, before its payload is even read.
    exotic = dict(payload, accepted=dict(o, scheme="channel"), payload={"whatever": True})
    refused = _post(
        node,
        "verify",
        json.dumps(
            {
                "x402Version": 2,
                "paymentPayload": exotic,
                "paymentRequirements": dict(o, scheme="channel"),
            }
        ).encode(),
    ).json()
    assert refused["isValid"] is False and refused["invalidReason"] == "invalid_scheme", refused
    # The gateway itself: a payload that is not base64 JSON.
    r = httpx.get(
        f"{node.url}/weather", headers={"PAYMENT-SIGNATURE": base64.b64encode(b"[1,2").decode()}
    )
    assert (
        r.status_code in (400, 402)
        and decode(r.headers["PAYMENT-REQUIRED"])["error"] == "invalid_payload"
    )

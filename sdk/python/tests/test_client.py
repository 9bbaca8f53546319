"""The client against the real node on anvil: httpx and requests sessions paying through the
official SDK's transports, concurrency, credit windows, lost state, forged corrective state."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from eth_account import Account
from x402.http.clients import (
    PaymentError,
    wrapRequestsWithPayment,
    x402AsyncTransport,
    x402HttpxClient,
)
from x402.http.clients.requests import PaymentError as RequestsPaymentError

from x402_channels import (
    SCHEME,
    ChannelPaymentError,
    FileChannelStore,
    channel_http_client,
    channel_httpx_client,
    channel_requests_session,
    sign_voucher,
)

from .conftest import Node
from .helpers import PRICE, async_client, receipt, scheme_for, sync_client


async def test_httpx_pays_100_requests(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    d = node.devnet
    scheme = scheme_for(d, 1)
    corrective: list[dict[str, Any]] = []
    resync = scheme.resync

    def counting(key: str, state: dict[str, Any]) -> None:
        corrective.append(state)
        resync(key, state)

    monkeypatch.setattr(scheme, "resync", counting)
    async with channel_httpx_client(async_client(d, scheme), scheme) as http:
        # 40 one after the other, then 60 with 12 in flight at a time on the same channel.
        for i in range(40):
            r = await http.get(f"{node.url}/weather?i={i}")
            assert r.status_code == 200, r.text
            assert r.json()["path"] == f"/weather?i={i}"
            paid = receipt(r)
            assert paid["success"] is True and paid["extra"]["totalCharged"] == str(PRICE * (i + 1))
        for batch in range(5):
            rs = await asyncio.gather(
                *(http.get(f"{node.url}/weather?b={batch}&j={j}") for j in range(12))
            )
            assert [r.status_code for r in rs] == [200] * 12, [
                r.text for r in rs if r.status_code != 200
            ]
    [record] = scheme.store.list()
    assert record.nonce >= 100
    assert record.spent == 100 * PRICE
    # Out of order or not, every voucher covered its request: no corrective round trip.
    assert corrective == []
    # Opened with 100 requests' worth, topped up by as much when half of it was left.
    onchain = scheme.chain.get_channel(d.contract, record.channel_id)
    assert onchain.deposit == record.deposit == 200 * PRICE


async def test_the_stock_wrappers_pay_too(node: Node) -> None:
    d = node.devnet
    scheme = scheme_for(d, 5, credit_window=10)
    async with x402HttpxClient(async_client(d, scheme)) as http:
        for i in range(3):
            r = await http.get(f"{node.url}/weather?stock={i}")
            assert r.status_code == 200, r.text
    session = wrapRequestsWithPayment(requests.Session(), sync_client(d, scheme))
    assert session.get(f"{node.url}/weather?stock=requests").status_code == 200
    [record] = scheme.store.list()
    # Without the session hook every request pays with a voucher prepaying a window of 10 that
    # is never used: the ceiling grows by a window per request, the charge by the price.
    assert record.max_signed == 4 * 10 * PRICE and record.spent == 4 * PRICE


async def test_credit_window_pays_with_sessions(node: Node) -> None:
    d = node.devnet
    scheme = scheme_for(d, 2, credit_window=10)
    async with channel_httpx_client(async_client(d, scheme), scheme) as http:
        for i in range(30):
            r = await http.get(f"{node.url}/weather?w={i}")
            assert r.status_code == 200, r.text
    [record] = scheme.store.list()
    # One voucher per window of 10 requests: the rest rode PAYMENT-SESSION.
    assert record.nonce == 3, record
    assert record.max_signed == 30 * PRICE


def test_requests_session_pays_from_threads_and_tops_up_within_the_cap(node: Node) -> None:
    d = node.devnet
    scheme = scheme_for(d, 3, deposit_multiple=10, deposit_cap=40 * PRICE)
    session = channel_requests_session(sync_client(d, scheme), scheme)
    # Four threads on one channel, through two top-ups.
    with ThreadPoolExecutor(4) as pool:
        rs = list(pool.map(lambda i: session.get(f"{node.url}/weather?t={i}"), range(24)))
    assert [r.status_code for r in rs] == [200] * 24, [r.text for r in rs if r.status_code != 200]
    # Then one at a time up to the cap: exactly 40 requests' worth, and a clear error after.
    for i in range(16):
        r = session.get(f"{node.url}/weather?s={i}")
        assert r.status_code == 200, (i, r.text)
    [record] = scheme.store.list()
    assert record.spent == 40 * PRICE
    assert (
        record.deposit
        == 40 * PRICE
        == scheme.chain.get_channel(d.contract, record.channel_id).deposit
    )
    with pytest.raises(RequestsPaymentError) as err:
        session.get(f"{node.url}/weather?t=over")
    assert isinstance(err.value.__cause__, ChannelPaymentError)
    assert "deposit cap 40000 does not cover the price 1000" in str(err.value.__cause__)


async def _pay(node: Node, scheme_store: FileChannelStore, account: int, n: int, tag: str) -> None:
    scheme = scheme_for(node.devnet, account, store=scheme_store)
    async with channel_httpx_client(async_client(node.devnet, scheme), scheme) as http:
        for i in range(n):
            r = await http.get(f"{node.url}/weather?{tag}={i}")
            assert r.status_code == 200, r.text


async def test_lost_state_resynchronises(node: Node, tmp_path: Path) -> None:
    path = tmp_path / "channels.json"
    await _pay(node, FileChannelStore(path), 4, 5, "a")
    shutil.copy(path, tmp_path / "backup.json")
    await _pay(node, FileChannelStore(path), 4, 10, "b")
    # The client comes back from an old backup: it remembers nonce 5, the node holds 15.
    shutil.copy(tmp_path / "backup.json", path)
    store = FileChannelStore(path)
    [old] = store.list()
    assert old.nonce == 5
    await _pay(node, store, 4, 5, "c")
    [record] = FileChannelStore(path).list()
    assert record.channel_id == old.channel_id
    assert record.nonce >= 20 and record.spent == 20 * PRICE


class Hostile(httpx.AsyncBaseTransport):
    """A man in the middle (or a dishonest node) rewriting the channel state of corrective 402s."""

    def __init__(self, forge: str, victim_signature: str | None = None) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.forge = forge
        self.forged = 0
        self.attacker = Account.create()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if response.status_code != 402 or "PAYMENT-SIGNATURE" not in request.headers:
            return response
        await response.aread()
        body = json.loads(base64.b64decode(response.headers["PAYMENT-REQUIRED"]))
        for offer in body["accepts"]:
            state = offer.get("extra", {}).get("channel")
            if offer["scheme"] != SCHEME or state is None:
                continue
            nonce = int(state["nonce"]) + 50
            amount = int(state["cumulativeAmount"]) + 1_000_000
            if self.forge == "foreign-signature":
                # Well formed, but signed by somebody else.
                state["signature"] = sign_voucher(
                    self.attacker,
                    31337,
                    offer["extra"]["contract"],
                    state["channelId"],
                    nonce,
                    amount,
                )
            elif self.forge == "replayed-signature":
                # The payer's own genuine signature, of another (lower) voucher.
                pass
            elif self.forge == "no-signature":
                state.pop("signature", None)
            state["nonce"], state["cumulativeAmount"] = nonce, str(amount)
            state["charged"] = str(amount)
            self.forged += 1
        raw = json.dumps(body)
        headers = {
            k: v
            for k, v in response.headers.items()
            if k.lower() not in ("payment-required", "content-length")
        }
        headers["PAYMENT-REQUIRED"] = base64.b64encode(raw.encode()).decode()
        return httpx.Response(402, headers=headers, content=raw.encode())


@pytest.mark.parametrize("forge", ["foreign-signature", "replayed-signature", "no-signature"])
async def test_forged_corrective_state_is_refused(node: Node, tmp_path: Path, forge: str) -> None:
    account = {"foreign-signature": 5, "replayed-signature": 6, "no-signature": 7}[forge]
    path = tmp_path / "channels.json"
    await _pay(node, FileChannelStore(path), account, 2, "a")
    shutil.copy(path, tmp_path / "backup.json")
    await _pay(node, FileChannelStore(path), account, 3, "b")
    shutil.copy(tmp_path / "backup.json", path)
    store = FileChannelStore(path)
    [before] = store.list()
    scheme = scheme_for(node.devnet, account, store=store)
    hostile = Hostile(forge)
    transport = x402AsyncTransport(
        channel_http_client(async_client(node.devnet, scheme), scheme), hostile
    )
    async with httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(PaymentError) as err:
            await http.get(f"{node.url}/weather")
    assert hostile.forged == 1
    assert isinstance(err.value.__cause__, ChannelPaymentError), err.value
    assert "without this client's signature" in str(err.value.__cause__)
    [after] = store.list()
    # Nothing was taken from the forged state: the next voucher builds on what the client signed.
    assert after.nonce > before.nonce and after.max_signed == before.max_signed + PRICE
    # The honest node's own corrective state is accepted, and the client pays on.
    await _pay(node, store, account, 1, "c")
    [record] = FileChannelStore(path).list()
    assert record.spent == 6 * PRICE

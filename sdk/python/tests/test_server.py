"""FastAPI and Flask apps charging through the official x402 middleware with our server scheme,
the Rust node as facilitator, paid by our client over the same channel as the node's gateway."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from flask import Flask
from werkzeug.serving import make_server
from x402 import x402ResourceServer, x402ResourceServerSync
from x402.http import PaymentOption, RouteConfig
from x402.http.middleware.fastapi import payment_middleware
from x402.http.middleware.flask import payment_middleware as flask_payment_middleware

from x402_channels import (
    SCHEME,
    ChannelVoucherServerScheme,
    FileChannelStore,
    channel_httpx_client,
    channel_requests_session,
    node_facilitator,
    node_facilitator_sync,
)

from .conftest import FACILITATOR_TOKEN, NETWORK, Node, free_port
from .helpers import PRICE, async_client, decode, receipt, scheme_for, sync_client

APP_PRICE = 2500


def routes(node: Node) -> dict[str, RouteConfig]:
    option = PaymentOption(
        scheme=SCHEME, pay_to=node.devnet.provider, price="$0.0025", network=NETWORK
    )
    return {"GET /paid": RouteConfig(accepts=option, description="a paid answer")}


@pytest.fixture(scope="module")
def fastapi_url(node: Node) -> Iterator[str]:
    app = FastAPI()
    hits: list[int] = []

    @app.get("/paid")
    def paid() -> dict[str, object]:
        hits.append(1)
        return {"answer": 42, "hits": len(hits)}

    server = x402ResourceServer(node_facilitator(node.url, FACILITATOR_TOKEN))
    server.register(NETWORK, ChannelVoucherServerScheme(asset=node.devnet.token))
    app.middleware("http")(payment_middleware(routes(node), server))

    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(10)


async def test_fastapi_402_offers_the_scheme(fastapi_url: str, node: Node) -> None:
    r = httpx.get(f"{fastapi_url}/paid")
    assert r.status_code == 402
    required = decode(r.headers["PAYMENT-REQUIRED"])
    [offer] = required["accepts"]
    assert offer["scheme"] == SCHEME and offer["amount"] == str(APP_PRICE)
    assert offer["payTo"] == node.devnet.provider and offer["asset"] == node.devnet.token
    assert offer["extra"]["contract"] == node.devnet.contract
    assert offer["extra"]["domain"] == {"name": "x402 Payment Channel", "version": "2"}


async def test_fastapi_charges_through_the_node(
    fastapi_url: str, node: Node, tmp_path: Path
) -> None:
    d = node.devnet
    path = tmp_path / "channels.json"
    scheme = scheme_for(d, 6, store=FileChannelStore(path))
    total = 0
    async with channel_httpx_client(async_client(d, scheme), scheme) as http:
        # The app and the node's own gateway charge the same channel: one ledger, in the node.
        for i in range(12):
            url, price = (
                (f"{fastapi_url}/paid", APP_PRICE) if i % 2 == 0 else (f"{node.url}/weather", PRICE)
            )
            r = await http.get(url)
            assert r.status_code == 200, r.text
            total += price
            paid = receipt(r)
            assert paid["success"] is True and paid["network"] == NETWORK
            assert paid["extra"]["totalCharged"] == str(total), paid
        shutil.copy(path, tmp_path / "backup.json")
        for _ in range(3):
            assert (await http.get(f"{fastapi_url}/paid")).status_code == 200
            total += APP_PRICE
    [record] = scheme.store.list()
    assert record.spent == total

    # Lost state, through the app: the app's corrective 402 carries the node's state and the
    # client's own signature, from the facilitator's refusal.
    shutil.copy(tmp_path / "backup.json", path)
    scheme = scheme_for(d, 6, store=FileChannelStore(path))
    async with channel_httpx_client(async_client(d, scheme), scheme) as http:
        r = await http.get(f"{fastapi_url}/paid")
        assert r.status_code == 200, r.text
        total += APP_PRICE
        assert receipt(r)["extra"]["totalCharged"] == str(total)


def test_flask_charges_through_the_node(node: Node, tmp_path: Path) -> None:
    d = node.devnet
    app = Flask(__name__)

    @app.get("/paid")
    def paid() -> dict[str, object]:
        return {"answer": 42}

    server = x402ResourceServerSync(node_facilitator_sync(node.url, FACILITATOR_TOKEN))
    server.register(NETWORK, ChannelVoucherServerScheme(asset=d.token))
    flask_payment_middleware(app, routes(node), server)
    http_server = make_server("127.0.0.1", free_port(), app, threaded=True)
    thread = threading.Thread(target=http_server.serve_forever, daemon=True)
    thread.start()
    try:
        path = tmp_path / "channels.json"
        url = f"http://127.0.0.1:{http_server.server_port}/paid"

        def pay(n: int, first: int) -> None:
            scheme = scheme_for(d, 7, store=FileChannelStore(path))
            session = channel_requests_session(sync_client(d, scheme), scheme)
            for i in range(first, first + n):
                r = session.get(url)
                assert r.status_code == 200, r.text
                assert decode(r.headers["PAYMENT-RESPONSE"])["extra"]["totalCharged"] == str(
                    (i + 1) * APP_PRICE
                )

        pay(3, 0)
        shutil.copy(path, tmp_path / "backup.json")
        pay(2, 3)
        # Lost state: the Flask app's corrective 402 carries the node's state (thread-local).
        shutil.copy(tmp_path / "backup.json", path)
        pay(2, 5)
    finally:
        http_server.shutdown()

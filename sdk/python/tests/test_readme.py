"""The READMEs' Python snippets, run as written against the devnet, so that they cannot rot."""

from __future__ import annotations

import re
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from x402 import x402ResourceServer
from x402.http import PaymentOption, RouteConfig
from x402.http.middleware.fastapi import payment_middleware

from x402_channels import ChannelVoucherServerScheme, channel_requests_session, node_facilitator

from .conftest import FACILITATOR_TOKEN, ROOT, Node, free_port
from .helpers import decode, scheme_for, sync_client

READMES = [ROOT / "README.md", ROOT / "sdk" / "python" / "README.md"]


def snippets(marker: str) -> list[tuple[str, str]]:
    out = []
    for readme in READMES:
        for block in re.findall(r"```python\n(.*?)```", readme.read_text(), re.S):
            if marker in block:
                out.append((readme.name, block))
    return out


def test_every_readme_has_both_snippets() -> None:
    assert len(snippets("ChannelVoucherScheme.from_key")) == 2
    assert len(snippets("payment_middleware(")) == 2


async def test_the_client_snippet_pays(
    node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = node.devnet
    for i, (_, code) in enumerate(snippets("ChannelVoucherScheme.from_key")):
        (tmp_path / str(i)).mkdir()
        monkeypatch.chdir(tmp_path / str(i))
        code = code.replace("http://127.0.0.1:8402", node.url)
        body = textwrap.indent(code, "    ")
        namespace: dict[str, Any] = {
            "KEY": d.keys[1 + i],
            "RPC_URL": d.rpc_url,
            "CHANNEL_CONTRACT": d.contract,
            "TOKEN": d.token,
        }
        exec(f"async def snippet():\n{body}\n    return weather\n", namespace)
        weather = await namespace["snippet"]()
        assert weather["path"] == "/weather"
        assert (tmp_path / str(i) / "x402-state" / "channels.json").is_file()


def test_the_server_snippet_charges(node: Node) -> None:
    d = node.devnet
    for _, code in snippets("payment_middleware("):
        app = FastAPI()

        @app.get("/paid")
        def paid() -> dict[str, int]:
            return {"answer": 42}

        namespace: dict[str, Any] = {
            "app": app,
            "payment_middleware": payment_middleware,
            "RouteConfig": RouteConfig,
            "PaymentOption": PaymentOption,
            "x402ResourceServer": x402ResourceServer,
            "node_facilitator": node_facilitator,
            "ChannelVoucherServerScheme": ChannelVoucherServerScheme,
            "PROVIDER": d.provider,
            "NODE_URL": node.url,
            "FACILITATOR_TOKEN": FACILITATOR_TOKEN,
            "TOKEN": d.token,
        }
        exec(code, namespace)
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 20
            while not server.started:
                assert time.monotonic() < deadline and thread.is_alive()
                time.sleep(0.05)
            r = httpx.get(f"http://127.0.0.1:{port}/paid")
            assert r.status_code == 402 and "PAYMENT-REQUIRED" in r.headers
            scheme = scheme_for(d, 8)
            ok = channel_requests_session(sync_client(d, scheme), scheme).get(
                f"http://127.0.0.1:{port}/paid"
            )
            assert ok.status_code == 200 and ok.json() == {"answer": 42}
            assert decode(ok.headers["PAYMENT-RESPONSE"])["extra"]["charged"] == "2500"
        finally:
            server.should_exit = True
            thread.join(10)

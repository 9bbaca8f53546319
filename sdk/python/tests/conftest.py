"""The real thing, once per test session: anvil with the contracts (the `x402-devnet` binary), an
upstream API, and the `x402-node` binary in front of it with the facilitator API enabled.

Binaries come from the workspace's target directory (`cargo build -p x402-node -p x402-devnet`;
`scripts/test` builds them). Each test pays from its own anvil account, so channels never mix.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

ROOT = Path(__file__).resolve().parents[3]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"
FACILITATOR_TOKEN = "py-facilitator-token-0123456789abcdef"
NETWORK = "eip155:31337"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Upstream(BaseHTTPRequestHandler):
    hits = 0

    def _answer(self) -> None:
        type(self).hits += 1
        body = json.dumps({"ok": True, "path": self.path}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = _answer
    do_POST = _answer

    def log_message(self, *_: object) -> None:
        pass


@dataclass
class Devnet:
    rpc_url: str
    chain_id: int
    contract: str
    token: str
    provider: str
    keys: list[str]
    config: Path
    upstream_url: str
    workdir: Path

    def account(self, i: int) -> LocalAccount:
        acct: LocalAccount = Account.from_key(self.keys[i])
        return acct

    def w3(self) -> Web3:
        return Web3(Web3.HTTPProvider(self.rpc_url))


@dataclass
class Node:
    url: str
    devnet: Devnet
    log: Path


def _stop(p: subprocess.Popen[bytes]) -> None:
    p.terminate()
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()


def _wait_http(url: str, deadline: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{proc.args!r} exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            )
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in time:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    """anvil with `PaymentChannel` and the test stablecoin, accounts 1 to 9 funded."""
    for binary in ("x402-devnet", "x402-node"):
        if not (TARGET / binary).is_file():
            pytest.fail(
                f"{TARGET / binary} is missing: run `cargo build -p x402-node -p x402-devnet`"
            )
    work = tmp_path_factory.mktemp("devnet")
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    upstream_url = f"http://127.0.0.1:{upstream.server_address[1]}"
    config = work / "node.toml"
    log = work / "devnet.log"
    with log.open("wb") as out:
        dev = subprocess.Popen(
            [
                str(TARGET / "x402-devnet"),
                "--port",
                str(free_port()),
                "--config",
                str(config),
                "--upstream",
                upstream_url,
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "Up until interrupted" not in log.read_text():
            if dev.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"x402-devnet did not start:\n{log.read_text()}")
            time.sleep(0.1)
        text = log.read_text()
        rpc = re.search(r"RPC\s+(\S+) \(chain (\d+)\)", text)
        contract = re.search(r"PaymentChannel\s+(0x[0-9a-fA-F]{40})", text)
        token = re.search(r"TestStablecoin\s+(0x[0-9a-fA-F]{40})", text)
        keys = re.findall(r"\(\d+\) (0x[0-9a-fA-F]{40})\s+key (0x[0-9a-fA-F]{64})", text)
        assert rpc and contract and token and len(keys) == 10, text
        yield Devnet(
            rpc_url=rpc.group(1),
            chain_id=int(rpc.group(2)),
            contract=Web3.to_checksum_address(contract.group(1)),
            token=Web3.to_checksum_address(token.group(1)),
            provider=Web3.to_checksum_address(keys[0][0]),
            keys=[k for _, k in keys],
            config=config,
            upstream_url=upstream_url,
            workdir=work,
        )
    finally:
        _stop(dev)
        upstream.shutdown()


@pytest.fixture(scope="session")
def node(devnet: Devnet) -> Iterator[Node]:
    """The `x402-node` binary in front of the upstream: `/weather` costs 1000 (exact), `/llm` up
    to 5000 (upto), credit windows up to 100, the facilitator API behind FACILITATOR_TOKEN."""
    port = free_port()
    toml = devnet.config.read_text()
    toml = re.sub(r'(?m)^listen = ".*"$', f'listen = "127.0.0.1:{port}"', toml)
    token = f'token = "{FACILITATOR_TOKEN}"\n'
    if re.search(r"(?m)^\[facilitator\]$", toml):
        toml = re.sub(r"(?m)^\[facilitator\]\n", lambda m: m.group(0) + token, toml, count=1)
    else:
        toml += f"\n[facilitator]\n{token}"
    config = devnet.workdir / "node-py.toml"
    config.write_text(toml)
    log = devnet.workdir / "node.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(TARGET / "x402-node"), "--config", str(config)],
            cwd=devnet.workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(f"{url}/weather", time.monotonic() + 60, proc, log)
        yield Node(url=url, devnet=devnet, log=log)
    finally:
        _stop(proc)

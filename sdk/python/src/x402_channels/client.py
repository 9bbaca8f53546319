"""The client side of `channel-voucher` for the official x402 Python SDK.

`ChannelVoucherScheme` is a `SchemeNetworkClient`: register it on an `x402Client` (async, for
httpx) or an `x402ClientSync` (for requests) and every 402 offering our scheme is paid with an
EIP-712 voucher on a payment channel that the scheme opens and tops up itself.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.address import is_address, to_checksum_address
from web3 import Web3
from x402.interfaces import PaymentPayloadContext
from x402.schemas import PaymentRequirements
from x402.schemas.hooks import (
    PaymentRequiredContext,
    PaymentRequiredHeadersResult,
    PaymentResponseContext,
    RecoveredResponseResult,
)

from .chain import ChannelChain
from .constants import (
    CORRECTIVE_ERRORS,
    DEAD_CHANNEL_ERRORS,
    DOMAIN_NAME,
    DOMAIN_VERSION,
    MAX_NONCE,
    PAYMENT_SESSION,
    SCHEME,
    WAIT_ERRORS,
    ZERO_ADDRESS,
)
from .errors import ChannelPaymentError
from .store import ChannelRecord, ChannelStore, MemoryChannelStore
from .voucher import ChannelParams, compute_channel_id, is_voucher_signed_by, sign_voucher

if TYPE_CHECKING:
    import httpx
    import requests
    from x402 import x402Client, x402ClientSync
    from x402.http import x402HTTPClient, x402HTTPClientSync

_DECIMAL = re.compile(r"^(0|[1-9][0-9]{0,77})$")
_NETWORK = re.compile(r"^eip155:([1-9][0-9]{0,15})$")
_BYTES32 = re.compile(r"^0x[0-9a-fA-F]{64}$")


def decimal(v: object, what: str) -> int:
    """A non-negative integer sent as a decimal string (or a JSON integer), else a clear error."""
    if isinstance(v, bool):
        raise ChannelPaymentError(f"invalid {what}: {v!r}")
    if isinstance(v, int) and 0 <= v <= MAX_NONCE:
        return v
    if not isinstance(v, str) or not _DECIMAL.match(v):
        raise ChannelPaymentError(f"invalid {what}: {v!r}")
    n = int(v)
    if n >= 2**256:
        raise ChannelPaymentError(f"invalid {what}: {v!r} does not fit 256 bits")
    return n


def chain_id_of(network: str) -> int:
    """The chain id of an `eip155:<id>` network."""
    m = _NETWORK.match(network)
    if not m:
        raise ChannelPaymentError(f"unsupported network {network!r} (expected eip155:<chain id>)")
    return int(m.group(1))


def restart_nonce() -> int:
    """The lowest nonce of the first voucher a scheme signs on a channel it loaded from its store:
    the clock in milliseconds.

    A store restored from a backup (or left by a crashed process) can be behind what the client
    already signed. Signing the same nonce and amount again gives the very same voucher (the
    signatures are deterministic), which the node takes for a resend of a request it served and
    answers with that request's receipt (`409`, `x402-replayed`) instead of a corrective 402. A
    voucher whose nonce comes from the clock differs from every voucher an earlier run signed from
    the same record (a later start, a higher nonce, or another amount): the node serves it, or
    answers `amount_below_price` with its state and the client's own signature, from which the
    client resynchronises. 2^53 ms is some 285,000 years.
    """
    return int(time.time() * 1000)


@dataclass(frozen=True)
class ChannelExtra:
    """The checked `extra` of a `channel-voucher` requirement."""

    contract: str
    min_challenge_period: int
    min_deposit: int
    pricing: str
    max_credit_window: int
    channel: dict[str, Any] | None


def parse_extra(req: PaymentRequirements) -> ChannelExtra:
    """Checks the `extra` of a `channel-voucher` requirement."""
    e = req.extra
    if not isinstance(e, dict) or not e:
        raise ChannelPaymentError("channel-voucher requirement without extra")
    contract = e.get("contract")
    if not isinstance(contract, str) or not is_address(contract):
        raise ChannelPaymentError(f"extra.contract is not an address: {contract!r}")
    domain = e.get("domain")
    if (
        not isinstance(domain, dict)
        or domain.get("name") != DOMAIN_NAME
        or domain.get("version") != DOMAIN_VERSION
    ):
        raise ChannelPaymentError(
            f"unsupported channel contract domain {domain!r} "
            f"(this client signs for {DOMAIN_NAME!r} version {DOMAIN_VERSION!r})"
        )
    period = e.get("minChallengePeriod")
    if isinstance(period, bool) or not isinstance(period, int) or not 0 <= period < 2**32:
        raise ChannelPaymentError(f"extra.minChallengePeriod is not a u32: {period!r}")
    window = e.get("maxCreditWindow", 1)
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ChannelPaymentError(f"extra.maxCreditWindow is not a positive integer: {window!r}")
    pricing = e.get("pricing", "exact")
    if pricing not in ("exact", "upto"):
        raise ChannelPaymentError(f"extra.pricing is neither exact nor upto: {pricing!r}")
    channel = e.get("channel")
    return ChannelExtra(
        contract=to_checksum_address(contract),
        min_challenge_period=period,
        min_deposit=decimal(e.get("minDeposit", "0"), "extra.minDeposit"),
        pricing=str(pricing),
        max_credit_window=window,
        channel=channel if isinstance(channel, dict) else None,
    )


def channel_key(req: PaymentRequirements) -> str:
    """One channel per network, contract, provider and token."""
    e = parse_extra(req)
    return "|".join([req.network, e.contract, req.pay_to, req.asset]).lower()


def _decode_header(value: str | None) -> dict[str, Any] | None:
    if not value:
        return None
    try:
        v = json.loads(base64.b64decode(value, validate=False))
    except (ValueError, TypeError):
        return None
    return v if isinstance(v, dict) else None


@dataclass
class _Session:
    channel_id: str
    token: str
    uses: int


class ChannelVoucherScheme:
    """`channel-voucher` for `x402Client.register(network, scheme)`.

    - Channels: one per network, contract, provider and token; opened with `approve` + `open`
      (sized `max(minDeposit, deposit_multiple * price)`, never above `deposit_cap` in one
      channel, top-ups included) and topped up when the next voucher would exceed the deposit.
    - Trusted contracts: with `contracts`, a 402 naming another contract is refused before
      anything is signed or sent (recommended: without it a hostile server could have the client
      deposit, up to `deposit_cap`, into a contract of its own).
    - Spend caps: the SDK's resolved `max_amount_per_payment` bounds each voucher's increase.
    - State: a [`ChannelStore`]; a voucher is durable before it is returned to the SDK.
    - Corrective 402s: the node's view is taken only if it is consistent with what this client
      signed, or carries this client's own signature of the voucher it claims.
    - Thread and task safe: one lock around every state change; vouchers of concurrent requests
      get increasing nonces and amounts, and the node accepts them in any order.
    """

    scheme = SCHEME

    def __init__(
        self,
        account: LocalAccount,
        w3: Web3,
        *,
        deposit_cap: int,
        deposit_multiple: int = 100,
        store: ChannelStore | None = None,
        credit_window: int = 1,
        contracts: list[str] | None = None,
        challenge_period: int | None = None,
        node_wait: float = 1.0,
    ) -> None:
        if deposit_cap <= 0:
            raise ValueError("deposit_cap must be positive")
        if deposit_multiple <= 0:
            raise ValueError("deposit_multiple must be positive")
        if credit_window < 1:
            raise ValueError("credit_window must be at least 1")
        self.account = account
        self.chain = ChannelChain(w3, account)
        self.deposit_cap = deposit_cap
        self.deposit_multiple = deposit_multiple
        self.store: ChannelStore = store if store is not None else MemoryChannelStore()
        self.credit_window = credit_window
        self.contracts = None if contracts is None else {c.lower() for c in contracts}
        self.challenge_period = challenge_period
        self.node_wait = node_wait
        self._lock = threading.RLock()
        self._sessions: dict[str, _Session] = {}
        self._chain_ids: dict[str, int] = {}
        # Channels this instance signed on or opened: their store records are not behind.
        self._current: set[str] = set()
        self.scheme_hooks: dict[str, Any] = {"on_payment_response": self.on_payment_response}

    @classmethod
    def from_key(cls, private_key: str, rpc_url: str, **options: Any) -> ChannelVoucherScheme:
        """A scheme paying from `private_key` through the JSON-RPC endpoint `rpc_url`."""
        account: LocalAccount = Account.from_key(private_key)
        return cls(account, Web3(Web3.HTTPProvider(rpc_url)), **options)

    @property
    def payer(self) -> str:
        """The payer's (and voucher signer's) address."""
        return str(self.account.address)

    # ------------------------------------------------------------------ paying

    def create_payment_payload(
        self,
        requirements: PaymentRequirements,
        context: PaymentPayloadContext | None = None,
    ) -> dict[str, Any]:
        """`SchemeNetworkClient`: the next voucher for `requirements`, opening or topping up the
        channel first if needed."""
        req = requirements
        if req.scheme != SCHEME:
            raise ChannelPaymentError(f"scheme {req.scheme!r} is not {SCHEME!r}")
        extra = parse_extra(req)
        chain_id = chain_id_of(req.network)
        if not is_address(req.pay_to) or not is_address(req.asset):
            raise ChannelPaymentError(
                f"payTo {req.pay_to!r} or asset {req.asset!r} is not an address"
            )
        if self.contracts is not None and extra.contract.lower() not in self.contracts:
            raise ChannelPaymentError(
                f"channel contract {extra.contract} is not one this client trusts"
            )
        price = decimal(req.amount, "amount")
        if price == 0:
            raise ChannelPaymentError("a price of zero needs no payment")
        cap = None
        if context is not None and context.max_amount_per_payment is not None:
            cap = decimal(context.max_amount_per_payment, "spend cap")
        if cap is not None and price > cap:
            raise ChannelPaymentError(f"price {price} is above the spend cap {cap}")
        key = channel_key(req)
        with self._lock:
            record = self._ensure_channel(key, req, extra, chain_id, price)
            window = max(1, min(self.credit_window, extra.max_credit_window))
            if cap is not None:
                window = min(window, cap // price)
            base = record.cumulative
            amount = min(base + price * window, record.deposit)
            if amount < base + price:
                raise ChannelPaymentError("channel deposit exhausted")
            nonce = record.nonce + 1
            if record.channel_id not in self._current:
                nonce = max(nonce, restart_nonce())
            if nonce > MAX_NONCE:
                raise ChannelPaymentError("channel nonce exhausted")
            signature = sign_voucher(
                self.account, record.chain_id, record.contract, record.channel_id, nonce, amount
            )
            record = record.evolve(
                nonce=nonce,
                cumulative=amount,
                max_signed=max(record.max_signed, amount),
                signature=signature,
            )
            # Durable before the voucher leaves; the previous voucher's session dies with it.
            self.store.put(record)
            self._current.add(record.channel_id)
            self._sessions.pop(key, None)
            return {
                "channelId": record.channel_id,
                "nonce": nonce,
                "cumulativeAmount": str(amount),
                "signature": signature,
            }

    def _ensure_channel(
        self, key: str, req: PaymentRequirements, extra: ChannelExtra, chain_id: int, price: int
    ) -> ChannelRecord:
        existing = self.store.get(key)
        if existing is not None and existing.status == "open":
            if existing.cumulative + price > existing.deposit:
                if existing.deposit < self.deposit_cap:
                    return self._top_up(existing, extra, price)
                if existing.spent + price <= existing.deposit:
                    # At the cap, the signed ceiling ran ahead of what was charged (vouchers
                    # refused before the node served them, unused credit windows): build the next
                    # voucher on what the node charged. If requests are still in flight, the node
                    # answers with its state and the client resynchronises.
                    return existing.evolve(cumulative=existing.spent)
                return self._top_up(existing, extra, price)
            # Top up when half a deposit's worth is left, while the next vouchers still fit the
            # old one: the node learns of top-ups by following the chain, and a voucher above the
            # deposit it knows is refused (`insufficient_deposit`).
            room = existing.deposit - existing.cumulative - price
            if room < price * self.deposit_multiple // 2 and existing.deposit < self.deposit_cap:
                return self._top_up(existing, extra, price)
            return existing
        return self._open(key, req, extra, chain_id, price)

    def _deposit_for(self, extra: ChannelExtra, price: int, already: int) -> int:
        want = max(price * self.deposit_multiple, extra.min_deposit)
        if already + want > self.deposit_cap:
            want = self.deposit_cap - already
        if want < price or already + want < extra.min_deposit:
            raise ChannelPaymentError(
                f"deposit cap {self.deposit_cap} does not cover the price {price} "
                f"and the minimum deposit {extra.min_deposit}"
            )
        return want

    def _check_chain(self, contract: str, chain_id: int) -> None:
        known = self._chain_ids.get(contract)
        if known is None:
            known = self.chain.chain_id()
            self._chain_ids[contract] = known
        if known != chain_id:
            raise ChannelPaymentError(
                f"the 402 asks for chain {chain_id}, but this client's RPC is on chain {known}"
            )

    def _open(
        self, key: str, req: PaymentRequirements, extra: ChannelExtra, chain_id: int, price: int
    ) -> ChannelRecord:
        self._check_chain(extra.contract, chain_id)
        deposit = self._deposit_for(extra, price, 0)
        params = ChannelParams(
            payer=self.payer,
            payee=to_checksum_address(req.pay_to),
            token=to_checksum_address(req.asset),
            signer=ZERO_ADDRESS,
            challenge_period=max(self.challenge_period or 0, extra.min_challenge_period),
            salt="0x" + os.urandom(32).hex(),
        )
        channel_id = compute_channel_id(chain_id, extra.contract, params)
        self.chain.open(extra.contract, params, deposit)
        onchain = self.chain.get_channel(extra.contract, channel_id)
        if onchain.status != 1:
            raise ChannelPaymentError(
                f"channel {channel_id} is not open after the open transaction"
            )
        record = ChannelRecord(
            key=key,
            channel_id=channel_id,
            chain_id=chain_id,
            contract=extra.contract,
            params=params,
            deposit=onchain.deposit,
        )
        self.store.put(record)
        self._current.add(channel_id)
        return record

    def _top_up(self, record: ChannelRecord, extra: ChannelExtra, price: int) -> ChannelRecord:
        amount = self._deposit_for(extra, price, record.deposit)
        self.chain.top_up(record.contract, record.params, amount)
        onchain = self.chain.get_channel(record.contract, record.channel_id)
        updated = record.evolve(deposit=onchain.deposit)
        self.store.put(updated)
        return updated

    # ------------------------------------------------------------ credit windows

    def take_session(self, req: PaymentRequirements) -> str | None:
        """A `PAYMENT-SESSION` value for `req` when a prepaid window has uses left (taking one)."""
        if req.scheme != SCHEME:
            return None
        try:
            key = channel_key(req)
        except ChannelPaymentError:
            return None
        with self._lock:
            s = self._sessions.get(key)
            if s is None or s.uses <= 0:
                return None
            s.uses -= 1
            if s.uses == 0:
                del self._sessions[key]
            return f"{s.channel_id}:{s.token}"

    def on_payment_required(
        self, ctx: PaymentRequiredContext
    ) -> PaymentRequiredHeadersResult | None:
        """`x402HTTPClient.on_payment_required` hook: pays from a credit window when one is open."""
        for req in getattr(ctx.payment_required, "accepts", []):
            if isinstance(req, PaymentRequirements):
                header = self.take_session(req)
                if header is not None:
                    return PaymentRequiredHeadersResult(headers={PAYMENT_SESSION: header})
        return None

    # ---------------------------------------------------------------- responses

    def on_payment_response(self, ctx: PaymentResponseContext) -> Any:
        """Scheme hook: a corrective 402 resynchronises (then the SDK retries once), a dead
        channel is retired (the retry opens a new one), a node behind the chain gets a pause
        before the retry (a coroutine when called inside an event loop: the async client awaits
        hooks; a sleep otherwise)."""
        req = ctx.requirements
        if not isinstance(req, PaymentRequirements) or req.scheme != SCHEME:
            return None
        if ctx.settle_response is not None:
            if ctx.settle_response.success and isinstance(ctx.settle_response.extra, dict):
                self.take_receipt(ctx.settle_response.extra)
            return None
        pr = ctx.payment_required
        if pr is None:
            return None
        error = getattr(pr, "error", None)
        if not error:
            return None
        try:
            key = channel_key(req)
        except ChannelPaymentError:
            return None
        payload = ctx.payment_payload.payload
        sent_channel = payload.get("channelId") if isinstance(payload, dict) else None
        if error in WAIT_ERRORS and self._chain_covers(key, payload):
            # The node has not followed the chain to this channel or its latest top-up yet: the
            # retry goes out after a pause, with a new voucher above every voucher in flight (a
            # resend of this one could fall below what concurrent requests reserved meanwhile).
            # The SDK retries once; top-ups happen early, so this is rare.
            return self._pause()
        if error in DEAD_CHANNEL_ERRORS:
            with self._lock:
                record = self.store.get(key)
                if record is not None and record.channel_id == sent_channel:
                    self._retire(record)
            return RecoveredResponseResult()
        if error not in CORRECTIVE_ERRORS:
            return None
        state = None
        for offer in getattr(pr, "accepts", []):
            if isinstance(offer, PaymentRequirements) and offer.scheme == SCHEME:
                try:
                    if channel_key(offer) == key:
                        state = parse_extra(offer).channel
                except ChannelPaymentError:
                    continue
        if state is None:
            return None
        self.resync(key, state)
        return RecoveredResponseResult()

    def _chain_covers(self, key: str, payload: object) -> bool:
        """Whether the chain holds the sent voucher's channel open with a deposit covering it."""
        if not isinstance(payload, dict):
            return False
        record = self.store.get(key)
        if record is None or record.channel_id != payload.get("channelId"):
            return False
        try:
            amount = decimal(payload.get("cumulativeAmount"), "cumulativeAmount")
            onchain = self.chain.get_channel(record.contract, record.channel_id)
        except Exception:
            return False
        return onchain.status == 1 and onchain.exit_at == 0 and onchain.deposit >= amount

    def _pause(self) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            time.sleep(self.node_wait)
            return RecoveredResponseResult()

        async def later() -> RecoveredResponseResult:
            await asyncio.sleep(self.node_wait)
            return RecoveredResponseResult()

        return later()

    def observe_payment_response(self, header: str | None) -> None:
        """Takes the `PAYMENT-RESPONSE` header of a response paid from a credit window (the SDK
        shows the scheme only the responses to vouchers)."""
        receipt = _decode_header(header)
        if receipt is None or receipt.get("success") is not True:
            return
        paid = receipt.get("extra")
        if isinstance(paid, dict):
            self.take_receipt(paid)

    def take_receipt(self, paid: dict[str, Any]) -> None:
        """Takes a paid response's receipt (`PAYMENT-RESPONSE` extra): what the node charged, and
        a credit window's session. A receipt claiming more than this client signed is an error."""
        if not isinstance(paid.get("channelId"), str):
            return
        channel_id = str(paid["channelId"]).lower()
        with self._lock:
            record = next(
                (
                    r
                    for r in self.store.list()
                    if r.channel_id.lower() == channel_id and r.status == "open"
                ),
                None,
            )
            if record is None:
                return
            total = decimal(paid.get("totalCharged"), "totalCharged")
            nonce = decimal(paid.get("nonce"), "nonce")
            if nonce > record.nonce or total > record.max_signed:
                raise ChannelPaymentError(
                    f"node reports nonce {nonce} / charged {total} above what this client signed "
                    f"({record.nonce}, {record.max_signed})"
                )
            if total > record.spent:
                record = record.evolve(spent=total)
                self.store.put(record)
            session = paid.get("session")
            # A node grants a session on whatever its latest voucher prepays beyond the charge.
            # Without credit windows that surplus belongs to vouchers still in flight (arriving
            # out of order): spending it from a session would leave them short.
            if (
                self.credit_window > 1
                and isinstance(session, dict)
                and nonce == record.nonce
                and isinstance(session.get("token"), str)
                and _BYTES32.match(session["token"])
                and isinstance(session.get("uses"), int)
            ):
                current = self._sessions.get(record.key)
                uses = int(session["uses"])
                if current is not None and current.token == session["token"]:
                    current.uses = min(current.uses, uses)
                elif uses > 0:
                    self._sessions[record.key] = _Session(record.channel_id, session["token"], uses)

    def resync(self, key: str, state: dict[str, Any]) -> None:
        """Takes the node's view of a channel from a corrective 402, only if it is verifiable: the
        node may hold an older voucher than the client's latest, and any state above what the
        client remembers must carry the client's own signature of exactly that voucher."""
        with self._lock:
            record = self.store.get(key)
            if record is None:
                raise ChannelPaymentError("corrective 402 for a channel this client does not know")
            channel_id = state.get("channelId")
            if not isinstance(channel_id, str) or channel_id.lower() != record.channel_id.lower():
                raise ChannelPaymentError(
                    f"channel state for {channel_id!r} sent for channel {record.channel_id}"
                )
            nonce = decimal(state.get("nonce"), "channel.nonce")
            cumulative = decimal(state.get("cumulativeAmount"), "channel.cumulativeAmount")
            charged = decimal(state.get("charged"), "channel.charged")
            deposit = decimal(state.get("deposit"), "channel.deposit")
            if charged > cumulative:
                raise ChannelPaymentError("node reports charged above its voucher")
            signature = state.get("signature")
            my_nonce = record.nonce
            max_signed = record.max_signed
            if nonce > my_nonce or cumulative > max_signed:
                # The client forgot vouchers (lost or restored state): trust the node only with the
                # client's own signature of exactly that voucher.
                signer = record.params.signer
                if signer.lower() == ZERO_ADDRESS:
                    signer = record.params.payer
                signed = nonce > 0 and is_voucher_signed_by(
                    signer,
                    record.chain_id,
                    record.contract,
                    record.channel_id,
                    nonce,
                    cumulative,
                    signature,
                )
                if not signed:
                    raise ChannelPaymentError(
                        f"node claims voucher {nonce} for {cumulative} on {record.channel_id}, "
                        f"above what this client signed ({my_nonce}, {max_signed}), without "
                        "this client's "
                        "signature of it"
                    )
                my_nonce = nonce
                max_signed = max(max_signed, cumulative)
            # The next voucher goes above everything the node holds or may still receive: its
            # latest voucher covers what it charged and what requests in flight reserved, and
            # vouchers the client signed after it may be in flight.
            next_base = max(charged, cumulative if nonce == my_nonce else record.cumulative)
            updated = record.evolve(
                nonce=my_nonce,
                max_signed=max_signed,
                spent=max(record.spent, charged),
                cumulative=next_base,
                deposit=max(record.deposit, deposit),
                signature=signature
                if nonce == my_nonce and isinstance(signature, str)
                else record.signature,
            )
            self.store.put(updated)
            self._sessions.pop(key, None)

    def _retire(self, record: ChannelRecord) -> None:
        """Moves a channel the client no longer pays with out of its key, keeping its parameters
        and latest voucher for an exit or a close."""
        self.store.put(record.evolve(key=f"{record.key}#{record.channel_id}", status="closed"))
        self.store.delete(record.key)
        self._sessions.pop(record.key, None)

    # ------------------------------------------------------------ HTTP helpers

    async def httpx_response_hook(self, response: httpx.Response) -> None:
        """httpx `event_hooks["response"]`: reads the receipt of a response paid from a window."""
        if PAYMENT_SESSION in response.request.headers:
            self.observe_payment_response(response.headers.get("PAYMENT-RESPONSE"))

    def requests_response_hook(self, response: requests.Response, *_: Any, **__: Any) -> None:
        """requests `session.hooks["response"]`: reads the receipt of a response paid from a
        window."""
        if PAYMENT_SESSION in response.request.headers:
            self.observe_payment_response(response.headers.get("PAYMENT-RESPONSE"))


def channel_http_client(client: x402Client, scheme: ChannelVoucherScheme) -> x402HTTPClient:
    """An `x402HTTPClient` whose 402 hook pays from a credit window when one has uses left."""
    from x402.http import x402HTTPClient

    return x402HTTPClient(client).on_payment_required(scheme.on_payment_required)


def channel_http_client_sync(
    client: x402ClientSync, scheme: ChannelVoucherScheme
) -> x402HTTPClientSync:
    """The sync `x402HTTPClientSync` counterpart of [`channel_http_client`]."""
    from x402.http import x402HTTPClientSync

    return x402HTTPClientSync(client).on_payment_required(scheme.on_payment_required)


def channel_httpx_client(
    client: x402Client, scheme: ChannelVoucherScheme, **httpx_kwargs: Any
) -> httpx.AsyncClient:
    """An `httpx.AsyncClient` paying through the official `x402AsyncTransport`, with credit
    windows and receipts wired to `scheme`."""
    import httpx
    from x402.http.clients import x402AsyncTransport

    hooks = dict(httpx_kwargs.pop("event_hooks", {}) or {})
    hooks["response"] = [*hooks.get("response", []), scheme.httpx_response_hook]
    transport = x402AsyncTransport(
        channel_http_client(client, scheme), httpx_kwargs.pop("transport", None)
    )
    return httpx.AsyncClient(transport=transport, event_hooks=hooks, **httpx_kwargs)


def channel_requests_session(
    client: x402ClientSync, scheme: ChannelVoucherScheme, session: requests.Session | None = None
) -> requests.Session:
    """A `requests.Session` paying through the official `x402HTTPAdapter`, with credit windows and
    receipts wired to `scheme`."""
    import requests
    from x402.http.clients import wrapRequestsWithPayment

    s = session if session is not None else requests.Session()
    wrapRequestsWithPayment(s, channel_http_client_sync(client, scheme))
    s.hooks["response"].append(scheme.requests_response_hook)
    return s

"""The server side of `channel-voucher` for the official x402 Python SDK, with the Rust node as
facilitator.

```python
server = x402ResourceServer(node_facilitator("http://127.0.0.1:8402", token)).register(
    "eip155:31337", ChannelVoucherServerScheme(asset=TOKEN))
```

The node verifies vouchers (a valid verify reserves the price on the channel) and settles them
(a settle commits the charge durably before it answers): the same rules as its own gateway.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar, Final

from eth_utils.address import is_address, to_checksum_address
from x402.http import FacilitatorConfig, HTTPFacilitatorClient, HTTPFacilitatorClientSync
from x402.http.facilitator_client_base import AuthHeaders
from x402.interfaces import PaymentFlowConfig, SchemePaymentRequiredContext
from x402.schemas import (
    AssetAmount,
    Network,
    PaymentPayload,
    PaymentRequirements,
    Price,
    SupportedKind,
    VerifyResponse,
)
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequirementsV1

from .constants import CORRECTIVE_ERRORS, DOMAIN_NAME, DOMAIN_VERSION, SCHEME

FACILITATOR_PATH: Final = "/facilitator"
"""Where the node mounts the facilitator API by default (`[facilitator] path`)."""

# The corrective state of the last refused verify in this request (task or thread): the node
# answers `extra.channel` with the refusal, and the 402 the SDK builds afterwards carries it.
_corrective: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "x402_channels_corrective", default=None
)


def _remember(result: VerifyResponse) -> VerifyResponse:
    channel = (result.extra or {}).get("channel") if not result.is_valid else None
    _corrective.set(dict(channel) if isinstance(channel, dict) else None)
    return result


class BearerAuth:
    """`Authorization: Bearer <token>` on every facilitator call (`[facilitator] token`)."""

    def __init__(self, token: str) -> None:
        if len(token) < 32:
            raise ValueError("the node's facilitator token has at least 32 characters")
        self._headers = {"Authorization": f"Bearer {token}"}

    def get_auth_headers(self) -> AuthHeaders:
        return AuthHeaders(
            verify=dict(self._headers), settle=dict(self._headers), supported=dict(self._headers)
        )


class NodeFacilitatorClient(HTTPFacilitatorClient):
    """The official async HTTP facilitator client, keeping the corrective channel state of a
    refused verify for the 402 (see [`ChannelVoucherServerScheme`])."""

    async def verify(
        self,
        payload: PaymentPayload | PaymentPayloadV1,
        requirements: PaymentRequirements | PaymentRequirementsV1,
    ) -> VerifyResponse:
        _corrective.set(None)
        return _remember(await super().verify(payload, requirements))


class NodeFacilitatorClientSync(HTTPFacilitatorClientSync):
    """The sync counterpart of [`NodeFacilitatorClient`] (Flask)."""

    def verify(
        self,
        payload: PaymentPayload | PaymentPayloadV1,
        requirements: PaymentRequirements | PaymentRequirementsV1,
    ) -> VerifyResponse:
        _corrective.set(None)
        return _remember(super().verify(payload, requirements))


def _config(node_url: str, token: str, path: str, timeout: float) -> FacilitatorConfig:
    return FacilitatorConfig(
        url=node_url.rstrip("/") + path, timeout=timeout, auth_provider=BearerAuth(token)
    )


def node_facilitator(
    node_url: str, token: str, *, path: str = FACILITATOR_PATH, timeout: float = 30.0
) -> NodeFacilitatorClient:
    """The facilitator client for the node at `node_url` (FastAPI, async servers)."""
    return NodeFacilitatorClient(_config(node_url, token, path, timeout))


def node_facilitator_sync(
    node_url: str, token: str, *, path: str = FACILITATOR_PATH, timeout: float = 30.0
) -> NodeFacilitatorClientSync:
    """The facilitator client for the node at `node_url` (Flask, sync servers)."""
    return NodeFacilitatorClientSync(_config(node_url, token, path, timeout))


class ChannelVoucherServerScheme:
    """`channel-voucher` for `x402ResourceServer.register(network, scheme)`.

    Prices: an `AssetAmount` (`{"amount": "1000", "asset": "0x…"}`, base units), an integer
    (base units of `asset`), or money (`"$0.001"`, converted with `decimals` into `asset`).
    The channel contract and its EIP-712 domain come from the facilitator's `/supported`; the
    other terms must match the node's `[payment]` configuration (a client opens its channel with
    them, and the node refuses channels below its own minimums).
    """

    scheme = SCHEME
    default_asset_transfer_method = "default"
    payment_flows: Mapping[str, PaymentFlowConfig] = {
        "default": {"supported": ("authorization",), "default": "authorization"}
    }
    dynamic_extra_fields: ClassVar[list[str]] = ["channel"]
    """The corrective state is not part of the terms a payment must echo."""

    def __init__(
        self,
        *,
        asset: str | None = None,
        decimals: int = 6,
        min_challenge_period: int = 3600,
        min_deposit: int = 0,
        pricing: str = "exact",
        max_credit_window: int = 1,
        token_name: str | None = None,
        token_version: str | None = None,
    ) -> None:
        if asset is not None and not is_address(asset):
            raise ValueError(f"asset {asset!r} is not an address")
        if pricing not in ("exact", "upto"):
            raise ValueError(f"pricing must be exact or upto, not {pricing!r}")
        if max_credit_window < 1 or min_challenge_period < 0 or min_deposit < 0:
            raise ValueError("max_credit_window ≥ 1, min_challenge_period ≥ 0, min_deposit ≥ 0")
        self.asset = None if asset is None else to_checksum_address(asset)
        self.decimals = decimals
        self.min_challenge_period = min_challenge_period
        self.min_deposit = min_deposit
        self.pricing = pricing
        self.max_credit_window = max_credit_window
        self.token_name = token_name
        self.token_version = token_version

    def parse_price(self, price: Price, network: Network) -> AssetAmount:
        """`SchemeNetworkServer`: the price in base units of the token."""
        if isinstance(price, AssetAmount):
            return self._asset_amount(price.amount, price.asset, price.extra)
        if isinstance(price, dict):
            if "amount" not in price:
                raise ValueError(f"price {price!r} has no amount")
            return self._asset_amount(price["amount"], price.get("asset"), price.get("extra"))
        if self.asset is None:
            raise ValueError(
                f"price {price!r} on {network} needs a token: pass "
                "ChannelVoucherServerScheme(asset=…) "
                "or an AssetAmount"
            )
        if isinstance(price, int) and not isinstance(price, bool):
            return self._asset_amount(str(price), self.asset, None)
        text = str(price).strip().lstrip("$").replace(",", "")
        try:
            units = Decimal(text) * (Decimal(10) ** self.decimals)
        except InvalidOperation:
            raise ValueError(f"price {price!r} is not an amount of money") from None
        if units != units.to_integral_value():
            raise ValueError(f"price {price!r} is finer than the token's {self.decimals} decimals")
        return self._asset_amount(str(int(units)), self.asset, None)

    def _asset_amount(self, amount: object, asset: object, extra: object) -> AssetAmount:
        text = str(amount)
        if not text.isdigit() or int(text) <= 0:
            raise ValueError(f"price amount {amount!r} is not a positive integer of base units")
        token = asset if asset is not None else self.asset
        if not isinstance(token, str) or not is_address(token):
            raise ValueError(f"price asset {token!r} is not an address")
        return AssetAmount(
            amount=str(int(text)),
            asset=to_checksum_address(token),
            extra=dict(extra) if isinstance(extra, dict) else {},
        )

    def enhance_payment_requirements(
        self,
        requirements: PaymentRequirements,
        supported_kind: SupportedKind,
        extensions: list[str],
    ) -> PaymentRequirements:
        """`SchemeNetworkServer`: the scheme's `extra`, with the contract and its domain from the
        node's `/supported`."""
        kind = supported_kind.extra or {}
        contract = kind.get("contract")
        if not isinstance(contract, str) or not is_address(contract):
            raise ValueError(
                f"the facilitator's {SCHEME} kind on {requirements.network} "
                "names no channel contract"
            )
        domain = kind.get("domain") or {"name": DOMAIN_NAME, "version": DOMAIN_VERSION}
        extra: dict[str, Any] = dict(requirements.extra or {})
        if self.token_name is not None:
            extra.setdefault("name", self.token_name)
        if self.token_version is not None:
            extra.setdefault("version", self.token_version)
        extra.update(
            {
                "contract": to_checksum_address(contract),
                "domain": {"name": domain.get("name"), "version": domain.get("version")},
                "minChallengePeriod": self.min_challenge_period,
                "minDeposit": str(self.min_deposit),
                "pricing": self.pricing,
            }
        )
        if self.max_credit_window > 1:
            extra["maxCreditWindow"] = self.max_credit_window
        extra.pop("channel", None)
        requirements.extra = extra
        requirements.pay_to = to_checksum_address(requirements.pay_to)
        requirements.asset = to_checksum_address(requirements.asset)
        return requirements

    def enrich_payment_required_response(
        self, context: SchemePaymentRequiredContext
    ) -> list[PaymentRequirements] | None:
        """A corrective 402 (`nonce_too_low`, `amount_below_price`, `session_invalid`) carries the
        node's state of the channel, with the payer's own latest signature, so that the client
        can resynchronise."""
        state = _corrective.get()
        if state is None or context.error not in CORRECTIVE_ERRORS:
            return None
        _corrective.set(None)
        out: list[PaymentRequirements] = []
        for req in context.requirements:
            if req.scheme == SCHEME:
                req = req.model_copy(update={"extra": {**(req.extra or {}), "channel": state}})
            out.append(req)
        return out

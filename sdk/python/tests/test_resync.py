"""The client's trust rules for a node's channel state, without a node: real signatures."""

from __future__ import annotations

from typing import Any

import pytest
from eth_account import Account
from web3 import Web3

from x402_channels import (
    ChannelParams,
    ChannelPaymentError,
    ChannelRecord,
    ChannelVoucherScheme,
    sign_voucher,
)
from x402_channels.constants import ZERO_ADDRESS

CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
CHANNEL = "0x" + "ab" * 32
KEY = "k"


def scheme_with(nonce: int, signed: int, cumulative: int | None = None) -> ChannelVoucherScheme:
    acct = Account.create()
    scheme = ChannelVoucherScheme(acct, Web3(), deposit_cap=10**9)
    scheme.store.put(
        ChannelRecord(
            key=KEY,
            channel_id=CHANNEL,
            chain_id=31337,
            contract=CONTRACT,
            params=ChannelParams(
                acct.address,
                "0x" + "44" * 20,
                "0x" + "55" * 20,
                ZERO_ADDRESS,
                3600,
                "0x" + "66" * 32,
            ),
            deposit=100_000,
            nonce=nonce,
            cumulative=signed if cumulative is None else cumulative,
            max_signed=signed,
        )
    )
    return scheme


def state(
    scheme: ChannelVoucherScheme | None, nonce: int, amount: int, charged: int, **over: Any
) -> dict[str, Any]:
    s: dict[str, Any] = {
        "channelId": CHANNEL,
        "nonce": nonce,
        "cumulativeAmount": str(amount),
        "charged": str(charged),
        "deposit": "100000",
    }
    if scheme is not None:
        s["signature"] = sign_voucher(scheme.account, 31337, CONTRACT, CHANNEL, nonce, amount)
    s.update(over)
    return s


def record(scheme: ChannelVoucherScheme) -> ChannelRecord:
    r = scheme.store.get(KEY)
    assert r is not None
    return r


def test_state_below_what_the_client_signed_needs_no_signature() -> None:
    # Vouchers 4 and 5 are in flight; the node holds 3 and charged 3000.
    s = scheme_with(5, 5000)
    s.resync(KEY, state(None, 3, 3000, 3000))
    r = record(s)
    assert (r.nonce, r.cumulative, r.max_signed, r.spent) == (5, 5000, 5000, 3000)


def test_node_holding_the_latest_voucher_keeps_the_base_above_it() -> None:
    s = scheme_with(5, 5000)
    s.resync(KEY, state(s, 5, 5000, 4000))
    r = record(s)
    assert (r.nonce, r.cumulative, r.spent) == (5, 5000, 4000)


def test_lost_vouchers_are_taken_back_with_the_clients_own_signature() -> None:
    s = scheme_with(5, 5000)
    s.resync(KEY, state(s, 15, 15000, 15000))
    r = record(s)
    assert (r.nonce, r.cumulative, r.max_signed, r.spent) == (15, 15000, 15000, 15000)


@pytest.mark.parametrize(
    ("forge", "message"),
    [
        ("no-signature", "without this client's signature"),
        ("foreign", "without this client's signature"),
        ("other-voucher", "without this client's signature"),
        ("other-channel", "sent for channel"),
        ("charged-above", "charged above its voucher"),
        ("bad-number", "invalid channel.cumulativeAmount"),
    ],
)
def test_unverifiable_state_is_refused_and_changes_nothing(forge: str, message: str) -> None:
    s = scheme_with(5, 5000)
    before = record(s)
    bad = state(s, 15, 15000, 15000)
    if forge == "no-signature":
        del bad["signature"]
    elif forge == "foreign":
        bad["signature"] = sign_voucher(Account.create(), 31337, CONTRACT, CHANNEL, 15, 15000)
    elif forge == "other-voucher":
        bad["signature"] = sign_voucher(s.account, 31337, CONTRACT, CHANNEL, 15, 14000)
    elif forge == "other-channel":
        bad["channelId"] = "0x" + "cd" * 32
    elif forge == "charged-above":
        bad["charged"] = "15001"
    elif forge == "bad-number":
        bad["cumulativeAmount"] = "0x3a98"
    with pytest.raises(ChannelPaymentError, match=message):
        s.resync(KEY, bad)
    assert record(s) == before


def test_receipts_above_what_was_signed_are_refused() -> None:
    s = scheme_with(5, 5000)
    s.take_receipt(
        {
            "channelId": CHANNEL,
            "nonce": 5,
            "cumulativeAmount": "5000",
            "charged": "1000",
            "totalCharged": "5000",
        }
    )
    assert record(s).spent == 5000
    for nonce, total in [(6, 5000), (5, 5001)]:
        with pytest.raises(ChannelPaymentError, match="above what this client signed"):
            s.take_receipt({"channelId": CHANNEL, "nonce": nonce, "totalCharged": str(total)})
    assert record(s).spent == 5000

"""Vouchers, channel ids and the store, checked against the deployed contract (anvil)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from x402_channels import (
    ChannelParams,
    ChannelRecord,
    FileChannelStore,
    compute_channel_id,
    is_voucher_signed_by,
    sign_voucher,
)
from x402_channels.chain import PAYMENT_CHANNEL_ABI, ChannelChain
from x402_channels.constants import ZERO_ADDRESS
from x402_channels.voucher import voucher_digest

from .conftest import Devnet

N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def _params(devnet: Devnet, payer: str) -> ChannelParams:
    return ChannelParams(
        payer=payer,
        payee=devnet.provider,
        token=devnet.token,
        signer=ZERO_ADDRESS,
        challenge_period=3600,
        salt="0x" + os.urandom(32).hex(),
    )


def test_digest_and_channel_id_match_the_contract(devnet: Devnet) -> None:
    w3 = devnet.w3()
    c = w3.eth.contract(address=Web3.to_checksum_address(devnet.contract), abi=PAYMENT_CHANNEL_ABI)
    p = _params(devnet, devnet.account(1).address)
    cid = compute_channel_id(devnet.chain_id, devnet.contract, p)
    assert "0x" + c.functions.computeChannelId(p.as_tuple()).call().hex() == cid
    for nonce, amount in [(1, 1000), (2**64 - 1, 2**256 - 1), (7, 0)]:
        onchain = c.functions.voucherDigest(bytes.fromhex(cid[2:]), nonce, amount).call()
        assert "0x" + onchain.hex() == voucher_digest(
            devnet.chain_id, devnet.contract, cid, nonce, amount
        )


def test_open_top_up_and_signatures(devnet: Devnet) -> None:
    acct = devnet.account(8)
    chain = ChannelChain(devnet.w3(), acct)
    p = _params(devnet, acct.address)
    cid = compute_channel_id(devnet.chain_id, devnet.contract, p)
    chain.open(devnet.contract, p, 50_000)
    assert chain.get_channel(devnet.contract, cid).deposit == 50_000
    chain.top_up(devnet.contract, p, 25_000)
    ch = chain.get_channel(devnet.contract, cid)
    assert (ch.deposit, ch.paid, ch.status) == (75_000, 0, 1)

    sig = sign_voucher(acct, devnet.chain_id, devnet.contract, cid, 3, 3000)
    assert is_voucher_signed_by(acct.address, devnet.chain_id, devnet.contract, cid, 3, 3000, sig)
    # Any other voucher, signer, contract or chain: refused.
    other = Account.create().address
    assert not is_voucher_signed_by(other, devnet.chain_id, devnet.contract, cid, 3, 3000, sig)
    assert not is_voucher_signed_by(
        acct.address, devnet.chain_id, devnet.contract, cid, 4, 3000, sig
    )
    assert not is_voucher_signed_by(
        acct.address, devnet.chain_id, devnet.contract, cid, 3, 3001, sig
    )
    assert not is_voucher_signed_by(acct.address, 1, devnet.contract, cid, 3, 3000, sig)
    assert not is_voucher_signed_by(acct.address, devnet.chain_id, devnet.token, cid, 3, 3000, sig)
    # The malleable twin (high s, flipped v) recovers the same key but the contract refuses it.
    raw = bytes.fromhex(sig[2:])
    s = int.from_bytes(raw[32:64], "big")
    twin = raw[:32] + (N - s).to_bytes(32, "big") + bytes([55 - raw[64]])
    assert not is_voucher_signed_by(
        acct.address, devnet.chain_id, devnet.contract, cid, 3, 3000, "0x" + twin.hex()
    )
    for junk in [None, 5, "", "0x", sig[:-2], sig + "00", "0x" + "zz" * 65]:
        assert not is_voucher_signed_by(
            acct.address, devnet.chain_id, devnet.contract, cid, 3, 3000, junk
        )


def test_file_store_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state" / "channels.json"
    store = FileChannelStore(path)
    record = ChannelRecord(
        key="eip155:31337|0xc|0xp|0xt",
        channel_id="0x" + "11" * 32,
        chain_id=31337,
        contract="0x" + "22" * 20,
        params=ChannelParams(
            "0x" + "33" * 20,
            "0x" + "44" * 20,
            "0x" + "55" * 20,
            ZERO_ADDRESS,
            3600,
            "0x" + "66" * 32,
        ),
        deposit=2**200,
        nonce=9,
        cumulative=9000,
        max_signed=9000,
        spent=8000,
        signature="0x" + "77" * 65,
    )
    store.put(record)
    assert FileChannelStore(path).get(record.key) == record
    store.delete(record.key)
    assert FileChannelStore(path).list() == []
    path.write_text('{"version": 2}')
    with pytest.raises(ValueError, match="not a channel store"):
        FileChannelStore(path)

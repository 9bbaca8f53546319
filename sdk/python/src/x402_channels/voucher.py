"""EIP-712 vouchers and channel ids, exactly as `PaymentChannel` computes them.

```text
Voucher(bytes32 channelId,uint64 nonce,uint256 cumulativeAmount)
domain: { name: "x402 Payment Channel", version: "2", chainId, verifyingContract }
channelId = keccak256(abi.encode(chainid, contract,
                                 payer, payee, token, signer, challengePeriod, salt))
```
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import SignableMessage, encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from .constants import DOMAIN_NAME, DOMAIN_VERSION

_SECP256K1_HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0
_SIGNATURE = re.compile(r"^0x[0-9a-fA-F]{130}$")
_BYTES32 = re.compile(r"^0x[0-9a-fA-F]{64}$")

VOUCHER_TYPES: dict[str, list[dict[str, str]]] = {
    "Voucher": [
        {"name": "channelId", "type": "bytes32"},
        {"name": "nonce", "type": "uint64"},
        {"name": "cumulativeAmount", "type": "uint256"},
    ]
}


@dataclass(frozen=True)
class ChannelParams:
    """The immutable parameters of a channel (`IPaymentChannel.ChannelParams`)."""

    payer: str
    payee: str
    token: str
    """The ERC-20 token, or the zero address for the native token."""
    signer: str
    """The voucher signer; the zero address means the payer signs."""
    challenge_period: int
    salt: str
    """32 bytes, hex."""

    def as_tuple(self) -> tuple[str, str, str, str, int, bytes]:
        """The ABI tuple `(payer, payee, token, signer, challengePeriod, salt)`."""
        return (
            to_checksum_address(self.payer),
            to_checksum_address(self.payee),
            to_checksum_address(self.token),
            to_checksum_address(self.signer),
            self.challenge_period,
            bytes.fromhex(self.salt[2:]),
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON form kept in a channel store."""
        return {
            "payer": self.payer,
            "payee": self.payee,
            "token": self.token,
            "signer": self.signer,
            "challengePeriod": self.challenge_period,
            "salt": self.salt,
        }

    @staticmethod
    def from_json(v: dict[str, Any]) -> ChannelParams:
        """Reads [`ChannelParams.to_json`]'s form."""
        return ChannelParams(
            payer=str(v["payer"]),
            payee=str(v["payee"]),
            token=str(v["token"]),
            signer=str(v["signer"]),
            challenge_period=int(v["challengePeriod"]),
            salt=str(v["salt"]),
        )


def compute_channel_id(chain_id: int, contract: str, p: ChannelParams) -> str:
    """The channel id, as `PaymentChannel.computeChannelId`."""
    encoded = abi_encode(
        ["uint256", "address", "address", "address", "address", "address", "uint32", "bytes32"],
        [chain_id, to_checksum_address(contract), *p.as_tuple()],
    )
    return "0x" + keccak(encoded).hex()


def _typed(
    chain_id: int, contract: str, channel_id: str, nonce: int, amount: int
) -> SignableMessage:
    if not _BYTES32.match(channel_id):
        raise ValueError(f"channel id {channel_id!r} is not 32 bytes of hex")
    return encode_typed_data(
        full_message={
            "types": {
                "EIP712Domain": [
                    {"name": "name", "type": "string"},
                    {"name": "version", "type": "string"},
                    {"name": "chainId", "type": "uint256"},
                    {"name": "verifyingContract", "type": "address"},
                ],
                **VOUCHER_TYPES,
            },
            "primaryType": "Voucher",
            "domain": {
                "name": DOMAIN_NAME,
                "version": DOMAIN_VERSION,
                "chainId": chain_id,
                "verifyingContract": to_checksum_address(contract),
            },
            "message": {
                "channelId": bytes.fromhex(channel_id[2:]),
                "nonce": nonce,
                "cumulativeAmount": amount,
            },
        }
    )


def voucher_digest(chain_id: int, contract: str, channel_id: str, nonce: int, amount: int) -> str:
    """The EIP-712 digest the channel's signer signs (`PaymentChannel.voucherDigest`)."""
    m = _typed(chain_id, contract, channel_id, nonce, amount)
    return "0x" + keccak(b"\x19" + m.version + m.header + m.body).hex()


def sign_voucher(
    account: LocalAccount, chain_id: int, contract: str, channel_id: str, nonce: int, amount: int
) -> str:
    """Signs a voucher: 65 bytes `r ‖ s ‖ v`, low `s`, `v` 27 or 28 (what the contract accepts)."""
    signed = account.sign_message(_typed(chain_id, contract, channel_id, nonce, amount))
    sig: bytes = signed.signature
    return "0x" + sig.hex()


def is_voucher_signed_by(
    signer: str,
    chain_id: int,
    contract: str,
    channel_id: str,
    nonce: int,
    amount: int,
    signature: object,
) -> bool:
    """Whether `signature` is `signer`'s ECDSA signature of the voucher. Never raises.

    Only the form the contract's ECDSA path accepts counts: 65 bytes, `v` 27 or 28, low `s`.
    """
    if not isinstance(signature, str) or not _SIGNATURE.match(signature):
        return False
    raw = bytes.fromhex(signature[2:])
    if raw[64] not in (27, 28) or int.from_bytes(raw[32:64], "big") > _SECP256K1_HALF_N:
        return False
    if not 0 <= nonce < 2**64 or not 0 <= amount < 2**256:
        return False
    try:
        recovered = Account.recover_message(
            _typed(chain_id, contract, channel_id, nonce, amount), signature=raw
        )
    except Exception:
        return False
    return bool(recovered.lower() == signer.lower())

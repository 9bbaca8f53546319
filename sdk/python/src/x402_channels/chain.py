"""The on-chain side of the client: ERC-20 `approve`, `PaymentChannel.open` / `topUp`, and reads.

Transactions are signed locally by the payer's key and sent through any web3 provider.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from web3 import Web3

from .constants import ZERO_ADDRESS
from .errors import ChannelPaymentError
from .voucher import ChannelParams

_PARAMS = {
    "name": "params",
    "type": "tuple",
    "components": [
        {"name": "payer", "type": "address"},
        {"name": "payee", "type": "address"},
        {"name": "token", "type": "address"},
        {"name": "signer", "type": "address"},
        {"name": "challengePeriod", "type": "uint32"},
        {"name": "salt", "type": "bytes32"},
    ],
}

PAYMENT_CHANNEL_ABI: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "open",
        "stateMutability": "payable",
        "inputs": [_PARAMS, {"name": "deposit", "type": "uint256"}],
        "outputs": [{"name": "channelId", "type": "bytes32"}],
    },
    {
        "type": "function",
        "name": "topUp",
        "stateMutability": "payable",
        "inputs": [_PARAMS, {"name": "amount", "type": "uint256"}],
        "outputs": [],
    },
    {
        "type": "function",
        "name": "getChannel",
        "stateMutability": "view",
        "inputs": [{"name": "channelId", "type": "bytes32"}],
        "outputs": [
            {
                "name": "",
                "type": "tuple",
                "components": [
                    {"name": "deposit", "type": "uint104"},
                    {"name": "paid", "type": "uint104"},
                    {"name": "exitAt", "type": "uint40"},
                    {"name": "status", "type": "uint8"},
                ],
            }
        ],
    },
    {
        "type": "function",
        "name": "computeChannelId",
        "stateMutability": "view",
        "inputs": [_PARAMS],
        "outputs": [{"name": "", "type": "bytes32"}],
    },
    {
        "type": "function",
        "name": "voucherDigest",
        "stateMutability": "view",
        "inputs": [
            {"name": "channelId", "type": "bytes32"},
            {"name": "nonce", "type": "uint64"},
            {"name": "cumulativeAmount", "type": "uint256"},
        ],
        "outputs": [{"name": "", "type": "bytes32"}],
    },
]

ERC20_ABI: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "approve",
        "stateMutability": "nonpayable",
        "inputs": [{"name": "spender", "type": "address"}, {"name": "amount", "type": "uint256"}],
        "outputs": [{"name": "", "type": "bool"}],
    },
    {
        "type": "function",
        "name": "allowance",
        "stateMutability": "view",
        "inputs": [{"name": "owner", "type": "address"}, {"name": "spender", "type": "address"}],
        "outputs": [{"name": "", "type": "uint256"}],
    },
    {
        "type": "function",
        "name": "balanceOf",
        "stateMutability": "view",
        "inputs": [{"name": "owner", "type": "address"}],
        "outputs": [{"name": "", "type": "uint256"}],
    },
]


@dataclass(frozen=True)
class OnchainChannel:
    """`IPaymentChannel.Channel`."""

    deposit: int
    paid: int
    exit_at: int
    status: int
    """0 none, 1 open, 2 closed."""


class ChannelChain:
    """Reads and writes one chain for one payer."""

    def __init__(self, w3: Web3, account: LocalAccount, receipt_timeout: float = 120.0) -> None:
        self.w3 = w3
        self.account = account
        self.receipt_timeout = receipt_timeout

    def _contract(self, address: str, abi: list[dict[str, Any]]) -> Any:
        return self.w3.eth.contract(address=to_checksum_address(address), abi=abi)

    def _send(self, fn: Any, value: int, what: str) -> str:
        tx = fn.build_transaction(
            {
                "from": self.account.address,
                "value": value,
                "nonce": self.w3.eth.get_transaction_count(self.account.address, "pending"),
                "chainId": self.w3.eth.chain_id,
            }
        )
        signed = self.account.sign_transaction(tx)
        tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self.receipt_timeout)
        if receipt["status"] != 1:
            raise ChannelPaymentError(f"{what} reverted (transaction 0x{tx_hash.hex()})")
        return "0x" + bytes(tx_hash).hex()

    def chain_id(self) -> int:
        """The chain's id."""
        return int(self.w3.eth.chain_id)

    def get_channel(self, contract: str, channel_id: str) -> OnchainChannel:
        """`getChannel(channelId)`."""
        c = self._contract(contract, PAYMENT_CHANNEL_ABI)
        deposit, paid, exit_at, status = c.functions.getChannel(
            bytes.fromhex(channel_id[2:])
        ).call()
        return OnchainChannel(int(deposit), int(paid), int(exit_at), int(status))

    def ensure_allowance(self, token: str, spender: str, amount: int) -> None:
        """Approves `spender` for `amount` unless the allowance already covers it."""
        erc20 = self._contract(token, ERC20_ABI)
        allowance = int(
            erc20.functions.allowance(self.account.address, to_checksum_address(spender)).call()
        )
        if allowance >= amount:
            return
        self._send(erc20.functions.approve(to_checksum_address(spender), amount), 0, "approve")

    def open(self, contract: str, params: ChannelParams, deposit: int) -> str:
        """Approves (ERC-20) and opens a channel; returns the transaction hash."""
        native = params.token.lower() == ZERO_ADDRESS
        if not native:
            self.ensure_allowance(params.token, contract, deposit)
        c = self._contract(contract, PAYMENT_CHANNEL_ABI)
        return self._send(
            c.functions.open(params.as_tuple(), deposit), deposit if native else 0, "open"
        )

    def top_up(self, contract: str, params: ChannelParams, amount: int) -> str:
        """Approves (ERC-20) and adds `amount` to a channel's deposit."""
        native = params.token.lower() == ZERO_ADDRESS
        if not native:
            self.ensure_allowance(params.token, contract, amount)
        c = self._contract(contract, PAYMENT_CHANNEL_ABI)
        return self._send(
            c.functions.topUp(params.as_tuple(), amount), amount if native else 0, "topUp"
        )

    def balance_of(self, token: str, owner: str) -> int:
        """The ERC-20 balance of `owner`."""
        return int(
            cast(Any, self._contract(token, ERC20_ABI))
            .functions.balanceOf(to_checksum_address(owner))
            .call()
        )

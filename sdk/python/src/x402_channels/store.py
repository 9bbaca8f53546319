"""Where the client keeps its channels: a small key-value store, in memory or in one JSON file.

A voucher is durable before it is sent: the scheme writes the record first, and
[`FileChannelStore`] returns from `put` only after the file is fsynced and renamed into place.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from .voucher import ChannelParams

Status = Literal["open", "closed"]


@dataclass(frozen=True)
class ChannelRecord:
    """One channel as the client knows it. Amounts are token base units."""

    key: str
    """`network|contract|payTo|asset`, lower case; retired channels get `#<channelId>` appended."""
    channel_id: str
    chain_id: int
    contract: str
    params: ChannelParams
    deposit: int
    """What the contract credited (opening plus top-ups)."""
    nonce: int = 0
    """The latest voucher's nonce."""
    cumulative: int = 0
    """What the next voucher builds on: the latest voucher's amount, or what the node charged."""
    max_signed: int = 0
    """The highest cumulative amount this client ever signed on the channel."""
    spent: int = 0
    """What the node reports having charged in total."""
    status: Status = "open"
    signature: str | None = None
    """The latest voucher's signature."""
    extra: dict[str, Any] = field(default_factory=dict)

    def evolve(self, **changes: Any) -> ChannelRecord:
        """A copy with `changes`."""
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The JSON form (big numbers as decimal strings)."""
        return {
            "key": self.key,
            "channelId": self.channel_id,
            "chainId": self.chain_id,
            "contract": self.contract,
            "params": self.params.to_json(),
            "deposit": str(self.deposit),
            "nonce": str(self.nonce),
            "cumulative": str(self.cumulative),
            "maxSigned": str(self.max_signed),
            "spent": str(self.spent),
            "status": self.status,
            "signature": self.signature,
        }

    @staticmethod
    def from_json(v: dict[str, Any]) -> ChannelRecord:
        """Reads [`ChannelRecord.to_json`]'s form."""
        status = v.get("status", "open")
        if status not in ("open", "closed"):
            raise ValueError(f"unknown channel status {status!r}")
        sig = v.get("signature")
        return ChannelRecord(
            key=str(v["key"]),
            channel_id=str(v["channelId"]),
            chain_id=int(v["chainId"]),
            contract=str(v["contract"]),
            params=ChannelParams.from_json(v["params"]),
            deposit=int(v["deposit"]),
            nonce=int(v["nonce"]),
            cumulative=int(v["cumulative"]),
            max_signed=int(v["maxSigned"]),
            spent=int(v["spent"]),
            status=status,
            signature=str(sig) if sig is not None else None,
        )


class ChannelStore(Protocol):
    """A key-value store of channel records. Implementations must be thread safe."""

    def get(self, key: str) -> ChannelRecord | None:
        """The record under `key`, if any."""
        ...

    def put(self, record: ChannelRecord) -> None:
        """Stores `record` under `record.key`; durable when it returns."""
        ...

    def delete(self, key: str) -> None:
        """Removes the record under `key`, if any."""
        ...

    def list(self) -> list[ChannelRecord]:
        """Every record."""
        ...


class MemoryChannelStore:
    """Channels in memory: lost with the process."""

    def __init__(self) -> None:
        self._records: dict[str, ChannelRecord] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> ChannelRecord | None:
        with self._lock:
            return self._records.get(key)

    def put(self, record: ChannelRecord) -> None:
        with self._lock:
            self._records[record.key] = record

    def delete(self, key: str) -> None:
        with self._lock:
            self._records.pop(key, None)

    def list(self) -> list[ChannelRecord]:
        with self._lock:
            return list(self._records.values())


class FileChannelStore:
    """Channels in one JSON file, rewritten through a temporary file, fsync and rename.

    One process at a time: two processes sharing the file would sign the same nonces.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._records: dict[str, ChannelRecord] = {}
        if self.path.exists():
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("version") != 1:
                raise ValueError(f"{self.path} is not a channel store (version 1)")
            for raw in data.get("channels", []):
                record = ChannelRecord.from_json(raw)
                self._records[record.key] = record

    def _flush(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps(
            {"version": 1, "channels": [r.to_json() for r in self._records.values()]}, indent=1
        )
        fd, tmp = tempfile.mkstemp(prefix=".channels-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def get(self, key: str) -> ChannelRecord | None:
        with self._lock:
            return self._records.get(key)

    def put(self, record: ChannelRecord) -> None:
        with self._lock:
            self._records[record.key] = record
            self._flush()

    def delete(self, key: str) -> None:
        with self._lock:
            if self._records.pop(key, None) is not None:
                self._flush()

    def list(self) -> list[ChannelRecord]:
        with self._lock:
            return list(self._records.values())

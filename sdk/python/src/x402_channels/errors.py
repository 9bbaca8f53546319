"""The package's one error type."""

from __future__ import annotations


class ChannelPaymentError(Exception):
    """A payment cannot be made, or what a server sent cannot be trusted.

    Raised before anything is signed or sent when the inputs are wrong (a malformed 402, a
    contract the client does not trust, a price above the spend cap, an exhausted deposit cap),
    and when a corrective 402 or a receipt claims state the client never signed.
    """

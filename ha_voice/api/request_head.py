"""What every request head must be before any route sees it: small, and unambiguous.

Invariants:
- A head (request line and header fields, as parsed) over `max_head_bytes` is refused with 431,
  however it was packetised: h11 bounds only a head that is still incomplete, so a 60 KB head
  arriving in one read would be parsed whole (h11's own limit answers the incomplete case,
  also 431, in connections.py).
- A header that says one thing (`SINGLE_HEADERS`) sent more than once is refused with 400
  naming it: two readers of one request may take different copies (a node that authenticates
  the first `Authorization` and forwards the last). Judged once, here, before authentication,
  forwarding or any body is read.
- Pure: takes the request line's parts and the headers, returns the refusal or None.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from ha_voice.api.auth import FORWARD_SEAL, FORWARDED_BY

__all__ = ["SINGLE_HEADERS", "HeadRefusal", "head_bytes", "judge_head"]

# Headers whose second copy could be read differently by two readers (RFC 9110 §5.3: only
# list-valued fields may be repeated). Content-Length h11 judges first: two different values
# are its 400, two equal ones reach us as one.
SINGLE_HEADERS: Final = frozenset(
    {
        b"authorization",
        b"content-length",
        b"content-type",
        b"host",
        b"idempotency-key",
        FORWARDED_BY.lower().encode(),
        FORWARD_SEAL.lower().encode(),
    }
)


@dataclass(frozen=True)
class HeadRefusal:
    """A head refused: the status, a metric reason and the answer's one line."""

    status: int
    reason: str
    error: str


def head_bytes(method: str, target_bytes: int, headers: Iterable[tuple[bytes, bytes]]) -> int:
    """The size of a request head as parsed: `METHOD SP target SP HTTP/1.1 CRLF`, each
    `name: value CRLF`, and the final CRLF (whitespace around values not counted)."""
    size = len(method) + target_bytes + len(" HTTP/1.1\r\n") + 1 + 2
    return size + sum(len(name) + len(value) + 4 for name, value in headers)


def judge_head(
    method: str, target_bytes: int, headers: list[tuple[bytes, bytes]], max_head_bytes: int
) -> HeadRefusal | None:
    """431 for a head over `max_head_bytes`, 400 for a single header sent twice, else None."""
    size = head_bytes(method, target_bytes, headers)
    if size > max_head_bytes:
        return HeadRefusal(
            431,
            "head_too_large",
            f"request line and headers of {size} bytes are over the limit of {max_head_bytes}",
        )
    counts = Counter(name.lower() for name, _ in headers if name.lower() in SINGLE_HEADERS)
    repeated = sorted(name.decode("ascii") for name, count in counts.items() if count > 1)
    if repeated:
        names = ", ".join(repeated)
        return HeadRefusal(
            400,
            "repeated_header",
            f"header {names} sent more than once; send it once (two values would be read "
            "differently by different nodes)",
        )
    return None

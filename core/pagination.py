"""Keyset ("cursor") pagination for lists sorted on a few columns and, last, a unique id.

A page is "the next N rows after (or before) the last row the client saw", found with a WHERE on the sort key
rather than an OFFSET: a session created meanwhile never shifts a page nor shows a row twice, and a deep page costs
what the first one does. The cursor carries the sort key values of that row, JSON in base64url, with an HMAC so a
client can neither forge a position nor feed SQL a value of the wrong type: anything but a cursor we issued for this
very sort is a `CursorError` (the routes answer 400, never 500).

No imports of ours: the routes give the signing key and the SQL of each sort.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

MAX_CURSOR_CHARS = 1024
NEXT, PREV = "next", "prev"
_SIG_BYTES = 16
# How each kind of key value travels in a cursor and the SQL type it is cast to.
_CASTS = {"ts": "timestamptz", "float": "float8", "int": "int8", "uuid": "uuid"}


class CursorError(ValueError):
    """A cursor that is malformed, tampered with, or issued for another sort."""


@dataclass(frozen=True)
class SortKey:
    sql: str  # a SQL expression that is never NULL (coalesce it), evaluated per row
    desc: bool
    kind: str  # one of _CASTS


@dataclass(frozen=True)
class Sort:
    """One order of a list: its keys, the last of which must be unique (the row's id) so the order is total."""

    name: str
    keys: tuple[SortKey, ...]

    def select(self) -> str:
        """The key columns, to add to the SELECT list (read back by `values`)."""
        return ", ".join(f"{k.sql} AS _k{i}" for i, k in enumerate(self.keys))

    def order_by(self, direction: str = NEXT) -> str:
        flip = direction == PREV  # a previous page is read backwards from the cursor, then turned round
        return ", ".join(f"{k.sql} {'DESC' if k.desc != flip else 'ASC'}" for k in self.keys)

    def beyond(self, first_param: int, direction: str = NEXT) -> str:
        """A predicate: the row comes after the cursor's row in this order (before it for PREV). The key values
        are parameters first_param, first_param + 1, ... Expanded rather than a row comparison because keys may
        run in different directions."""
        terms = []
        for i, key in enumerate(self.keys):
            later = key.desc == (direction == NEXT)  # descending: the next rows have smaller values
            equal = [f"{k.sql} = ${first_param + j}::{_CASTS[k.kind]}" for j, k in enumerate(self.keys[:i])]
            step = f"{key.sql} {'<' if later else '>'} ${first_param + i}::{_CASTS[key.kind]}"
            terms.append("(" + " AND ".join([*equal, step]) + ")")
        return "(" + " OR ".join(terms) + ")"

    def values(self, row: Mapping[str, Any]) -> list[Any]:
        return [row[f"_k{i}"] for i in range(len(self.keys))]


@dataclass(frozen=True)
class Cursor:
    direction: str
    values: list[Any]  # typed for asyncpg (datetime, float, int, UUID)


def _key(secret: bytes) -> bytes:
    # A key for this use only: a cursor is never a join link or a cookie, whatever its bytes.
    return hmac.new(secret, b"proctor list cursor v1", hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _dump(value: Any, kind: str) -> Any:
    if kind == "ts":
        return value.isoformat()
    if kind == "uuid":
        return str(value)
    return float(value) if kind == "float" else int(value)


def _load(value: Any, kind: str) -> Any:
    if kind == "ts" and isinstance(value, str):
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise ValueError("timestamp without a zone")
        return parsed
    if kind == "uuid" and isinstance(value, str):
        return uuid.UUID(value)
    if kind == "float" and isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63:
        return value
    raise ValueError(f"not a {kind}")


def encode(secret: bytes, sort: Sort, direction: str, values: Sequence[Any]) -> str:
    payload = json.dumps({"s": sort.name, "d": direction,
                          "k": [_dump(v, k.kind) for v, k in zip(values, sort.keys, strict=True)]},
                         separators=(",", ":")).encode()
    return _b64(payload) + "." + _b64(hmac.new(_key(secret), payload, hashlib.sha256).digest()[:_SIG_BYTES])


def decode(secret: bytes, sort: Sort, token: str) -> Cursor:
    """The position a cursor names, for `sort`; CursorError with the reason otherwise."""
    if len(token) > MAX_CURSOR_CHARS or not token.isascii():
        raise CursorError("cursor is not one this server issued")
    body, _, signature = token.partition(".")
    try:
        payload, mac = _unb64(body), _unb64(signature)
    except (binascii.Error, ValueError):
        raise CursorError("cursor is not one this server issued") from None
    if _b64(payload) != body or _b64(mac) != signature:  # only the canonical spelling of what we issued
        raise CursorError("cursor is not one this server issued")
    if not hmac.compare_digest(mac, hmac.new(_key(secret), payload, hashlib.sha256).digest()[:_SIG_BYTES]):
        raise CursorError("cursor is not one this server issued (tampered, or from another server)")
    try:
        data = json.loads(payload)
        if data["s"] != sort.name:
            raise CursorError(f"cursor belongs to the sort {data['s']!r}, not {sort.name!r}: start from the first page")
        if data["d"] not in (NEXT, PREV) or len(data["k"]) != len(sort.keys):
            raise ValueError("shape")
        values = [_load(v, k.kind) for v, k in zip(data["k"], sort.keys, strict=True)]
    except CursorError:
        raise
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
        raise CursorError("cursor is not one this server issued") from None
    return Cursor(data["d"], values)


@dataclass(frozen=True)
class Page:
    rows: list[Any]
    next: str | None  # cursor of the following page, None on the last
    prev: str | None  # cursor of the preceding page, None on the first


def page(secret: bytes, sort: Sort, rows: Sequence[Any], size: int, cursor: Cursor | None) -> Page:
    """Turn rows fetched with ORDER BY sort.order_by(direction) and LIMIT size + 1 (one more than a page: it tells
    whether there is a page beyond) into the page and its neighbours' cursors."""
    direction = cursor.direction if cursor else NEXT
    more = len(rows) > size
    shown = list(rows[:size])
    if direction == PREV:
        shown.reverse()
    has_next = more if direction == NEXT else True
    has_prev = (cursor is not None) if direction == NEXT else more
    if not shown:  # e.g. every row beyond the cursor was deleted meanwhile: the pages link to the first one
        return Page([], None, None)
    return Page(shown,
                encode(secret, sort, NEXT, sort.values(shown[-1])) if has_next else None,
                encode(secret, sort, PREV, sort.values(shown[0])) if has_prev else None)

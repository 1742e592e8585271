"""Parsing of everything a client sends that is not audio: one number helper, JSON with bounds, requests.

Every value here comes from a client, so nothing may raise anything but BadRequest: numbers are
checked to be finite and in range before they are converted, and JSON is checked for size and
nesting depth before it is parsed (a deeply nested array makes Python's parser recurse until
RecursionError).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from captioner.server.errors import BadRequest

__all__ = ["Request", "parse_number", "parse_flag", "parse_json", "json_depth", "MAX_QUERY_FIELDS"]

MAX_QUERY_FIELDS = 64  # query parameters in one request; more is a bad request
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_OPEN, _CLOSE = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)


@dataclass(frozen=True)
class Request:
    """The facts of an upgrade request a protocol decides on."""

    path: str
    query: dict[str, str]  # last value of each parameter
    headers: dict[str, str]  # lower-case names, last value of each
    subprotocols: tuple[str, ...]  # offered in Sec-WebSocket-Protocol, in order
    repeated: dict[str, tuple[str, ...]] = field(default_factory=dict)  # every value of each parameter, in order

    @classmethod
    def parse(cls, raw_path: str, headers: list[tuple[str, str]]) -> Request:
        """Raises BadRequest for a query with more than MAX_QUERY_FIELDS parameters."""
        parts = urlsplit(raw_path)
        try:
            fields = parse_qs(parts.query, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
        except ValueError:
            raise BadRequest(f"more than {MAX_QUERY_FIELDS} query parameters", "bad_parameter") from None
        lower = {name.lower(): value for name, value in headers}
        offered = ",".join(value for name, value in headers if name.lower() == "sec-websocket-protocol")
        return cls(parts.path or "/", {k: v[-1] for k, v in fields.items()}, lower,
                   tuple(p.strip() for p in offered.split(",") if p.strip()), {k: tuple(v) for k, v in fields.items()})


def parse_number(value: object, name: str, low: float, high: float, code: str) -> float:
    """A finite number in [low, high] from a query string or a JSON value.

    Raises BadRequest(code) for anything else: text that is not a number, bool, NaN, infinities,
    values out of range (1e400 is infinite, so out of range).
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise BadRequest(f"{name} must be a number", code)
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)
    except (ValueError, OverflowError):  # OverflowError: an int too large for a float
        raise BadRequest(f"{name}={_shown(value)} is not a number", code) from None
    if not math.isfinite(number):
        raise BadRequest(f"{name}={_shown(value)} is not a finite number", code)
    if not low <= number <= high:
        raise BadRequest(f"{name}={_shown(value)} is outside {low:g}-{high:g}", code)
    return number


def parse_flag(query: dict[str, str], name: str, default: bool) -> bool:
    """A true/false query parameter (true, 1, false, 0; any case); BadRequest(bad_parameter) for anything else."""
    value = query.get(name)
    if value is None:
        return default
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise BadRequest(f"{name}={value[:40]!r}: expected true or false", "bad_parameter")


def json_depth(text: str) -> int:
    """How deeply arrays and objects nest in a JSON text, brackets inside strings not counted; linear time.

    Exact over any prefix that is valid JSON, which is all that json.loads recurses into before it
    stops at an error.
    """
    codes = np.frombuffer(text.encode("utf-8", "replace"), np.uint8)
    if not len(codes):
        return 0
    positions = np.arange(len(codes))
    # a quote ends or starts a string unless an odd number of backslashes precede it
    last_other = np.maximum.accumulate(np.where(codes != _BACKSLASH, positions, -1))
    quotes = np.flatnonzero(codes == _QUOTE)
    before = np.where(quotes > 0, last_other[np.maximum(quotes - 1, 0)], -1)
    escapes = np.where(quotes > 0, quotes - 1 - before, 0)
    toggles = np.zeros(len(codes), np.int32)
    toggles[quotes[escapes % 2 == 0]] = 1
    outside = np.cumsum(toggles) % 2 == 0
    steps = np.isin(codes, _OPEN).astype(np.int32) - np.isin(codes, _CLOSE).astype(np.int32)
    return int(np.cumsum(steps * outside).max(initial=0))


def parse_json(text: str, max_depth: int, code: str = "bad_message") -> Any:
    """A JSON value of at most `max_depth` nested arrays/objects (NaN and Infinity, which are not JSON,
    refused; numbers too large for a float, such as 1e400, come out infinite: read them with parse_number).

    Raises BadRequest(code) for text that is not such JSON. (The caller bounds its size.)
    """
    if text.count("[") + text.count("{") > max_depth and json_depth(text) > max_depth:  # (brackets bound the depth)
        raise BadRequest(f"JSON nested deeper than {max_depth} levels", code)
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):  # ValueError includes JSONDecodeError and over-long integers
        raise BadRequest("text messages must be JSON", code) from None


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _shown(value: object) -> str:
    """A client's value for an error message: repr, cut short."""
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."

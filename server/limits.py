"""Counting what clients hold, sans-I/O: pending handshakes, admitted streams, text message rates.

The connection code asks before it lets a client take something and releases in the same
try/finally (or in connection_lost, for what a socket holds while it handshakes); a `Ticket`
releases at most once, so that both may call it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import Any

from captioner.server.errors import Overloaded, Throttled

from .capacity import Room
from .protocols import Command, End

__all__ = ["Ticket", "Handshakes", "Admission", "TokenBucket"]


class Ticket:
    """Something held (a pending handshake, an admitted stream) until `release()`; releasing twice is a no-op."""

    def __init__(self, on_release: Callable[[], None], partials: bool = True) -> None:
        self._on_release: Callable[[], None] | None = on_release
        self.partials = partials  # an admitted stream's: False when it was admitted at capacity, finals only

    @property
    def released(self) -> bool:
        return self._on_release is None

    def release(self) -> None:
        on_release, self._on_release = self._on_release, None
        if on_release is not None:
            on_release()


def _take(counter: Counter[str], key: str) -> None:
    counter[key] += 1


def _give_back(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


class Handshakes:
    """Connections whose upgrade request has not arrived yet, in all and per client address (0: no limit)."""

    def __init__(self, max_pending: int, max_per_address: int) -> None:
        self.max_pending = max_pending
        self.max_per_address = max_per_address
        self._by_address: Counter[str] = Counter()

    @property
    def pending(self) -> int:
        return self._by_address.total()

    def enter(self, address: str) -> Ticket | None:
        """A ticket for a new connection, or None when it is over a limit (it should be dropped)."""
        if self.max_pending and self.pending >= self.max_pending:
            return None
        if self.max_per_address and self._by_address[address] >= self.max_per_address:
            return None
        _take(self._by_address, address)
        return Ticket(lambda: _give_back(self._by_address, address))


class Admission:
    """Admitted streams: at most max_sessions in all, and per client address and per token (0: no limit), and only
    while the model has room for one more (`room`: capacity.py), or when_full="finals_only", room for one more
    without partials (its ticket says partials=False)."""

    def __init__(self, max_sessions: int, max_per_address: int = 0, max_per_token: int = 0,
                 room: Callable[[], Room] | None = None, when_full: str = "refuse") -> None:
        self.max_sessions = max_sessions
        self.room = room
        self.finals_only_when_full = when_full == "finals_only"
        self.max_per_address = max_per_address
        self.max_per_token = max_per_token
        self._by_address: Counter[str] = Counter()
        self._by_token: Counter[str] = Counter()

    @property
    def sessions(self) -> int:
        return self._by_address.total()

    def admit(self, address: str, token: str | None) -> Ticket:
        """A ticket for one stream. Raises Overloaded (the server is full) or Throttled (this client is)."""
        if self.sessions >= self.max_sessions:
            raise Overloaded(f"at the limit of {self.max_sessions} streams", "overloaded")
        if self.max_per_address and self._by_address[address] >= self.max_per_address:
            raise Throttled(f"at the limit of {self.max_per_address} streams from one address", "too_many_streams")
        if token is not None and self.max_per_token and self._by_token[token] >= self.max_per_token:
            raise Throttled(f"at the limit of {self.max_per_token} streams for this token", "too_many_streams")
        room = self.room() if self.room else None
        partials = room is None or room.fits
        if room is not None and not partials and not (self.finals_only_when_full and room.finals_fit):
            raise Overloaded(f"at capacity: {room.reason}", "at_capacity")
        _take(self._by_address, address)
        if token is not None:
            _take(self._by_token, token)
        return Ticket(lambda: self._release(address, token), partials)

    def state(self) -> dict[str, Any]:
        """For /readyz: whether the next stream would be refused (full), the load, the capacity used, the streams."""
        room = self.room() if self.room else None
        return {"full": self.sessions >= self.max_sessions or (room is not None and not room.fits),
                "load": round(room.load, 3) if room else None, "capacity_used": round(room.used, 3) if room else None,
                "sessions": self.sessions, "max_sessions": self.max_sessions}

    def _release(self, address: str, token: str | None) -> None:
        _give_back(self._by_address, address)
        if token is not None:
            _give_back(self._by_token, token)


class TokenBucket:
    """At most `rate` events per second on average, `burst` at once; time is passed in (seconds, monotonic)."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._time = now

    def allow(self, now: float) -> bool:
        """Take one token if there is one; a rate of 0 allows everything."""
        if not self.rate:
            return True
        self._tokens = min(self.burst, self._tokens + (now - self._time) * self.rate)
        self._time = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


TEXT_BURST_S = 2.0  # a stream may send max_text_per_s x this many text messages at once
RATE_ERROR_GAP_S = 1.0  # at most one rate_limited error message per this many seconds


class TextRate:
    """One stream's text messages per second (0: no limit). Over the rate a message's commands are not acted
    on, except End, and the client is told so at most once per RATE_ERROR_GAP_S."""

    def __init__(self, per_s: float, now: float) -> None:
        self.per_s = per_s
        self._bucket = TokenBucket(per_s, max(1.0, per_s * TEXT_BURST_S), now)
        self._told_at = -math.inf

    def allow(self, now: float) -> bool:
        """Count a text message; whether it is within the rate."""
        return self._bucket.allow(now)

    def throttle(self, commands: list[Command], now: float) -> tuple[list[Command], Throttled | None, bool]:
        """The commands of a message over the rate that are still acted on; the error to tell the client (None:
        told recently); whether anything was refused."""
        kept = [c for c in commands if isinstance(c, End)]
        refused = len(kept) < len(commands) or not commands
        if not refused or now - self._told_at < RATE_ERROR_GAP_S:
            return kept, None, refused
        self._told_at = now
        error = Throttled(f"more than {self.per_s:g} text messages per second: this one was not acted on",
                          "rate_limited")
        return kept, error, refused

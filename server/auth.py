"""Access tokens and what each may do: which MQTT topics its streams publish to.

The tokens file holds one token a line, optionally followed by the topic prefixes its streams may
publish to (whitespace-separated); `#` starts a comment line:

    # tenant A may caption rooms a-1, a-2, ...; tenant B anything under b-; the admin any topic
    tok-a   a-
    tok-b   b- shared-b-
    tok-admin

A token with prefixes may name only a `?topic=` that starts with one of them (others are refused
with HTTP 403 `forbidden_topic` before the upgrade); without a `?topic=` its streams publish under
its first prefix followed by the session id. A token without prefixes (and every stream of a
server without tokens) may name any topic, as before.

A token holder may mint short-lived secrets for browsers (`POST /v1/realtime/client_secrets`,
`GET /v3/token`): `ek_<expiry>_<token id>_<signature>`, signed with the minting token itself (HMAC-
SHA256), so that every replica that holds the tokens file accepts it, with the minting token's grant,
until it expires, and no server keeps state for it (docs/security.md).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from captioner.server.errors import Forbidden, Unauthorized

__all__ = ["Grant", "TokenTable", "topic_name", "MAX_TOPIC_CHARS", "SECRET_PREFIX"]

MAX_TOPIC_CHARS = 128
SECRET_PREFIX = "ek_"  # as OpenAI's ephemeral keys
_SECRET = re.compile(r"ek_(\d{1,12})_([0-9a-f]{16})_([0-9a-f]{64})")
_NOT_IN_TOPIC = re.compile(r"[+#/\x00]")  # MQTT wildcards, the level separator, and NUL


def topic_name(requested: str) -> str:
    """A client's topic as one MQTT topic level: wildcards, separators and NUL become _, cut to 128 chars."""
    return _NOT_IN_TOPIC.sub("_", requested)[:MAX_TOPIC_CHARS]


@dataclass(frozen=True)
class Grant:
    """What one admitted client may do."""

    token: str | None  # None on a server without tokens
    topic_prefixes: tuple[str, ...] = ()  # empty: any topic

    def check_topic(self, requested: str | None) -> None:
        """Raises Forbidden("forbidden_topic") when this token may not publish to the requested topic."""
        if requested and self.topic_prefixes and not topic_name(requested).startswith(self.topic_prefixes):
            raise Forbidden(f"topic {topic_name(requested)!r} is not under this token's prefixes", "forbidden_topic")

    def topic(self, requested: str | None, session: str) -> str:
        """The topic level a session publishes under: the requested one, or one made of the session id."""
        if requested:
            return topic_name(requested)
        return topic_name(self.topic_prefixes[0] + session) if self.topic_prefixes else session


OPEN = Grant(None)


class TokenTable:
    """The accepted tokens and their grants; empty: the server is open to anyone."""

    def __init__(self, grants: dict[str, tuple[str, ...]]) -> None:
        self._grants = {token.encode(): Grant(token, prefixes) for token, prefixes in grants.items()}
        self._by_id = {_token_id(token): token for token in self._grants}

    @classmethod
    def load(cls, tokens: Iterable[str] = (), path: str | None = None) -> TokenTable:
        """Tokens given directly (no topic rules) and those of a tokens file. Raises ValueError, OSError."""
        grants: dict[str, tuple[str, ...]] = {token: () for token in tokens}
        if path:
            for number, line in enumerate(Path(path).read_text().splitlines(), 1):
                fields = line.split()
                if not fields or fields[0].startswith("#"):
                    continue
                prefixes = tuple(fields[1:])
                if any(topic_name(p) != p for p in prefixes):
                    raise ValueError(f"{path}:{number}: a topic prefix may not hold + # / or NUL")
                grants[fields[0]] = prefixes
        return cls(grants)

    @property
    def open(self) -> bool:
        return not self._grants

    def authenticate(self, presented: str | None, now: float | None = None) -> Grant:
        """The grant of a presented token (compared in constant time) or of the token that minted a presented
        secret, until it expires (now: Unix time). Raises Unauthorized."""
        if self.open:
            return OPEN
        if presented is None:
            raise Unauthorized("a valid token is required", "unauthorized")
        if presented.startswith(SECRET_PREFIX):
            return self._secret_grant(presented, time.time() if now is None else now)
        candidate = presented.encode("utf-8", "surrogateescape")
        found = None
        for token, grant in self._grants.items():  # every token compared, so that timing tells nothing
            if hmac.compare_digest(candidate, token):
                found = grant
        if found is None:
            raise Unauthorized("wrong token", "unauthorized")
        return found

    def mint(self, grant: Grant, ttl_s: float, now: float | None = None) -> tuple[str, int]:
        """A secret that stands for the grant's token for ttl_s seconds, and its expiry (Unix seconds).

        On a server without tokens the secret is as good as no secret, as everything is allowed."""
        expires = int((time.time() if now is None else now) + ttl_s)
        token = grant.token.encode("utf-8", "surrogateescape") if grant.token is not None else b""
        token_id = _token_id(token)
        return f"{SECRET_PREFIX}{expires}_{token_id}_{_signature(token, expires, token_id)}", expires

    def _secret_grant(self, presented: str, now: float) -> Grant:
        match = _SECRET.fullmatch(presented)
        token = self._by_id.get(match.group(2)) if match else None
        if match is None or token is None:
            raise Unauthorized("wrong token", "unauthorized")
        expires = int(match.group(1))
        if not hmac.compare_digest(match.group(3), _signature(token, expires, match.group(2))):
            raise Unauthorized("wrong token", "unauthorized")
        if now >= expires:
            raise Unauthorized("the secret has expired", "expired")
        return self._grants[token]


def _token_id(token: bytes) -> str:
    """Which token minted a secret: a prefix of the token's SHA-256 (it tells nothing usable of the token)."""
    return hashlib.sha256(b"captioner-token-id:" + token).hexdigest()[:16]


def _signature(token: bytes, expires: int, token_id: str) -> str:
    return hmac.new(token, f"{SECRET_PREFIX}{expires}_{token_id}".encode(), hashlib.sha256).hexdigest()

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

Viewer tokens (`viewer_tokens_file`, the same format) only read caption feeds, of the topics under
their prefixes; they can never send audio, upload a file or mint a speaker's secret. Any token may
mint a read-only secret for one topic or one prefix it may read (`GET /v1/captions/{topic}/secret`):
`vk_<expiry>_<token id>_<e|p><topic as hex>_<signature>`, for links handed to an audience. A speaker
token reads the topics it may publish to. A server without any token lets anyone read; one without
speaker tokens lets anyone speak.
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

__all__ = ["Grant", "TokenTable", "topic_name", "MAX_TOPIC_CHARS", "SECRET_PREFIX", "READ_PREFIX"]

MAX_TOPIC_CHARS = 128
SECRET_PREFIX = "ek_"  # as OpenAI's ephemeral keys
READ_PREFIX = "vk_"  # a viewer's read-only secret
_SECRET = re.compile(r"ek_(\d{1,12})_([0-9a-f]{16})_([0-9a-f]{64})")
_READ_SECRET = re.compile(r"(vk_(\d{1,12})_([0-9a-f]{16})_([ep])((?:[0-9a-f]{2}){1,%d}))_([0-9a-f]{64})"
                          % (4 * MAX_TOPIC_CHARS))  # a topic of 128 characters, as UTF-8
_NOT_IN_TOPIC = re.compile(r"[+#/\x00]")  # MQTT wildcards, the level separator, and NUL


def topic_name(requested: str) -> str:
    """A client's topic as one MQTT topic level: wildcards, separators and NUL become _, cut to 128 chars."""
    return _NOT_IN_TOPIC.sub("_", requested)[:MAX_TOPIC_CHARS]


@dataclass(frozen=True)
class Grant:
    """What one admitted client may do."""

    token: str | None  # None on a server without tokens
    topic_prefixes: tuple[str, ...] = ()  # empty: any topic
    read_only: bool = False  # a viewer's: reads caption feeds only
    exact: bool = False  # the one topic topic_prefixes[0] only (a read secret for one topic)

    def can_read(self, topic: str) -> bool:
        """Whether this grant may read the caption feed of a topic (a topic level, topic_name's)."""
        if not self.topic_prefixes:
            return True
        return topic == self.topic_prefixes[0] if self.exact else topic.startswith(self.topic_prefixes)

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

    def __init__(self, grants: dict[str, tuple[str, ...]], viewers: dict[str, tuple[str, ...]] | None = None) -> None:
        """grants: speaker tokens and their topic prefixes; viewers: read-only tokens and theirs."""
        self._grants = {token.encode(): Grant(token, prefixes, read_only=True)
                        for token, prefixes in (viewers or {}).items()}
        self._grants.update({token.encode(): Grant(token, prefixes) for token, prefixes in grants.items()})
        self._speakers = bool(grants)
        self._by_id = {_token_id(token): token for token in self._grants}

    @classmethod
    def load(cls, tokens: Iterable[str] = (), path: str | None = None, viewers_path: str | None = None) -> TokenTable:
        """Tokens given directly (no topic rules), those of a tokens file, and the viewer tokens of theirs.
        Raises ValueError, OSError."""
        grants: dict[str, tuple[str, ...]] = {token: () for token in tokens}
        return cls({**grants, **_read_tokens(path)}, _read_tokens(viewers_path))

    @property
    def open(self) -> bool:
        """Anyone may send audio: there are no speaker tokens."""
        return not self._speakers

    def authenticate(self, presented: str | None, now: float | None = None) -> Grant:
        """The grant of a presented token (compared in constant time) or of the token that minted a presented
        secret, until it expires (now: Unix time), to send audio or call the API. Raises Unauthorized, or
        Forbidden for a viewer's token."""
        if self.open:
            return OPEN
        grant = self.reader(presented, now)
        if grant.read_only:
            raise Forbidden("a viewer's token only reads caption feeds", "read_only")
        return grant

    def reader(self, presented: str | None, now: float | None = None) -> Grant:
        """The grant of a presented token or secret of either kind, to read caption feeds (can_read says which).
        Raises Unauthorized."""
        if not self._grants:
            return OPEN
        if presented is None:
            raise Unauthorized("a valid token is required", "unauthorized")
        now = time.time() if now is None else now
        if presented.startswith(SECRET_PREFIX):
            return self._secret_grant(presented, now)
        if presented.startswith(READ_PREFIX):
            return self._read_grant(presented, now)
        candidate = presented.encode("utf-8", "surrogateescape")
        found = None
        for token, grant in self._grants.items():  # every token compared, so that timing tells nothing
            if hmac.compare_digest(candidate, token):
                found = grant
        if found is None:
            raise Unauthorized("wrong token", "unauthorized")
        return found

    def mint_reader(self, grant: Grant, topic: str, exact: bool, ttl_s: float,
                    now: float | None = None) -> tuple[str, int]:
        """A read-only secret for one topic (exact) or the topics under a prefix, that the grant may read, for
        ttl_s seconds, and its expiry (Unix seconds). Raises Forbidden."""
        if not (grant.can_read(topic) if exact else _covers(grant, topic)):
            raise Forbidden(f"this token may not read {topic!r}", "forbidden_topic")
        expires = int((time.time() if now is None else now) + ttl_s)
        token = grant.token.encode("utf-8", "surrogateescape") if grant.token is not None else b""
        body = f"{READ_PREFIX}{expires}_{_token_id(token)}_{'e' if exact else 'p'}{topic.encode().hex()}"
        return f"{body}_{hmac.new(token, body.encode(), hashlib.sha256).hexdigest()}", expires

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

    def _read_grant(self, presented: str, now: float) -> Grant:
        match = _READ_SECRET.fullmatch(presented)
        token = self._by_id.get(match.group(3)) if match else None
        if match is None or token is None:
            raise Unauthorized("wrong token", "unauthorized")
        signature = hmac.new(token, match.group(1).encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(match.group(6), signature):
            raise Unauthorized("wrong token", "unauthorized")
        if now >= int(match.group(2)):
            raise Unauthorized("the secret has expired", "expired")
        topic = bytes.fromhex(match.group(5)).decode("utf-8", "replace")
        return Grant(self._grants[token].token, (topic,), read_only=True, exact=match.group(4) == "e")


def _covers(grant: Grant, prefix: str) -> bool:
    """Whether every topic under a prefix is one the grant may read."""
    return not grant.topic_prefixes or (not grant.exact and prefix.startswith(grant.topic_prefixes))


def _read_tokens(path: str | None) -> dict[str, tuple[str, ...]]:
    """The tokens of a tokens file and their topic prefixes. Raises ValueError, OSError."""
    grants: dict[str, tuple[str, ...]] = {}
    for number, line in enumerate(Path(path).read_text().splitlines() if path else (), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        prefixes = tuple(fields[1:])
        if any(topic_name(p) != p for p in prefixes):
            raise ValueError(f"{path}:{number}: a topic prefix may not hold + # / or NUL")
        grants[fields[0]] = prefixes
    return grants


def _token_id(token: bytes) -> str:
    """Which token minted a secret: a prefix of the token's SHA-256 (it tells nothing usable of the token)."""
    return hashlib.sha256(b"captioner-token-id:" + token).hexdigest()[:16]


def _signature(token: bytes, expires: int, token_id: str) -> str:
    return hmac.new(token, f"{SECRET_PREFIX}{expires}_{token_id}".encode(), hashlib.sha256).hexdigest()

"""Server settings: one frozen record built from defaults, an optional TOML file, CAPTIONER_* variables and flags.

Precedence, lowest first: defaults < TOML file (--config) < environment < command-line flags.
Every field is documented in `captioner serve --help` from the comments here.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["Settings", "load_settings", "HELP"]

ENV_PREFIX = "CAPTIONER_"


@dataclass(frozen=True)
class Settings:
    # Network
    host: str = "127.0.0.1"  # interface to bind; 0.0.0.0 for all
    port: int = 8765  # TCP port; 0 picks a free one
    certfile: str | None = None  # TLS certificate (PEM); with keyfile, serves wss:// and https://
    keyfile: str | None = None  # TLS private key (PEM)
    admin_host: str = "127.0.0.1"  # interface of the admin listener (with admin_port)
    admin_port: int | None = None  # separate listener for /metrics, /healthz, /readyz (not on port then); 0: any
    # Model
    model: str | None = None  # checkpoint path; default: the bundled tiny.en
    device: str = "auto"  # auto | cpu | cuda
    dtype: str | None = None  # float32 | bfloat16 | float16; default: float16 on GPU, bfloat16 on CPU
    threads: int | None = None  # CPU threads for inference; default: all cores
    strategy: str = "window"  # partial-update encoder: window | cached
    # Admission (each refused before the upgrade)
    max_sessions: int = 16  # concurrent streams; more are refused with HTTP 503 and Retry-After
    max_sessions_per_address: int = 0  # concurrent streams from one client address (0: no limit); more: HTTP 429
    max_sessions_per_token: int = 0  # concurrent streams per access token (0: no limit); more get HTTP 429
    max_pending_handshakes: int = 64  # connections still sending their upgrade request (0: no limit); more: 503
    max_pending_per_address: int = 8  # ...of them from one client address (0: no limit); more: 503
    handshake_timeout_s: float = 5.0  # time from connecting to a complete upgrade request (and TLS handshake)
    # Limits of one stream
    max_frame_bytes: int = 1_048_576  # largest audio frame or message; larger is refused with 1009
    max_text_bytes: int = 65_536  # largest text (control) message; larger is refused with 1009
    max_json_depth: int = 16  # nesting of arrays and objects in a text message; deeper is a bad_message
    max_text_per_s: float = 2.0  # text messages per second (bursts of 2 s worth; 0: no limit); beyond: rate_limited
    max_backlog_s: float = 4.0  # audio waiting for the model beyond which a client is not read (backpressure)
    max_hard_backlog_s: float = 30.0  # audio waiting (or time not read) beyond which the stream closes 1013
    idle_timeout_s: float = 30.0  # no audio this long while the client is read: finalise and close 1001
    max_session_s: float = 0.0  # longest stream in audio seconds (0: unlimited); then finalise and close 1008
    max_session_wall_s: float = 14_400.0  # longest stream in wall-clock seconds (0: unlimited); then close 1008
    max_unsent_bytes: int = 262_144  # output a client leaves unread beyond which it may be closed 1013 slow_reader
    slow_reader_timeout_s: float = 10.0  # ...once it has stayed beyond it this long
    # Scheduler
    max_batch: int = 16  # jobs per model pass
    workers: int | None = None  # inference threads, each batching its own streams; default: one per CPU thread, one on GPU
    max_wait_ms: float = 5.0  # how long the scheduler waits to fill a batch
    greedy_after_s: float = 0.5  # audio waiting longer than this for the model: finals decode greedily, not beam
    # Security
    tokens_file: str | None = None  # accepted tokens, one a line, each with its MQTT topic prefixes (if any)
    tokens: tuple[str, ...] = ()  # accepted tokens (from CAPTIONER_TOKENS); empty: no auth
    allowed_hosts: tuple[str, ...] = ()  # Host names served besides the bound address (+localhost); "*" for any
    allowed_origins: tuple[str, ...] = ()  # browser Origins (scheme://host[:port]) allowed besides its own; "*": any
    # Shutdown and logs
    drain_timeout_s: float = 30.0  # on SIGTERM, time allowed to finalise open streams
    log_transcripts: bool = False  # include caption text in logs
    log_format: str = "json"  # json | text
    trim_memory: bool = True  # bound oneDNN caches, return freed heap after sessions (off: CAPTIONER_TRIM_MEMORY=0)
    # Compatibility protocols
    vosk_sample_rate: int = 8000  # Vosk clients that send no config stream at this rate (as vosk-server)
    # MQTT
    mqtt_url: str | None = None  # mqtt://[user:pass@]host:port or mqtts://...; off when unset
    mqtt_prefix: str = "captioner"  # topic prefix
    mqtt_queue: int = 10_000  # messages held while the broker is away; beyond, oldest partials then finals drop

    def __post_init__(self) -> None:
        if self.strategy not in ("window", "cached"):
            raise ValueError("strategy must be window or cached")
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("--certfile and --keyfile go together")
        if self.workers is not None and self.workers < 1:
            raise ValueError("workers >= 1 is required")
        if self.max_sessions < 1 or self.max_frame_bytes < 1024 or self.max_batch < 1:
            raise ValueError("max_sessions >= 1, max_frame_bytes >= 1024 and max_batch >= 1 are required")
        counts = ("max_sessions_per_address", "max_sessions_per_token", "max_pending_handshakes",
                  "max_pending_per_address", "max_unsent_bytes", "max_text_per_s", "max_session_s",
                  "max_session_wall_s")
        for name in counts:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} >= 0 is required")
        if self.max_text_bytes < 64 or self.max_json_depth < 2:
            raise ValueError("max_text_bytes >= 64 and max_json_depth >= 2 are required")
        for name in ("handshake_timeout_s", "idle_timeout_s", "slow_reader_timeout_s", "drain_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} > 0 is required")
        if not 0 < self.max_backlog_s <= self.max_hard_backlog_s:
            raise ValueError("0 < max_backlog_s <= max_hard_backlog_s is required")
        if self.greedy_after_s < 0:
            raise ValueError("greedy_after_s >= 0 is required")
        if self.log_format not in ("json", "text"):
            raise ValueError("log_format must be json or text")


def _comments() -> dict[str, str]:
    """Field help from the comments in the class body above."""
    import inspect

    help_text = {}
    for line in inspect.getsource(Settings).splitlines():
        stripped = line.strip()
        if ":" in stripped and "#" in stripped and not stripped.startswith("#"):
            name = stripped.split(":", 1)[0]
            help_text[name] = stripped.split("#", 1)[1].strip()
    return help_text


HELP = _comments()


def _convert(name: str, value: Any) -> Any:
    kind = {f.name: f for f in fields(Settings)}[name].type
    if isinstance(value, str):
        if "tuple" in kind:
            return tuple(v.strip() for v in value.split(",") if v.strip())
        if kind == "bool":
            return value.lower() in ("1", "true", "yes", "on")
        if kind.startswith("int"):
            return int(value)
        if kind.startswith("float"):
            return float(value)
    if isinstance(value, list):
        return tuple(value)
    return value


def load_settings(overrides: dict[str, Any] | None = None, config_file: str | None = None,
                  environ: dict[str, str] | None = None) -> Settings:
    """Defaults, then the TOML file, then CAPTIONER_* variables, then overrides (flags; None values ignored)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    if config_file:
        with open(config_file, "rb") as f:
            table = tomllib.load(f)
        table = table.get("captioner", table)
        unknown = set(table) - {f.name for f in fields(Settings)}
        if unknown:
            raise ValueError(f"{config_file}: unknown settings {sorted(unknown)}")
        values.update({k: _convert(k, v) for k, v in table.items()})
    for f in fields(Settings):
        if ENV_PREFIX + f.name.upper() in environ:
            values[f.name] = _convert(f.name, environ[ENV_PREFIX + f.name.upper()])
    values.update({k: _convert(k, v) for k, v in (overrides or {}).items() if v is not None})
    return dataclasses.replace(Settings(), **values)



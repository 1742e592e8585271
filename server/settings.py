"""Server settings: one frozen record built from defaults, an optional TOML file, CAPTIONER_* variables and flags.

The streaming core's settings (captioner.stream.config.StreamConfig) are nested in it as `stream`;
both are set the same flat way: every field of either is a `captioner serve --<name>` flag, a
CAPTIONER_<NAME> variable and a <name> key in the TOML file (the names do not clash). Precedence,
lowest first: defaults < TOML file (--config) < environment < command-line flags. Every field is
documented in `captioner serve --help` from the comments in its class body; each record validates
itself once, when it is built.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from typing import Any

from captioner.model.int8 import INT8_MODES
from captioner.stream.config import FieldDoc, StreamConfig, convert, documented_fields

__all__ = ["Settings", "load_settings", "setting_docs"]

ENV_PREFIX = "CAPTIONER_"
WHEN_FULL = ("refuse", "finals_only")


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
    model: str | None = None  # tiny.en (the default, embedded), base, small, or a checkpoint path
    language: str = "en"  # streams' language when a client names none; auto: detected per stream
    device: str = "auto"  # auto | cpu | cuda
    int8: str = "auto"  # int8 linear layers on a CPU: auto or decoder (the decoder), all (the encoder too), off
    dtype: str | None = None  # float32 | bfloat16 | float16; default: float16 on GPU, bfloat16 on a CPU with native bfloat16, else float32
    threads: int | None = None  # CPU threads for inference; default: all cores
    # Admission (each refused before the upgrade)
    max_sessions: int = 16  # concurrent streams; more are refused with HTTP 503 and Retry-After
    max_load: float = 0.75  # busy share of the model's time the open streams and a new one may take, at their measured cost; beyond: 503 at_capacity (0: off)
    max_late_s: float = 1.0  # ...and how far behind real time a stream may be before new streams are refused
    load_window_s: float = 10.0  # the window the load is measured over
    when_full: str = "refuse"  # past max_load: refuse (503 at_capacity), or finals_only: admit without partials
    max_sessions_per_address: int = 0  # concurrent streams from one client address (0: no limit); more: HTTP 429
    max_sessions_per_token: int = 0  # concurrent streams per access token (0: no limit); more get HTTP 429
    max_pending_handshakes: int = 64  # connections still sending their upgrade request (0: no limit); more: 503
    max_pending_per_address: int = 8  # ...of them from one client address (0: no limit); more: 503
    handshake_timeout_s: float = 5.0  # time from connecting to a complete upgrade request (and TLS handshake)
    # Limits of one stream
    max_frame_bytes: int = 1_048_576  # largest audio frame or message; larger is refused with 1009
    max_text_bytes: int = 65_536  # largest text (control) message; larger is refused with 1009
    max_keywords: int = 200  # keywords (words or phrases) a stream may give; more are refused (bad_parameter)
    max_keyword_tokens: int = 1000  # ...and their tokens in all
    max_json_depth: int = 16  # nesting of arrays and objects in a text message; deeper is a bad_message
    max_text_per_s: float = 2.0  # text messages per second (bursts of 2 s worth; 0: no limit); beyond: rate_limited
    max_backlog_s: float = 4.0  # audio waiting for the model beyond which a client is not read (backpressure)
    max_hard_backlog_s: float = 30.0  # audio waiting (or time not read) beyond which the stream closes 1013
    idle_timeout_s: float = 30.0  # no audio this long while the client is read: finalise and close 1001
    max_session_s: float = 0.0  # longest stream in audio seconds (0: unlimited); then finalise and close 1008
    max_session_wall_s: float = 14_400.0  # longest stream in wall-clock seconds (0: unlimited); then close 1008
    max_unsent_bytes: int = 262_144  # output a client leaves unread beyond which it may be closed 1013 slow_reader
    slow_reader_timeout_s: float = 10.0  # ...once it has stayed beyond it this long
    # Scheduler (what runs in each pass: the batching settings of the streaming core)
    workers: int | None = None  # inference threads, each taking the next pass of any stream's work; default: one per CPU thread, one on GPU
    max_wait_ms: float = 5.0  # how long the scheduler waits to fill a pass that has room (a CPU's pass of one never waits)
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
    # HTTP API (OpenAI's audio transcriptions, short-lived secrets)
    max_upload_bytes: int = 26_214_400  # largest request body (an uploaded file: 25 MiB, as OpenAI); larger: 413
    max_file_s: float = 7200.0  # longest uploaded audio in seconds; longer is refused (400 audio_too_long)
    max_file_jobs: int = 2  # files transcribed at once (each waits for the capacity live streams leave); more: 429
    upload_timeout_s: float = 120.0  # time to receive a whole request with a body; slower: 408
    max_secret_ttl_s: float = 7200.0  # longest life of a short-lived secret minted for a browser (OpenAI's limit)
    # Caption feeds: viewers (/v1/captions/{topic}, /watch/{topic}), live HLS subtitles, YouTube Live
    viewer_tokens_file: str | None = None  # read-only viewer tokens, one a line, each with the topic prefixes it reads
    max_viewers: int = 10_000  # caption viewers connected to this process at once; more: 503 too_many_viewers
    max_viewers_per_topic: int = 5_000  # ...to one topic; more: 503 too_many_viewers
    max_feed_topics: int = 1_000  # topics whose feed (finals, subtitles) is held; beyond, the longest idle is dropped
    feed_history: int = 1_000  # finals kept per topic: for viewers that reconnect, transcripts and subtitles
    feed_late_finals: int = 20  # finals a viewer that joins without Last-Event-ID gets before the live feed
    feed_idle_s: float = 3600.0  # a topic's feed is dropped this long after its last session and viewer left
    max_viewer_unsent_bytes: int = 1_048_576  # output a viewer leaves unread beyond which it is dropped (1013)
    hls_segment_s: float = 6.0  # length of a live WebVTT subtitle segment (HLS)
    hls_window: int = 10  # segments the live subtitle playlist lists
    hls_max_delay_s: float = 10.0  # a segment still waiting for a final this long after its end is published
    hls_mpegts: int = 0  # MPEG-TS time (90 kHz ticks) of feed time 0 in X-TIMESTAMP-MAP: the video's first PTS
    youtube_captions: tuple[str, ...] = ()  # topic=URL pairs: post the finals of each topic to its YouTube Live URL
    youtube_queue: int = 10_000  # finals held per YouTube sink while posts fail; beyond, the oldest drop (counted)
    # MQTT
    mqtt_url: str | None = None  # mqtt://[user:pass@]host:port or mqtts://...; off when unset
    mqtt_prefix: str = "captioner"  # topic prefix
    mqtt_queue: int = 10_000  # messages held while the broker is away; beyond, oldest partials then finals drop
    # The streaming core
    stream: StreamConfig = field(default_factory=StreamConfig)

    def __post_init__(self) -> None:
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("--certfile and --keyfile go together")
        if self.workers is not None and self.workers < 1:
            raise ValueError("workers >= 1 is required")
        if self.max_sessions < 1 or self.max_frame_bytes < 1024:
            raise ValueError("max_sessions >= 1 and max_frame_bytes >= 1024 are required")
        if not (0 <= self.max_load <= 1 and self.max_late_s > 0 and self.load_window_s >= 1):
            raise ValueError("0 <= max_load <= 1, max_late_s > 0 and load_window_s >= 1 are required")
        if self.when_full not in WHEN_FULL:
            raise ValueError(f"when_full must be one of {', '.join(WHEN_FULL)}")
        if self.int8 not in INT8_MODES:
            raise ValueError(f"int8 must be one of {', '.join(INT8_MODES)}")
        counts = ("max_sessions_per_address", "max_sessions_per_token", "max_pending_handshakes",
                  "max_pending_per_address", "max_unsent_bytes", "max_text_per_s", "max_session_s",
                  "max_session_wall_s")
        for name in counts:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} >= 0 is required")
        if self.max_text_bytes < 64 or self.max_json_depth < 2:
            raise ValueError("max_text_bytes >= 64 and max_json_depth >= 2 are required")
        if self.max_upload_bytes < 1024 or self.max_file_jobs < 1 or self.max_file_s <= 0 \
                or self.max_secret_ttl_s < 10:
            raise ValueError("max_upload_bytes >= 1024, max_file_jobs >= 1, max_file_s > 0 and max_secret_ttl_s >= 10 "
                             "are required")
        for name in ("handshake_timeout_s", "idle_timeout_s", "slow_reader_timeout_s", "drain_timeout_s",
                     "upload_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} > 0 is required")
        if not 0 < self.max_backlog_s <= self.max_hard_backlog_s:
            raise ValueError("0 < max_backlog_s <= max_hard_backlog_s is required")
        if min(self.max_viewers, self.max_viewers_per_topic, self.max_feed_topics, self.feed_history,
               self.hls_window, self.youtube_queue) < 1 or self.feed_late_finals < 0:
            raise ValueError("max_viewers, max_viewers_per_topic, max_feed_topics, feed_history, hls_window and "
                             "youtube_queue >= 1, feed_late_finals >= 0 are required")
        if not (self.hls_segment_s >= 1 and self.hls_max_delay_s >= 0 and self.feed_idle_s > 0 and self.hls_mpegts >= 0
                and self.max_viewer_unsent_bytes >= 1024):
            raise ValueError("hls_segment_s >= 1, hls_max_delay_s >= 0, feed_idle_s > 0, hls_mpegts >= 0 and "
                             "max_viewer_unsent_bytes >= 1024 are required")
        topics = [pair.partition("=")[0] for pair in self.youtube_captions]
        for pair in self.youtube_captions:
            topic, equals, url = pair.partition("=")
            if not (topic and equals and url.startswith(("http://", "https://"))):
                raise ValueError(f"youtube_captions: {pair!r} is not topic=http(s)://ingestion-url")
            if topics.count(topic) > 1:
                raise ValueError(f"youtube_captions: topic {topic!r} is given more than once")
        if self.log_format not in ("json", "text"):
            raise ValueError("log_format must be json or text")


def setting_docs() -> list[FieldDoc]:
    """Every setting, the server's and then the streaming core's, with its help, default and group."""
    return [*documented_fields(Settings), *documented_fields(StreamConfig)]


def load_settings(overrides: dict[str, Any] | None = None, config_file: str | None = None,
                  environ: dict[str, str] | None = None) -> Settings:
    """Defaults, then the TOML file, then CAPTIONER_* variables, then overrides (flags; None values ignored).

    Raises ValueError for an unknown key in the file, a value of the wrong type or out of range.
    """
    environ = os.environ if environ is None else environ
    kinds = {doc.name: doc.kind for doc in setting_docs()}
    values: dict[str, Any] = {}
    if config_file:
        with open(config_file, "rb") as f:
            table = tomllib.load(f)
        table = table.get("captioner", table)
        unknown = set(table) - set(kinds)
        if unknown:
            raise ValueError(f"{config_file}: unknown settings {sorted(unknown)}")
        values.update(table)
    values.update({name: environ[ENV_PREFIX + name.upper()] for name in kinds if ENV_PREFIX + name.upper() in environ})
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        typed = {name: convert(kinds[name], value) for name, value in values.items()}
    except ValueError as e:
        raise ValueError(f"a setting has a value of the wrong type: {e}") from None
    stream_names = {f.name for f in dataclasses.fields(StreamConfig)}
    stream = StreamConfig(**{k: v for k, v in typed.items() if k in stream_names})
    return Settings(**{k: v for k, v in typed.items() if k not in stream_names}, stream=stream)

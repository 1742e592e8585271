"""Structured logs: one JSON object per line, every record stamped with the model name and version."""

from __future__ import annotations

import json
import logging
import sys
import time

__all__ = ["configure_logging"]

_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class _ModelStamp(logging.Filter):
    def __init__(self, model: str, version: str) -> None:
        super().__init__()
        self.model = model
        self.version = version

    def filter(self, record: logging.LogRecord) -> bool:
        record.model = self.model
        record.model_version = self.version
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_")})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = {k: v for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_")}
        fields = " ".join(f"{k}={v}" for k, v in extra.items())
        return f"{self.formatTime(record)} {record.levelname.lower()} {record.getMessage()} {fields}".rstrip()


def configure_logging(fmt: str, model: str, version: str, level: int = logging.INFO) -> None:
    """Send every record to stderr in the chosen format, stamped with the model (call once, at start-up)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_ModelStamp(model, version))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("websockets").setLevel(logging.WARNING)

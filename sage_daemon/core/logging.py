"""Structured log lines to stderr. Under journald (JOURNAL_STREAM set) each line starts with the
sd-daemon priority prefix (<3> error … <7> debug) so the journal keeps the level."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _quote(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class StructuredFormatter(logging.Formatter):
    """`ts=... level=info logger=sage.http msg="..." key=value` (logfmt), one line per record."""

    def __init__(self, journald: bool):
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        parts = [] if self.journald else [f"ts={stamp}"]
        parts += [f"level={record.levelname.lower()}", f"logger={record.name}", f"msg={_quote(record.getMessage())}"]
        for key, value in getattr(record, "fields", {}).items():
            parts.append(f"{key}={_quote(value)}")
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        line = " ".join(parts)
        if self.journald:
            line = f"<{_PRIORITY.get(record.levelno, 6)}>{line}"
        return line


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(StructuredFormatter(journald=bool(os.environ.get("JOURNAL_STREAM"))))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)
    # Libraries log their own chatter at info; keep ours readable.
    for noisy in ("hypercorn.access", "httpx", "sentence_transformers", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def set_level(level: str) -> None:
    logging.getLogger("sage").setLevel(_LEVELS[level])
    logging.getLogger().setLevel(min(_LEVELS[level], logging.WARNING))


def log(logger: logging.Logger, level: int, msg: str, **fields: Any) -> None:
    """Log with structured key=value fields."""
    logger.log(level, msg, extra={"fields": fields})

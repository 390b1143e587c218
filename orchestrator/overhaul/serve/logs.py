"""Log lines for a person and for journald: levels as journald priorities, JSON lines on request.

Under systemd (stderr connected to the journal, as ``JOURNAL_STREAM`` says) each line starts with ``<N>``, the
syslog priority journald files it under, so ``journalctl -p warning`` finds warnings, and carries no timestamp
of its own (the journal has one). A record's ``fields`` extra (a dict) goes into JSON lines as keys."""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import IO, Any

FORMATS = ("text", "json")
# Python levels to syslog priorities (sd-daemon(3)).
PRIORITIES = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def under_journald(stream: IO[Any]) -> bool:
    """systemd sets JOURNAL_STREAM=DEVICE:INODE when it connects stderr to the journal."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return f"{st.st_dev}:{st.st_ino}" == expected


class LineFormatter(logging.Formatter):
    def __init__(self, *, json_lines: bool, journald: bool) -> None:
        super().__init__()
        self.json_lines = json_lines
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if self.json_lines:
            doc: dict[str, Any] = {
                "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": message,
            }
            fields = getattr(record, "fields", None)
            if isinstance(fields, dict):
                doc.update(fields)
            text = json.dumps(doc, default=str)
        else:
            text = f"{record.levelname} {record.name}: {message}"
            if not self.journald:
                text = f"{self.formatTime(record)} {text}"
        if self.journald:
            prefix = f"<{PRIORITIES.get(record.levelno, 6)}>"
            text = "\n".join(prefix + line for line in text.splitlines())  # journald reads one entry per line
        return text


class QuietPeers(logging.Filter):
    """A peer's malformed request, or a connection the process could not take, is the peer's or the moment's
    problem, not ours: one line without a traceback, at most one per ``every`` seconds (the others are counted in
    the next one), however many arrive."""

    LOGGERS = frozenset({"aiohttp.server", "asyncio"})

    def __init__(self, every: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every = every
        self.clock = clock
        self._last = -float("inf")
        self._dropped = 0

    @staticmethod
    def from_peer(exc: BaseException | None) -> bool:
        names = {kind.__name__ for kind in type(exc).__mro__} if exc is not None else set()
        return isinstance(exc, OSError) or "HttpProcessingError" in names

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.name not in self.LOGGERS or not self.from_peer(exc):
            return True
        now = self.clock()
        if now - self._last < self.every:
            self._dropped += 1
            return False
        more = f" ({self._dropped} more like it since the last)" if self._dropped else ""
        record.msg = f"{record.getMessage()}: {type(exc).__name__}: {str(exc).strip()[:200]}{more}"
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        self._last, self._dropped = now, 0
        return True


def setup(level: str, log_format: str = "text", stream: IO[str] | None = None) -> None:
    """Replaces the root logger's handlers with one writing ``log_format`` lines to ``stream`` (stderr)."""
    out = stream or sys.stderr
    handler = logging.StreamHandler(out)
    handler.setFormatter(LineFormatter(json_lines=log_format == "json", journald=under_journald(out)))
    handler.addFilter(QuietPeers())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

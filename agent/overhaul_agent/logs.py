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


def setup(level: str, log_format: str = "text", stream: IO[str] | None = None) -> None:
    """Replaces the root logger's handlers with one writing ``log_format`` lines to ``stream`` (stderr)."""
    out = stream or sys.stderr
    handler = logging.StreamHandler(out)
    handler.setFormatter(LineFormatter(json_lines=log_format == "json", journald=under_journald(out)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

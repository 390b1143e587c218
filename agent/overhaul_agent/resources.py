"""A small psutil snapshot of the instance, served with the health verdict."""

from __future__ import annotations

import os
from typing import Any

import psutil


class ResourceSnapshot:
    """Takes a snapshot at most once per ``max_age`` seconds: /health stays cheap under load."""

    def __init__(self, max_age: float = 1.0, disk_path: str = "/") -> None:
        self.max_age = max_age
        self.disk_path = disk_path
        self._process = psutil.Process()
        self._taken_at = float("-inf")
        self._value: dict[str, Any] = {}
        psutil.cpu_percent(None)  # primes the counter so the first reading is meaningful

    def get(self, now: float) -> dict[str, Any]:
        if now - self._taken_at >= self.max_age:
            self._value = self._take()
            self._taken_at = now
        return self._value

    def _take(self) -> dict[str, Any]:
        memory = psutil.virtual_memory()
        try:
            disk = psutil.disk_usage(self.disk_path)
            disk_doc: dict[str, Any] = {
                "path": self.disk_path,
                "totalBytes": disk.total,
                "freeBytes": disk.free,
            }
        except OSError:
            disk_doc = {"path": self.disk_path, "error": "unavailable"}
        return {
            "cpuPercent": psutil.cpu_percent(None),
            "cpuCount": psutil.cpu_count(),
            "loadAverage": [round(x, 2) for x in os.getloadavg()],
            "memory": {"totalBytes": memory.total, "availableBytes": memory.available},
            "disk": disk_doc,
            "bootTime": psutil.boot_time(),
            "agentRssBytes": self._process.memory_info().rss,
        }

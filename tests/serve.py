"""A running `overhaul serve` for tests, on a loopback port with its own state directory: a real process
(``overhaul_serve``: signals, exit codes, crashes, limits), or the same ``serve`` coroutine on a thread of the test's
own process (``serve_in_process``: the HTTP API's behaviour, a second in place of a process's start)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overhaul import serve
from overhaul.localhost import free_port
from overhaul.serve import logs
from overhaul.serve.settings import load_settings

API = "api-version=2021-03-01"
IN_GROUP = re.compile(r"^/subscriptions/(?P<sub>[^/]+)/resourcegroups/(?P<rg>[^/?]+)/providers/", re.IGNORECASE)


@dataclass
class Served:
    url: str
    state_dir: Path
    log: Path
    pid: int
    groups: set[tuple[str, str]] = field(default_factory=set, compare=False, kw_only=True)

    @property
    def token(self) -> str:
        return (self.state_dir / "token").read_text().strip()

    @property
    def tls(self) -> ssl.SSLContext | None:
        """Over https: trusting the serve's local CA (--tls auto) as the CLI does."""
        if not self.url.startswith("https://"):
            return None
        return ssl.create_default_context(cafile=self.state_dir / "tls" / "ca.pem")

    def open(self, request: urllib.request.Request | str, timeout: float) -> Any:
        return urllib.request.urlopen(request, timeout=timeout, context=self.tls)

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        raw: bytes | None = None,
        make_group: bool = True,
    ) -> tuple[int, Any, dict[str, str]]:
        """One HTTP request; returns (status, parsed JSON or None, headers). A PUT into a resource group first
        creates the group (as a user does before putting anything in it) unless ``make_group`` is False."""
        group = IN_GROUP.match(path)
        if method == "PUT" and make_group and group is not None and group["rg"].lower() != "resourcegroups":
            self.make_group(group["sub"], group["rg"], token)
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if token is None:
            token = self.token
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with self.open(request, timeout=60) as resp:
                status, payload, headers = resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            status, payload, headers = exc.code, exc.read(), dict(exc.headers)
        if headers.get("Content-Type", "").startswith("application/json") and payload.strip():
            return status, json.loads(payload), headers
        return status, payload.decode() if payload.strip() else None, headers

    def delete(self, path: str, timeout: float = 300.0) -> tuple[int, Any]:
        """A DELETE followed to its end: a long-running one (202) is polled as the SDK does (Azure-AsyncOperation
        until its status is no longer InProgress; else Location until it is no longer 202). Returns the DELETE's
        status and the operation's last document (or the DELETE's own body)."""
        status, doc, headers = self.call("DELETE", path)
        if status != 202:
            return status, doc
        operation = headers.get("Azure-AsyncOperation") or headers["Location"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            polled, doc, _ = self.call("GET", operation.removeprefix(self.url))
            still = doc.get("status") == "InProgress" if "Azure-AsyncOperation" in headers else polled == 202
            if not still:
                return status, doc
            time.sleep(0.2)
        raise AssertionError(f"DELETE {path} still runs after {timeout:g}s: {doc}")

    def instances(self, vmss: str) -> list[dict[str, Any]]:
        """The scale set's instances (``vmss``: its resource id), as `GET …/virtualMachines` lists them."""
        status, doc, _ = self.call("GET", f"{vmss}/virtualMachines?{API}")
        assert status == 200, doc
        return list(doc["value"])

    def versions_and_health(self, vmss: str) -> list[tuple[str, str]]:
        """(exact version, health) of each instance."""
        return [
            (
                vm["properties"]["storageProfile"]["imageReference"]["exactVersion"],
                vm["properties"]["instanceView"]["vmHealth"]["status"]["displayStatus"],
            )
            for vm in self.instances(vmss)
        ]

    def latest_code(self, vmss: str) -> str:
        """The latest rolling upgrade's status code ("" when there was none)."""
        status, doc, _ = self.call("GET", f"{vmss}/rollingUpgrades/latest?{API}")
        return str(doc["properties"]["runningStatus"]["code"]) if status == 200 else ""

    def metric(self, name: str, **labels: str) -> float:
        """One sample of serve's /metrics: the unlabelled one, or the one with exactly these labels."""
        with self.open(f"{self.url}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
        for line in text.splitlines():
            sample, _, value = line.rpartition(" ")
            if sample == wanted:
                return float(value)
        raise AssertionError(f"{wanted} is not in /metrics")

    def make_group(self, subscription: str, name: str, token: str | None = None, location: str = "local") -> None:
        """`az group create -n NAME -l LOCATION` (once per group and Served)."""
        key = (subscription.lower(), name.lower())
        if key in self.groups:
            return
        path = f"/subscriptions/{subscription}/resourcegroups/{name}?api-version=2022-09-01"
        status, _, _ = self.call("PUT", path, {"location": location}, token=token, make_group=False)
        if status in (200, 201, 409):  # 409: it exists in another location, which is as good here
            self.groups.add(key)

    def cli(
        self, *args: str, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **(env or {}), "OVERHAUL_ENDPOINT": self.url, "OVERHAUL_STATE_DIR": str(self.state_dir)}
        result = subprocess.run(
            [sys.executable, "-m", "overhaul.cli", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"overhaul {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result


@dataclass
class ServedProcess(Served):
    process: subprocess.Popen[bytes]


def scheme(flags: tuple[str, ...]) -> str:
    return "https" if "--tls" in flags or "--tls-cert" in flags else "http"


def with_umask(umask: int | None) -> list[str]:
    """The start of a command line that runs the rest under ``umask`` (none: as it is)."""
    return [] if umask is None else ["sh", "-c", f'umask {umask:03o} && exec "$0" "$@"']


@contextmanager
def overhaul_serve(
    state_dir: Path, *extra: str, umask: int | None = None, nofile: int | None = None
) -> Iterator[ServedProcess]:
    """``umask``: the one serve starts with (an operator's shell may have any); ``nofile``: its open-files limit
    (systemd's default is 1,024)."""
    port = free_port()
    log = state_dir.parent / f"{state_dir.name}.serve.log"
    state_dir.parent.mkdir(parents=True, exist_ok=True)

    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                *with_umask(umask),
                *([] if nofile is None else ["prlimit", f"--nofile={nofile}:{nofile}"]),
                sys.executable,
                "-m",
                "overhaul.cli",
                "serve",
                "--state-dir",
                str(state_dir),
                "--port",
                str(port),
                *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    served = ServedProcess(f"{scheme(extra)}://127.0.0.1:{port}", state_dir, log, process.pid, process)
    try:
        wait_until_serving(served, lambda: process.poll() is None)
        yield served
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_serving(served: Served, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with served.open(served.url + "/healthz", timeout=2):
                return
        except OSError:  # the local CA's file too, until serve has made it
            if not alive() or time.monotonic() > deadline:
                raise RuntimeError(f"overhaul serve did not start: {served.log.read_text()}") from None
            time.sleep(0.02)


@contextmanager
def serve_in_process(state_dir: Path, *extra: str) -> Iterator[Served]:
    """``serve`` with the flags ``extra`` (no environment) on its own event loop in a thread; what it logs goes to
    the ``log`` file, as a process's stderr would."""
    port = free_port()
    args = serve.build_parser().parse_args(["--state-dir", str(state_dir), "--port", str(port), *extra])
    settings = load_settings(args, environ={})
    log = state_dir.parent / f"{state_dir.name}.serve.log"
    state_dir.parent.mkdir(parents=True, exist_ok=True)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    exit_code: list[int] = []
    handler = logging.FileHandler(log)
    handler.setFormatter(logs.LineFormatter(json_lines=False, journald=False))
    handler.addFilter(logs.QuietPeers())  # as serve's own handler does
    logging.getLogger().addHandler(handler)

    def run() -> None:
        asyncio.set_event_loop(loop)
        exit_code.append(loop.run_until_complete(serve.serve(settings, stop)))

    thread = threading.Thread(target=run, name=f"serve {state_dir}", daemon=True)
    thread.start()
    served = Served(f"{scheme(extra)}://127.0.0.1:{port}", state_dir, log, os.getpid())
    try:
        wait_until_serving(served, thread.is_alive)
        yield served
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        logging.getLogger().removeHandler(handler)
        handler.close()
        if not thread.is_alive():
            loop.close()
        assert exit_code == [0], f"serve ended with {exit_code or 'no exit'}: {log.read_text()[-2000:]}"


def raw_request(served: Served, lines: list[str], body: bytes = b"", wait: float = 10) -> bytes:
    host, port = served.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks):
                break
        return b"".join(chunks)

"""Real container engines for tests: a private Podman service and a Docker daemon, started when needed."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from overhaul.localhost import free_port

DOCKER_SOCKET = Path("/var/run/docker.sock")


def ping(socket_path: Path) -> bool:
    try:
        out = subprocess.run(
            ["curl", "-s", "--max-time", "2", "--unix-socket", str(socket_path), "http://engine/_ping"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.stdout.strip() == "OK"


def wait_for(socket_path: Path, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ping(socket_path):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer on {socket_path} within {timeout}s")
        time.sleep(0.1)


@contextmanager
def podman_service(directory: Path, store: list[str] | None = None) -> Iterator[str]:
    """`podman system service` on a private socket (the same service the engine driver starts by itself), over
    the machine's store or ``store`` (podman_store); the containers of a store of its own go with it."""
    sock = directory / "podman.sock"
    proc = subprocess.Popen(
        ["podman", *(store or []), "--runtime", "runc", "system", "service", "--time=0", f"unix://{sock}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(sock, "podman system service", 30)
        yield f"unix://{sock}"
    finally:
        if store:  # containers first: their locks are in a segment every Podman store on the machine shares
            subprocess.run(["podman", *store, "rm", "-fa", "-t", "0"], capture_output=True, timeout=120, check=False)
        proc.terminate()
        proc.wait(10)


def podman_store(directory: Path) -> list[str]:
    """Podman's options for an image and container store of its own under ``directory`` (short: Podman refuses a
    runroot over 50 characters): another host's engine on this machine. --tmpdir from the first command on the
    store on (it is kept in the store's database)."""
    return ["--root", str(directory / "root"), "--runroot", str(directory / "run"), "--tmpdir", str(directory / "tmp")]


@contextmanager
def podman_host(images: Callable[[list[str]], None] = lambda store: None) -> Iterator[str]:
    """A Podman service over a store of its own (``images`` puts images into it first): a host's engine."""
    directory = Path(tempfile.mkdtemp(prefix="ovh-host-"))
    store = podman_store(directory)
    try:
        images(store)
        with podman_service(directory, store) as url:
            yield url
    finally:
        subprocess.run(["podman", *store, "system", "prune", "-af"], capture_output=True, timeout=120, check=False)
        # The overlay driver may keep its directory mounted on itself (a store whose first user was the service).
        for mounted in sorted(mounts_under(directory), reverse=True):
            subprocess.run(["umount", mounted], capture_output=True, timeout=60, check=False)
        shutil.rmtree(directory, ignore_errors=True)


def mounts_under(directory: Path) -> list[str]:
    points = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines() if len(line.split()) > 1]
    return [p for p in points if p == str(directory) or p.startswith(f"{directory}/")]


@contextmanager
def docker_daemon(log: Path) -> Iterator[str]:
    """The machine's Docker daemon, started here when none answers (as CI needs)."""
    if ping(DOCKER_SOCKET):
        yield f"unix://{DOCKER_SOCKET}"
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise RuntimeError("dockerd is not installed: make test installs docker.io")
    with log.open("wb") as out:
        proc = subprocess.Popen([dockerd], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(DOCKER_SOCKET, "dockerd", 60)
        yield f"unix://{DOCKER_SOCKET}"
    finally:
        proc.terminate()
        proc.wait(30)


async def get_text(session: aiohttp.ClientSession, port: int, path: str) -> tuple[int, str]:
    async with session.get(f"http://127.0.0.1:{port}{path}", timeout=aiohttp.ClientTimeout(total=5)) as resp:
        return resp.status, await resp.text()


def containers(engine: str, name_prefix: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [engine, "ps", "-a", "--filter", f"name={name_prefix}", "--format", "{{.Names}} {{.State}}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    rows = []
    for line in out.splitlines():
        name, _, state = line.partition(" ")
        # Docker prints "running"; Podman 4.3 prints its status ("Up 2 seconds ago").
        running = state == "running" or state.startswith("Up")
        rows.append({"name": name, "state": "running" if running else state})
    return rows


class Sshd:
    """A private sshd on one loopback address (never the system's): its host key, and the client key it lets in.
    ``stop`` takes it away with every connection it holds (a host gone); ``start`` brings it back as it was."""

    def __init__(self, address: str) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="ovh-sshd-"))
        for name in ("host", "client"):
            keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.directory / name)]
            subprocess.run(keygen, check=True, timeout=30)
        shutil.copy(self.directory / "client.pub", self.directory / "authorized_keys")
        self.address, self.port = address, free_port()
        self.host_key = (self.directory / "host.pub").read_text().strip()  # the line a host's record gives
        self.client_key = self.directory / "client"
        self.config = self.directory / "sshd_config"
        self.config.write_text(
            f"Port {self.port}\nListenAddress {address}\nHostKey {self.directory / 'host'}\n"
            f"PidFile {self.directory / 'sshd.pid'}\nAuthorizedKeysFile {self.directory / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "UsePAM no\nStrictModes no\nAllowStreamLocalForwarding yes\nLogLevel VERBOSE\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def fresh_host_key() -> str:
        """A host key line of no sshd here (a wrong key to give)."""
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "other"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30)
            return path.with_suffix(".pub").read_text().strip()

    def start(self) -> None:
        Path("/run/sshd").mkdir(exist_ok=True)  # its privilege separation directory, which systemd would make
        binary = shutil.which("sshd") or "/usr/sbin/sshd"
        log = str(self.directory / "sshd.log")
        self.process = subprocess.Popen([binary, "-D", "-f", str(self.config), "-E", log])
        deadline = time.monotonic() + 10
        while not listening(self.address, self.port):
            assert self.process.poll() is None, (self.directory / "sshd.log").read_text()
            assert time.monotonic() < deadline, "sshd did not listen"
            time.sleep(0.05)  # a process just started: nothing to wait on but time

    def stop(self) -> None:
        if self.process is None:
            return
        listener = psutil.Process(self.process.pid)
        for process in [*listener.children(recursive=True), listener]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        self.process.wait(10)
        self.process = None


@contextmanager
def sshd(address: str) -> Iterator[Sshd]:
    server = Sshd(address)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)


def listening(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


def podman_inspect(name: str, template: str) -> str:
    """What `podman inspect --format TEMPLATE NAME` prints, stripped."""
    out = subprocess.run(
        ["podman", "inspect", "--format", template, name], capture_output=True, text=True, check=True, timeout=60
    )
    return out.stdout.strip()

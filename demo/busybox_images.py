"""Tiny instance images built locally from busybox (no registry): an HTTP app with a health endpoint.

Used by `make demo`, the tests and the benchmarks; `healthy=False` makes a version whose /health is missing."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "httpd", "mkdir", "hostname", "cat", "sleep", "test", "ln", "echo")
# Writes a marker on the data disk the first time only, then serves /www; exits at once on SIGTERM.
START = (
    "trap 'exit 0' TERM; mkdir -p /datadisks/lun0; "
    "[ -f /datadisks/lun0/first ] || cat /www/version > /datadisks/lun0/first; "
    "httpd -f -p 8080 -h /www & wait"
)


def image_tar(version: str, *, healthy: bool) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:

        def add(path: str, data: bytes | None = None, *, mode: int = 0o644, link: str | None = None) -> None:
            info = tarfile.TarInfo(path)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            elif data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), mode
                tar.addfile(info, io.BytesIO(data))

        for directory in ("bin", "www", "tmp", "etc", "datadisks"):
            add(directory)
        add("bin/busybox", BUSYBOX.read_bytes(), mode=0o755)
        for applet in APPLETS:
            add(f"bin/{applet}", link="busybox")
        add("www/version", version.encode() + b"\n")
        add("www/data", link="/datadisks/lun0")
        if healthy:
            add("www/health", b'{"applicationHealthState": "Healthy"}\n')
    return buffer.getvalue()


def build(
    engine: str,
    reference: str,
    version: str,
    *,
    healthy: bool = True,
    command: str = START,
    store: Sequence[str] = (),
) -> None:
    """`podman import` / `docker import` the image under ``reference``; ``command`` is what its container runs;
    ``store``: the engine's options naming another image store (podman's --root, --runroot and --tmpdir)."""
    binary = shutil.which(engine)
    if binary is None:
        raise RuntimeError(f"{engine} is not installed")
    subprocess.run(
        [binary, *store, "import", "--change", f'CMD ["/bin/sh", "-c", "{command}"]', "-", reference],
        input=image_tar(version, healthy=healthy),
        check=True,
        capture_output=True,
        timeout=120,
    )

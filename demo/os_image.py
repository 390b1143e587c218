"""OS images with the overhaul agent inside: a minimal Debian (systemd, Python) that boots like a VM in Podman.

    python demo/os_image.py build 1.0.0            # localhost/overhaul-os:1.0.0, a good version
    python demo/os_image.py build 3.0.0 --bad      # its sample application never becomes healthy
    python demo/os_image.py publish 1.0.0 -g rg -r gallery -i os   # into a running orchestrator's gallery

The base (mmdebstrap: systemd, python3, the agent installed from this checkout with its unit enabled, and the
sample application's unit) is built once per recipe and cached; a version is a thin layer over it naming the
version and the sample application's behaviour. A second build of the same version reuses everything.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPO = "localhost/overhaul-os"
BASE_REPO = "localhost/overhaul-os-base"
PACKAGES = ["systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "ca-certificates", "iproute2", "procps"]
SAMPLE_APP_UNIT = """\
[Unit]
Description=overhaul sample application (a rich health endpoint on :8080)
After=network.target

[Service]
EnvironmentFile=-/etc/default/sample-app
Environment=APP_PORT=8080
ExecStart=/usr/bin/python3 /usr/local/bin/sample-app --host 0.0.0.0 --port ${APP_PORT} $APP_ARGS
Restart=always

[Install]
WantedBy=multi-user.target
"""
# Units that only slow a container's boot or fail without the hardware they expect.
MASKED = [
    "systemd-udevd.service",
    "systemd-udev-trigger.service",
    "getty@tty1.service",
    "console-getty.service",
    "systemd-networkd-wait-online.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
]


def cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "overhaul" / "images"
    root.mkdir(parents=True, exist_ok=True)
    return root


def say(text: str) -> None:
    print(f"os_image: {text}", file=sys.stderr, flush=True)


def run(*args: str, timeout: float = 900, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(args, check=True, timeout=timeout, **kwargs)  # type: ignore[call-overload, no-any-return]


def recipe_inputs() -> list[Path]:
    files = [
        ROOT / "pyproject.toml",
        ROOT / "systemd" / "overhaul-agent.service",
        ROOT / "demo" / "sample_app.py",
        Path(__file__),
    ]
    files += [ROOT / "agent" / "pyproject.toml", *sorted((ROOT / "agent" / "overhaul_agent").glob("*.py"))]
    return files


def base_key() -> str:
    digest = hashlib.sha256(" ".join(PACKAGES).encode())
    for path in recipe_inputs():
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def image_exists(reference: str) -> bool:
    return subprocess.run(["podman", "image", "exists", reference], check=False, timeout=60).returncode == 0


def build_base() -> str:
    """The base image for this checkout's agent, built only when the recipe changed."""
    key = base_key()
    reference = f"{BASE_REPO}:{key}"
    if image_exists(reference):
        say(f"reusing {reference}")
        return reference
    work = Path(tempfile.mkdtemp(prefix="overhaul-os-"))
    wheels = cache_dir() / f"wheels-{key}"
    if not wheels.exists():
        say("building the agent's wheels from this checkout")
        # The agent's distribution alone: an instance gets neither the orchestrator nor its engine client.
        run(sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels), str(ROOT / "agent"))
    (work / "sample-app.service").write_text(SAMPLE_APP_UNIT)
    tarball = work / "rootfs.tar"
    say("mmdebstrap: a minimal Debian bookworm with systemd and Python (about a minute)")
    started = time.monotonic()
    hooks = [
        f"copy-in {wheels} /tmp",
        'chroot "$1" python3 -m venv /opt/overhaul',
        f'chroot "$1" /opt/overhaul/bin/pip install --quiet --no-index --find-links /tmp/{wheels.name} overhaul-agent',
        'ln -s /opt/overhaul/bin/overhaul-agent "$1/usr/local/bin/overhaul-agent"',
        f'rm -rf "$1/tmp/{wheels.name}"',
        f"copy-in {ROOT / 'systemd' / 'overhaul-agent.service'} /etc/systemd/system",
        f"copy-in {work / 'sample-app.service'} /etc/systemd/system",
        f"copy-in {ROOT / 'demo' / 'sample_app.py'} /usr/local/bin",
        'mv "$1/usr/local/bin/sample_app.py" "$1/usr/local/bin/sample-app"',
        'chmod 755 "$1/usr/local/bin/sample-app"',
        'mkdir -p "$1/etc/systemd/system/multi-user.target.wants"',
        'ln -s /etc/systemd/system/overhaul-agent.service "$1/etc/systemd/system/multi-user.target.wants/"',
        'ln -s /etc/systemd/system/sample-app.service "$1/etc/systemd/system/multi-user.target.wants/"',
        *[f'ln -sf /dev/null "$1/etc/systemd/system/{unit}"' for unit in MASKED],
    ]
    args = ["mmdebstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", "--quiet"]
    for hook in hooks:
        args.append(f"--customize-hook={hook}")
    args += ["bookworm", str(tarball)]
    run(*args, timeout=1800)
    say(f"rootfs built in {time.monotonic() - started:.0f}s; importing as {reference}")
    run(
        "podman",
        "import",
        "--quiet",
        "--change",
        'CMD ["/sbin/init"]',
        "--change",
        "STOPSIGNAL SIGRTMIN+3",
        str(tarball),
        reference,
        stdout=subprocess.DEVNULL,
    )
    shutil.rmtree(work, ignore_errors=True)
    return reference


def build(version: str, *, bad: bool, silent: bool = False) -> str:
    """localhost/overhaul-os:VERSION over the base; reused when it was built from the same base.

    ``bad``: the sample application answers Unhealthy; ``silent``: it listens on another port, so the agent's
    probe gets no answer at all (Unknown once the grace period is over)."""
    base = build_base()
    reference = f"{REPO}:{version}"
    label = f"{base}{' bad' if bad else ''}{' silent' if silent else ''}"
    if image_exists(reference):
        found = subprocess.run(
            ["podman", "image", "inspect", "--format", '{{index .Labels "overhaul.recipe"}}', reference],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        ).stdout.strip()
        if found == label:
            say(f"reusing {reference}")
            return reference
    work = Path(tempfile.mkdtemp(prefix="overhaul-os-version-"))
    (work / "release").write_text(f"{version}\n")
    app_args = f"--version-label {version}" + (" --state Unhealthy" if bad else "")
    port = "\nAPP_PORT=8081" if silent else ""
    (work / "sample-app").write_text(f'APP_ARGS="{app_args}"{port}\n')
    (work / "Containerfile").write_text(
        f"FROM {base}\n"
        f'LABEL overhaul.recipe="{label}" overhaul.version="{version}"\n'
        "COPY release /etc/overhaul-release\n"
        "COPY sample-app /etc/default/sample-app\n"
        'CMD ["/sbin/init"]\n'
        "STOPSIGNAL SIGRTMIN+3\n"
    )
    run("podman", "build", "--quiet", "-t", reference, str(work), stdout=subprocess.DEVNULL)
    shutil.rmtree(work, ignore_errors=True)
    say(f"built {reference}{' (its application never becomes healthy)' if bad or silent else ''}")
    return reference


def publish(version: str, resource_group: str, gallery: str, image: str) -> None:
    """Publishes a built version into the running orchestrator's gallery (the `overhaul` CLI does the call)."""
    run(
        sys.executable,
        "-m",
        "overhaul.cli",
        "sig",
        "image-version",
        "create",
        "-g",
        resource_group,
        "-r",
        gallery,
        "-i",
        image,
        "-e",
        version,
        "--container-image",
        f"{REPO}:{version}",
        "-o",
        "table",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="build (or reuse) localhost/overhaul-os:VERSION")
    build_cmd.add_argument("version")
    build_cmd.add_argument("--bad", action="store_true", help="a version whose application never becomes healthy")
    build_cmd.add_argument("--silent", action="store_true", help="a version whose application never answers")
    publish_cmd = commands.add_parser("publish", help="publish a built version into the orchestrator's gallery")
    publish_cmd.add_argument("version")
    publish_cmd.add_argument("-g", "--resource-group", required=True)
    publish_cmd.add_argument("-r", "--gallery-name", required=True)
    publish_cmd.add_argument("-i", "--gallery-image-definition", required=True)
    args = parser.parse_args()
    if args.command == "build":
        print(build(args.version, bad=args.bad, silent=args.silent))
    else:
        publish(args.version, args.resource_group, args.gallery_name, args.gallery_image_definition)
    return 0


if __name__ == "__main__":
    sys.exit(main())

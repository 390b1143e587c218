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
import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPO = "localhost/overhaul-os"
BASE_REPO = "localhost/overhaul-os-base"
PACKAGES = ["systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "ca-certificates", "iproute2", "procps"]
# What the same root file system needs to boot as a VM too (a container ignores the kernel and the initrd).
VM_PACKAGES = ["linux-image-cloud-amd64", "initramfs-tools", "udev"]
# Drivers the VM's initrd loads before it mounts the root file system (virtio disks, ext4).
INITRD_MODULES = ["virtio_pci", "virtio_blk", "virtio_net", "ext4"]
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


@contextlib.contextmanager
def build_lock() -> Iterator[None]:
    """One builder per cache at a time: the test workers (and a demo beside them) that need the same image wait for
    the one building it, then reuse it. Taken by build and build_vm only (they do not nest)."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with (cache_dir() / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def base_key() -> str:
    digest = hashlib.sha256(" ".join(PACKAGES + VM_PACKAGES + INITRD_MODULES).encode())
    for path in recipe_inputs():
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def image_exists(reference: str) -> bool:
    return subprocess.run(["podman", "image", "exists", reference], check=False, timeout=60).returncode == 0


def inspect_image(reference: str, template: str) -> str:
    """One field of an image (a Go template of `podman image inspect`); empty when there is no such image."""
    return subprocess.run(
        ["podman", "image", "inspect", "--format", template, reference],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    ).stdout.strip()


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
        # For the VM artefacts made from the same root file system: an initrd that finds virtio disks.
        'printf "%s\\n" ' + " ".join(INITRD_MODULES) + ' >> "$1/etc/initramfs-tools/modules"',
        'chroot "$1" update-initramfs -u -k all',
    ]
    args = ["mmdebstrap", "--variant=minbase", f"--include={','.join(PACKAGES + VM_PACKAGES)}", "--quiet"]
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


def build(version: str, *, bad: bool, silent: bool = False, exits: bool = False) -> str:
    """localhost/overhaul-os:VERSION over the base; reused when it was built from the same base.

    ``bad``: the sample application answers Unhealthy; ``silent``: it listens on another port, so the agent's
    probe gets no answer at all (Unknown once the grace period is over); ``exits``: the OS itself stops a second
    after it starts (a broken init), so the instance exits by itself."""
    with build_lock():
        return _build(version, bad=bad, silent=silent, exits=exits)


def _build(version: str, *, bad: bool, silent: bool, exits: bool = False) -> str:
    base = build_base()
    reference = f"{REPO}:{version}"
    label = f"{base}{' bad' if bad else ''}{' silent' if silent else ''}{' exits' if exits else ''}"
    if inspect_image(reference, '{{index .Labels "overhaul.recipe"}}') == label:
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
        + ('CMD ["/bin/sh", "-c", "sleep 1; exit 3"]\n' if exits else 'CMD ["/sbin/init"]\n')
        + "STOPSIGNAL SIGRTMIN+3\n"
    )
    run("podman", "build", "--quiet", "-t", reference, str(work), stdout=subprocess.DEVNULL)
    shutil.rmtree(work, ignore_errors=True)
    say(f"built {reference}{' (its application never becomes healthy)' if bad or silent or exits else ''}")
    return reference


VM_FSTAB = """\
LABEL=rootfs    /              ext4  defaults,errors=remount-ro  0 1
LABEL=CFGDRIVE  /etc/overhaul  vfat  ro,nofail,umask=0077        0 0
"""
# The data disks the config drive lists ("LABEL MOUNTPATH" per line), mounted before the agent and the application
# start: a VM's data disks are block devices, found by the label the orchestrator gave them (lunN).
VM_DATA_DISKS_UNIT = """\
[Unit]
Description=overhaul data disks, mounted by label where the config drive says
RequiresMountsFor=/etc/overhaul
Before=overhaul-agent.service sample-app.service
ConditionPathExists=/etc/overhaul/datadisks

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'while read -r label path; do mkdir -p "$path" && mount LABEL="$label" "$path"; done \
< /etc/overhaul/datadisks'

[Install]
WantedBy=multi-user.target
"""
VM_NETWORK = "[Match]\nType=ether\n\n[Network]\nDHCP=ipv4\n"
VM_KERNEL_ARGS = "root=LABEL=rootfs rw console=ttyS0 quiet"
# Units the container image masks that a VM needs (device nodes come from udev there).
VM_UNMASKED = ["systemd-udevd.service", "systemd-udev-trigger.service"]


def vm_dir(version: str) -> Path:
    return cache_dir() / "vm" / version


def build_vm(version: str, *, bad: bool, silent: bool = False) -> Path:
    """The VM artefacts of a version, made from its container image's root file system: an immutable qcow2 base
    (``base.qcow2``, read-only), the kernel (``vmlinuz``) and the initrd (``initrd.img``). The instance's config
    drive is a vfat disk labelled CFGDRIVE, mounted where containers get theirs (/etc/overhaul); the data disks it
    lists are mounted by label."""
    with build_lock():
        return _build_vm(version, bad=bad, silent=silent)


def _build_vm(version: str, *, bad: bool, silent: bool) -> Path:
    reference = _build(version, bad=bad, silent=silent)
    image_id = inspect_image(reference, "{{.Id}}")
    target = vm_dir(version)
    if (target / "recipe").exists() and (target / "recipe").read_text() == image_id:
        say(f"reusing the VM artefacts of {version} in {target}")
        return target
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="overhaul-vm-"))
    root = work / "root"
    root.mkdir()
    container = f"overhaul-vm-export-{os.getpid()}"
    try:
        run("podman", "create", "--name", container, reference, stdout=subprocess.DEVNULL)
        run("podman", "export", "-o", str(work / "rootfs.tar"), container)
    finally:
        subprocess.run(["podman", "rm", "-f", container], check=False, timeout=60, stdout=subprocess.DEVNULL)
    run("tar", "-xf", str(work / "rootfs.tar"), "-C", str(root), "--numeric-owner")
    (work / "rootfs.tar").unlink()
    (root / "etc" / "fstab").write_text(VM_FSTAB)
    (root / "etc" / "overhaul").mkdir(exist_ok=True)
    (root / "etc" / "hostname").write_text("overhaul-vm\n")
    (root / "etc" / "systemd" / "network" / "20-wired.network").write_text(VM_NETWORK)
    for unit in VM_UNMASKED:
        (root / "etc" / "systemd" / "system" / unit).unlink(missing_ok=True)
    (root / "etc" / "systemd" / "system" / "overhaul-data-disks.service").write_text(VM_DATA_DISKS_UNIT)
    for unit in ("systemd-networkd", "overhaul-data-disks"):
        run("chroot", str(root), "systemctl", "enable", "--quiet", unit, stdout=subprocess.DEVNULL)
    fresh = work / "out"
    fresh.mkdir()
    run(
        "mke2fs",
        "-q",
        "-t",
        "ext4",
        "-L",
        "rootfs",
        "-d",
        str(root),
        str(work / "disk.raw"),
        "2G",
        stdout=subprocess.DEVNULL,
    )
    run("qemu-img", "convert", "-O", "qcow2", str(work / "disk.raw"), str(fresh / "base.qcow2"))
    shutil.copyfile(next((root / "boot").glob("vmlinuz-*")), fresh / "vmlinuz")
    shutil.copyfile(next((root / "boot").glob("initrd.img-*")), fresh / "initrd.img")
    (fresh / "cmdline").write_text(VM_KERNEL_ARGS + "\n")
    (fresh / "recipe").write_text(image_id)
    for artefact in fresh.iterdir():
        artefact.chmod(0o444)  # immutable once published: overlays name the base by its path
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    fresh.rename(target)
    shutil.rmtree(work, ignore_errors=True)
    say(f"VM artefacts of {version} in {target} ({time.monotonic() - started:.0f}s)")
    return target


def publish(version: str, resource_group: str, gallery: str, image: str) -> None:
    """Publishes a built version into the running orchestrator's gallery (the `overhaul` CLI does the call), with its
    VM artefacts when they were built."""
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
        *(["--disk-image", str(vm_dir(version))] if (vm_dir(version) / "base.qcow2").exists() else []),
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
    build_cmd.add_argument("--exits", action="store_true", help="a version whose OS stops a second after it starts")
    build_cmd.add_argument("--vm", action="store_true", help="also the VM artefacts (qcow2 base, kernel, initrd)")
    publish_cmd = commands.add_parser("publish", help="publish a built version into the orchestrator's gallery")
    publish_cmd.add_argument("version")
    publish_cmd.add_argument("-g", "--resource-group", required=True)
    publish_cmd.add_argument("-r", "--gallery-name", required=True)
    publish_cmd.add_argument("-i", "--gallery-image-definition", required=True)
    args = parser.parse_args()
    if args.command == "build":
        print(build(args.version, bad=args.bad, silent=args.silent, exits=args.exits))
        if args.vm:
            print(build_vm(args.version, bad=args.bad, silent=args.silent))
    else:
        publish(args.version, args.resource_group, args.gallery_name, args.gallery_image_definition)
    return 0


if __name__ == "__main__":
    sys.exit(main())

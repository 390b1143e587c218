"""The one port picker: a TCP port on 127.0.0.1 that nothing listens on now and that no instance holds (outside the
layers, like aio: the drivers of this host's instances pick host ports with it, the QEMU driver re-forwards with it,
the tests and demos serve on it)."""

from __future__ import annotations

import socket
from collections.abc import Collection

from overhaul.ports.driver import PortsExhausted


def free_port(taken: Collection[int] = ()) -> int:
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            return port
    raise PortsExhausted("no free host port on 127.0.0.1")


def port_in_range(first: int, last: int, taken: Collection[int] = (), address: str | None = None) -> int:
    """The lowest port of ``first``-``last`` that no instance holds; with ``address`` (an address of this machine)
    also one nothing listens on there now. A remote host's ports are not checked here: a publish that meets a port
    taken there is retried with another."""
    for port in range(first, last + 1):
        if port in taken:
            continue
        if address is None or _bindable(address, port):
            return port
    raise PortsExhausted(f"no free host port in {first}-{last}" + (f" on {address}" if address else ""))


def _bindable(address: str, port: int) -> bool:
    """Nothing listens on it. With SO_REUSEADDR, as the engines' listeners bind (Go's default): a port whose last
    connection lingers in TIME_WAIT is one they can publish on."""
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True

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

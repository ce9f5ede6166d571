"""A free loopback port for a server that a *child process* will bind later.

Asking the kernel for port 0 and releasing it is racy when, in the meantime, this process
or another starts servers on port 0 (the sandbox does, for every service): the kernel may
hand out the same ephemeral port again, and the child fails with "Address already in use".
Ports below the kernel's ephemeral range are never handed out for port 0, so a port chosen
there (and checked free) can only be lost to a program that asks for that very number.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["free_port"]

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_DEFAULT_EPHEMERAL_LOW = 32768  # Linux's default; also what most BSDs use as their lower bound
_SPAN = 10000  # how far below the ephemeral range to look


def _ephemeral_low() -> int:
    try:
        return int(_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _DEFAULT_EPHEMERAL_LOW


def _bindable(port: int, host: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1", *, attempts: int = 50) -> int:
    """A port on ``host`` that is free now and outside the ephemeral range, when there is
    room below that range; otherwise (an unusual kernel setting) whatever port 0 gives."""
    high = _ephemeral_low() - 1
    low = max(1024, high - _SPAN)
    if high > low:
        for _ in range(attempts):
            port = random.randint(low, high)
            if _bindable(port, host):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])

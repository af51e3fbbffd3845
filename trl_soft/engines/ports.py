"""TCP ports and addresses for a server trl-soft starts: the address a host name listens on, whether a port is
free, a free port.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket

from ..errors import EngineError
from ..security import is_loopback


def listen_address(host: str) -> str:
    """The address a name stands for, as the listening socket reports it (`localhost` -> 127.0.0.1)."""
    bare = host.strip("[]")
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(bare))
    if is_loopback(bare):
        return "::1" if bare.lower().startswith("ip6-") else "127.0.0.1"
    try:
        return socket.gethostbyname(bare)
    except OSError as err:
        raise EngineError(f"`vllm_server_host`: {host!r} does not resolve to an address ({err}).") from None


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]

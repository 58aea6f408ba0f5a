"""Listening sockets of a process tree (psutil), for the checks that artray binds nothing beyond loopback."""

from __future__ import annotations

import ipaddress

import psutil


def listening(root_pid: int) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every TCP/UDP socket listening in the tree under `root_pid`."""
    root = psutil.Process(root_pid)
    found = []
    for p in [root, *root.children(recursive=True)]:
        try:
            found += [(p.name(), c.laddr.ip, c.laddr.port) for c in p.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def is_loopback(ip: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback (::ffff:127.0.0.1)."""
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    return addr.is_loopback or bool(mapped and mapped.is_loopback)


def wide(sockets: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """The sockets among `sockets` reachable from other machines (0.0.0.0, ::, a routable address)."""
    return [s for s in sockets if not is_loopback(s[1])]

"""Which Host and Origin headers a listener serves: the defences against DNS rebinding and other sites' pages.

A page on evil.example can make a browser connect to ws://127.0.0.1:8765 (the Origin header then
says evil.example, and is refused), or can rebind its own name to 127.0.0.1 so that the browser
sends Host and Origin of evil.example:8765 to the local server. The Host allow-list stops the
second; comparing the Origin with scheme and host stops the first (docs/security.md).
"""

from __future__ import annotations

import ipaddress

__all__ = ["HostPolicy", "host_name", "LOOPBACK_NAMES", "WILDCARD_BINDS"]

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::"})


def host_name(value: str) -> str:
    """The name or address of a Host header value (or an allow-list entry), without port, lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        name = value[1:end] if end > 0 else value
    elif value.count(":") == 1:
        name = value.rsplit(":", 1)[0]
    else:
        name = value
    return name.rstrip(".")


def _is_loopback(name: str) -> bool:
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class HostPolicy:
    """The Host names one listener serves and the browser Origins allowed to open streams on it."""

    def __init__(self, bind: str, tls: bool, allowed_hosts: tuple[str, ...] = (),
                 allowed_origins: tuple[str, ...] = ()) -> None:
        wildcard = host_name(bind) in WILDCARD_BINDS
        # bound to every interface, any Host is served unless --allowed-hosts names them (then loopback too)
        self.any_host = "*" in allowed_hosts or (wildcard and not allowed_hosts)
        names = {host_name(bind)} | {host_name(h) for h in allowed_hosts}
        if wildcard or _is_loopback(host_name(bind)):
            names |= LOOPBACK_NAMES
        self.names = frozenset(names)
        self.scheme = "https" if tls else "http"
        self.any_origin = "*" in allowed_origins
        self.origins = frozenset(o.strip().lower().rstrip("/") for o in allowed_origins)

    def allows_host(self, host: str | None) -> bool:
        """A request's Host header (None: absent) is one of this listener's names."""
        if self.any_host:
            return True
        return host is not None and host_name(host) in self.names

    def allows_origin(self, origin: str | None, host: str) -> bool:
        """No Origin (not a browser), an allowed one, or the server's own page: same scheme and Host."""
        if origin is None or self.any_origin:
            return True
        origin = origin.strip().lower().rstrip("/")
        return origin in self.origins or origin == f"{self.scheme}://{host.strip().lower()}"

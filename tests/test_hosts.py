"""Which Host and Origin headers a listener serves (server/hosts.py), without a server."""

from __future__ import annotations

from captioner.server.hosts import HostPolicy


def test_loopback_bind_serves_its_names_and_the_allowed_ones():
    policy = HostPolicy("127.0.0.1", tls=False, allowed_hosts=("captions.example",))
    assert all(policy.allows_host(h) for h in ("127.0.0.1:8765", "localhost", "[::1]:8765", "captions.example:443"))
    assert not policy.allows_host("evil.example:8765") and not policy.allows_host(None)


def test_wildcard_bind_serves_any_host_until_hosts_are_named():
    assert HostPolicy("0.0.0.0", tls=False).allows_host("anything.example")
    named = HostPolicy("0.0.0.0", tls=False, allowed_hosts=("captions.example",))
    assert named.allows_host("captions.example:8765") and named.allows_host("localhost:8765")
    assert not named.allows_host("evil.example:8765")  # a rebound name is refused
    assert HostPolicy("::", tls=False, allowed_hosts=("*",)).allows_host("evil.example")


def test_origins_are_compared_with_their_scheme():
    policy = HostPolicy("127.0.0.1", tls=True, allowed_origins=("https://app.example",))
    assert policy.allows_origin(None, "127.0.0.1:8765")  # not a browser
    assert policy.allows_origin("https://127.0.0.1:8765", "127.0.0.1:8765")  # the server's own page
    assert not policy.allows_origin("http://127.0.0.1:8765", "127.0.0.1:8765")  # wrong scheme
    assert policy.allows_origin("https://app.example", "127.0.0.1:8765")
    assert not policy.allows_origin("https://evil.example", "127.0.0.1:8765")

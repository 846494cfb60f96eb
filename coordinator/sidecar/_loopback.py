"""The one kind of URL the sidecar calls: plain http to a loopback address with a port, so
that what it sends (loss callbacks, change notifications) stays in the pod."""

from __future__ import annotations

import contextlib
import ipaddress
from urllib.parse import urlsplit


def is_loopback_http(raw: str) -> bool:
    """`raw` is http://HOST:PORT/... with HOST localhost or a loopback address."""
    parts = urlsplit(raw)
    host = parts.hostname or ""
    loopback = host == "localhost"
    with contextlib.suppress(ValueError):
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    try:
        port = parts.port
    except ValueError:
        port = None
    return parts.scheme == "http" and loopback and port is not None

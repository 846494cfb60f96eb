"""Member addresses as the command lines give them: `host:port` and `--initial-cluster`.

Shared by the member process (`coordinator.daemon`) and the CLI's offline recovery tools,
which rewrite a restored member directory from the same `--initial-cluster` text.
"""

from __future__ import annotations


class ConfigError(Exception):
    """A command line or configuration that cannot work; the message says why."""


def split_host_port(text: str, what: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port); ConfigError if malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what} {text!r} must be HOST:PORT (for IPv6, [ADDR]:PORT)")
    return host.strip("[]"), int(port)


def parse_initial_cluster(text: str) -> dict[int, str]:
    """'1=host:port,2=host:port' -> {1: 'host:port', 2: 'host:port'}."""
    out: dict[int, str] = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        ident, sep, address = item.partition("=")
        if not sep or not ident.strip().isdigit() or int(ident) <= 0:
            raise ConfigError(
                f"--initial-cluster item {item!r} must be ID=HOST:PORT with a positive ID"
            )
        split_host_port(address.strip(), f"--initial-cluster address of member {ident}")
        if int(ident) in out:
            raise ConfigError(f"--initial-cluster lists member {int(ident)} twice")
        out[int(ident)] = address.strip()
    if not out:
        raise ConfigError("--initial-cluster is empty")
    return out


def dial_address(url: str) -> str:
    """'scheme://host:port' (the member table's peer_url) or 'host:port' -> 'host:port'."""
    return url.split("://", 1)[1] if "://" in url else url

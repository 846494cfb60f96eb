"""Where a client connects and with what: endpoint strings checked, TLS directories read.

Endpoints are `host:port` (an IPv6 host in brackets: `[::1]:2379`), port 1-65535. They are
checked before anything is dialled, because gRPC takes a port out of range modulo 65536
(99999 is dialled as 34463) and an empty host as localhost: a typo would otherwise reach
some other service, or hang.

A TLS directory is the one `concordctl cluster init` writes (and the one a member's
`--tls-dir` names): `ca.pem` (the cluster CA, the only one trusted) and a client certificate,
`client.pem` + `client-key.pem`, or else a member's own `member.pem` + `member-key.pem`. It
is read once, when the client is made, so a missing file is reported at once with the file
named rather than as a failed handshake later.

Both raise `InvalidArgument` (also a `ValueError`): the mistake is the caller's, and nothing
was sent anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from ._errors import InvalidArgument

ENDPOINTS_ENV = "CONCORD_ENDPOINTS"
TLS_DIR_ENV = "CONCORD_TLS_DIR"
CA_FILE = "ca.pem"
CLIENT_CERT_FILE = "client.pem"
CLIENT_KEY_FILE = "client-key.pem"
MEMBER_CERT_FILE = "member.pem"
MEMBER_KEY_FILE = "member-key.pem"

_WHERE = "`concordctl cluster init` prints each member's client address"


def check_endpoint(endpoint: str) -> str:
    """`endpoint` stripped, if it is a valid host:port; InvalidArgument naming it if not."""
    text = endpoint.strip()
    host, sep, port = text.rpartition(":")
    problem = ""
    if not sep or not host:
        problem = "expected host:port"
    elif "://" in text:
        problem = "give host:port without a scheme"
    elif host.startswith("[") != host.endswith("]") or (":" in host and host[0] != "["):
        problem = "an IPv6 host goes in brackets: [::1]:2379"
    elif any(c.isspace() for c in host):
        problem = "the host contains a space"
    elif not port.isdigit():
        problem = f"the port {port!r} is not a number"
    elif not 1 <= int(port) <= 65535:
        problem = f"the port {port} is out of range (1-65535)"
    if problem:
        raise InvalidArgument(f"bad endpoint {endpoint!r}: {problem} ({_WHERE})")
    return text


def parse_endpoints(endpoints: str | Sequence[str]) -> list[str]:
    """Endpoints from a comma-separated string or a sequence, each checked; at least one."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    checked = [check_endpoint(e) for e in items if e.strip()]
    if not checked:
        raise InvalidArgument(f"give at least one endpoint (host:port; {_WHERE})")
    return checked


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The PEM bytes read from a TLS directory."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    def credentials(self) -> grpc.ChannelCredentials:
        """Trust only the cluster CA; present the certificate (mutual TLS)."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem, private_key=self.key_pem, certificate_chain=self.cert_pem
        )


def read_tls_dir(tls_dir: str | os.PathLike[str]) -> TlsFiles:
    """The CA and client certificate in `tls_dir` (see the module doc); InvalidArgument
    naming what is missing."""
    d = Path(tls_dir)
    if not d.is_dir():
        why = "is not a directory" if d.exists() else "does not exist"
        raise InvalidArgument(
            f"TLS directory {str(d)!r} {why}: give the directory `concordctl cluster init` "
            f"wrote (it holds {CA_FILE}, {CLIENT_CERT_FILE} and {CLIENT_KEY_FILE})"
        )
    pairs = ((CLIENT_CERT_FILE, CLIENT_KEY_FILE), (MEMBER_CERT_FILE, MEMBER_KEY_FILE))
    cert_name, key_name = next(
        (p for p in pairs if (d / p[0]).exists()), (CLIENT_CERT_FILE, CLIENT_KEY_FILE)
    )
    missing = [n for n in (CA_FILE, cert_name, key_name) if not (d / n).is_file()]
    if missing:
        raise InvalidArgument(
            f"TLS directory {str(d)!r} lacks {', '.join(missing)}: it must hold {CA_FILE} and "
            f"{CLIENT_CERT_FILE} + {CLIENT_KEY_FILE} (as `concordctl cluster init` writes "
            f"them) or a member's {MEMBER_CERT_FILE} + {MEMBER_KEY_FILE}"
        )
    try:
        return TlsFiles(
            (d / CA_FILE).read_bytes(), (d / cert_name).read_bytes(), (d / key_name).read_bytes()
        )
    except OSError as err:
        raise InvalidArgument(
            f"cannot read TLS directory {str(d)!r}: {err.strerror}: {err.filename}"
        ) from None


def credentials_from_tls_dir(tls_dir: str | os.PathLike[str]) -> grpc.ChannelCredentials:
    return read_tls_dir(tls_dir).credentials()


def settings_from_env(
    env: Mapping[str, str] | None = None,
) -> tuple[list[str], grpc.ChannelCredentials | None]:
    """Endpoints from CONCORD_ENDPOINTS (required) and credentials from CONCORD_TLS_DIR
    (none: plaintext, for `--insecure` members)."""
    env = os.environ if env is None else env
    raw = env.get(ENDPOINTS_ENV, "")
    if not raw.strip():
        raise InvalidArgument(
            f"{ENDPOINTS_ENV} is not set: give the members' client addresses, comma-separated "
            f"(host:port; {_WHERE})"
        )
    endpoints = parse_endpoints(raw)
    tls_dir = env.get(TLS_DIR_ENV, "")
    return endpoints, credentials_from_tls_dir(tls_dir) if tls_dir else None


# --- workload tokens ---------------------------------------------------------------------------

AUTHORIZATION_KEY = "authorization"


class TokenFile:
    """A pod's projected ServiceAccount token, sent as `authorization: Bearer <token>` on
    every call (a `grpc.AuthMetadataPlugin`).

    The kubelet rotates projected tokens by swapping the file (a symlink flip), so it is read
    again whenever its identity (inode, size, mtime) changes; otherwise the read is cached.
    A token that cannot be read fails the call with the file named. grpc runs the plugin on a
    thread of its own, never on the event loop."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._seen: tuple[int, int, int] | None = None
        self._token = ""

    def token(self) -> str:
        """The current token; OSError or InvalidArgument if it cannot be had."""
        st = self.path.stat()
        seen = (st.st_ino, st.st_size, st.st_mtime_ns)
        if seen != self._seen:
            token = self.path.read_text(encoding="utf-8").strip()
            if not token:
                raise InvalidArgument(f"the token file {str(self.path)!r} is empty")
            self._token, self._seen = token, seen
        return self._token

    def __call__(self, context: object, callback: Callable[..., None]) -> None:
        try:
            token = self.token()
        except (OSError, InvalidArgument) as err:
            callback((), InvalidArgument(f"cannot read the token file {str(self.path)!r}: {err}"))
            return
        callback(((AUTHORIZATION_KEY, f"Bearer {token}"),), None)


def token_credentials(
    tls: grpc.ChannelCredentials, token_file: str | os.PathLike[str]
) -> grpc.ChannelCredentials:
    """`tls` (trusting the cluster CA; no client certificate needed) plus the token of
    `token_file` on every call: how a pod reaches a member's workload port."""
    plugin = TokenFile(token_file)
    if not plugin.path.is_file():
        raise InvalidArgument(
            f"no token file at {str(plugin.path)!r}: mount a projected ServiceAccount token "
            "with audience 'concord' there"
        )
    return grpc.composite_channel_credentials(tls, grpc.metadata_call_credentials(plugin))


def ca_credentials(ca_file: str | os.PathLike[str]) -> grpc.ChannelCredentials:
    """TLS that trusts only the cluster CA in `ca_file` and presents no certificate."""
    try:
        return grpc.ssl_channel_credentials(root_certificates=Path(ca_file).read_bytes())
    except OSError as err:
        raise InvalidArgument(f"cannot read the CA file {str(ca_file)!r}: {err.strerror}") from None

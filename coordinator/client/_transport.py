"""How the client talks to one member: channel options, and what a failed attempt means.

Leaving a member that stopped answering. A SIGSTOPped, hung or black-holed leader keeps its
TCP connection open (the kernel still ACKs), so without help a call waits for its whole
deadline. Two bounds prevent that:

- every attempt against one member has its own deadline (`Client.attempt_timeout_s`, 1 s by
  default, about one election timeout), much shorter than the whole call's `timeout_s`; the
  call then moves to the next member, and a member whose attempt timed out is *suspect* for
  a while: a follower's redirect naming it (it still names the old leader until it elects a
  new one) is not followed, so the client waits for the new leader on the followers instead
  of going back to the stopped one;
- HTTP/2 keepalive pings every `KEEPALIVE_TIME_MS`, answered within `KEEPALIVE_TIMEOUT_MS`
  or the connection is closed, so a long-lived stream (a watch, a blocking lock) and the
  pooled connection notice a dead peer too: a watch on a stopped member resumes on another
  about 2 s later (it would wait forever otherwise). gRPC core times an unanswered ping out
  with `grpc.http2.ping_timeout_ms` (one minute by default), so that is set too. The
  member's server permits these pings (`coordinator.server.server`, `client_server_options`).

The reconnect backoff is capped at 1 s (gRPC's default grows to 2 minutes), so a member
that comes back is used again at once.

A wrong endpoint. gRPC reports a port that is not a Concord client port as a generic
UNAVAILABLE ("Socket closed", or a parse error), and the client used to retry it for its
whole `timeout_s`. `classify` reads the status details: an HTTP/1.x answer (the metrics
port), a gRPC server without the Concord API (the peer port), a TLS handshake against a
plaintext port, a plaintext client closed by a TLS member, connection refused. The first
three are definite, so the client skips such an endpoint and gives up at once when every
endpoint is wrong; "refused" and a handshake that never completes may be a member
restarting, so they are given `connect_timeout_s` (2 s) before the client gives up.
Either way the error says what is wrong and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from ._pipe import LEADER_METADATA_KEY, LOCKED_METADATA_KEY, QUEUED_METADATA_KEY, CallFailed

KEEPALIVE_TIME_MS = 1_000
KEEPALIVE_TIMEOUT_MS = 1_000

WHERE = (
    "`concordctl cluster init` prints each member's client address, and `concordctl member "
    "list` shows them"
)
PASS_TLS = (
    "pass the TLS directory (concordctl --tls-dir DIR, env CONCORD_TLS_DIR, or Client.from_tls_dir)"
)

_SERVER_INTERNAL_PREFIX = "internal error ("
"""How the member's own INTERNAL (a bug in a handler) begins (coordinator.server._rpc):
those are not retried; an INTERNAL from the transport (a reset stream) is."""


def channel_options() -> list[tuple[str, int]]:
    """Client channel options: keepalive pings and a short reconnect backoff (see the
    module doc)."""
    return [
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        # gRPC core times out an unanswered ping with this (default 1 min), not with the
        # keepalive timeout alone: without it a stopped member is noticed after a minute.
        ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1_000),
        # A member pod recreated by its StatefulSet comes back under the same DNS name at a
        # new address. gRPC re-resolves a name when a connection fails, but by default at
        # most every 30 s: a long-lived client then found every member "refused" for 21-24 s
        # after a rolling update (tests/deploy/test_install.py), though a quorum never went.
        ("grpc.dns_min_time_between_resolutions_ms", 1_000),
    ]


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed attempt, unary or pipelined, as the retry logic sees it."""

    code: grpc.StatusCode
    details: str
    leader: str
    """The leader's host:port from a redirect, or ""."""
    locked: bool
    queued: bool
    """A blocked lock or campaign still queued on the member that answered (its deadline was
    near): re-issue it there."""
    wrong: str = ""
    """Set when the endpoint is certainly not a client port this client can use: why, and
    what to do."""
    unreachable: str = ""
    """Set when nothing answers there (refused): why, and what to do."""
    answering: bool = False
    """A pipelined call that timed out or failed on a member that was heard from after the
    call went out: alive, if slow, so not suspect (see `Calls._failure`)."""

    @property
    def retryable(self) -> bool:
        """Worth another attempt (here or elsewhere): no answer, no leader, or a transport
        failure (a reset stream shows as INTERNAL or CANCELLED). Not a refusal."""
        if self.wrong:
            return True  # on another endpoint; the caller gives up when all are wrong
        if self.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return True
        if self.code == grpc.StatusCode.CANCELLED:
            return True
        return self.code == grpc.StatusCode.INTERNAL and not self.details.startswith(
            _SERVER_INTERNAL_PREFIX
        )

    @classmethod
    def of(cls, err: Exception, endpoint: str, *, tls: bool) -> Failure:
        answering = False
        if isinstance(err, CallFailed):
            code, details = err.status, err.details
            leader, locked, queued = _leader_hint(err.leader), err.locked, err.queued
            answering = err.answering
        elif isinstance(err, grpc.aio.AioRpcError):
            code, details = err.code(), err.details() or ""
            leader = _leader_hint(_metadata(err, LEADER_METADATA_KEY))
            locked = bool(_metadata(err, LOCKED_METADATA_KEY))
            queued = bool(_metadata(err, QUEUED_METADATA_KEY))
        else:
            code, details, leader, locked, queued = (
                grpc.StatusCode.UNAVAILABLE,
                f"{type(err).__name__}: {err}",
                "",
                False,
                False,
            )
        wrong, unreachable = classify(endpoint, code, details, tls=tls)
        return cls(code, details, leader, locked, queued, wrong, unreachable, answering)


def classify(endpoint: str, code: grpc.StatusCode, details: str, *, tls: bool) -> tuple[str, str]:
    """(wrong, unreachable): advice when the status details show `endpoint` is not a usable
    client port (see the module doc), else ("", "")."""
    text = details.lower()
    if "http1.x" in text or "failed parsing http/2" in text:
        return (
            f"{endpoint} answered in HTTP/1.x, not gRPC: it is an HTTP port (a member's "
            f"metrics and health port?), not a client port; {WHERE}",
            "",
        )
    if code == grpc.StatusCode.UNIMPLEMENTED and "method not found" in text:
        return (
            f"{endpoint} speaks gRPC but not the Concord client API: is it a member's peer "
            f"port? Give a client port; {WHERE}",
            "",
        )
    if "handshake failed" in text or "ssl_error" in text:
        if "wrong_version_number" in text:
            return (
                f"the TLS handshake with {endpoint} failed: it does not speak TLS (an "
                f"--insecure member: connect without a TLS directory), or it is not a client "
                f"port; {WHERE}",
                "",
            )
        if "certificate_verify_failed" in text or "certificate verify failed" in text:
            return (
                f"{endpoint}'s certificate is not signed by the CA in the TLS directory "
                f"(ca.pem): is it a member of this cluster, and is the directory this "
                f"cluster's?",
                "",
            )
        return (f"the TLS handshake with {endpoint} failed ({details}); {WHERE}", "")
    if "failed to connect" in text and "socket closed" in text and not tls:
        return (
            f"{endpoint} closed the connection during the handshake: the member speaks TLS: "
            f"{PASS_TLS} (or it is not a client port; {WHERE})",
            "",
        )
    if "before receiving settings frame" in text:
        return ("", silent(endpoint))
    if "connection refused" in text:
        return (
            "",
            f"nothing listens on {endpoint} (connection refused): is the member running, "
            f"and is this its client port? {WHERE}",
        )
    return ("", "")


def silent(endpoint: str) -> str:
    """Advice for an endpoint that accepted a connection but never finished a handshake."""
    return (
        f"{endpoint} accepted a connection but never completed a gRPC handshake: is it a "
        f"Concord client port, and is the member running (not stopped)? {WHERE}"
    )


def _metadata(err: grpc.aio.AioRpcError, wanted: str) -> str:
    for key, value in err.trailing_metadata() or ():
        if key == wanted:
            return str(value)
    return ""


def _leader_hint(text: str) -> str:
    """The leader's host:port from a redirect's `concord-leader`, or "" (it may be a bare
    member id when the member directory has no address for the leader: then we just try the
    next one)."""
    if "://" in text:
        text = text.split("://", 1)[1]
    return text.rstrip("/") if ":" in text else ""

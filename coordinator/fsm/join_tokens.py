"""The join tokens a cluster accepts, kept in the replicated state (hashes only).

A join token (`CONCORD-JOIN-1-<CA fingerprint>-<secret>`, see `coordinator.pki.tokens`) lets
a new member join over the network. The cluster never stores the secret: this table keeps,
per token, its short public id, the SHA-256 of its secret, when it was created and when (if)
it was revoked. Like every replicated byte it is only ever on disk encrypted (in the WAL and
in snapshots), every member has the same table, and a leader checks a joiner's token against
it after a linearizable read, so a token revoked (committed) before a join is refused by
whichever member leads.

Revoked tokens stay in the table, so a person presenting one is told it was revoked, and
when, rather than that it is unknown. Nothing here is readable through the KV API, and no
change records a watch event or a revision: the table is not part of the keyspace.

Times (`created_ms`, `revoked_ms`) are wall-clock stamps the proposing member puts in the
command, for people to read; the state machine only stores them (it never reads a clock).
Revoking is level-based: revoking a revoked token changes nothing and keeps the first time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ._wire import Reader, Writer
from .errors import already_exists, exhausted, invalid, not_found

TOKEN_ID_BYTES_MAX = 64
SECRET_DIGEST_BYTES = 32
TOKENS_MAX = 1000
"""Tokens kept at most, revoked ones included (they are never forgotten)."""


@dataclass(frozen=True, slots=True)
class JoinTokenInfo:
    id: str
    """Public, short (the first hex digits of the secret's hash); unique in the table."""
    secret_sha256: bytes
    """SHA-256 of the domain-separated secret, 32 bytes; unique in the table."""
    created_ms: int
    revoked_ms: int = 0
    """0 while the token is valid."""


def _check_id(token_id: str) -> None:
    if not token_id or len(token_id.encode("utf-8")) > TOKEN_ID_BYTES_MAX:
        raise invalid(f"a join token id must be 1 to {TOKEN_ID_BYTES_MAX} bytes")
    if not token_id.isascii() or not token_id.isalnum():
        raise invalid(f"join token id {token_id!r} must be ASCII letters and digits")


class JoinTokenTable:
    def __init__(self) -> None:
        self._tokens: dict[str, JoinTokenInfo] = {}
        """id -> token, in the order they were added (the log's order, so the same on every
        replica). Invariants: ids and digests are unique; len <= TOKENS_MAX."""

    def list(self) -> tuple[JoinTokenInfo, ...]:
        return tuple(self._tokens.values())

    def get(self, token_id: str) -> JoinTokenInfo | None:
        return self._tokens.get(token_id)

    def add(self, token_id: str, secret_sha256: bytes, created_ms: int) -> JoinTokenInfo:
        _check_id(token_id)
        if len(secret_sha256) != SECRET_DIGEST_BYTES:
            raise invalid(
                f"a join token's secret hash is {SECRET_DIGEST_BYTES} bytes, not "
                f"{len(secret_sha256)}"
            )
        if token_id in self._tokens:
            raise already_exists(f"join token {token_id} exists already; issue another one")
        if any(t.secret_sha256 == secret_sha256 for t in self._tokens.values()):
            raise already_exists("a join token with this secret exists already")
        if len(self._tokens) >= TOKENS_MAX:
            raise exhausted(
                f"the cluster keeps at most {TOKENS_MAX} join tokens (revoked ones included) "
                "and has that many"
            )
        token = JoinTokenInfo(token_id, bytes(secret_sha256), created_ms)
        self._tokens[token_id] = token
        return token

    def revoke(self, token_id: str, revoked_ms: int) -> JoinTokenInfo:
        token = self._tokens.get(token_id)
        if token is None:
            raise not_found(
                f"no join token with id {token_id!r}; `concordctl join-token list` shows the ids"
            )
        if not token.revoked_ms:
            token = self._tokens[token_id] = replace(token, revoked_ms=max(1, revoked_ms))
        return token

    def write(self, w: Writer) -> None:
        w.u32(len(self._tokens))
        for t in self._tokens.values():
            w.text(t.id)
            w.blob(t.secret_sha256)
            w.u64(t.created_ms)
            w.u64(t.revoked_ms)

    def read_into(self, r: Reader) -> None:
        tokens: dict[str, JoinTokenInfo] = {}
        digests: set[bytes] = set()
        for _ in range(r.count(TOKENS_MAX)):
            token = JoinTokenInfo(r.text(), r.blob(), r.u64(), r.u64())
            if token.id in tokens or token.secret_sha256 in digests:
                raise r.fail(f"join token {token.id!r} appears twice")
            if len(token.secret_sha256) != SECRET_DIGEST_BYTES:
                raise r.fail(f"join token {token.id!r} has a malformed hash")
            tokens[token.id] = token
            digests.add(token.secret_sha256)
        self._tokens = tokens

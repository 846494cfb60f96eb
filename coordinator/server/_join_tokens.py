"""The Cluster service's join-token calls (create, list, revoke), over the replicated token
table; `_join.py` is where a token is spent."""

from __future__ import annotations

import logging

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.fsm import JoinTokenAdd, JoinTokenInfo, JoinTokenRevoke, RevisionResult
from coordinator.pki import JOIN_TOKEN_PREFIX, JoinToken, JoinTokenError, new_join_token

from ._core import Core
from ._errors import Code, ServiceError, invalid

log = logging.getLogger("concord.join")


def _info(t: JoinTokenInfo) -> pb.JoinTokenInfo:
    return pb.JoinTokenInfo(id=t.id, created_ms=t.created_ms, revoked_ms=t.revoked_ms)


def _token_id(text: str) -> str:
    """A token's id from its id or from the token itself."""
    text = text.strip()
    if text.upper().startswith(JOIN_TOKEN_PREFIX):
        try:
            return JoinToken.parse(text).id
        except JoinTokenError as err:
            raise invalid(str(err)) from None
    if not text.isascii() or not text.isalnum():
        raise invalid(
            f"{text!r} is neither a join token nor a token id (`concordctl join-token list` "
            "shows the ids)"
        )
    return text


async def join_token_create(core: Core, ca_pem: bytes | None) -> pb.JoinTokenCreateResponse:
    if ca_pem is None:
        raise ServiceError(
            Code.FAILED_PRECONDITION,
            f"member {core.id} runs without TLS (--insecure), so it has no cluster CA to name "
            "in a join token; joining over the network needs members with --tls-dir",
        )
    token = new_join_token(ca_pem)
    created_ms = core.view.wall_ms()
    applied = await core.propose(JoinTokenAdd(token.id, token.secret_digest, created_ms))
    core.expect(applied, RevisionResult)
    log.info("join token %s created", token.id)  # never the token itself
    return pb.JoinTokenCreateResponse(
        header=core.header(None, applied.index),
        token=str(token),
        info=pb.JoinTokenInfo(id=token.id, created_ms=created_ms),
    )


async def join_token_list(core: Core) -> pb.JoinTokenListResponse:
    await core.read(False)
    return pb.JoinTokenListResponse(
        header=core.header(), tokens=[_info(t) for t in core.fsm.join_tokens()]
    )


async def join_token_revoke(
    core: Core, request: pb.JoinTokenRevokeRequest
) -> pb.JoinTokenRevokeResponse:
    token_id = _token_id(request.id)
    applied = await core.propose(JoinTokenRevoke(token_id, core.view.wall_ms()))
    core.expect(applied, RevisionResult)
    info = next((t for t in core.fsm.join_tokens() if t.id == token_id), None)
    if info is None:  # revoked, then forgotten by a restore in between: report what we know
        return pb.JoinTokenRevokeResponse(header=core.header(None, applied.index))
    log.info("join token %s revoked", token_id)
    return pb.JoinTokenRevokeResponse(header=core.header(None, applied.index), info=_info(info))

"""Every bad input gets the right status and a message a person can act on.

All cases run against one cluster; each is (what, call, expected code, words the message must
contain). Requests refused by validation never reach the log, so the revision stays put.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from coordinator.api.v1 import concord_pb2 as pb
from tests.server.harness import Client, Cluster, Session, rpc_error, with_cluster

INV = grpc.StatusCode.INVALID_ARGUMENT
NF = grpc.StatusCode.NOT_FOUND
FP = grpc.StatusCode.FAILED_PRECONDITION
AE = grpc.StatusCode.ALREADY_EXISTS

Case = tuple[str, Callable[[], Awaitable[Any]], grpc.StatusCode, str]


def txn(
    *, compares: list[pb.Compare] | None = None, success: list[pb.TxnOp] | None = None
) -> pb.TxnRequest:
    return pb.TxnRequest(compares=compares or [], success=success or [])


def cmp(**kw: Any) -> pb.Compare:
    return pb.Compare(key=kw.pop("key", b"k"), **kw)


async def stream_error(call: Any, first: Any = None) -> None:
    if first is not None:
        await call.write(first)
    await call.read()


def cases(c: Client, lease: int) -> list[Case]:
    kv, ls, lk, el, sq, cl = c.kv, c.lease, c.lock, c.election, c.seq, c.cluster
    big_key = b"k" * 1025
    return [
        # --- sessions
        (
            "seq 0 with a client id",
            lambda: kv.Put(pb.PutRequest(session=pb.Session(client_id=5), key=b"k")),
            INV,
            "session.seq must be >= 1",
        ),
        (
            "seq without a client id",
            lambda: kv.Put(pb.PutRequest(session=pb.Session(seq=3), key=b"k")),
            INV,
            "client_id is 0",
        ),
        # --- KV
        (
            "put empty key",
            lambda: kv.Put(pb.PutRequest(key=b"", value=b"v")),
            INV,
            "key must not be empty",
        ),
        (
            "put oversized key",
            lambda: kv.Put(pb.PutRequest(key=big_key)),
            INV,
            "1025 bytes; the limit is 1024",
        ),
        (
            "put oversized value",
            lambda: kv.Put(pb.PutRequest(key=b"k", value=b"v" * (1024 * 1024 + 1))),
            INV,
            "the limit is 1048576",
        ),
        (
            "put lease out of range",
            lambda: kv.Put(pb.PutRequest(key=b"k", lease=2**63)),
            INV,
            "out of range",
        ),
        (
            "range empty key",
            lambda: kv.Range(pb.RangeRequest(key=b"")),
            INV,
            "key must not be empty",
        ),
        (
            "range end before key",
            lambda: kv.Range(pb.RangeRequest(key=b"b", range_end=b"a")),
            INV,
            "must sort after key",
        ),
        (
            "delete empty key",
            lambda: kv.Delete(pb.DeleteRequest(key=b"")),
            INV,
            "key must not be empty",
        ),
        (
            "delete oversized range_end",
            lambda: kv.Delete(pb.DeleteRequest(key=b"a", range_end=big_key)),
            INV,
            "range_end is 1025 bytes",
        ),
        (
            "txn unknown target",
            lambda: kv.Txn(txn(compares=[cmp(target=99, number=1)])),
            INV,
            "unknown target 99",
        ),
        (
            "txn unknown op",
            lambda: kv.Txn(txn(compares=[cmp(op=42, value=b"x")])),
            INV,
            "unknown op 42",
        ),
        (
            "txn VALUE with a number",
            lambda: kv.Txn(txn(compares=[cmp(target=pb.Compare.VALUE, number=1)])),
            INV,
            "needs the bytes operand `value`",
        ),
        (
            "txn VERSION without operand",
            lambda: kv.Txn(txn(compares=[cmp(target=pb.Compare.VERSION)])),
            INV,
            "needs the integer operand `number`, not no operand",
        ),
        (
            "txn compare empty key",
            lambda: kv.Txn(txn(compares=[cmp(key=b"", value=b"x")])),
            INV,
            "compare 0 key must not be empty",
        ),
        (
            "txn LOCK_TOKEN bad name",
            lambda: kv.Txn(
                txn(compares=[cmp(key=b"\xff", target=pb.Compare.LOCK_TOKEN, number=1)])
            ),
            INV,
            "lock name",
        ),
        (
            "txn empty op",
            lambda: kv.Txn(txn(success=[pb.TxnOp()])),
            INV,
            "txn success op 0 is empty",
        ),
        (
            "txn too many compares",
            lambda: kv.Txn(txn(compares=[cmp(value=b"x")] * 129)),
            INV,
            "129 compares; the limit is 128",
        ),
        (
            "txn too many ops",
            lambda: kv.Txn(txn(success=[pb.TxnOp(range=pb.RangeRequest(key=b"k"))] * 129)),
            INV,
            "129 ops; the limit is 128",
        ),
        (
            "txn range limit too large",
            lambda: kv.Txn(txn(success=[pb.TxnOp(range=pb.RangeRequest(key=b"k", limit=2**32))])),
            INV,
            "limit 4294967296 is too large",
        ),
        (
            "txn puts a key twice",
            lambda: kv.Txn(txn(success=[pb.TxnOp(put=pb.PutRequest(key=b"k"))] * 2)),
            INV,
            "twice",
        ),
        # --- leases
        (
            "grant ttl 0",
            lambda: ls.Grant(pb.LeaseGrantRequest(ttl_ms=0)),
            INV,
            "ttl_ms must be > 0",
        ),
        (
            "grant ttl too short",
            lambda: ls.Grant(pb.LeaseGrantRequest(ttl_ms=500)),
            INV,
            "500 ms is outside 1000..86400000",
        ),
        (
            "grant id out of range",
            lambda: ls.Grant(pb.LeaseGrantRequest(ttl_ms=5000, id=2**63)),
            INV,
            "lease ids are 1..",
        ),
        (
            "grant id in use",
            lambda: ls.Grant(pb.LeaseGrantRequest(ttl_ms=5000, id=lease)),
            AE,
            f"lease {lease} already exists",
        ),
        ("revoke id 0", lambda: ls.Revoke(pb.LeaseRevokeRequest(id=0)), INV, "id is 0"),
        (
            "revoke unknown",
            lambda: ls.Revoke(pb.LeaseRevokeRequest(id=4242)),
            NF,
            "lease 4242 not found: it expired or was revoked",
        ),
        ("ttl id 0", lambda: ls.TimeToLive(pb.LeaseTimeToLiveRequest(id=0)), INV, "id is 0"),
        (
            "keepalive id 0",
            lambda: stream_error(ls.KeepAlive(), pb.LeaseKeepAliveRequest(id=0)),
            INV,
            "id is 0",
        ),
        # --- locks
        (
            "lock empty name",
            lambda: lk.Lock(pb.LockRequest(name="", lease=lease)),
            INV,
            "lock name must not be empty",
        ),
        (
            "lock long name",
            lambda: lk.Lock(pb.LockRequest(name="n" * 300, lease=lease)),
            INV,
            "300 bytes; the limit is 256",
        ),
        (
            "lock without lease",
            lambda: lk.Lock(pb.LockRequest(name="x")),
            INV,
            "lease is 0: this needs a lease; grant one (`concordctl lease grant TTL`)",
        ),
        (
            "lock unknown lease",
            lambda: lk.Lock(pb.LockRequest(name="x", lease=4242, wait=True)),
            NF,
            "lease 4242 not found",
        ),
        (
            "lock too many holders",
            lambda: lk.Lock(pb.LockRequest(name="x", lease=lease, max_holders=10_001)),
            INV,
            "max_holders must be between 1 and 10000",
        ),
        (
            "lock delay too long",
            lambda: lk.Lock(pb.LockRequest(name="x", lease=lease, lock_delay_ms=60_001)),
            INV,
            "lock_delay_ms must be between 0 and 60000",
        ),
        (
            "unlock not held",
            lambda: lk.Unlock(pb.UnlockRequest(name="x", lease=lease)),
            NF,
            "neither held nor awaited",
        ),
        (
            "check fence token 0",
            lambda: lk.CheckFence(pb.CheckFenceRequest(name="x")),
            INV,
            "fencing_token is 0, which no grant ever has: pass the token the lock was granted with",
        ),
        (
            "check fence empty name",
            lambda: lk.CheckFence(pb.CheckFenceRequest(fencing_token=1)),
            INV,
            "lock name must not be empty",
        ),
        (
            "lock info empty name",
            lambda: lk.Info(pb.LockInfoRequest()),
            INV,
            "lock name must not be empty",
        ),
        # --- elections
        (
            "campaign empty name",
            lambda: el.Campaign(pb.CampaignRequest(lease=lease)),
            INV,
            "election name must not be empty",
        ),
        (
            "campaign without lease",
            lambda: el.Campaign(pb.CampaignRequest(election="e")),
            INV,
            "lease is 0",
        ),
        (
            "campaign oversized value",
            lambda: el.Campaign(
                pb.CampaignRequest(election="e", lease=lease, value=b"v" * (1024 * 1024 + 1))
            ),
            INV,
            "the limit is 1048576",
        ),
        (
            "proclaim without leader key",
            lambda: el.Proclaim(pb.ProclaimRequest(value=b"v")),
            INV,
            "leader is unset: pass the leadership that a campaign returned",
        ),
        (
            "proclaim by a non-leader",
            lambda: el.Proclaim(pb.ProclaimRequest(leader=pb.LeaderKey(election="e", lease=lease))),
            FP,
            "only the leader may proclaim",
        ),
        (
            "resign leader lease 0",
            lambda: el.Resign(pb.ResignRequest(leader=pb.LeaderKey(election="e"))),
            INV,
            "leader.lease is 0",
        ),
        (
            "resign not campaigning",
            lambda: el.Resign(pb.ResignRequest(leader=pb.LeaderKey(election="e", lease=lease))),
            NF,
            "neither leads nor campaigns",
        ),
        (
            "leader empty name",
            lambda: el.Leader(pb.LeaderRequest()),
            INV,
            "election name must not be empty",
        ),
        (
            "observe empty name",
            lambda: stream_error(el.Observe(pb.LeaderRequest())),
            INV,
            "election name must not be empty",
        ),
        # --- sequences
        (
            "sequence negative increment",
            lambda: sq.Create(pb.SequenceCreateRequest(name="s", increment=-1)),
            INV,
            "increment must be positive",
        ),
        (
            "sequence empty name",
            lambda: sq.Create(pb.SequenceCreateRequest()),
            INV,
            "sequence name must not be empty",
        ),
        (
            "sequence exists",
            lambda: sq.Create(pb.SequenceCreateRequest(name="taken")),
            AE,
            "sequence 'taken' already exists",
        ),
        (
            "next of unknown",
            lambda: sq.Next(pb.SequenceNextRequest(name="nope")),
            NF,
            "create it first (`concordctl seq create nope [--start N] [--increment N]`)",
        ),
        (
            "next too many",
            lambda: sq.Next(pb.SequenceNextRequest(name="taken", count=100_001)),
            INV,
            "count must be between 1 and 100000",
        ),
        ("get unknown", lambda: sq.Get(pb.SequenceGetRequest(name="nope")), NF, "does not exist"),
        # --- watch
        (
            "watch range without key",
            lambda: stream_error(c.watch.Watch(pb.WatchRequest(range_end=b"z"))),
            INV,
            "key is empty but range_end is set",
        ),
        (
            "watch end before key",
            lambda: stream_error(c.watch.Watch(pb.WatchRequest(key=b"b", range_end=b"a"))),
            INV,
            "must sort after key",
        ),
        # --- cluster
        (
            "promote id 0",
            lambda: cl.MemberPromote(pb.MemberIdRequest()),
            INV,
            "member id must be between 1",
        ),
        (
            "transfer id 0",
            lambda: cl.TransferLeader(pb.MemberIdRequest()),
            INV,
            "member id must be between 1",
        ),
        (
            "add learner id 0",
            lambda: cl.MemberAddLearner(pb.MemberAddLearnerRequest(name="m")),
            INV,
            "member id must be between 1",
        ),
        (
            "add learner no name",
            lambda: cl.MemberAddLearner(pb.MemberAddLearnerRequest(id=9)),
            INV,
            "member name must not be empty",
        ),
        (
            "add learner bad url",
            lambda: cl.MemberAddLearner(
                pb.MemberAddLearnerRequest(
                    id=9, name="m9", peer_url="nope", client_url="http://h:1"
                )
            ),
            INV,
            "must look like scheme://host:port",
        ),
        (
            "add learner that votes",
            lambda: cl.MemberAddLearner(
                pb.MemberAddLearnerRequest(
                    id=1, name="m1", peer_url="http://h:1", client_url="http://h:2"
                )
            ),
            FP,
            "already a voter",
        ),
        (
            "promote a stranger",
            lambda: cl.MemberPromote(pb.MemberIdRequest(id=77)),
            FP,
            "not a learner",
        ),
        (
            "remove a stranger",
            lambda: cl.MemberRemove(pb.MemberIdRequest(id=77)),
            NF,
            "list the members to see their ids",
        ),
    ]


def test_bad_inputs_get_precise_statuses_and_helpful_messages(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        leader = await c.leader()
        client = leader.client
        s = Session(91)
        lease = (await client.lease.Grant(pb.LeaseGrantRequest(session=s.next(), ttl_ms=30_000))).id
        await client.seq.Create(pb.SequenceCreateRequest(session=s.next(), name="taken"))
        revision = leader.loop.fsm.revision
        wrong = []
        for what, call, code, words in cases(client, lease):
            err = await rpc_error(call())
            if err.code() is not code or words not in (err.details() or ""):
                wrong.append(
                    f"{what}: got {err.code().name} {err.details()!r}; want {code.name} ~ {words!r}"
                )
        assert not wrong, "\n".join(wrong)
        # A session seq reused for a different request is the client's bug, and says so.
        await client.kv.Put(pb.PutRequest(session=s.next(), key=b"k", value=b"v"))
        err = await rpc_error(client.kv.Delete(pb.DeleteRequest(session=s.same(), key=b"k")))
        assert err.code() is FP and "already used for a different request" in err.details()
        revision += 1
        assert leader.loop.fsm.revision == revision  # nothing refused changed anything

    with_cluster(tmp_path, scenario)

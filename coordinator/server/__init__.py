"""Concord's client-facing gRPC service, package `concord.v1` (coordinator/api/v1/concord.proto).

One server per member, over that member's `RaftLoop` (`serve` / `start_server` in `server.py`).
Each service is a thin translation: validate the request (INVALID_ARGUMENT before anything is
proposed, `_validate.py`), propose through Raft with the request's session or read the state
machine after a ReadIndex barrier (`_core.py`), map the outcome to a status (`_errors.py`).

Contract for clients (the CLI, the sidecar, the operator):

- Sessions. Mutations carry Session(client_id, seq): one random client_id per client, seq
  1, 2, 3, ... one request at a time; retry a request whose outcome is unknown (UNAVAILABLE,
  DEADLINE_EXCEEDED, a broken connection) with the SAME session, on any member: a duplicate
  is answered from the replicated session table, never executed twice. seq 0 with a
  client_id, or a seq without client_id, is INVALID_ARGUMENT. Session 0/0 = no exactly-once.
- Leader redirects. Mutations go to the leader. A follower answers UNAVAILABLE, with the
  leader's client URL (from the member directory; else its member id in decimal) in the
  trailing metadata key `concord-leader` (`LEADER_METADATA_KEY`) and in the message. It only
  redirects to a leader it heard from recently; otherwise it waits for the election, up to
  the deadline.
- Quorum loss. Once no leader has been known for two election timeouts, writes and
  linearizable reads fail at once with UNAVAILABLE "no quorum: K of N members reachable";
  serializable reads keep working.
- Deadlines. Every request is bounded by min(client deadline, 5 s by default); a write that
  times out has an unknown outcome (retry with the same session). Blocking calls (Lock with
  wait, Campaign) are bounded only by the client's deadline once queued; cancelling them
  withdraws the queued request (see `_acquire.py` for the exact rule).
- Locked members. A member listens before it has opened its data directory; until then only
  the Maintenance service answers (`_maintenance.py`: Unlock, AutolockStatus, SetAutolock,
  RotateUnlockKey, all per member, never redirected), and everything else is UNAVAILABLE
  "member is locked: run concordctl unlock" (trailing metadata `concord-locked`) or "member
  is starting". `start_gateway` / `Gateway.attach` (`server.py`, `_gateway.py`) implement
  the switch; the member process (`coordinator.daemon`, the layer above) calls
  `start_gateway`.
- Streams. Watch and Observe are served by any member from its own replicated history
  (`_watch.py`, `_election.py`); KeepAlive goes to the leader.
- Workload identity (`_workload.py`, `_policy.py`, docs/identity.md). With
  `--workload-identity kubernetes` a member also serves every service on a workload port
  (TLS, no client certificate asked): each call carries a pod's ServiceAccount token as
  `authorization: Bearer <token>` (UNAUTHENTICATED without a valid one, UNAVAILABLE when the
  API server cannot review it) and may touch only `k8s/<its namespace>/` (PERMISSION_DENIED
  naming the identity, the verb and the object). The member process (`coordinator.daemon`)
  starts it with `start_workload_port`.
- Joining (`_join.py`, concord/v1/join.proto). Join tokens are managed through the Cluster
  service (client certificate needed); `Join` is served on a member's join port (no client
  certificate), `Admission` on its peer port (member certificates only). The member process
  builds them with `join_services`.
"""

from ._core import ServiceConfig as ServiceConfig
from ._errors import LEADER_METADATA_KEY as LEADER_METADATA_KEY
from .server import RunningServer as RunningServer
from .server import serve as serve
from .server import start_server as start_server

__all__ = [
    "LEADER_METADATA_KEY",
    "RunningServer",
    "ServiceConfig",
    "serve",
    "start_server",
]

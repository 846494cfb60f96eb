"""The election calls of the `Client` on a lease the caller holds: campaign (waiting in line,
within a deadline), proclaim, resign and who leads. `Client.leadership()` (`_holds.py`)
builds a held leadership on a lease of its own from these."""

from __future__ import annotations

from coordinator.api.v1 import concord_pb2 as pb

from ._calls import Calls
from ._errors import ConcordError
from ._holds import within
from ._types import Leadership


class ElectionCalls(Calls):
    """`campaign`, `proclaim`, `resign`, `leader`."""

    async def campaign(
        self, election: str, lease: int, value: bytes, *, timeout_s: float | None = None
    ) -> Leadership:
        """Block until `lease` leads `election`, publishing `value`; returns the leadership
        (its fencing token strictly increases across all leaderships of the election).

        `timeout_s` as for `acquire`: on timeout (`DeadlineExceeded`) or cancellation the
        campaign is withdrawn (Resign), which also resigns a win that raced with it."""
        # One client id for the campaign and its withdrawal, as in `acquire`.
        with self._sessions(2) as (session, then):
            req = pb.CampaignRequest(session=session, election=election, lease=lease, value=value)
            resign = pb.ResignRequest(
                session=then, leader=pb.LeaderKey(election=election, lease=lease)
            )
            return await within(
                f"the leadership of election {election!r}",
                timeout_s,
                lambda: self._wait_for_leadership(req),
                lambda: self.call(lambda s: s.election.Resign(resign, timeout=self.rpc_timeout_s)),
                self.rpc_timeout_s,
            )

    async def _wait_for_leadership(self, req: pb.CampaignRequest) -> Leadership:
        """Campaign, waiting in line for as long as it takes (the caller bounds it)."""
        while True:
            try:
                resp = await self.call(
                    lambda s: s.election.Campaign(req, timeout=self.rpc_timeout_s),
                    budget_s=self._blocking_budget_s(),
                )
            except ConcordError as err:
                if err.waiting:
                    continue  # still in line; the retry keeps our place (same session)
                raise
            key = resp.leader
            return Leadership(key.election, int(key.lease), int(key.fencing_token), req.value)

    async def proclaim(self, leadership: Leadership, value: bytes) -> Leadership:
        """Publish a new value as the current leader (FAILED_PRECONDITION if no longer)."""
        with self.session() as session:
            req = pb.ProclaimRequest(session=session, leader=_leader_key(leadership), value=value)
            await self.call(lambda s: s.election.Proclaim(req, timeout=self.attempt_timeout_s))
            return Leadership(
                leadership.election, leadership.lease, leadership.fencing_token, value
            )

    async def resign(self, leadership: Leadership) -> None:
        """Give up the leadership (or a queued campaign) of `leadership.lease`."""
        with self.session() as session:
            req = pb.ResignRequest(session=session, leader=_leader_key(leadership))
            await self.call(lambda s: s.election.Resign(req, timeout=self.attempt_timeout_s))

    async def leader(self, election: str, *, serializable: bool = False) -> Leadership | None:
        """The election's current leader, or None if it has none."""
        req = pb.LeaderRequest(election=election, serializable=serializable)
        resp = await self.call(lambda s: s.election.Leader(req, timeout=self.attempt_timeout_s))
        return _leadership(resp)


def _leader_key(leadership: Leadership) -> pb.LeaderKey:
    """The wire form of a leadership, for Proclaim and Resign."""
    return pb.LeaderKey(
        election=leadership.election, lease=leadership.lease, fencing_token=leadership.fencing_token
    )


def _leadership(resp: pb.LeaderResponse) -> Leadership | None:
    if not resp.HasField("leader"):
        return None
    key = resp.leader
    return Leadership(key.election, int(key.lease), int(key.fencing_token), bytes(resp.value))

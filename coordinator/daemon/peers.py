"""Level-based peer sync: the transport's peers follow the configuration.

Every `PEER_SYNC_S`, and at once when an applied entry changes the configuration, the
transport's peer set is made equal to the configuration's members (voters and learners),
addressed by the replicated member table's peer URL or, failing that, `--initial-cluster`
(for a member that joined: the address book it was given).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from coordinator.fsm import Applied
from coordinator.runtime.addresses import dial_address
from coordinator.runtime.loop import RaftLoop
from coordinator.runtime.peer_transport import PeerTransport

from .config import MemberConfig

log = logging.getLogger("concord.member")

PEER_SYNC_S = 1.0


class PeerSync:
    """Keeps one member's transport's peers and voters equal to its loop's configuration."""

    def __init__(self, cfg: MemberConfig, loop: RaftLoop, transport: PeerTransport) -> None:
        self.cfg = cfg
        self._loop = loop
        self._transport = transport
        self._unknown_address_logged: set[int] = set()
        loop.add_observer(_ConfWatch(loop, self.sync))

    def desired(self) -> dict[int, str]:
        """The configuration's members (voters and learners) with an address each: the
        replicated member table's peer URL, else --initial-cluster."""
        addresses = dict(self.cfg.initial_cluster)
        for m in self._loop.fsm.members():
            addresses[m.id] = dial_address(m.peer_url)
        conf = self._loop.status().conf
        ids = conf.voters | conf.learners
        if self.cfg.id not in ids:
            # Not in its own configuration yet (a joined member before its log or snapshot
            # arrives): it must still answer the leader.
            ids |= set(addresses)
        out: dict[int, str] = {}
        for i in sorted(ids - {self.cfg.id}):
            address = addresses.get(i)
            if address is None:
                if i not in self._unknown_address_logged:
                    log.warning("member %d is in the configuration but has no known address", i)
                    self._unknown_address_logged.add(i)
                continue
            out[i] = address
        return out

    def sync(self) -> None:
        self._transport.set_peers(self.desired())
        self._transport.set_voters(self._loop.status().conf.voters)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(PEER_SYNC_S)
            self.sync()


class _ConfWatch:
    """Syncs the transport's peers as soon as an applied entry changes the configuration,
    not only at the next periodic sync: a removed member's connection and the messages
    queued for it go at once, so that a process started again on its id (a wiped member
    removed and readmitted) is never handed what was meant for the old one."""

    def __init__(self, loop: RaftLoop, sync: Callable[[], None]) -> None:
        self._loop = loop
        self._sync = sync
        self._conf = loop.status().conf

    def on_applied(self, batch: Sequence[Applied]) -> None:
        conf = self._loop.status().conf
        if conf != self._conf:
            self._conf = conf
            self._sync()

    def on_restored(self) -> None:
        self.on_applied(())

    def on_leader(self, leader: int) -> None:
        pass

    def on_stop(self) -> None:
        pass

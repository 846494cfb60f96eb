"""Leadership as the member process sees it: logged when it moves, handed over on stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from coordinator.fsm import Applied
from coordinator.raft import RaftError
from coordinator.runtime.loop import RaftLoop

log = logging.getLogger("concord.member")


async def hand_over_leadership(loop: RaftLoop, me: int, limit_s: float) -> None:
    """A stopping leader hands over to its most up-to-date voter, so the cluster does not
    sit out an election timeout. Bounded by `limit_s`: peers may be stopping too."""
    if loop.leader != me:
        return
    st = loop.status()
    candidates = [(p.match, i) for i, p in st.peers.items() if i in st.conf.voters and i != me]
    if not candidates:
        return
    _, target = max(candidates)
    watch = _LeaderWatch(me)
    loop.add_observer(watch)
    try:
        await loop.transfer_leader(target)
        async with asyncio.timeout(limit_s):
            await watch.moved.wait()
        log.info("handed leadership to member %d", target)
    except TimeoutError:
        log.info("leadership hand-over to member %d did not finish in time", target)
    except RaftError as err:
        log.info("leadership hand-over to member %d refused: %s", target, err)
    finally:
        loop.remove_observer(watch)


class _LeaderWatch:
    """A `LoopObserver` that notices leadership leaving member `me`."""

    def __init__(self, me: int) -> None:
        self.me = me
        self.moved = asyncio.Event()

    def on_applied(self, batch: Sequence[Applied]) -> None:
        pass

    def on_restored(self) -> None:
        pass

    def on_leader(self, leader: int) -> None:
        if leader != self.me:
            self.moved.set()

    def on_stop(self) -> None:
        self.moved.set()


class LeaderLog(_LeaderWatch):
    """Logs every change of the leader this member knows, in one line."""

    def __init__(self, me: int, loop: RaftLoop) -> None:
        super().__init__(me)
        self._loop = loop

    def on_leader(self, leader: int) -> None:
        term = self._loop.status().term
        if leader:
            who = "this member" if leader == self.me else f"member {leader}"
            log.info("leader is %s (term %d)", who, term)
        else:
            log.info("no leader known (term %d)", term)

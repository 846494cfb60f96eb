"""The member directory: id -> name and URLs, replicated so every member and client agrees.

Raft membership itself (who votes, who is a learner) changes through CONF entries that the Raft
core applies; those carry only ids. This table is the metadata the humans and the operator
need next to the ids: a name (the StatefulSet pod name), the URL peers dial and the URL
clients dial. The server proposes `MemberUpsert` along with adding a member and `MemberRemove`
along with removing one; `concordctl member list` joins it with the core's status (Leader /
Reachable / Unreachable, match index).

Upsert is level-based: writing what is already there changes nothing (no revision, no event),
so a reconciler may repeat it freely. Names are unique: a second member may not take a name
in use (ALREADY_EXISTS), which catches a pod that came back with a new id before the old id
was removed.

Ids are never reused. The table remembers every id removed from the cluster (`MemberRemove`,
which the server proposes with every removal from the Raft configuration, listed or not) and
refuses to list it again (FAILED_PRECONDITION). A removed member may still be running, cut
off, with a certificate bound to its id: were the id given to a new member, the old one's
acknowledgements would count as the new one's, which has none of those entries. Joins pick
ids above every id in use or removed (`removed_ids`). The one exception is explicit:
`MemberReadmit` takes an id off the list when the member that comes back *is* the removed
one and its earlier process is known to be gone (a StatefulSet ordinal scaled down and up
again, the operator's case); it then rejoins as a learner, from its own data if it kept them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ._wire import Reader, Writer
from .errors import already_exists, failed_precondition, invalid
from .kv import EventKind, History, check_id, check_name

MAX_URL_BYTES = 1024


@dataclass(frozen=True, slots=True)
class Member:
    id: int
    """The Raft node id, 1..2**63-1."""
    name: str
    peer_url: str
    client_url: str


def _check_url(url: str, what: str) -> None:
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme or not rest or any(c.isspace() for c in url):
        raise invalid(f"{what} {url!r} must look like scheme://host:port, without spaces")
    if len(url.encode("utf-8")) > MAX_URL_BYTES:
        raise invalid(f"{what} is longer than {MAX_URL_BYTES} bytes")


class MemberTable:
    def __init__(self, history: History) -> None:
        self._history = history
        self._members: dict[int, Member] = {}
        """id -> member. Invariant: names are unique; no id is also in `_removed`."""
        self._removed: set[int] = set()

    def list(self) -> tuple[Member, ...]:
        return tuple(self._members[i] for i in sorted(self._members))

    def get(self, member_id: int) -> Member | None:
        return self._members.get(member_id)

    def removed_ids(self) -> frozenset[int]:
        return frozenset(self._removed)

    def upsert(self, member: Member) -> int:
        """Record `member`; returns the revision after (unchanged if nothing changed)."""
        check_id(member.id, "member id")
        check_name(member.name, "member")
        _check_url(member.peer_url, "peer_url")
        _check_url(member.client_url, "client_url")
        if member.id in self._removed:
            raise failed_precondition(
                f"member id {member.id} was removed from this cluster and is never reused (a "
                "removed member that still runs could otherwise speak as the new one): add "
                "the member under a new id"
            )
        for other in self._members.values():
            if other.name == member.name and other.id != member.id:
                raise already_exists(
                    f"member name {member.name!r} belongs to member {other.id}; remove member "
                    f"{other.id} first, or choose another name"
                )
        if self._members.get(member.id) == member:
            return self._history.revision
        revision = self._history.record(
            EventKind.MEMBER_UPSERTED, member.name.encode(), number=member.id
        )
        self._members[member.id] = member
        return revision

    def remove(self, member_id: int) -> int:
        """Take `member_id` out of the directory (if listed) and never accept it again;
        returns the revision after (unchanged, and no event, if it was not listed)."""
        check_id(member_id, "member id")
        self._removed.add(member_id)
        member = self._members.pop(member_id, None)
        if member is None:
            return self._history.revision
        return self._history.record(
            EventKind.MEMBER_REMOVED, member.name.encode(), number=member_id
        )

    def readmit(self, member_id: int) -> int:
        """Let a removed id be listed again (`MemberReadmit`); returns the revision, which
        does not change: nothing listed changed yet, the upsert that follows is the event."""
        check_id(member_id, "member id")
        self._removed.discard(member_id)
        return self._history.revision

    def replace(self, members: Sequence[Member], removed: Iterable[int] = ()) -> None:
        """Make `members` the whole directory, outside the log and without an event (disaster
        recovery only: `StateMachine.rewrite_for_recovery`). Ids and names must be unique.
        `removed` are ids the recovered cluster drops: remembered as removed (never reused),
        exactly as `remove` does, unless they are in `members`."""
        dropped = set(removed)
        for member_id in dropped:
            check_id(member_id, "member id")
        table: dict[int, Member] = {}
        for member in members:
            check_id(member.id, "member id")
            if member.id in table:
                raise invalid(f"member {member.id} is listed twice")
            if any(other.name == member.name for other in table.values()):
                raise invalid(f"member name {member.name!r} is listed twice")
            table[member.id] = member
        self._members = table
        self._removed = (self._removed | dropped) - set(table)  # its members are its members

    def write(self, w: Writer) -> None:
        w.u32(len(self._members))
        for member in self.list():
            w.u64(member.id)
            w.text(member.name)
            w.text(member.peer_url)
            w.text(member.client_url)

    def write_removed(self, w: Writer) -> None:
        w.u32(len(self._removed))
        for member_id in sorted(self._removed):
            w.u64(member_id)

    def read_removed_into(self, r: Reader) -> None:
        removed: set[int] = set()
        for _ in range(r.count()):
            member_id = r.u64()
            if member_id in removed or member_id in self._members:
                raise r.fail(f"removed member id {member_id} appears twice or is listed")
            removed.add(member_id)
        self._removed = removed

    def read_into(self, r: Reader) -> None:
        members: dict[int, Member] = {}
        for _ in range(r.count()):
            member = Member(r.u64(), r.text(), r.text(), r.text())
            if member.id in members:
                raise r.fail(f"member {member.id} appears twice")
            members[member.id] = member
        self._members = members

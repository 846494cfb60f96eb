"""Disaster recovery on a stopped member's disk: a backup restored into a new data
directory, and a survivor's data directory forced into a new one-member cluster.

Both build a Raft snapshot whose configuration is replaced, from a state-machine image, and
install it as the start of a WAL. Neither goes through the log: they run offline, before a
member process opens the directory (`concordctl snapshot restore`, `concord-coordinator
--force-new-cluster`). This module sits in the runtime layer because it needs both the
state machine (to read and rewrite the image) and the storage (keys, WAL).

**Restore** (`restore_data_dir`, like `etcdutl snapshot restore`). Every member of the new
cluster is restored from the same backup, each into its own new directory; they must end up
with identical snapshots, or their states diverge. So the result depends only on the image
and the new configuration (`--initial-cluster`), never on which member is being restored:

- snapshot index and term: those of the image (the applied index it was taken at);
- configuration: exactly the `--initial-cluster` ids as voters;
- member directory: one entry per new voter, named as the backup's entry of the same id
  (else `member-<id>`), with its new peer address and no client URL (the backup's would be
  the old cluster's; a redirect then names the member id and the client tries the next
  endpoint, exactly as in a freshly bootstrapped cluster, whose directory is empty);
- join tokens: every one still valid in the backup is revoked (stamped with the image's own
  time), since the backup may predate a revocation; create new ones for the new cluster;
- everything else is kept: keys and their revisions, the watch history, leases (each gets a
  full TTL again from the new cluster's first command), locks and their fencing tokens,
  elections, sequences (so no value is ever issued twice), the session table;
- keys: a new key ring (a new DEK, and with autolock a new unlock key), so the new cluster
  shares no data key with the old one or with each other.

The directory is built beside the target (`.<name>.restoring`) and renamed into place, so a
failed restore leaves no half-written data dir; a non-empty target is refused.

**Force a new cluster** (`force_new_cluster`, like etcd's and Swarm's `--force-new-cluster`).
When a quorum is lost for good, the most up-to-date survivor (`concordctl cluster recover`)
is restarted alone from its own data:

- every entry in its log, up to its *last* index, is kept and applied, including entries
  beyond its commit index. Its commit index can lag the dead leader's: an entry the leader
  committed and acknowledged may be known as committed only to the dead. Dropping the
  uncommitted tail could therefore lose acknowledged writes, while keeping it can only add
  writes whose clients were never told they failed (their outcome was unknown, and a retry
  with the same session is answered from the session table, not executed twice). etcd makes
  the same choice;
- a new snapshot at the last index records the image with the configuration {this member}
  and a member directory holding only this member's own entry (every other id of the old
  configuration and directory is recorded as removed, so it is never given to a joining
  member: a stale process of the old cluster may still run with it); the hard state gets a higher
  term (old term and last entry's term, plus one), no vote, and commit = last index;
- a marker file (`FORCED_NEW_CLUSTER`) records what was done. Forcing again is refused once
  other members have been added after a force: a `--force-new-cluster` left on in a unit
  file would otherwise throw them out at the next restart.

Refused: a new data dir (nothing to recover, and never created by this flag), a log with no
entries, and a member that is not in its own configuration (a wrong --id or a wrong dir).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from coordinator.fsm import FsmError, Member, SnapshotDecodeError, StateMachine
from coordinator.raft import ConfState, EntryKind, HardState, Snapshot, SnapshotMeta
from coordinator.storage import DiskWal, KeyStore, StorageError
from coordinator.storage.crypto import FORMAT_FILE
from coordinator.storage.wal import WAL_DIR

log = logging.getLogger("concord.recovery")

FORCED_MARKER = "FORCED_NEW_CLUSTER"
"""In a data dir that `--force-new-cluster` turned into a new one-member cluster."""
DEFAULT_SCHEME = "https"


class RecoveryError(StorageError):
    """A restore or a forced new cluster that cannot be done as asked; nothing was changed."""


# --- restore -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Restored:
    data_dir: Path
    index: int
    term: int
    voters: tuple[int, ...]
    members: tuple[Member, ...]
    """The rewritten member directory."""
    unlock_key: str | None
    """With autolock: the new data dir's unlock key (shown once, stored nowhere)."""
    join_tokens_revoked: int
    """Join tokens that were valid in the backup and are revoked in the new cluster."""


def restored_directory(old: Sequence[Member], peers: Mapping[int, str]) -> list[Member]:
    """The member directory of a restored cluster (see the module docstring): one entry per
    id of `peers` (id -> host:port), in id order, names unique. A pure function of its
    inputs, so every member restored from one backup computes the same directory."""
    by_id = {m.id: m for m in old}
    used: set[str] = set()
    out: list[Member] = []
    for member_id in sorted(peers):
        previous = by_id.get(member_id)
        name = previous.name if previous is not None else f"member-{member_id}"
        if name in used:
            name = f"member-{member_id}"
        while name in used:
            name += "-restored"
        used.add(name)
        scheme = DEFAULT_SCHEME
        if previous is not None and "://" in previous.peer_url:
            scheme = previous.peer_url.split("://", 1)[0]
        out.append(Member(member_id, name, f"{scheme}://{peers[member_id]}", ""))
    return out


def restore_data_dir(
    image: bytes,
    *,
    index: int,
    term: int,
    data_dir: Path,
    initial_cluster: Mapping[int, str],
    autolock: bool = False,
) -> Restored:
    """Create `data_dir` as a member of a new cluster whose voters are `initial_cluster`,
    starting from the state-machine `image` taken at (`index`, `term`)."""
    if not initial_cluster:
        raise RecoveryError("the new cluster needs at least one member (--initial-cluster)")
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise RecoveryError(
            f"refusing to restore into {data_dir}: it exists and is not an empty directory "
            "(a restore creates a new data dir; choose a new path, or move this one aside)"
        )
    fsm = StateMachine()
    try:
        fsm.restore(image)
    except SnapshotDecodeError as err:
        raise RecoveryError(f"the backup's image does not decode: {err}") from None
    if (fsm.applied_index, fsm.applied_term) != (index, term):
        raise RecoveryError(
            f"the image was taken at index {fsm.applied_index} term {fsm.applied_term}, but "
            f"the backup header says index {index} term {term}"
        )
    try:
        fsm.rewrite_for_recovery(restored_directory(fsm.members(), initial_cluster))
    except FsmError as err:
        raise RecoveryError(f"cannot rewrite the member directory: {err}") from None
    revoked = fsm.revoke_join_tokens_for_recovery()
    snapshot = Snapshot(
        SnapshotMeta(index, term, ConfState(frozenset(initial_cluster))), fsm.snapshot_later()()
    )
    parent = data_dir.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f".{data_dir.name}.restoring"
    if staging.exists():
        shutil.rmtree(staging)  # a restore into the same target that was interrupted
    try:
        keys = KeyStore.create(staging, autolock=autolock)
        with DiskWal.create(keys) as wal:
            wal.save_snapshot(snapshot)
            wal.save([], HardState(term, 0, index))
        if data_dir.exists():
            data_dir.rmdir()  # empty, checked above
        os.rename(staging, data_dir)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Restored(
        data_dir=data_dir,
        index=index,
        term=term,
        voters=tuple(sorted(initial_cluster)),
        members=fsm.members(),
        unlock_key=keys.unlock_key,
        join_tokens_revoked=revoked,
    )


# --- force a new cluster -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Forced:
    old_conf: ConfState
    new_conf: ConfState
    index: int
    """The new snapshot's index: the old last index."""
    term: int
    """The term of the entry at `index`."""
    old_commit: int
    uncommitted_kept: int
    """Entries beyond the old commit index that were kept (and are now committed)."""
    old_term: int
    new_term: int


def check_force_target(data_dir: Path) -> None:
    """Refuse `--force-new-cluster` on a data dir that is new (or not a data dir at all),
    before anything is created."""
    if not (data_dir / FORMAT_FILE).is_file() or not (data_dir / WAL_DIR).is_dir():
        raise RecoveryError(
            f"--force-new-cluster restarts a surviving member from its own data, but {data_dir} "
            "is not an initialised data dir with a WAL (new, empty, or the wrong path). Nothing "
            "was created. Give this member's existing --data-dir, or drop the flag"
        )


def force_new_cluster(wal: DiskWal, member_id: int) -> Forced:
    """Turn the open WAL of a stopped member into a new one-member cluster of `member_id`
    (see the module docstring); logs what it did, loudly."""
    data_dir = wal.data_dir
    last = wal.last_index()
    if last == 0:
        raise RecoveryError(f"{data_dir} holds no log entries: there is nothing to recover from it")
    snap = wal.snapshot()
    hs = wal.hard_state
    entries = wal.entries(snap.meta.index + 1, last + 1) if last > snap.meta.index else []
    old_conf = snap.meta.conf
    for e in entries:
        if e.kind is EntryKind.CONF:
            old_conf = ConfState.decode(e.data)
    if member_id not in old_conf.voters | old_conf.learners:
        raise RecoveryError(
            f"member {member_id} is not in the configuration of {data_dir} (voters "
            f"{_ids(old_conf.voters)}, learners {_ids(old_conf.learners)}): wrong --id, or "
            "another member's data dir? Nothing was changed"
        )
    new_conf = ConfState(frozenset({member_id}))
    marker = data_dir / FORCED_MARKER
    if marker.exists() and old_conf != new_conf:
        raise RecoveryError(
            f"{data_dir} was already forced into a new cluster ({marker}: "
            f"{marker.read_text(errors='replace').strip()}), and members were added since "
            f"(voters now {_ids(old_conf.voters)}). If --force-new-cluster was left on by "
            f"mistake, remove it. To force again after a new disaster, delete {marker} first"
        )
    fsm = StateMachine()
    if snap.data:
        try:
            fsm.restore(snap.data)
        except SnapshotDecodeError as err:
            raise RecoveryError(f"the snapshot in {data_dir} does not decode: {err}") from None
    for e in entries:
        fsm.apply(e)
    own = [m for m in fsm.members() if m.id == member_id]
    # Every other id of the old cluster is removed, as MemberRemove would: its process may
    # still run somewhere with a certificate bound to that id, and a joining member given
    # the id would be taken for it (its acknowledgements counted as the new one's).
    dropped = (old_conf.voters | old_conf.learners | {m.id for m in fsm.members()}) - {member_id}
    fsm.rewrite_for_recovery(own, removed=dropped)
    term = wal.term(last)
    new_term = max(hs.term, term) + 1
    forced = Forced(
        old_conf=old_conf,
        new_conf=new_conf,
        index=last,
        term=term,
        old_commit=hs.commit,
        uncommitted_kept=max(0, last - hs.commit),
        old_term=hs.term,
        new_term=new_term,
    )
    _announce(forced, member_id, data_dir)
    wal.save_snapshot(Snapshot(SnapshotMeta(last, term, new_conf), fsm.snapshot_later()()))
    wal.save([], HardState(new_term, 0, last))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    _write_marker(
        marker,
        f"forced at {stamp}: member {member_id}, index {last}, term {term} -> {new_term}, "
        f"voters {_ids(old_conf.voters)} -> {member_id}\n",
    )
    log.warning(
        "FORCE-NEW-CLUSTER done: member %d is now the only voter (snapshot at index %d, term "
        "%d); add members back one at a time (member add, then promote)",
        member_id,
        last,
        new_term,
    )
    return forced


def _announce(f: Forced, member_id: int, data_dir: Path) -> None:
    log.warning("FORCE-NEW-CLUSTER: rewriting %s into a new one-member cluster", data_dir)
    log.warning(
        "FORCE-NEW-CLUSTER: old configuration: voters %s, learners %s",
        _ids(f.old_conf.voters),
        _ids(f.old_conf.learners),
    )
    log.warning("FORCE-NEW-CLUSTER: new configuration: voters %d (this member only)", member_id)
    log.warning(
        "FORCE-NEW-CLUSTER: keeping the whole log: last index %d (term %d), old commit %d; "
        "%d entr%s beyond the old commit kept and committed (their clients were told nothing "
        "or 'outcome unknown'; dropping them could lose writes the dead leader acknowledged)",
        f.index,
        f.term,
        f.old_commit,
        f.uncommitted_kept,
        "y" if f.uncommitted_kept == 1 else "ies",
    )
    log.warning(
        "FORCE-NEW-CLUSTER: term %d -> %d; the other members' old data dirs must not be started "
        "again as they are: wipe them and add the members back",
        f.old_term,
        f.new_term,
    )


def _ids(ids: frozenset[int]) -> str:
    return "{" + ", ".join(map(str, sorted(ids))) + "}"


def _write_marker(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(text.encode())
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

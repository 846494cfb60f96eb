"""A member's data directory: opened, or created and bootstrapped, or waited for.

`DataDir.open` turns `--data-dir` into an open, encrypted WAL (`coordinator.storage`):

- an existing directory is opened (after a torn tail is cut, logged), and with
  `--force-new-cluster` turned into a one-member cluster of this member (`runtime/recovery.py`);
- a new one is bootstrapped with an index-0 snapshot whose configuration is the voters of
  `--initial-cluster`, or, for a member that joined, started empty at the configuration the
  leader's log starts from; with `--join-if-new` or `--no-bootstrap` it starts empty and waits
  to be added as a learner, after asking the first members whether it ran before
  (`membership.first_start_verdict`);
- an autolocked one waits, *locked*, for its unlock key: from `--unlock-key-file` (polled) or
  `unlock` (the client API's Maintenance.Unlock), whichever comes first.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from typing import Any

from coordinator.fsm import Member as DirectoryEntry
from coordinator.pki import MemberTls
from coordinator.raft import ConfState, Snapshot, SnapshotMeta
from coordinator.runtime.addresses import ConfigError
from coordinator.runtime.recovery import check_force_target, force_new_cluster
from coordinator.runtime.tls import member_channel_credentials
from coordinator.storage import (
    DiskWal,
    InvalidUnlockKeyError,
    KeyStore,
    LockedError,
    NotInitializedError,
    StorageError,
    WrongUnlockKeyError,
    read_cluster_id,
    write_cluster_id,
)

from .config import MemberConfig
from .join import JoinError, JoinRecord, read_join_record
from .membership import LOST, UNSURE, WAIT, first_start_verdict

log = logging.getLogger("concord.member")

UNLOCK_POLL_S = 1.0


class DataDir:
    """Opens one member's data directory (see the module docstring). `on_locked(True)` when
    it starts waiting for the unlock key, `on_locked(False)` when a key opened the ring."""

    def __init__(
        self,
        cfg: MemberConfig,
        tls: MemberTls | None,
        stop: asyncio.Event,
        on_locked: Callable[[bool], None],
    ) -> None:
        self.cfg = cfg
        self.tls = tls
        self._stop_event = stop
        self._on_locked = on_locked
        self.locked = False
        self.keys: KeyStore | None = None
        """The open key ring, once `open` has opened it."""
        self._offered: asyncio.Future[KeyStore] | None = None
        """While locked: resolved by `unlock` with the key ring a right key opened."""

    def unlock(self, unlock_key: str) -> bool:
        """Open the key ring with `unlock_key` and let `open` go on. False if it is not
        waiting for a key; WrongUnlockKeyError or InvalidUnlockKeyError (it stays locked) if
        the key does not open the ring."""
        offered = self._offered
        if not self.locked or offered is None or offered.done():
            return False
        keys = KeyStore.open(self.cfg.data_dir, unlock_key)
        offered.set_result(keys)
        return True

    def _set_locked(self, locked: bool) -> None:
        self.locked = locked
        self._on_locked(locked)

    async def open(self) -> DiskWal | None:
        """Open (or create and bootstrap) the data dir; None if stopped while locked."""
        cfg = self.cfg
        if cfg.force_new_cluster:
            check_force_target(cfg.data_dir)  # before anything could create the dir
        keys = await self._open_keys()
        if keys is None:
            return None
        self.keys = keys
        try:
            wal = DiskWal.open(keys)
        except NotInitializedError:
            voters = frozenset(cfg.initial_cluster)
            try:
                joined = read_join_record(cfg.data_dir)
            except JoinError as err:
                raise ConfigError(str(err)) from None
            if joined is not None:
                wal = _create_joined_wal(keys, joined)
                self._record_cluster_id()
                return wal
            if cfg.join_if_new and self.tls is not None:
                verdict = await self._first_start_verdict(self.tls, cfg.id in voters)
                if verdict == WAIT or cfg.no_bootstrap:
                    return self._create_waiting_wal(keys)
            if cfg.no_bootstrap or (cfg.id not in voters and cfg.join_if_new):
                return self._create_waiting_wal(keys)
            if cfg.id not in voters:
                raise ConfigError(
                    f"{cfg.data_dir} is new and --initial-cluster does not list this member "
                    f"(--id {cfg.id}); a new member must be one of the initial voters, or "
                    "join a running cluster with --join HOST:PORT --join-token TOKEN"
                ) from None
            wal = DiskWal.create(keys)
            wal.save_snapshot(Snapshot(SnapshotMeta(0, 0, ConfState(voters))))
            log.info(
                "bootstrapped a new WAL in %s with voters %s",
                cfg.data_dir,
                ", ".join(str(v) for v in sorted(voters)),
            )
        self._record_cluster_id()
        if wal.recovery is not None:
            r = wal.recovery
            log.warning(
                "recovery cut a torn write at the end of %s (%d bytes at offset %d: %s)",
                r.path,
                r.cut_bytes,
                r.offset,
                r.reason,
            )
        hs = wal.hard_state
        log.info(
            "opened the WAL in %s: term %d, commit %d, last index %d, snapshot at %d",
            cfg.data_dir,
            hs.term,
            hs.commit,
            wal.last_index(),
            wal.snapshot().meta.index,
        )
        if cfg.force_new_cluster:
            try:
                force_new_cluster(wal, cfg.id)
            except BaseException:
                wal.close()
                raise
        return wal

    async def _first_start_verdict(self, tls: MemberTls, first_member: bool) -> str:
        """--join-if-new, a new data dir: ask the first members whether a running cluster
        knew this member (`membership.first_start_verdict`). BOOTSTRAP or WAIT; ConfigError (the
        member does not start) when it ran before and lost its data, or, for a first member,
        when that cannot be told."""
        cfg = self.cfg
        me = DirectoryEntry(
            cfg.id, cfg.name, cfg.advertise_peer_url, cfg.advertise_client_url or ""
        )
        peers = {i: a for i, a in cfg.initial_cluster.items() if i != cfg.id}
        verdict, why = await first_start_verdict(
            me, peers, member_channel_credentials(tls), first_member=first_member
        )
        which = "first member" if first_member else "member"
        log.info("new data dir of %s %d: %s (%s)", which, cfg.id, verdict, why)
        if verdict == LOST:
            raise ConfigError(
                f"{cfg.data_dir} is empty, but {why}: its data were lost (a deleted claim?). "
                "Starting it empty as a voter could lose committed writes, so it does not "
                f"start. Remove it from the cluster (`concordctl member remove {cfg.id}`; "
                "transfer leadership first if it leads): it then starts empty and is added "
                "back as a learner (by the operator, or `concordctl member add --readmit`)"
            )
        if verdict == UNSURE:
            raise ConfigError(
                f"{cfg.data_dir} is empty and {why}: cannot tell whether this member ran "
                "before, so it does not bootstrap; it asks again at its next start"
            )
        return verdict

    def _create_waiting_wal(self, keys: KeyStore) -> DiskWal:
        """--join-if-new: an empty WAL with no configuration of its own. The member answers
        the leader once it has been added as a learner; the leader's log (or a snapshot)
        then tells it the configuration, so it can never vote in or form a cluster alone."""
        cfg = self.cfg
        wal = DiskWal.create(keys)
        self._record_cluster_id()
        why = "--no-bootstrap" if cfg.no_bootstrap else "--initial-cluster does not list it"
        log.info(
            "%s is new (member %d, %s): started empty, waiting to be added as a learner "
            "(`concordctl member add %d`, or the operator when the StatefulSet scales up)",
            cfg.data_dir,
            cfg.id,
            why,
            cfg.id,
        )
        return wal

    def _record_cluster_id(self) -> None:
        """Record the cluster id in a data dir that has none yet (new, or written before ids
        were recorded), so that a start with another --cluster-id is refused from now on."""
        cfg = self.cfg
        if read_cluster_id(cfg.data_dir) is None:
            try:
                write_cluster_id(cfg.data_dir, cfg.cluster_id)
            except OSError as err:
                raise StorageError(
                    f"cannot record the cluster id in {cfg.data_dir}: {err.strerror or err}"
                ) from None
            log.info("recorded cluster id %r in %s", cfg.cluster_id, cfg.data_dir)

    async def _open_keys(self) -> KeyStore | None:
        """The key store; while it is locked, retry every UNLOCK_POLL_S with whatever
        --unlock-key-file holds by then. None if asked to stop meanwhile."""
        cfg = self.cfg
        announced = False
        refused: bytes | None = None
        while True:
            key = self._read_unlock_key()
            try:
                keys = KeyStore.open(cfg.data_dir, key)
            except NotInitializedError:
                log.info("%s is not initialised: creating a new data directory", cfg.data_dir)
                if cfg.unlock_key_file is not None:
                    log.warning(
                        "--unlock-key-file is ignored for a new data dir: autolock is turned "
                        "on later (`concordctl cluster autolock on`), which prints the key"
                    )
                return KeyStore.create(cfg.data_dir, autolock=False)
            except LockedError:
                if not announced:
                    where = cfg.unlock_key_file or "(no --unlock-key-file given)"
                    log.warning(
                        "LOCKED: %s is autolocked and there is no unlock key in %s; serving "
                        "/healthz and unlocking only, until the key is provided there or "
                        "through `concordctl unlock`",
                        cfg.data_dir,
                        where,
                    )
                    announced = True
            except (WrongUnlockKeyError, InvalidUnlockKeyError) as err:
                digest = hashlib.sha256((key or "").encode()).digest()
                if digest != refused:
                    log.error(
                        "LOCKED: the unlock key in %s is refused: %s", cfg.unlock_key_file, err
                    )
                    refused = digest
            else:
                if self.locked:
                    log.info("unlocked with the key from %s", cfg.unlock_key_file)
                    self._set_locked(False)
                return keys
            self._set_locked(True)
            if self._offered is None:
                self._offered = asyncio.get_running_loop().create_future()
            offered = self._offered
            stop = asyncio.ensure_future(self._stop_event.wait())
            waits: list[asyncio.Future[Any]] = [stop, offered]
            try:
                await asyncio.wait(
                    waits, timeout=UNLOCK_POLL_S, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                stop.cancel()
            if self._stop_event.is_set():
                return None
            if offered.done():
                log.info("unlocked with a key given through the client API")
                self._set_locked(False)
                return offered.result()

    def _read_unlock_key(self) -> str | None:
        path = self.cfg.unlock_key_file
        if path is None:
            return None
        try:
            text = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except OSError as err:
            log.error("cannot read the unlock key file %s: %s", path, err.strerror)
            return None
        return text or None


def _create_joined_wal(keys: KeyStore, record: JoinRecord) -> DiskWal:
    """The WAL of a member that joined over the network: empty, starting from the
    configuration the leader's log starts from (if known: else the leader sends a
    snapshot). Never a configuration of its own: the cluster's log decides it."""
    wal = DiskWal.create(keys)
    if record.log_start is not None:
        wal.save_snapshot(Snapshot(SnapshotMeta(0, 0, record.log_start)))
    log.info(
        "created an empty WAL in %s for member %d, which joined cluster %r: it receives the "
        "log from the leader",
        keys.data_dir,
        record.member_id,
        record.cluster_id,
    )
    return wal

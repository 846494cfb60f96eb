"""Secrets as files, Docker Swarm's way: the SealedSecrets a pod asks for are delivered under
`--secrets-dir` (an in-memory volume, /run/secrets by default) as `DIR/NAME/KEY`, straight
from the coordinator (no Kubernetes Secret involved), swapped atomically as a set whenever the
SealedSecret changes, with the pod's choice of notification.

Source. The operator keeps each SealedSecret's ciphertext (never plaintext) in the coordinator
as a record under `k8s/<namespace>/sealedsecrets/<name>` (coordinator.sealing.SealedRecord).
Here one watch covers the namespace's records: a consistent read of them all (a Txn of one
range read, which gives the revision it read at) and then the watch from the next revision,
so no change between the two is missed. A broken watch is resumed by the client library; if
it gives up, or a call fails for a reason that may pass (no quorum, an identity not allowed
to unseal yet), everything is read again after a backoff (1 s doubling to 10 s).

Delivery. For each requested name whose record's revision is not the one delivered, every
value is unsealed through `Client.unseal(ciphertext, namespace, name)` (the coordinator checks
the scope bound into each value against namespace/name) and the set is written by
`AtomicDir` (see `_atomic.py`: a new payload directory, then one rename of `..data`). A value
that does not unseal (ScopeMismatch, Tampered, UnknownKey), a malformed record or a key that
cannot be a file name leaves the files as they were (a bad edit never takes working secrets
away), logged with the name, key and reason, and counted; the next change of the record is
tried again. A record that is deleted leaves its files too, as kubelet leaves a deleted
Secret's files in a running pod: an app loses nothing under its feet.

Notification. After a swap that changed something, each `--secrets-notify` is told once
(`_notify.py`) with what changed (names, revisions, key names). The first delivery of a name
is not notified: the app reads the files when it starts, and the startup probe keeps it from
starting before they are there.

Startup. `startup_problem()` names the secrets not delivered yet; /startupz answers 503 until
there are none (and the session is up). Readiness is unchanged.

Secrecy. Nothing here logs or exports a value: only names, key names, revisions and reasons.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from coordinator.client import (
    Client,
    ConcordError,
    EventType,
    Get,
    KeyValue,
    SealFailed,
    prefix_end,
)
from coordinator.sealing import SealedRecord, sealed_record_name, sealed_record_prefix

from ._atomic import AtomicDir, valid_key
from ._namespace import pod_namespace
from ._notify import Change, Notifier, NotifyError, parse_notify

log = logging.getLogger("concord.sidecar.secrets")

DEFAULT_DIR = "/run/secrets"
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
"""A Kubernetes object name (DNS subdomain): also a safe directory name."""
RETRY_S = 1.0
REFUSALS = frozenset({"INVALID_ARGUMENT", "FAILED_PRECONDITION", "NOT_FOUND", "OUT_OF_RANGE"})
"""Unseal answers about the value itself; anything else (no quorum, an identity not allowed
to unseal yet) may pass, and everything is read again after a backoff."""
RETRY_MAX_S = 10.0


@dataclass(frozen=True, slots=True)
class SecretFilesConfig:
    namespace: str
    names: tuple[str, ...]
    directory: Path
    notifiers: tuple[Notifier, ...] = ()
    file_mode: int = 0o400


def add_flags(p: argparse.ArgumentParser) -> None:
    """The secrets-as-files flags (each with an environment variable, so an admission
    webhook can set them on the sidecar container)."""
    g = p.add_argument_group("secrets as files")
    g.add_argument(
        "--secrets",
        help="SealedSecrets of the pod's namespace to deliver as files, NAME[,NAME...] "
        "(default: $CONCORD_SECRETS; none: no files)",
    )
    g.add_argument(
        "--secrets-dir",
        help=f"where: DIR/NAME/KEY (default: $CONCORD_SECRETS_DIR or {DEFAULT_DIR})",
    )
    g.add_argument(
        "--secrets-notify",
        action="append",
        help="after a change: none | signal:PIDFILE_OR_NAME:SIG | http:URL (repeatable; "
        "default: $CONCORD_SECRETS_NOTIFY or none)",
    )
    g.add_argument(
        "--secrets-mode",
        choices=["0400", "0440"],
        default=None,
        help="file mode (default: $CONCORD_SECRETS_MODE or 0400; 0440 for an app that shares "
        "only the group, e.g. through fsGroup)",
    )


def config_from(
    args: argparse.Namespace, env: dict[str, str] | None = None
) -> SecretFilesConfig | None:
    """The configuration the flags and environment ask for; None when no secret is asked
    for. ValueError with a message a person can act on."""
    env = dict(os.environ) if env is None else env
    raw = args.secrets if args.secrets is not None else env.get("CONCORD_SECRETS", "")
    names = tuple(dict.fromkeys(n.strip() for n in raw.split(",") if n.strip()))
    if not names:
        return None
    for name in names:
        if not NAME_RE.match(name):
            raise ValueError(f"--secrets: {name!r} is not a SealedSecret name")
    # The identity's namespace (`_namespace.py`): the records of any other are not this
    # pod's to read, and the coordinator would refuse them to its token anyway.
    try:
        namespace = pod_namespace(args.namespace, args.token_file, env)
    except OSError as err:
        raise ValueError(f"cannot read --token-file {args.token_file}: {err}") from None
    if not namespace:
        raise ValueError(
            "--secrets needs the pod's namespace: pass --namespace, or set POD_NAMESPACE "
            "from the downward API (fieldRef metadata.namespace)"
        )
    specs = args.secrets_notify or [env.get("CONCORD_SECRETS_NOTIFY", "none")]
    notifiers = tuple(n for n in (parse_notify(s) for s in specs) if n is not None)
    mode = args.secrets_mode or env.get("CONCORD_SECRETS_MODE", "0400")
    if mode not in {"0400", "0440"}:
        raise ValueError(f"--secrets-mode must be 0400 or 0440, got {mode!r}")
    directory = Path(args.secrets_dir or env.get("CONCORD_SECRETS_DIR") or DEFAULT_DIR)
    return SecretFilesConfig(namespace, names, directory, notifiers, int(mode, 8))


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.deliveries = Counter(
            "concord_sidecar_secret_deliveries",
            "Secret sets written (a swap of ..data), by SealedSecret name",
            ["name"],
            registry=registry,
        )
        self.failures = Counter(
            "concord_sidecar_secret_failures",
            "Secret updates not delivered (the files kept), by name and reason",
            ["name", "reason"],
            registry=registry,
        )
        self.revision = Gauge(
            "concord_sidecar_secret_revision",
            "Coordinator revision of the record delivered, by name",
            ["name"],
            registry=registry,
        )
        self.notifications = Counter(
            "concord_sidecar_secret_notifications",
            "Notifications after a swap, by method and result (ok, failed)",
            ["method", "result"],
            registry=registry,
        )


class _Transient(Exception):
    """A failure that may pass (no quorum, identity not allowed yet): read all again later."""


@dataclass
class _State:
    revision: int = 0
    """The record revision delivered (0: none yet)."""
    failed_revision: int = 0
    """A record revision that did not deliver: not tried again until the record changes."""
    announced_missing: bool = False
    """"Waiting for" was logged (once, not at every resync)."""
    gone: bool = False
    """The record was deleted after a delivery (logged once)."""
    keys: tuple[str, ...] = ()


@dataclass
class SecretFiles:
    """Delivers `config.names` (see the module doc); `run()` until cancelled."""

    client: Client
    config: SecretFilesConfig
    registry: CollectorRegistry
    retry_s: float = RETRY_S
    retry_max_s: float = RETRY_MAX_S
    states: dict[str, _State] = field(init=False)
    metrics: _Metrics = field(init=False)

    def __post_init__(self) -> None:
        self.states = {name: _State() for name in self.config.names}
        self.metrics = _Metrics(self.registry)

    def waiting_for(self) -> list[str]:
        """The requested secrets not delivered yet."""
        return [name for name, s in self.states.items() if not s.revision]

    def startup_problem(self) -> str | None:
        """None once every requested secret has been delivered at least once."""
        waiting = self.waiting_for()
        if not waiting:
            return None
        return f"secrets not delivered yet: {', '.join(waiting)}"

    async def close(self) -> None:
        for notifier in self.config.notifiers:
            await notifier.close()

    async def run(self) -> None:
        ns = self.config.namespace
        prefix = sealed_record_prefix(ns)
        delay_s = self.retry_s
        while True:
            try:
                self.config.directory.mkdir(parents=True, exist_ok=True)
                revision = await self._resync(prefix)
                delay_s = self.retry_s
                events = self.client.watch(prefix, prefix_end(prefix), start_revision=revision + 1)
                async with contextlib.aclosing(events):  # the stream ends with this task
                    async for event in events:
                        if event.type not in {EventType.PUT, EventType.DELETE}:
                            continue  # e.g. a lock named under the prefix
                        name = sealed_record_name(ns, event.kv.key)
                        if name not in self.states:
                            continue
                        kv = event.kv if event.type is EventType.PUT else None
                        await self._notify(await self._apply(name, kv))
            except (ConcordError, _Transient, OSError) as err:
                log.warning("secrets of %s: %s; reading them again in %.0f s", ns, err, delay_s)
            except Exception:
                # A bug must not end delivery for the pod's life in silence: say so, go on.
                log.exception("secrets of %s: unexpected failure; starting again", ns)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, self.retry_max_s)

    async def _resync(self, prefix: bytes) -> int:
        """Every requested record as of one revision, applied; returns that revision."""
        result = await self.client.txn([], [Get(prefix, prefix_end(prefix))], [])
        found: dict[str, KeyValue] = {}
        for kv in result.results[0].kvs if result.results else ():
            name = sealed_record_name(self.config.namespace, kv.key)
            if name is not None:
                found[name] = kv
        changed: list[Change] = []
        for name in self.states:
            changed += await self._apply(name, found.get(name))
        await self._notify(changed)
        return result.revision

    async def _apply(self, name: str, kv: KeyValue | None) -> list[Change]:
        """Deliver `name`'s record `kv` (None: there is none); the changes to notify."""
        state = self.states[name]
        where = f"{self.config.namespace}/{name}"
        if kv is None:
            if not state.revision and not state.announced_missing:
                log.info("waiting for SealedSecret %s (no record in the coordinator yet)", where)
                state.announced_missing = True
            elif state.revision and not state.gone:
                log.warning("SealedSecret %s was deleted; its files stay as last delivered", where)
                state.gone = True
            return []
        state.gone = False
        if kv.mod_revision in {state.revision, state.failed_revision}:
            return []
        try:
            record = SealedRecord.decode(kv.value)
        except ValueError as err:
            return self._failed(name, state, kv, "Malformed", str(err))
        bad = sorted(k for k in record.data if not valid_key(k))
        if bad:
            return self._failed(name, state, kv, "InvalidKey", f"keys {bad} cannot be file names")
        values: dict[str, bytes] = {}
        for key, envelope in sorted(record.data.items()):
            try:
                values[key] = (
                    await self.client.unseal(envelope, self.config.namespace, name)
                ).plaintext
            except SealFailed as err:
                reason = "".join(p.capitalize() for p in err.reason.name.split("_"))
                return self._failed(name, state, kv, reason, f"{key}: {err.message}")
            except ConcordError as err:
                if err.code in REFUSALS:
                    # The request itself is wrong for this record: waiting will not help.
                    return self._failed(name, state, kv, err.code, f"{key}: {err.message}")
                if err.code in {"PERMISSION_DENIED", "UNAUTHENTICATED"}:
                    self.metrics.failures.labels(name, "PermissionDenied").inc()
                raise _Transient(f"cannot unseal {where} now: {err}") from None
        target = AtomicDir(self.config.directory / name, file_mode=self.config.file_mode)
        try:
            changed = await asyncio.to_thread(target.write, values)
        except OSError as err:
            return self._failed(name, state, kv, "WriteFailed", str(err))
        first = not state.revision
        state.revision, state.failed_revision = kv.mod_revision, 0
        state.keys = tuple(sorted(values))
        self.metrics.revision.labels(name).set(kv.mod_revision)
        if not changed:
            return []
        self.metrics.deliveries.labels(name).inc()
        log.info(
            "delivered %s to %s: keys %s (revision %d, generation %d)",
            where,
            target.path,
            ",".join(state.keys),
            kv.mod_revision,
            record.generation,
        )
        if first:
            return []
        return [Change(name, kv.mod_revision, record.generation, state.keys, str(target.path))]

    def _failed(
        self, name: str, state: _State, kv: KeyValue, reason: str, message: str
    ) -> list[Change]:
        state.failed_revision = kv.mod_revision
        self.metrics.failures.labels(name, reason).inc()
        kept = "its files are kept as they were" if state.revision else "no files yet"
        log.error(
            "SealedSecret %s/%s (revision %d) not delivered: %s: %s; %s",
            self.config.namespace,
            name,
            kv.mod_revision,
            reason,
            message,
            kept,
        )
        return []

    async def _notify(self, changes: Sequence[Change]) -> None:
        if not changes:
            return
        for notifier in self.config.notifiers:
            try:
                done = await notifier.notify(self.config.namespace, changes)
            except NotifyError as err:
                self.metrics.notifications.labels(notifier.method, "failed").inc()
                log.warning("notifying the app of %s failed: %s", _names(changes), err)
            else:
                self.metrics.notifications.labels(notifier.method, "ok").inc()
                log.info("notified the app of %s: %s", _names(changes), done)


def _names(changes: Sequence[Change]) -> str:
    return ", ".join(f"{c.name}@{c.revision}" for c in changes)

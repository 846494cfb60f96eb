"""The reconcile loop: one idempotent path from any trigger to a status write, rate-limited.

Triggers. kopf's create, update and resume handlers (`upsert`), a coordinator watch event for
a mapped name, and the coordinator coming back after an outage all do the same thing: mark
the object dirty and make sure its flusher runs. The flusher observes the coordinator, asks
`reconcile` for a plan, runs the plan's idempotent actions and writes the status if it
changed. Nothing depends on which trigger fired, or how many did: a burst of events becomes
one observation of the latest state.

Rate limit. An object's flusher runs at most once per `interval_s` (0.5 s by default), so
an object gets at most one status write per interval however hot its lock is, and the write
carries the state read at that moment (latest state wins). The first event after a quiet
period is written at once; the rest of a burst waits for the window and is coalesced. A
status equal to the last one written is not written at all.

Coordinator outages. A probe (one linearizable read a second) notices a lost quorum or an
unreachable coordinator even when no event would: every object is then reconciled with the
coordinator marked unavailable, which sets Ready=False with the coordinator's message and
touches nothing else. When the probe succeeds again, every object is reconciled afresh. The
watch stream resumes by itself; when it had to start over, every object is reconciled too,
since events may have been missed in between.

Leadership. Every coordinator write and every status write first checks `leader_valid()`;
a replica that is not (or no longer surely) the leader writes nothing and waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from coordinator.client import ConcordError

from .coordinator import Gateway, KnownRecord
from .kube import Conflict, Invalid, KubeApi, ObjectGone, ReadFailed
from .manifests import CERTIFICATE_CONFIGMAP, certificate_configmap, published_key_id
from .membership import BLOCKED, MEMBERSHIP, SCALING, plan_membership, statefulset_observed
from .metrics import Metrics
from .reconcile import (
    CLUSTERS,
    LEASES,
    SEALED_SECRETS,
    SEQUENCES,
    ClusterObserved,
    Cond,
    LeaseObserved,
    LeaseSpec,
    ObjectRef,
    Plan,
    Plural,
    PutRecord,
    SequenceObserved,
    SequenceSpec,
    Unavailable,
    finalize_lease,
    finalize_sequence,
    parse_coordinator_name,
    parse_record,
    reconcile_cluster,
    reconcile_lease,
    reconcile_sequence,
    status_changed,
)
from .sealed import (
    ExistingSecret,
    NotUnsealed,
    SealedSpec,
    Unsealed,
    Validated,
    decode_encrypted,
    may_write,
    reconcile_files_only,
    reconcile_sealed_secret,
    refused,
)

log = logging.getLogger(__name__)

Key = tuple[Plural, str, str]

ERROR_BACKOFF_S = 5.0
"""After an unexpected error, the object is tried again this much later."""

CLUSTER_REFRESH_S = 5.0
"""How often a ConcordCluster's view is read again without an outage to react to."""

MEMBERSHIP_RECHECK_S = 1.0
"""While membership is changing (a learner catching up, a change just made), the
ConcordCluster is reconciled again this soon rather than at the next refresh."""


class NotNow(Exception):
    """A deletion cannot finish yet (no leadership, or the coordinator is unavailable): the
    finalizer stays and the handler is retried."""


@dataclass
class Tracked:
    ref: ObjectRef
    spec: Mapping[str, Any]
    status: dict[str, Any]
    """The status as last written (or as found on the object when first seen)."""
    dirty: bool = False
    forced: Unavailable | None = None
    """Reconcile as if the coordinator were unavailable, without asking it (the probe did)."""
    grants_seen: int = 0
    latest_token: int = 0
    first_event_at: float | None = None
    """When the oldest event not yet in a written status arrived (loop time)."""
    next_allowed: float = 0.0
    known: KnownRecord | None = None
    """The configuration record as last read or written; None: read it (see KnownRecord)."""
    secret_version: str = ""
    """SealedSecret: the resourceVersion of the Secret as this operator last wrote it (the
    watch event of our own write is not a reason to unseal again)."""
    settled: tuple[int, str] | None = None
    """SealedSecret: (generation, Secret resourceVersion) when a reconcile last left the
    Secret as the SealedSecret says, with Ready=True written: finding both unchanged, there
    is nothing to unseal again (the event of our own write, a resync after a watch restart)."""
    published: tuple[str, int] | None = None
    """SealedSecret: (uid, generation) whose ciphertext record is in the coordinator."""
    warned: str = ""
    """ConcordCluster: the membership warning last recorded as an Event (not repeated)."""
    task: asyncio.Task[None] | None = field(default=None, repr=False)


def ref_of(plural: Plural, body: Mapping[str, Any]) -> ObjectRef:
    meta = body.get("metadata") or {}
    return ObjectRef(
        plural,
        str(meta.get("namespace", "")),
        str(meta.get("name", "")),
        str(meta.get("uid", "")),
        int(meta.get("generation") or 0),
    )


class Controller:
    def __init__(
        self,
        gateway: Gateway,
        kube: KubeApi,
        leader_valid: Callable[[], bool],
        metrics: Metrics,
        *,
        interval_s: float = 0.5,
        probe_interval_s: float = 1.0,
        operator_namespace: str = "",
        certificate_configmap: str = CERTIFICATE_CONFIGMAP,
        certificate_interval_s: float = 60.0,
    ) -> None:
        self.gateway = gateway
        self.kube = kube
        self.leader_valid = leader_valid
        self.metrics = metrics
        self.interval_s = interval_s
        self.probe_interval_s = probe_interval_s
        self.objects: dict[Key, Tracked] = {}
        self.unhealthy: set[Key] = set()
        self.available = True
        self.operator_namespace = operator_namespace
        self.certificate_configmap = certificate_configmap
        self.certificate_interval_s = certificate_interval_s
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._watch_loop(), name="concord-watch"),
            asyncio.create_task(self._health_loop(), name="concord-probe"),
        ]
        if self.operator_namespace:
            self._tasks.append(
                asyncio.create_task(self._certificate_loop(), name="sealing-certificate")
            )

    async def stop(self) -> None:
        tasks = [*self._tasks, *(t.task for t in self.objects.values() if t.task is not None)]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # --- triggers --------------------------------------------------------------------------

    def upsert(self, plural: Plural, body: Mapping[str, Any]) -> None:
        """The object exists with this spec (created, updated, or seen at start-up)."""
        ref = ref_of(plural, body)
        spec = dict(body.get("spec") or {})
        tracked = self.objects.get(ref.key)
        if tracked is None or tracked.ref.uid != ref.uid:
            tracked = Tracked(ref, spec, dict(body.get("status") or {}))
            self.objects[ref.key] = tracked
            self._count()
        else:
            tracked.ref, tracked.spec = ref, spec
        tracked.known = None  # a spec change or a resume: read everything afresh
        self._schedule(tracked)

    def statefulset_changed(self, namespace: str, name: str) -> None:
        """A StatefulSet changed (scaled, say): reconcile the ConcordClusters that follow it."""
        for (plural, ns, _), tracked in self.objects.items():
            if (plural, ns) == (CLUSTERS, namespace) and tracked.spec.get(
                "statefulSetName"
            ) == name:
                self._schedule(tracked)

    def secret_changed(self, namespace: str, name: str, resource_version: str) -> None:
        """A Secret changed or went: if a SealedSecret of that name is tracked, reconcile it
        (a Secret deleted by hand comes back; an adoption annotation is noticed). The event
        of the operator's own write is skipped."""
        tracked = self.objects.get((SEALED_SECRETS, namespace, name))
        if tracked is not None and tracked.secret_version != resource_version:
            self._schedule(tracked)

    def forget(self, key: Key) -> None:
        tracked = self.objects.pop(key, None)
        self.unhealthy.discard(key)
        if tracked is not None and tracked.task is not None:
            tracked.task.cancel()
        self._count()

    async def finalize(self, plural: Plural, body: Mapping[str, Any]) -> None:
        """Release the object's coordinator state before Kubernetes deletes it (NotNow while
        that cannot happen: the finalizer keeps the object until it can)."""
        ref = ref_of(plural, body)
        if not self.leader_valid():
            raise NotNow("this replica does not hold the operator leadership")
        if plural == SEALED_SECRETS:
            gone = await self.gateway.withdraw_sealed(ref)
            if gone is not None:
                raise NotNow(f"the coordinator is unavailable: {gone.message}")
            self.forget(ref.key)
            return
        observed: LeaseObserved | SequenceObserved | Unavailable
        if plural == LEASES:
            kind = LeaseSpec.of(body.get("spec") or {}).kind
            observed = await self.gateway.observe_lease(ref, kind)
            actions = finalize_lease(ref, observed)
        else:
            observed = await self.gateway.observe_sequence(ref)
            actions = finalize_sequence(ref, observed)
        if isinstance(actions, Unavailable):
            raise NotNow(f"the coordinator is unavailable: {actions.message}")
        problem = await self.gateway.execute(actions)
        if problem is not None:
            raise NotNow(f"the coordinator is unavailable: {problem.message}")
        self.forget(ref.key)

    def _schedule(self, tracked: Tracked) -> None:
        tracked.dirty = True
        if tracked.task is None or tracked.task.done():
            tracked.task = asyncio.create_task(self._flusher(tracked))

    def _count(self) -> None:
        for plural in (LEASES, SEQUENCES, CLUSTERS, SEALED_SECRETS):
            n = sum(1 for k in self.objects if k[0] == plural)
            self.metrics.mirrored.labels(plural).set(n)

    # --- the flusher -----------------------------------------------------------------------

    async def _flusher(self, tracked: Tracked) -> None:
        loop = asyncio.get_running_loop()
        while tracked.dirty and self.objects.get(tracked.ref.key) is tracked:
            delay_s = tracked.next_allowed - loop.time()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            while not self.leader_valid():  # noqa: ASYNC110 (a deadline, not an event)
                await asyncio.sleep(0.1)  # leadership unconfirmed: write nothing meanwhile
            tracked.dirty = False
            try:
                await self._reconcile(tracked)
                tracked.next_allowed = loop.time() + self.interval_s
            except ObjectGone:
                self.forget(tracked.ref.key)
                return
            except Exception:
                tracked.known = None
                kind = tracked.ref.plural
                log.exception("reconciling %s %s/%s", kind, tracked.ref.namespace, tracked.ref.name)
                self.metrics.errors.labels(kind).inc()
                self.metrics.reconciles.labels(kind, "error").inc()
                tracked.dirty = True
                tracked.next_allowed = loop.time() + ERROR_BACKOFF_S

    async def _write_status(self, tracked: Tracked, status: dict[str, Any], *, retry: bool) -> bool:
        """Record the object's health and write `status` if it differs from what the object
        shows. False: this replica is no longer sure it leads, so nothing was written and the
        object is left dirty for whoever leads next."""
        ref = tracked.ref
        if retry:
            self.unhealthy.add(ref.key)
        else:
            self.unhealthy.discard(ref.key)
        if not status_changed(tracked.status, status):
            return True
        if not self.leader_valid():
            tracked.dirty = True
            return False
        loop = asyncio.get_running_loop()
        writing_at = loop.time()
        await self.kube.patch_status(ref.plural, ref.namespace, ref.name, status)
        self.metrics.step_seconds.labels("write").observe(loop.time() - writing_at)
        tracked.status.update(status)
        self.metrics.status_patches.labels(ref.plural).inc()
        return True

    async def _reconcile(self, tracked: Tracked) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        kind = tracked.ref.plural
        forced, tracked.forced = tracked.forced, None
        if kind == SEALED_SECRETS:
            await self._reconcile_sealed(tracked, forced)
            return
        grants, event_at = tracked.grants_seen, tracked.first_event_at
        plan = await self._plan(tracked, forced, grants)
        observed_at = loop.time()
        self.metrics.step_seconds.labels("observe").observe(observed_at - started)
        if plan.actions:
            if not self.leader_valid():
                tracked.dirty = True
                return
            problem = await self.gateway.execute(plan.actions)
            if problem is not None:
                tracked.known = None  # some actions may have run
                plan = self._replan(tracked, problem)
            else:
                for action in plan.actions:
                    if isinstance(action, PutRecord):
                        tracked.known = KnownRecord(parse_record(action.value))
            self.metrics.step_seconds.labels("act").observe(loop.time() - observed_at)
        if not await self._write_status(tracked, plan.status, retry=plan.retry):
            return
        if not plan.retry:
            # What these events told is in the status now (written, or already there).
            tracked.grants_seen -= grants
            if event_at is not None and tracked.first_event_at == event_at:
                self.metrics.watch_lag_seconds.observe(loop.time() - event_at)
                tracked.first_event_at = None
        result = "unavailable" if plan.retry else "ok"
        self.metrics.reconciles.labels(kind, result).inc()
        self.metrics.reconcile_seconds.labels(kind).observe(loop.time() - started)

    async def _reconcile_sealed(self, tracked: Tracked, forced: Unavailable | None) -> None:
        """Observe the Secret, unseal only if it may be written, plan, write the Secret, then
        the status. Only key names, reasons and key ids are logged, never a value."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        ref = tracked.ref
        spec = SealedSpec.of(tracked.spec)
        problem = await self._publish_sealed(tracked, spec)
        forced = forced or problem
        body = await self.kube.read("Secret", ref.namespace, ref.name)
        existing = ExistingSecret.of(body) if body is not None else None
        if not spec.create_secret:
            await self._reconcile_files_only(tracked, spec, existing, forced)
            return
        if (
            forced is None
            and existing is not None
            and tracked.settled == (ref.generation, existing.resource_version)
        ):
            self.metrics.reconciles.labels(SEALED_SECRETS, "ok").inc()
            return
        tracked.settled = None
        settle_version = existing.resource_version if existing is not None else ""
        unsealed: Unsealed | NotUnsealed | Unavailable | None = forced
        if unsealed is None and may_write(ref, existing):
            envelopes = decode_encrypted(spec)
            if isinstance(envelopes, NotUnsealed):
                unsealed = envelopes
            else:
                unsealed, opened = await self.gateway.unseal_all(ref.namespace, ref.name, envelopes)
                if opened:
                    self.metrics.unseals.labels("ok").inc(opened)
            if isinstance(unsealed, NotUnsealed):
                self.metrics.unseals.labels(unsealed.reason).inc()
        self.metrics.step_seconds.labels("observe").observe(loop.time() - started)
        now = dt.datetime.now(dt.UTC)
        plan = reconcile_sealed_secret(ref, spec, unsealed, existing, tracked.status, now)
        write = plan.write
        if write is not None and plan.secret is not None:
            if not self.leader_valid():
                tracked.dirty = True
                return
            acting_at = loop.time()
            try:
                if plan.write == "recreate" and existing is not None:
                    # A Secret's type cannot change in place: delete (only the version read)
                    # and create it again.
                    await self.kube.delete_secret(
                        ref.namespace, ref.name, existing.resource_version
                    )
                if plan.write == "replace":
                    written = await self.kube.replace("Secret", ref.namespace, plan.secret)
                else:
                    written = await self.kube.create("Secret", ref.namespace, plan.secret)
            except Conflict:
                # Changed by someone else since it was read: look again at the next window.
                tracked.dirty = True
                self.metrics.reconciles.labels(SEALED_SECRETS, "conflict").inc()
                return
            except Invalid as err:
                log.warning("Secret %s/%s refused: %s", ref.namespace, ref.name, err.message)
                plan = replace(plan, status=refused(ref, err.message, tracked.status, now))
            else:
                tracked.secret_version = settle_version = written
                log.info(
                    "%s Secret %s/%s: keys %s, sealing keys %s",
                    write.replace("create", "created").replace("replace", "updated"),
                    ref.namespace,
                    ref.name,
                    ",".join(sorted(spec.encrypted)),
                    ",".join(plan.status.get("keyIds") or []),
                )
            self.metrics.step_seconds.labels("act").observe(loop.time() - acting_at)
        if not await self._write_status(tracked, plan.status, retry=plan.retry):
            return
        if plan.status.get("phase") == "Ready" and settle_version:
            tracked.settled = (ref.generation, settle_version)
        result = "unavailable" if plan.retry else "ok"
        self.metrics.reconciles.labels(SEALED_SECRETS, result).inc()
        self.metrics.reconcile_seconds.labels(SEALED_SECRETS).observe(loop.time() - started)

    async def _reconcile_files_only(
        self,
        tracked: Tracked,
        spec: SealedSpec,
        existing: ExistingSecret | None,
        forced: Unavailable | None,
    ) -> None:
        """spec.createSecret is false: validate (no plaintext), delete a Secret this
        SealedSecret controls, write the status (concord_operator.sealed)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        ref = tracked.ref
        tracked.settled = None
        validated: Validated | NotUnsealed | Unavailable
        if forced is not None:
            validated = forced
        else:
            envelopes = decode_encrypted(spec)
            if isinstance(envelopes, NotUnsealed):
                validated = envelopes
            else:
                validated = await self.gateway.validate_all(ref.namespace, ref.name, envelopes)
        now = dt.datetime.now(dt.UTC)
        plan = reconcile_files_only(ref, spec, validated, existing, tracked.status, now)
        if plan.write == "delete" and existing is not None:
            if not self.leader_valid():
                tracked.dirty = True
                return
            try:
                await self.kube.delete_secret(ref.namespace, ref.name, existing.resource_version)
            except Conflict:
                tracked.dirty = True  # changed since it was read: look again
                return
            log.info("deleted Secret %s/%s: spec.createSecret is false", ref.namespace, ref.name)
        if not await self._write_status(tracked, plan.status, retry=plan.retry):
            return
        result = "unavailable" if plan.retry else "ok"
        self.metrics.reconciles.labels(SEALED_SECRETS, result).inc()
        self.metrics.reconcile_seconds.labels(SEALED_SECRETS).observe(loop.time() - started)

    async def _publish_sealed(self, tracked: Tracked, spec: SealedSpec) -> Unavailable | None:
        """Put the SealedSecret's ciphertext record in the coordinator for sidecars (secrets
        as files), once per (uid, generation). A spec whose values are not even base64 is
        not published: its status says Malformed, and the last good record stays, as the
        Secret keeps its last good values."""
        ref = tracked.ref
        if tracked.published == (ref.uid, ref.generation) or not self.leader_valid():
            return None
        envelopes = decode_encrypted(spec)
        if isinstance(envelopes, NotUnsealed):
            return None
        problem = await self.gateway.publish_sealed(ref, spec.scope, envelopes)
        if problem is None:
            tracked.published = (ref.uid, ref.generation)
        return problem

    async def _plan(self, tracked: Tracked, forced: Unavailable | None, grants: int) -> Plan:
        ref, now = tracked.ref, dt.datetime.now(dt.UTC)
        if ref.plural == CLUSTERS:
            observed_cluster = forced or await self.gateway.observe_cluster()
            extra: tuple[Cond, ...] = ()
            sts_name = str(tracked.spec.get("statefulSetName") or "")
            if sts_name and isinstance(observed_cluster, ClusterObserved):
                extra = (await self._follow_statefulset(tracked, sts_name, observed_cluster),)
            return reconcile_cluster(
                ref, tracked.spec, observed_cluster, tracked.status, now, extra=extra
            )
        if ref.plural == LEASES:
            spec = LeaseSpec.of(tracked.spec)
            observed_lease = forced or await self.gateway.observe_lease(
                ref, spec.kind, grants, tracked.latest_token, tracked.known
            )
            if isinstance(observed_lease, LeaseObserved):
                tracked.known = KnownRecord(observed_lease.record)
            return reconcile_lease(ref, spec, observed_lease, tracked.status, now)
        seq_spec = SequenceSpec.of(tracked.spec)
        observed_seq = forced or await self.gateway.observe_sequence(ref, tracked.known)
        if isinstance(observed_seq, SequenceObserved):
            tracked.known = KnownRecord(observed_seq.record)
        return reconcile_sequence(ref, seq_spec, observed_seq, tracked.status, now)

    # --- membership follows the StatefulSet (membership.py decides) ----------------------

    async def _follow_statefulset(
        self, tracked: Tracked, sts_name: str, observed: ClusterObserved
    ) -> Cond:
        """Observe the StatefulSet, make the one membership change `plan_membership` asks
        for (if this replica surely leads), record a warning Event when a person must act,
        and come back soon while there is more to do. Returns the Membership condition."""
        ref = tracked.ref
        try:
            body = await self.kube.read_statefulset(ref.namespace, sts_name)
            if body is None:
                return Cond(
                    MEMBERSHIP,
                    "False",
                    BLOCKED,
                    f"StatefulSet {ref.namespace}/{sts_name} not found",
                )
            labels = ((body.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
            pods = await self.kube.list_pods(ref.namespace, dict(labels))
        except ReadFailed as err:
            return Cond(
                MEMBERSHIP,
                "False",
                BLOCKED,
                f"{err.message} (the operator needs get on statefulsets and list on pods)",
            )
        plan = plan_membership(statefulset_observed(body, pods), observed)
        condition, warning = plan.condition, plan.warning
        if plan.change is not None and self.leader_valid():
            log.info("membership of %s/%s: %s", ref.namespace, ref.name, plan.condition.message)
            outcome = await self.gateway.change_membership(plan.change)
            if isinstance(outcome, Unavailable):
                condition = Cond(
                    MEMBERSHIP,
                    "False",
                    SCALING,
                    f"{plan.condition.message}: not yet ({outcome.message})",
                )
            elif outcome is not None:
                warning = f"{plan.condition.message}: refused by the coordinator: {outcome}"
                condition = Cond(MEMBERSHIP, "False", BLOCKED, warning)
        if warning and warning != tracked.warned:
            log.warning("membership of %s/%s: %s", ref.namespace, ref.name, warning)
            try:
                await self.kube.record_event(
                    "ConcordCluster",
                    ref.namespace,
                    ref.name,
                    ref.uid,
                    "MembershipBlocked",
                    message=warning,
                )
            except ReadFailed as err:
                log.warning("%s", err.message)
        tracked.warned = warning
        if plan.pending or (plan.change is not None and condition.reason != BLOCKED):
            asyncio.get_running_loop().call_later(MEMBERSHIP_RECHECK_S, self._recheck, tracked)
        return condition

    def _recheck(self, tracked: Tracked) -> None:
        if self.objects.get(tracked.ref.key) is tracked:
            self._schedule(tracked)

    # --- the sealing certificate ---------------------------------------------------------

    async def _certificate_loop(self) -> None:
        """Publish the current sealing certificate in a ConfigMap, and again whenever the key
        id changes. Polled every `certificate_interval_s` (a minute by default): keys are
        renewed on a schedule of days and on demand, the coordinator has no watch for them,
        and one small read a minute costs nothing. The first poll also makes the cluster's
        first key if there is none yet. Until a certificate has been published, a failed poll
        (an election under way, a member not answering yet) is retried after 1 s, doubling up
        to the interval: users seal with `concordctl seal --cert` from the ConfigMap, and a
        fresh install should not wait a whole interval for its first one."""
        published = ""
        retry_s = 1.0
        while True:
            if self.leader_valid():
                try:
                    published = await self._publish_certificate(published)
                except Exception:
                    log.exception("publishing the sealing certificate")
                    published = ""
            if published:
                retry_s = 1.0
                await asyncio.sleep(self.certificate_interval_s)
            else:
                await asyncio.sleep(min(retry_s, self.certificate_interval_s))
                retry_s = min(retry_s * 2, self.certificate_interval_s)

    async def _publish_certificate(self, published: str) -> str:
        """The key id now published (`published`, unchanged, if nothing could be done)."""
        keys = await self.gateway.sealing_keys()
        if isinstance(keys, Unavailable):
            log.warning("cannot read the sealing certificate yet: %s", keys.message)
            return published
        current = keys.current
        self.metrics.sealing_key_created_s = current.created_ms / 1000
        if current.key_id == published:
            return published
        ns, name = self.operator_namespace, self.certificate_configmap
        body = await self.kube.read("ConfigMap", ns, name)
        if published_key_id(body) == current.key_id:
            return current.key_id
        created = dt.datetime.fromtimestamp(current.created_ms / 1000, dt.UTC)
        wanted = certificate_configmap(
            ns,
            name,
            current.key_id,
            created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            current.certificate_pem.decode("ascii"),
            resource_version=str((body or {}).get("metadata", {}).get("resourceVersion", "")),
        )
        try:
            if body is None:
                await self.kube.create("ConfigMap", ns, wanted)
            else:
                await self.kube.replace("ConfigMap", ns, wanted)
        except Conflict:
            return ""  # changed meanwhile: read it again at the next poll
        log.info("published sealing certificate %s in ConfigMap %s/%s", current.key_id, ns, name)
        return current.key_id

    def _replan(self, tracked: Tracked, problem: Unavailable) -> Plan:
        now = dt.datetime.now(dt.UTC)
        if tracked.ref.plural == CLUSTERS:
            return reconcile_cluster(tracked.ref, tracked.spec, problem, tracked.status, now)
        if tracked.ref.plural == LEASES:
            spec = LeaseSpec.of(tracked.spec)
            return reconcile_lease(tracked.ref, spec, problem, tracked.status, now)
        seq_spec = SequenceSpec.of(tracked.spec)
        return reconcile_sequence(tracked.ref, seq_spec, problem, tracked.status, now)

    # --- background loops ------------------------------------------------------------------

    async def _watch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        client = self.gateway.new_client(timeout_s=5.0)
        try:
            while True:
                try:
                    async for event in self.gateway.events(client):
                        self._on_event(event.kind, event.name, event.token, loop.time())
                except ConcordError as err:
                    log.warning("coordinator watch ended (%s); starting again", err)
                    await asyncio.sleep(1.0)
                # Events between the old stream and the new one are unknown: resync all.
                for tracked in self.objects.values():
                    tracked.known = None
                    self._schedule(tracked)
        finally:
            await client.close()

    def _on_event(self, kind: str, name: str, token: int, at: float) -> None:
        parsed = parse_coordinator_name(name)
        if parsed is None:
            return
        plural: Plural = SEQUENCES if kind == "SEQUENCE" else LEASES
        tracked = self.objects.get((plural, *parsed))
        if tracked is None:
            return
        self.metrics.watch_events.inc()
        if kind == "LOCK" or (kind == "ELECTION" and token):
            tracked.grants_seen += 1
            tracked.latest_token = max(tracked.latest_token, token)
        if tracked.first_event_at is None:
            tracked.first_event_at = at
        self._schedule(tracked)

    async def _health_loop(self) -> None:
        loop = asyncio.get_running_loop()
        clusters_at = 0.0
        while True:
            if loop.time() - clusters_at >= CLUSTER_REFRESH_S:
                # Membership and Raft progress are not in the watch stream's mapped names:
                # the cluster view is refreshed on a timer (and on every outage and recovery).
                clusters_at = loop.time()
                for key, tracked in self.objects.items():
                    if key[0] == CLUSTERS:
                        self._schedule(tracked)
            problem = await self.gateway.probe()
            self.metrics.coordinator_available.set(0 if problem else 1)
            if problem is not None and self.available:
                log.warning("coordinator unavailable: %s", problem.message)
                for tracked in self.objects.values():
                    tracked.forced = problem
                    self._schedule(tracked)
            elif problem is None and (not self.available or self.unhealthy):
                if not self.available:
                    log.info("coordinator available again: reconciling every object")
                keys = list(self.objects) if not self.available else list(self.unhealthy)
                for key in keys:
                    if key in self.objects:
                        self.objects[key].known = None
                        self._schedule(self.objects[key])
            self.available = problem is None
            await asyncio.sleep(self.probe_interval_s)

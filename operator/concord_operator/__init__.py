"""Concord's Kubernetes operator (kopf), import name ``concord_operator``.

It exposes the coordinator as custom resources of group ``concord.dev``: a ``Lease`` (a lock,
semaphore or election) and a ``Sequence`` are declared in the coordinator under
``k8s/<namespace>/<name>``, released by a finalizer, and their status is mirrored from the
coordinator's watch stream; a ``SealedSecret`` is unsealed through the coordinator into a
Secret it owns, and the sealing certificate is published in a ConfigMap. Run it as
``concord-operator`` (or ``python -m concord_operator``).

Modules, each with one job:

- ``reconcile``: pure, level-based decisions, ``(spec, observed) -> Plan``;
- ``sealed``: pure, the SealedSecret's decisions (ownership, adoption, failure reasons);
- ``manifests``: pure builders of what the operator creates (the Secret, the ConfigMap);
- ``injection``: pure, the sidecar injection (a Pod in, the Pod to admit out);
- ``webhook``: the injection webhook's TLS identity, caBundle, CA ConfigMap and Events;
- ``coordinator``: the only module talking to the coordinator (through ``coordinator.client``),
  and the operator's own leader election;
- ``kube``: the only module talking to the Kubernetes API directly (preflight, status writes,
  the Secrets and the ConfigMap);
- ``controller``: triggers -> one rate-limited reconcile per object;
- ``handlers``: kopf decorators only; ``metrics``: Prometheus and the probes;
- ``__main__``: flags, preflight, election, then kopf.

It lives in the plain folder ``operator/`` (which has no ``__init__.py`` and must never get one:
a package named ``operator`` would shadow the standard library module). It may use the
coordinator's client and API stubs only (import contracts in ``.importlinter``).
"""

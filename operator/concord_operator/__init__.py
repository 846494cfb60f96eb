"""Concord's Kubernetes operator (kopf), import name ``concord_operator``.

Nothing is implemented here yet: the kopf handlers, the level-based reconciler and the manifest
builders for the ``Lease``, ``Sequence`` and ``SealedSecret`` resources come in a later issue.
This package exists now so that packaging, type checking and the import contracts cover it from
the start.

It lives in the plain folder ``operator/`` (which has no ``__init__.py`` and must never get one:
a package named ``operator`` would shadow the standard library module). It may use the
coordinator's client and API stubs, never ``coordinator.raft``, ``coordinator.runtime`` or
``coordinator.storage``.
"""

"""Concord's coordinator: a Raft-backed coordination service for Kubernetes.

The package is layered so that the consensus logic can be tested without any I/O:

- ``coordinator.raft`` is the Raft core: a pure, deterministic, I/O-free state machine
  (``RawNode``) stepped by messages and ticks. It reads no clock, socket, file or random
  source of its own; time arrives as ticks and randomness from an injected generator.
- ``coordinator.testing`` is the deterministic simulator and test kit: it drives the very same
  core, under a seeded discrete-event loop with injected faults, and checks the safety
  invariants after every step. Only tests import it.
- ``coordinator.runtime`` drives the core for real (asyncio, grpc.aio, the disk, the clock).

Later layers will add ``storage`` (encrypted write-ahead log and snapshots), ``fsm`` (the
replicated state machine: KV, leases, locks, sequences, membership, secrets), ``server`` (the
``concord.v1`` gRPC service), ``client``, ``sidecar`` and ``cli``. The boundaries between them are
described in docs/architecture.md and enforced by .importlinter and tests/test_layout.py.
"""

__version__ = "0.1.0"

"""concord-sidecar: a pod-local HTTP API (OpenAPI in openapi.yaml) for locks and semaphores
with fencing tokens, elections, sequences and compare-and-swap, through one coordinator
session held for the process's life. Apps in any language get a correct lock with one HTTP
call, learn of a loss at once (Server-Sent Events, a long-poll, or a callback), and read
status codes that mean one thing each. See `_app.py` for the mechanism, `_main.py` for the
process (flags, loopback-only binding, SIGTERM). With `--secrets`, it also delivers the pod's
SealedSecrets as files under /run/secrets/NAME/KEY (`_secretfiles.py`; the atomic set writer
in `_atomic.py`, notifications in `_notify.py`).
"""

from ._app import Sidecar as Sidecar
from ._app import load_spec as load_spec
from ._http import FENCING_HEADER as FENCING_HEADER
from ._main import main as main

__all__ = ["FENCING_HEADER", "Sidecar", "load_spec", "main"]

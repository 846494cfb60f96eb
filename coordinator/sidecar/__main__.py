"""`python -m coordinator.sidecar`: the same as the concord-sidecar console script."""

from ._main import main

main()

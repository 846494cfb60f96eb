"""The images' HEALTHCHECK: exit 0 if a GET of the URL answers 200 within 2 s, else 1.

Docker (and `podman healthcheck`) run it inside the container; Kubernetes ignores image
health checks and uses the chart's probes on the same endpoints. The image names its
default URL on the command line; CONCORD_HEALTHCHECK_URL overrides it for a container that
listens elsewhere (the coordinator's --metrics-listen, the operator's --http-listen, the
sidecar's --listen). Standard library only: the images carry no curl.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    url = os.environ.get("CONCORD_HEALTHCHECK_URL") or (argv[1] if len(argv) > 1 else "")
    if not url:
        print("healthcheck: no URL (argument or CONCORD_HEALTHCHECK_URL)", file=sys.stderr)
        return 1
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            status = int(response.status)
    except (urllib.error.URLError, OSError) as err:
        print(f"healthcheck: {url}: {err}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"healthcheck: {url}: HTTP {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""The pod's namespace: one answer for everything the sidecar does in its name.

The sidecar needs the namespace twice: to map the app's names to `k8s/NS/NAME` (locks,
elections, sequences, keys) and to find the SealedSecret records `k8s/NS/sealedsecrets/NAME`
it delivers as files. Both must be the namespace the coordinator scopes the pod's token to,
or every call is refused, so there is one source, in this order:

1. `--namespace` (an operator who knows better, and tests);
2. `$POD_NAMESPACE` (the downward API's metadata.namespace, which the injector sets);
3. with `--token-file`, the token's own namespace claim, read WITHOUT verifying it: it only
   picks names, the coordinator verifies the token and decides;
4. the kubelet's service-account namespace file (a pod with the default token mounted).

Pure but for reading the two files.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from pathlib import Path

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def token_namespace(token: str) -> str:
    """The namespace a ServiceAccount token names (its `kubernetes.io` claim, else its
    subject), read WITHOUT verifying it: for naming only; "" if it names none."""
    parts = token.split(".")
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return ""
    if not isinstance(claims, dict):
        return ""
    k8s = claims.get("kubernetes.io")
    if isinstance(k8s, dict) and isinstance(k8s.get("namespace"), str):
        return str(k8s["namespace"])
    sub = str(claims.get("sub", "")).split(":")
    return sub[2] if len(sub) == 4 and sub[:2] == ["system", "serviceaccount"] else ""


def pod_namespace(
    flag: str | None,
    token_file: str | None,
    env: Mapping[str, str],
    service_account_file: Path = SERVICE_ACCOUNT_NAMESPACE,
) -> str:
    """The pod's namespace from the sources in the module doc's order; "" if none says.
    OSError if the token file cannot be read (the caller names the flag)."""
    if flag:
        return flag
    if env.get("POD_NAMESPACE"):
        return env["POD_NAMESPACE"]
    if token_file:
        claimed = token_namespace(Path(token_file).read_text().strip())
        if claimed:
            return claimed
    try:
        return service_account_file.read_text().strip()
    except OSError:
        return ""

"""The chart's CA bootstrap (a pre-install/pre-upgrade hook Job runs it once per release).

If Secret $TLS_SECRET exists it is kept: certificates are made once, never silently replaced
by an upgrade. Otherwise `concordctl cluster init` makes a cluster CA, one certificate per
member (its id bound as concord://member/N, every member DNS name as a SAN) and a client
certificate, and two Secrets are created:

- $TLS_SECRET: ca.pem, cluster-id, member-N.pem / member-N-key.pem, client.pem /
  client-key.pem (for people and tools), operator.pem / operator-key.pem (the operator's
  role certificate, the one identity Unseal answers). Members mount their own pair (and
  ca.pem); the operator its pair.
- $CA_SECRET: ca.pem and ca-key.pem, mounted by nothing in the chart: the CA private key
  signs future members' certificates and is never handed to the members.

Only the standard library and concordctl (both in the Concord image); the API server is
reached with the pod's service-account token.
"""

import base64
import json
import os
import secrets
import ssl
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

SA = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def call(method: str, path: str, body: dict | None = None) -> int:
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    if ":" in host:
        host = f"[{host}]"
    url = f"https://{host}:{os.environ['KUBERNETES_SERVICE_PORT']}{path}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", "Bearer " + (SA / "token").read_text().strip())
    req.add_header("Content-Type", "application/json")
    ctx = ssl.create_default_context(cafile=str(SA / "ca.crt"))
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        if err.code not in (404, 409):
            print(f"{method} {path}: HTTP {err.code}: {err.read().decode()}", file=sys.stderr)
        return err.code


def secret(name: str, files: dict[str, bytes], labels: dict[str, str]) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": labels},
        "type": "Opaque",
        "data": {k: base64.b64encode(v).decode() for k, v in files.items()},
    }


def main() -> int:
    ns = os.environ["POD_NAMESPACE"]
    tls_name, ca_name = os.environ["TLS_SECRET"], os.environ["CA_SECRET"]
    members = int(os.environ["MEMBERS"])
    dns = [d for d in os.environ["DNS_NAMES"].split(",") if d]
    labels = json.loads(os.environ.get("LABELS", "{}"))
    base = f"/api/v1/namespaces/{ns}/secrets"
    found = call("GET", f"{base}/{tls_name}")
    if found == 200:
        print(f"Secret {tls_name} exists: keeping its certificates")
        return 0
    if found != 404:
        return 1
    cluster_id = f"concord-{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tls"
        argv = [
            "concordctl",
            "cluster",
            "init",
            "--dir",
            str(out),
            "--members",
            str(members),
            "--cluster-id",
            cluster_id,
        ]
        for name in dns:
            argv += ["--dns", name]
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        tls = {
            "ca.pem": (out / "ca.pem").read_bytes(),
            "cluster-id": cluster_id.encode(),
            "client.pem": (out / "client" / "client.pem").read_bytes(),
            "client-key.pem": (out / "client" / "client-key.pem").read_bytes(),
            # The operator's own identity (role concord://role/operator): the one caller the
            # coordinator unseals secrets for.
            "operator.pem": (out / "operator" / "client.pem").read_bytes(),
            "operator-key.pem": (out / "operator" / "client-key.pem").read_bytes(),
        }
        for n in range(1, members + 1):
            tls[f"member-{n}.pem"] = (out / f"member-{n}" / "tls" / "member.pem").read_bytes()
            tls[f"member-{n}-key.pem"] = (
                out / f"member-{n}" / "tls" / "member-key.pem"
            ).read_bytes()
        ca = {"ca.pem": tls["ca.pem"], "ca-key.pem": (out / "ca-key.pem").read_bytes()}
    # The CA Secret first: a half-done run leaves no member certificates without their CA key.
    for name, files in ((ca_name, ca), (tls_name, tls)):
        status = call("POST", base, secret(name, files, labels))
        if status == 409:
            print(f"Secret {name} appeared meanwhile: keeping it")
        elif status >= 300:
            return 1
    print(f"cluster {cluster_id}: Secrets {tls_name} (members, client) and {ca_name} (CA key)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

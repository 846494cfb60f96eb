"""The node agent's Kubernetes API client: plain HTTPS with the kubeconfig's credentials.

A kubelet needs a handful of verbs (list pods and claims, patch status, create nodes, leases
and volumes, delete a pod), so the agent speaks REST with the standard library rather than
depending on the `kubernetes` package: the JSON it sends is exactly what the API documents,
and mypy sees typed dicts instead of an untyped generated client. Client certificates
embedded in the kubeconfig are written to files (the `ssl` module loads certificates only
from files) in a private directory the caller owns.
"""

from __future__ import annotations

import base64
import importlib
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

Obj = dict[str, Any]

REQUEST_TIMEOUT_S = 15.0


def _load_config(text: str) -> Obj:
    """A kubeconfig: JSON (what the test control plane writes; JSON is YAML) or YAML, read
    with PyYAML (a dependency of the `kubernetes` package) only when needed."""
    try:
        config: Obj = json.loads(text)
    except ValueError:
        config = importlib.import_module("yaml").safe_load(text)
    return config


class KubeError(Exception):
    """The API server answered with an error status (`status`, its message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class Kube:
    """One kubeconfig's cluster and user (the current context); thread-safe (one connection
    per request)."""

    def __init__(self, kubeconfig: Path, secrets_dir: Path) -> None:
        config = _load_config(kubeconfig.read_text())
        current = config.get("current-context")
        contexts = {c["name"]: c["context"] for c in config.get("contexts", [])}
        context = contexts[current] if current else next(iter(contexts.values()))
        cluster = {c["name"]: c["cluster"] for c in config["clusters"]}[context["cluster"]]
        user = {u["name"]: u["user"] for u in config["users"]}[context["user"]]
        self.server: str = cluster["server"].rstrip("/")
        self._ssl = ssl.create_default_context()
        if "certificate-authority-data" in cluster:
            self._ssl.load_verify_locations(
                cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
            )
        elif "certificate-authority" in cluster:
            self._ssl.load_verify_locations(cafile=cluster["certificate-authority"])
        self._token: str | None = user.get("token")
        secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        cert, key = user.get("client-certificate"), user.get("client-key")
        if "client-certificate-data" in user:
            cert = str(secrets_dir / "client.pem")
            key = str(secrets_dir / "client-key.pem")
            for path, field in ((cert, "client-certificate-data"), (key, "client-key-data")):
                Path(path).write_bytes(base64.b64decode(user[field]))
                Path(path).chmod(0o600)
        if cert and key:
            self._ssl.load_cert_chain(cert, key)

    @property
    def port(self) -> int:
        """The API server's port (what pods get as KUBERNETES_SERVICE_PORT)."""
        parsed = urllib.parse.urlsplit(self.server)
        return parsed.port or (443 if parsed.scheme == "https" else 80)

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.server).hostname or "127.0.0.1"

    def request(
        self,
        method: str,
        path: str,
        body: Obj | None = None,
        *,
        content_type: str = "application/json",
        query: dict[str, str] | None = None,
    ) -> Obj:
        url = self.server + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        if self._token:
            req.add_header("Authorization", f"Bearer {self._token}")
        try:
            with urllib.request.urlopen(req, context=self._ssl, timeout=REQUEST_TIMEOUT_S) as r:
                raw = r.read()
        except urllib.error.HTTPError as err:
            text = err.read().decode(errors="replace")
            try:
                message = json.loads(text).get("message", text)
            except ValueError:
                message = text
            raise KubeError(err.code, message) from None
        result: Obj = json.loads(raw) if raw else {}
        return result

    def get(self, path: str, **query: str) -> Obj:
        return self.request("GET", path, query=query or None)

    def get_or_none(self, path: str) -> Obj | None:
        try:
            return self.get(path)
        except KubeError as err:
            if err.status == 404:
                return None
            raise

    def create(self, path: str, body: Obj) -> Obj:
        return self.request("POST", path, body)

    def patch(self, path: str, body: Obj, *, strategic: bool = False) -> Obj:
        kind = "strategic-merge-patch" if strategic else "merge-patch"
        return self.request("PATCH", path, body, content_type=f"application/{kind}+json")

    def delete(self, path: str, body: Obj | None = None) -> Obj:
        return self.request("DELETE", path, body)


def pod_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{namespace}/pods/{name}"

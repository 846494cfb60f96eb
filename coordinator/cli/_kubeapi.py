"""One read from the Kubernetes API with the standard library: a ConfigMap, for `concordctl
seal --controller-namespace/--controller-name` (the operator's sealing certificate).

coordinator must not import kopf or the Kubernetes client (.importlinter), and one GET needs
neither: the kubeconfig is YAML, and urllib + ssl speak to the API server.

The kubeconfig: `--kubeconfig FILE`, else KUBECONFIG (a list joined by `:`, merged as kubectl
merges it: the first file to name a cluster, user or context, or to set current-context,
wins), else ~/.kube/config. From its current context: the cluster's `server`,
`certificate-authority-data` or `certificate-authority` (else the system's trust store),
`insecure-skip-tls-verify`; the user's `client-certificate[-data]` + `client-key[-data]`,
`token` or `tokenFile`, or `username` + `password`; the context's `namespace`. Relative
paths are relative to the kubeconfig's directory, as for kubectl. Exec and auth-provider
plugins are not run: the error says so.

Errors are `KubeError`s with a message for people and the exit status concordctl uses:
2 for a kubeconfig that is missing or unusable (nothing was sent), 1 for the API server
unreachable or refusing (401, 403, 404 with what to do about each).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

EXIT_FAILED = 1
EXIT_USAGE = 2
RESPONSE_BYTES_MAX = 4 << 20
"""A ConfigMap holds at most 1 MiB; anything much larger is not one."""


class KubeError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def _usage(message: str) -> KubeError:
    return KubeError(message, EXIT_USAGE)


@dataclass(frozen=True)
class KubeConfig:
    """What one request needs from the kubeconfig's current context."""

    server: str
    context: ssl.SSLContext | None
    """None for a plain http:// server."""
    user: str
    namespace: str
    headers: dict[str, str] = field(default_factory=dict)


def kubeconfig_paths(explicit: str | None) -> list[Path]:
    """`--kubeconfig`, else KUBECONFIG's files, else ~/.kube/config."""
    if explicit:
        return [Path(explicit).expanduser()]
    env = os.environ.get("KUBECONFIG", "")
    listed = [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    if listed:
        return listed
    return [Path.home() / ".kube" / "config"]


def _where() -> str:
    return "--kubeconfig, env KUBECONFIG, default ~/.kube/config"


def _read_one(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _usage(f"no kubeconfig at {path} ({_where()})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise _usage(f"cannot read the kubeconfig {path}: {err}") from None
    try:
        body = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise _usage(f"the kubeconfig {path} is not valid YAML: {err}") from None
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise _usage(f"the kubeconfig {path} is not a kubeconfig (a mapping)")
    return body


def _named(
    body: dict[str, Any], section: str, item: str, path: Path
) -> dict[str, tuple[dict[str, Any], Path]]:
    out: dict[str, tuple[dict[str, Any], Path]] = {}
    entries = body.get(section) or []
    if not isinstance(entries, list):
        raise _usage(f"the kubeconfig {path}: {section} must be a list")
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            value = entry.get(item) or {}
            if isinstance(value, dict):
                out.setdefault(entry["name"], (value, path))
    return out


def load_kubeconfig(explicit: str | None) -> KubeConfig:
    """The current context of the kubeconfig (see the module doc); KubeError (2) if absent
    or unusable."""
    paths = kubeconfig_paths(explicit)
    if not explicit:
        present = [p for p in paths if p.exists()]
        if not present:
            raise _usage(f"no kubeconfig at {os.pathsep.join(map(str, paths))} ({_where()})")
        paths = present
    clusters: dict[str, tuple[dict[str, Any], Path]] = {}
    users: dict[str, tuple[dict[str, Any], Path]] = {}
    contexts: dict[str, tuple[dict[str, Any], Path]] = {}
    current = ""
    for path in paths:
        body = _read_one(path)
        for merged, section, item in (
            (clusters, "clusters", "cluster"),
            (users, "users", "user"),
            (contexts, "contexts", "context"),
        ):
            for name, value in _named(body, section, item, path).items():
                merged.setdefault(name, value)
        if not current and isinstance(body.get("current-context"), str):
            current = body["current-context"]
    shown = ", ".join(map(str, paths))
    if not current:
        raise _usage(f"the kubeconfig {shown} has no current-context (kubectl config "
                     "use-context)")  # fmt: skip
    if current not in contexts:
        raise _usage(f"the kubeconfig {shown}: current-context {current!r} is not among "
                     "its contexts")  # fmt: skip
    ctx, _ = contexts[current]
    cluster_name, user_name = str(ctx.get("cluster", "")), str(ctx.get("user", ""))
    if cluster_name not in clusters:
        raise _usage(f"the kubeconfig {shown}: context {current!r} names cluster "
                     f"{cluster_name!r}, which it does not define")  # fmt: skip
    cluster, cluster_file = clusters[cluster_name]
    user, user_file = users.get(user_name, ({}, cluster_file))
    server = str(cluster.get("server", "")).rstrip("/")
    scheme = urllib.parse.urlsplit(server).scheme
    if scheme not in {"https", "http"}:
        raise _usage(f"the kubeconfig's cluster {cluster_name!r} has no https:// server "
                     f"({server or 'none'})")  # fmt: skip
    for plugin in ("exec", "auth-provider"):
        if user.get(plugin):
            raise _usage(
                f"the kubeconfig's user {user_name!r} gets its credentials from an {plugin} "
                "plugin, which concordctl does not run; use a kubeconfig with a client "
                "certificate or a token, or --cert FILE (kubectl get configmap "
                "concord-sealing-certificate -o jsonpath='{.data.certificate\\.pem}')"
            )
    headers = _auth_headers(user, user_file, user_name)
    context = _ssl_context(cluster, cluster_file, user, user_file) if scheme == "https" else None
    namespace = str(ctx.get("namespace") or "default")
    return KubeConfig(server, context, user_name or "(anonymous)", namespace, headers)


def _data_or_file(section: dict[str, Any], key: str, base: Path, what: str) -> bytes | None:
    data = section.get(f"{key}-data")
    if data:
        try:
            return base64.b64decode(str(data), validate=True)
        except (binascii.Error, ValueError):
            raise _usage(f"the kubeconfig's {what} {key}-data is not valid base64") from None
    name = section.get(key)
    if not name:
        return None
    path = base.parent / Path(str(name)).expanduser()
    try:
        return path.read_bytes()
    except OSError as err:
        raise _usage(f"cannot read the kubeconfig's {what} {key} {path}: {err.strerror}") from None


def _auth_headers(user: dict[str, Any], base: Path, name: str) -> dict[str, str]:
    token = user.get("token")
    if not token and user.get("tokenFile"):
        path = base.parent / Path(str(user["tokenFile"])).expanduser()
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as err:
            raise _usage(f"cannot read the token file {path} of user {name!r}: "
                         f"{err.strerror}") from None  # fmt: skip
    if token:
        return {"Authorization": f"Bearer {token}"}
    if user.get("username") and user.get("password"):
        pair = f"{user['username']}:{user['password']}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
    return {}


def _ssl_context(
    cluster: dict[str, Any], cluster_file: Path, user: dict[str, Any], user_file: Path
) -> ssl.SSLContext:
    ca = _data_or_file(cluster, "certificate-authority", cluster_file, "cluster")
    try:
        context = ssl.create_default_context(cadata=ca.decode("ascii") if ca else None)
    except (ssl.SSLError, UnicodeDecodeError) as err:
        raise _usage(f"the kubeconfig's certificate-authority is not PEM: {err}") from None
    if cluster.get("insecure-skip-tls-verify") is True:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    cert = _data_or_file(user, "client-certificate", user_file, "user")
    key = _data_or_file(user, "client-key", user_file, "user")
    if (cert is None) != (key is None):
        raise _usage("the kubeconfig's user has a client certificate without its key, or a "
                     "key without its certificate")  # fmt: skip
    if cert is not None and key is not None:
        # ssl loads a client certificate from files only: private ones, gone once read.
        with tempfile.TemporaryDirectory(prefix="concordctl-kube-") as tmp:
            cert_file, key_file = Path(tmp) / "client.pem", Path(tmp) / "client-key.pem"
            for path, data in ((cert_file, cert), (key_file, key)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
            try:
                context.load_cert_chain(cert_file, key_file)
            except ssl.SSLError as err:
                raise _usage(f"the kubeconfig's client certificate or key is unusable: "
                             f"{err}") from None  # fmt: skip
    return context


def get_configmap(
    config: KubeConfig, namespace: str, name: str, timeout_s: float
) -> dict[str, Any]:
    """GET the ConfigMap `namespace/name`; KubeError (1) with what to do when the API server
    cannot be reached or refuses."""
    quoted = "/".join(urllib.parse.quote(p, safe="") for p in (namespace, name))
    ns_part, name_part = quoted.split("/")
    url = f"{config.server}/api/v1/namespaces/{ns_part}/configmaps/{name_part}"
    request = urllib.request.Request(url, headers={"Accept": "application/json", **config.headers})
    what = f"ConfigMap {namespace}/{name}"
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=config.context) as resp:
            raw = resp.read(RESPONSE_BYTES_MAX + 1)
    except urllib.error.HTTPError as err:
        with err:
            message = _refusal(err, config, namespace, name)
        raise KubeError(message, EXIT_FAILED) from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise KubeError(
            f"cannot reach the Kubernetes API server {config.server}: {reason}", EXIT_FAILED
        ) from None
    if len(raw) > RESPONSE_BYTES_MAX:
        raise KubeError(f"the API server's answer for {what} is too large", EXIT_FAILED)
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise KubeError(f"the API server's answer for {what} is not JSON", EXIT_FAILED) from None
    if not isinstance(body, dict) or body.get("kind") != "ConfigMap":
        raise KubeError(f"the API server's answer for {what} is not a ConfigMap", EXIT_FAILED)
    return body


def _status_message(err: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(err.read(RESPONSE_BYTES_MAX))
        return str(body.get("message") or err.reason)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, AttributeError):
        return str(err.reason)


def _refusal(err: urllib.error.HTTPError, config: KubeConfig, namespace: str, name: str) -> str:
    said = f"{err.code} {_status_message(err)}"
    what = f"ConfigMap {namespace}/{name}"
    if err.code == 404:
        return (
            f"no {what} ({said}): the Concord operator publishes its sealing certificate in "
            f"ConfigMap concord-sealing-certificate in its own namespace (--operator-namespace, "
            f"else the namespace it runs in); give that namespace with --controller-namespace "
            f"(and --controller-name if the operator's --sealing-certificate-configmap differs)"
        )
    if err.code == 403:
        return (
            f"the Kubernetes API refused {what} to the kubeconfig's user {config.user} "
            f"({said}); reading it needs `get` on configmaps in namespace {namespace} (a Role "
            f"and RoleBinding), or seal with --cert FILE|URL"
        )
    if err.code == 401:
        return (
            f"the Kubernetes API server {config.server} did not accept the kubeconfig's "
            f"credentials for user {config.user} ({said}): an expired token or certificate?"
        )
    return f"the Kubernetes API server refused to give {what}: {said}"

"""`concordctl seal`: turn a Kubernetes Secret into a SealedSecret that is safe to commit.

    concordctl seal < secret.yaml > sealed.yaml                 # strict scope, cluster's cert
    concordctl seal --cert sealing.pem -f secret.yaml -w sealed.yaml   # offline
    concordctl seal --scope namespace-wide --namespace prod < secret.json
    concordctl seal --merge-into sealed.yaml < one-key-secret.yaml     # add or replace keys
    echo -n hunter2 | concordctl seal --raw --namespace prod --name db  # one value, to paste
    concordctl seal --re-encrypt < sealed.yaml > renewed.yaml   # to the newest key, in-cluster
    concordctl seal --validate < sealed.yaml                    # would each value unseal?
    concordctl seal --fetch-cert > sealing.pem
    concordctl seal --cert https://example.com/sealing.pem < secret.yaml
    concordctl seal --controller-namespace concord < secret.yaml   # the operator's ConfigMap

kubeseal's habits, Concord's format (`coordinator.sealing`). Every value of the Secret
(`data`, base64, and `stringData`, plain; `stringData` wins, as in Kubernetes) is sealed on
this machine to the sealing certificate, taken from the first of:

1. `--cert FILE|URL`: a file, or an https:// URL (verified against the system's trust store,
   or SSL_CERT_FILE), or an http:// URL on a loopback address only (nothing else can be
   trusted over plain http);
2. the ConfigMap the operator publishes (`concord-sealing-certificate`, data.certificate.pem),
   read through the Kubernetes API when `--controller-namespace`, `--controller-name` or
   `--kubeconfig` is given (kubeseal's names; the namespace defaults to the kubeconfig
   context's, the kubeconfig to KUBECONFIG, then ~/.kube/config): `_kubeapi`, the standard
   library only;
3. the cluster's current one, fetched through the client API (GetSealingCertificate).

The certificate is checked first, wherever it came from: one that is not a Concord sealing
certificate, or one that has expired, is refused (exit 2). A URL, API server or coordinator
that cannot be reached or refuses gives exit 1; a bad URL or kubeconfig exit 2.

The SealedSecret (`concord.dev/v1alpha1`) carries `spec.scope`, `spec.encryptedData` (each
envelope in base64) and `spec.template` (the Secret's `type`, `metadata.labels` and
`metadata.annotations`, minus `kubectl.kubernetes.io/last-applied-configuration`, which holds
the plaintext). The
scope decides which names the operator may unseal it as: strict needs the namespace and name,
namespace-wide the namespace, cluster-wide neither (`--namespace`/`--name` override the
manifest's).

`--re-encrypt` and `--validate` read a SealedSecret and go through the coordinator: the first
rewraps each value to the newest key there (the plaintext never leaves the coordinator), the
second asks whether each value would unseal as this SealedSecret's name, without any
plaintext, and exits 1 if one would not.

Bad input (a manifest that is not a Secret, a missing name or namespace for the scope, bad
base64, a certificate that is not Concord's or has expired) ends with a precise message and
exit status 2, and nothing is written. Output is YAML unless the input was JSON or
`--format json` is given; `--merge-into` rewrites its file in place, atomically.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import yaml

from coordinator import sealing
from coordinator.client import Client, SealFailed
from coordinator.sealing import Scope

from ._common import Ctx, fail
from ._connect import run
from ._seal_cert import (
    CERTIFICATE_CONFIGMAP,
    CertSource,
    _bad,
    fetch_cert,
    is_url,
    load_cert_configmap,
    load_cert_file,
    load_cert_url,
)

API_VERSION = "concord.dev/v1alpha1"
KIND = "SealedSecret"
_DROPPED_ANNOTATIONS = frozenset({"kubectl.kubernetes.io/last-applied-configuration"})


@dataclass(frozen=True, slots=True)
class Document:
    body: dict[str, Any]
    json: bool
    """The input was JSON (the output follows it unless --format says otherwise)."""


def load_document(text: str, what: str) -> Document:
    """One YAML or JSON object; exit 2 otherwise."""
    stripped = text.lstrip()
    if not stripped:
        _bad(f"{what} is empty: give a manifest on stdin or with -f FILE")
    is_json = stripped.startswith("{")
    try:
        if is_json:
            body = json.loads(text)
        else:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
            if len(docs) != 1:
                _bad(f"{what} holds {len(docs)} YAML documents; give exactly one")
            body = docs[0]
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        _bad(f"{what} is neither valid YAML nor valid JSON: {err}")
    if not isinstance(body, dict):
        _bad(f"{what} is not a Kubernetes object (a mapping with apiVersion and kind)")
    return Document(body, is_json)


def dump_document(body: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return json.dumps(body, indent=2) + "\n"
    return str(yaml.safe_dump(body, sort_keys=False, default_flow_style=False))


def _mapping(obj: dict[str, Any], field: str, what: str) -> dict[str, Any]:
    value = obj.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        _bad(f"{what}.{field} must be a mapping of strings")
    return value


def _strings(obj: dict[str, Any], field: str, what: str) -> dict[str, str]:
    mapping = _mapping(obj, field, what)
    for key, value in mapping.items():
        if not isinstance(value, str):
            _bad(f"{what}.{field}.{key} must be a string, not {type(value).__name__}")
    return dict(mapping)


@dataclass(frozen=True, slots=True)
class SecretInput:
    name: str
    namespace: str
    values: dict[str, bytes]
    type: str
    labels: dict[str, str]
    annotations: dict[str, str]


def read_secret(doc: dict[str, Any]) -> SecretInput:
    """The parts of a Secret manifest that are sealed or templated; exit 2 if it is not one."""
    kind, api = doc.get("kind"), doc.get("apiVersion")
    if kind != "Secret" or api != "v1":
        _bad(
            f"the input is a {kind or 'manifest without a kind'} ({api or 'no apiVersion'}), "
            "not a Secret (apiVersion v1, kind Secret); `kubectl create secret generic NAME "
            "--from-literal=K=V --dry-run=client -o yaml` makes one"
        )
    meta = _mapping(doc, "metadata", "Secret")
    values: dict[str, bytes] = {}
    for key, text in _strings(doc, "data", "Secret").items():
        try:
            values[key] = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            _bad(f"Secret data.{key} is not valid base64 (put plain text under stringData)")
    for key, text in _strings(doc, "stringData", "Secret").items():
        values[key] = text.encode("utf-8")
    secret_type = doc.get("type", "Opaque")
    if not isinstance(secret_type, str):
        _bad("Secret type must be a string")
    annotations = _strings(meta, "annotations", "metadata")
    for dropped in _DROPPED_ANNOTATIONS:
        annotations.pop(dropped, None)
    name, namespace = meta.get("name", ""), meta.get("namespace", "")
    if not isinstance(name, str) or not isinstance(namespace, str):
        _bad("metadata.name and metadata.namespace must be strings")
    return SecretInput(
        name=name,
        namespace=namespace,
        values=values,
        type=secret_type,
        labels=_strings(meta, "labels", "metadata"),
        annotations=annotations,
    )


def check_names(scope: Scope, namespace: str, name: str) -> None:
    """Exit 2 unless the scope's names are given (the Secret, or --namespace/--name)."""
    missing = []
    if scope is not Scope.CLUSTER_WIDE and not namespace:
        missing.append("a namespace (metadata.namespace or --namespace)")
    if scope is Scope.STRICT and not name:
        missing.append("a name (metadata.name or --name)")
    if missing:
        _bad(f"scope {scope.text} needs {' and '.join(missing)}; or choose a wider --scope")


def sealed_secret(
    secret: SecretInput, scope: Scope, encrypted: dict[str, str], key_id: str
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": secret.name}
    if secret.namespace:
        meta["namespace"] = secret.namespace
    meta["annotations"] = {"concord.dev/sealing-key": key_id}
    # The CRD's shape (crds/concord.dev_sealedsecrets.yaml): labels and annotations sit under
    # template.metadata, as in a pod template; anywhere else the API server would prune them.
    template: dict[str, Any] = {"type": secret.type}
    template_meta: dict[str, Any] = {}
    if secret.labels:
        template_meta["labels"] = secret.labels
    if secret.annotations:
        template_meta["annotations"] = secret.annotations
    if template_meta:
        template["metadata"] = template_meta
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": meta,
        "spec": {"scope": scope.text, "encryptedData": encrypted, "template": template},
    }


def read_sealed(doc: dict[str, Any], what: str) -> tuple[str, str, Scope, dict[str, str]]:
    """(namespace, name, scope, encryptedData) of a SealedSecret; exit 2 if it is not one."""
    if doc.get("kind") != KIND or doc.get("apiVersion") != API_VERSION:
        _bad(f"{what} is not a SealedSecret ({API_VERSION}); was it written by concordctl seal?")
    meta = _mapping(doc, "metadata", what)
    spec = _mapping(doc, "spec", what)
    try:
        scope = Scope.parse(str(spec.get("scope", "strict")))
    except ValueError as err:
        _bad(f"{what}: spec.{err}")
    return (
        str(meta.get("namespace", "")),
        str(meta.get("name", "")),
        scope,
        _strings(spec, "encryptedData", f"{what}.spec"),
    )


def _envelope(text: str, key: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        _bad(f"encryptedData.{key} is not valid base64")


def write_output(text: str, path: Path | None) -> None:
    """stdout, or `path` replaced atomically (never half-written)."""
    if path is None:
        click.echo(text, nl=False)
        return
    directory = path.resolve().parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_input(source: str) -> tuple[str, str]:
    if source == "-":
        return sys.stdin.read(), "stdin"
    try:
        return Path(source).read_text(encoding="utf-8"), source
    except OSError as err:
        _bad(f"cannot read {source}: {err.strerror}")
    except UnicodeDecodeError:
        _bad(f"{source} is not UTF-8 text")


@click.command(name="seal")
@click.option("-f", "--file", "source", default="-", help="The input manifest (default stdin).")
@click.option(
    "-w",
    "--write",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the result to this file (atomically) instead of stdout.",
)
@click.option(
    "--scope",
    type=click.Choice([s.text for s in Scope]),
    default=None,
    help="Which names it may be unsealed as (default strict, or the --merge-into file's).",
)
@click.option("--namespace", default=None, help="Override the Secret's namespace.")
@click.option("--name", default=None, help="Override the Secret's name.")
@click.option(
    "--cert",
    "cert",
    metavar="FILE|URL",
    default=None,
    help="Seal to this certificate: a file, an https:// URL, or http:// on loopback only. "
    "It beats the ConfigMap, which beats the coordinator (the cluster's current one).",
)
@click.option(
    "--controller-namespace",
    default=None,
    help="Read the certificate from the operator's ConfigMap in this namespace, through the "
    "Kubernetes API (default: the kubeconfig context's namespace).",
)
@click.option(
    "--controller-name",
    default=None,
    help=f"That ConfigMap's name (default {CERTIFICATE_CONFIGMAP}).",
)
@click.option(
    "--kubeconfig",
    default=None,
    metavar="FILE",
    help="The kubeconfig for the ConfigMap (default: env KUBECONFIG, else ~/.kube/config); "
    "any of these three flags reads the ConfigMap.",
)
@click.option(
    "--merge-into",
    "merge_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Add or replace the Secret's keys in this SealedSecret file (in place).",
)
@click.option(
    "--files-only",
    is_flag=True,
    help="spec.createSecret: false: no Kubernetes Secret; pods get the values only as files "
    "through concord-sidecar --secrets NAME (docs/secrets-as-files.md).",
)
@click.option("--raw", is_flag=True, help="Seal one value (stdin or --from-file); print base64.")
@click.option(
    "--from-file",
    "raw_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="With --raw: the value to seal.",
)
@click.option("--re-encrypt", is_flag=True, help="Rewrap a SealedSecret to the newest key.")
@click.option("--validate", is_flag=True, help="Check that a SealedSecret's values unseal.")
@click.option("--fetch-cert", is_flag=True, help="Print the cluster's sealing certificate.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["yaml", "json"]),
    default=None,
    help="Output format (default: as the input).",
)
@click.pass_obj
def seal(  # noqa: PLR0917 (click passes every option)
    ctx: Ctx,
    source: str,
    out_path: Path | None,
    scope: str | None,
    namespace: str | None,
    name: str | None,
    cert: str | None,
    controller_namespace: str | None,
    controller_name: str | None,
    kubeconfig: str | None,
    merge_path: Path | None,
    files_only: bool,
    raw: bool,
    raw_path: Path | None,
    re_encrypt: bool,
    validate: bool,
    fetch_cert: bool,
    fmt: str | None,
) -> None:
    """Seal a Secret manifest into a SealedSecret (see `concordctl seal --help`)."""
    modes = [m for m, on in (("--raw", raw), ("--re-encrypt", re_encrypt),
                             ("--validate", validate), ("--fetch-cert", fetch_cert),
                             ("--merge-into", merge_path is not None)) if on]  # fmt: skip
    if len(modes) > 1:
        _bad(f"{' and '.join(modes)} cannot be combined")
    if raw_path is not None and not raw:
        _bad("--from-file goes with --raw")
    if files_only and (raw or re_encrypt or validate or fetch_cert):
        _bad("--files-only goes with sealing a Secret manifest (or --merge-into)")
    cert_path = CertSource(cert, controller_namespace, controller_name, kubeconfig)
    if cert is not None and cert_path.configmap:
        click.echo("Warning: --cert is used; the ConfigMap flags are ignored", err=True)
    if fetch_cert:
        pem, _ = fetch_cert_checked(ctx, cert_path)
        write_output(pem.decode("ascii"), out_path)
        return
    if re_encrypt or validate:
        _through_coordinator(ctx, source, out_path, fmt, validate=validate)
        return
    chosen = Scope.parse(scope) if scope else None
    if raw:
        _seal_raw(
            ctx, cert_path, raw_path, chosen or Scope.STRICT, ns=namespace or "", name=name or ""
        )
        return
    text, where = _read_input(source)
    doc = load_document(text, where)
    secret = read_secret(doc.body)
    merged: Document | None = None
    if merge_path is not None:
        merged_text, merged_where = _read_input(str(merge_path))
        merged = load_document(merged_text, merged_where)
        m_ns, m_name, m_scope, _ = read_sealed(merged.body, merged_where)
        if chosen is not None and chosen is not m_scope:
            _bad(f"{merged_where} has scope {m_scope.text}; --scope {chosen.text} differs")
        chosen, namespace, name = m_scope, m_ns, m_name
    chosen = chosen or Scope.STRICT
    secret = SecretInput(
        name=name if name is not None else secret.name,
        namespace=namespace if namespace is not None else secret.namespace,
        values=secret.values,
        type=secret.type,
        labels=secret.labels,
        annotations=secret.annotations,
    )
    check_names(chosen, secret.namespace, secret.name)
    _, sealing_cert = fetch_cert_checked(ctx, cert_path)
    encrypted = {
        key: base64.b64encode(
            sealing.seal(sealing_cert.public_key, value, chosen, secret.namespace, secret.name)
        ).decode("ascii")
        for key, value in secret.values.items()
    }
    if merged is not None and merge_path is not None:
        spec = merged.body.setdefault("spec", {})
        spec.setdefault("encryptedData", {}).update(encrypted)
        if files_only:
            spec["createSecret"] = False
        merged.body.setdefault("metadata", {}).setdefault("annotations", {})[
            "concord.dev/sealing-key"
        ] = sealing_cert.key_id_hex
        as_json = fmt == "json" if fmt else merged.json
        write_output(dump_document(merged.body, as_json), merge_path)
        return
    body = sealed_secret(secret, chosen, encrypted, sealing_cert.key_id_hex)
    if files_only:
        body["spec"]["createSecret"] = False
    write_output(dump_document(body, fmt == "json" if fmt else doc.json), out_path)


def fetch_cert_checked(ctx: Ctx, source: CertSource) -> tuple[bytes, sealing.SealingCertificate]:
    """The certificate from --cert, else the ConfigMap, else the coordinator; checked."""
    if source.cert is not None:
        if is_url(source.cert):
            return load_cert_url(source.cert, ctx.timeout_s)
        path = Path(source.cert)
        cert = load_cert_file(path)
        return path.read_bytes(), cert
    if source.configmap:
        return load_cert_configmap(source, ctx.timeout_s)
    return fetch_cert(ctx)


def _seal_raw(
    ctx: Ctx, cert_path: CertSource, raw_path: Path | None, scope: Scope, *, ns: str, name: str
) -> None:
    check_names(scope, ns, name)
    if raw_path is None:
        value = sys.stdin.buffer.read()
    else:
        try:
            value = raw_path.read_bytes()
        except OSError as err:
            _bad(f"cannot read {raw_path}: {err.strerror}")
    if len(value) > sealing.VALUE_BYTES_MAX:
        _bad(f"the value is {len(value)} bytes; a Secret holds at most {sealing.VALUE_BYTES_MAX}")
    _, cert = fetch_cert_checked(ctx, cert_path)
    envelope = sealing.seal(cert.public_key, value, scope, ns, name)
    click.echo(base64.b64encode(envelope).decode("ascii"))


def _through_coordinator(
    ctx: Ctx, source: str, out_path: Path | None, fmt: str | None, *, validate: bool
) -> None:
    text, where = _read_input(source)
    doc = load_document(text, where)
    ns, name, _, data = read_sealed(doc.body, where)
    envelopes = {key: _envelope(value, key) for key, value in data.items()}
    if validate:
        values = [(env, ns, name) for env in envelopes.values()]
        checks = run(ctx, lambda c: c.validate_sealed(values))
        bad = 0
        for key, check in zip(envelopes, checks, strict=True):
            if check.ok:
                click.echo(f"{key}: ok (key {check.key_id})")
            else:
                bad += 1
                reason = check.failure.name if check.failure else "?"
                click.echo(f"{key}: {reason}: {check.message}")
        if bad:
            fail(f"{bad} of {len(checks)} values would not unseal as {ns}/{name}")
        return

    async def rewrap(c: Client) -> dict[str, tuple[str, str]]:
        out = {}
        for key, env in envelopes.items():
            try:
                done = await c.re_encrypt(env, ns, name)
            except SealFailed as err:  # say which value; nothing is written
                message = f"encryptedData.{key} ({err.reason.name}): {err.message}"
                raise SealFailed(err.code, message, err.reason) from None
            out[key] = (base64.b64encode(done.ciphertext).decode("ascii"), done.key_id)
        return out

    rewrapped = run(ctx, rewrap)
    spec = doc.body["spec"]
    spec["encryptedData"] = {key: value for key, (value, _) in rewrapped.items()}
    key_ids = {key_id for _, key_id in rewrapped.values()}
    if len(key_ids) == 1:
        doc.body.setdefault("metadata", {}).setdefault("annotations", {})[
            "concord.dev/sealing-key"
        ] = key_ids.pop()
    write_output(dump_document(doc.body, fmt == "json" if fmt else doc.json), out_path)

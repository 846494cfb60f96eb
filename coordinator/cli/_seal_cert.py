"""Where `concordctl seal` gets the sealing certificate (a file, an https or loopback URL, or
the cluster's ConfigMap), and the checks it passes first, wherever it came from."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.client import HTTPMessage
from pathlib import Path
from typing import IO, NoReturn

from coordinator import sealing

from . import _kubeapi
from ._common import EXIT_USAGE, Ctx, fail
from ._connect import run

CERTIFICATE_CONFIGMAP = "concord-sealing-certificate"
"""The operator's default (concord_operator.manifests, which the CLI may not import)."""
CERTIFICATE_KEY = "certificate.pem"
KEY_ID_KEY = "keyId"
CERT_BYTES_MAX = 1 << 20


def _bad(message: str) -> NoReturn:
    fail(message, EXIT_USAGE)


def load_cert_file(path: Path) -> sealing.SealingCertificate:
    try:
        pem = path.read_bytes()
    except OSError as err:
        _bad(f"cannot read the certificate {path}: {err.strerror}")
    return check_cert(pem, str(path))


def check_cert(pem: bytes, where: str) -> sealing.SealingCertificate:
    try:
        return sealing.load_sealing_certificate(pem, dt.datetime.now(dt.UTC))
    except sealing.CertificateError as err:
        _bad(f"{where}: {err}")


def fetch_cert(ctx: Ctx) -> tuple[bytes, sealing.SealingCertificate]:
    keys = run(ctx, lambda c: c.sealing_certificate())
    pem = keys.current.certificate_pem
    return pem, check_cert(pem, "the cluster's sealing certificate")


def is_url(cert: str) -> bool:
    return "://" in cert


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str) -> None:
    """Exit 2 unless `url` is https://, or http:// to a loopback address."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname:
        if _loopback(parts.hostname):
            return
        _bad(f"--cert {url}: plain http only to a loopback address (127.0.0.1, ::1, "
             "localhost); anything else could be swapped on the way: use https://")  # fmt: skip
    _bad(f"--cert {url}: not a certificate file or an https:// (or loopback http://) URL")


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect must satisfy the rule the first URL did (no https -> remote http)."""

    def redirect_request(  # noqa: PLR0917 (urllib's signature)
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        try:
            check_url(newurl)
        except SystemExit:
            fp.close()  # the redirect's own response, which urllib would have read and closed
            raise
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def load_cert_url(url: str, timeout_s: float) -> tuple[bytes, sealing.SealingCertificate]:
    check_url(url)
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=ssl.create_default_context()), _CheckedRedirects()
    )
    try:
        with opener.open(url, timeout=timeout_s) as resp:
            pem = resp.read(CERT_BYTES_MAX + 1)
    except urllib.error.HTTPError as err:
        err.close()
        fail(f"cannot fetch the certificate {url}: {err.code} {err.reason}")
    except (urllib.error.URLError, OSError) as err:
        fail(f"cannot fetch the certificate {url}: {getattr(err, 'reason', err)}")
    if len(pem) > CERT_BYTES_MAX:
        _bad(f"{url}: more than {CERT_BYTES_MAX} bytes; not a sealing certificate")
    return pem, check_cert(pem, url)


@dataclass(frozen=True, slots=True)
class CertSource:
    """Where the sealing certificate comes from (see the module doc for the order)."""

    cert: str | None = None
    controller_namespace: str | None = None
    controller_name: str | None = None
    kubeconfig: str | None = None

    @property
    def configmap(self) -> bool:
        return any(
            v is not None
            for v in (self.controller_namespace, self.controller_name, self.kubeconfig)
        )


def load_cert_configmap(
    source: CertSource, timeout_s: float
) -> tuple[bytes, sealing.SealingCertificate]:
    try:
        config = _kubeapi.load_kubeconfig(source.kubeconfig)
        ns = source.controller_namespace or config.namespace
        name = source.controller_name or CERTIFICATE_CONFIGMAP
        body = _kubeapi.get_configmap(config, ns, name, timeout_s)
    except _kubeapi.KubeError as err:
        fail(err.message, err.exit_code)
    where = f"ConfigMap {ns}/{name}"
    data = body.get("data") or {}
    pem = data.get(CERTIFICATE_KEY) if isinstance(data, dict) else None
    if not isinstance(pem, str) or not pem:
        _bad(f"{where} has no data.{CERTIFICATE_KEY}: is it the one the operator publishes?")
    pem_bytes = pem.encode("ascii", "replace")  # not ASCII: not PEM, refused just below
    cert = check_cert(pem_bytes, f"{where} data.{CERTIFICATE_KEY}")
    published = data.get(KEY_ID_KEY)
    if published and published != cert.key_id_hex:
        _bad(f"{where}: data.{KEY_ID_KEY} {published} is not its certificate's key "
             f"({cert.key_id_hex}); was it edited by hand?")  # fmt: skip
    return pem_bytes, cert

"""`concordctl seal --cert URL` against real local servers (HTTPS with a CA made here, and
plain http on 127.0.0.1), the rules for URLs (https anywhere, http on loopback only, the same
for redirects), the checks every certificate gets wherever it came from (exit 2, nothing
written), and the kubeconfig errors that need no API server (tests/kube/test_seal_configmap.py
reads the operator's ConfigMap from the real control plane)."""

from __future__ import annotations

import base64
import datetime as dt
import functools
import http.server
import json
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from coordinator import sealing
from coordinator.cli.main import cli
from coordinator.pki import CertifiedKey, create_ca, issue_member_cert
from coordinator.sealing._keys import KEY_URI_PREFIX

NOW = dt.datetime.now(dt.UTC)
SECRET = "apiVersion: v1\nkind: Secret\nmetadata: {name: db, namespace: prod}\n"
SECRET += "stringData: {password: hunter2}\n"


@functools.cache
def keypair() -> tuple[rsa.RSAPrivateKey, bytes]:
    kp = sealing.new_sealing_key(NOW)
    return sealing.load_private_key(kp.private_key_der), kp.certificate_pem


def expired_pem() -> bytes:
    return sealing.sealing_certificate(
        keypair()[0], NOW - dt.timedelta(days=30), NOW - dt.timedelta(days=1)
    )


def ec_pem() -> bytes:
    """A certificate shaped like a sealing certificate, but with an EC key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "concord-sealing-key-ec")])
    uri = KEY_URI_PREFIX + "00" * 16
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def ctl(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(
        cli, ["--endpoints", "127.0.0.1:1", "--timeout", "3", *args], input=input
    )


def key_id_hex() -> str:
    return sealing.key_id_of(keypair()[0].public_key()).hex()


def opened(doc: dict[str, object]) -> bytes:
    key = keypair()[0]
    keys = {sealing.key_id_of(key.public_key()): key}.get
    data = doc["spec"]["encryptedData"]  # type: ignore[index]
    return sealing.unseal(base64.b64decode(data["password"]), "prod", "db", keys).value


# --- local servers ---------------------------------------------------------------------------


class Site:
    """An HTTP(S) server on 127.0.0.1 in a thread: path -> (status, headers, body)."""

    def __init__(self, context: ssl.SSLContext | None) -> None:
        self.pages: dict[str, tuple[int, dict[str, str], bytes]] = {}
        pages = self.pages

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, headers, body = pages.get(self.path, (404, {}, b"not here\n"))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if context is not None:
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https" if context else "http"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def ca() -> CertifiedKey:
    return create_ca("seal-url-test")


@pytest.fixture(scope="module")
def https(ca: CertifiedKey, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    leaf = issue_member_cert(ca, "localhost")
    d = tmp_path_factory.mktemp("https")
    (d / "cert.pem").write_bytes(leaf.cert_pem + ca.cert_pem)
    (d / "key.pem").write_bytes(leaf.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(d / "cert.pem", d / "key.pem")
    site = Site(context)
    try:
        yield site
    finally:
        site.close()


@pytest.fixture(scope="module")
def http_site() -> Iterator[Site]:
    site = Site(None)
    try:
        yield site
    finally:
        site.close()


@pytest.fixture
def trust(ca: CertifiedKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test CA as the trust store (SSL_CERT_FILE, which OpenSSL's defaults read)."""
    path = tmp_path / "trust.pem"
    path.write_bytes(ca.cert_pem)
    monkeypatch.setenv("SSL_CERT_FILE", str(path))


def serve(site: Site, path: str, body: bytes, status: int = 200, **headers: str) -> str:
    site.pages[path] = (status, headers, body)
    return site.url(path)


# --- --cert URL ------------------------------------------------------------------------------


@pytest.mark.usefixtures("trust")
def test_a_certificate_from_an_https_or_loopback_http_url_seals_as_a_file_does(
    https: Site, http_site: Site, tmp_path: Path
) -> None:
    for url in (serve(https, "/sealing.pem", keypair()[1]),
                serve(http_site, "/sealing.pem", keypair()[1])):  # fmt: skip
        res = ctl("seal", "--cert", url, input=SECRET)
        assert res.exit_code == 0, res.output
        doc = yaml.safe_load(res.stdout)
        assert doc["metadata"]["annotations"]["concord.dev/sealing-key"] == key_id_hex()
        assert opened(doc) == b"hunter2"
        res = ctl("seal", "--cert", url, "--fetch-cert")
        assert res.exit_code == 0 and res.stdout.encode() == keypair()[1], res.output
        res = ctl("seal", "--cert", url, "--raw", "--namespace", "prod", "--name", "db",
                  input="v")  # fmt: skip
        assert res.exit_code == 0, res.output
    # A redirect within the rules is followed.
    target = serve(https, "/current.pem", keypair()[1])
    moved = serve(https, "/moved", b"", 302, Location=target)
    res = ctl("seal", "--cert", moved, "-w", str(tmp_path / "out.yaml"), input=SECRET)
    assert res.exit_code == 0, res.output
    assert opened(yaml.safe_load((tmp_path / "out.yaml").read_text())) == b"hunter2"


BAD_CERTS: list[tuple[str, Callable[[], bytes], str]] = [
    ("expired", expired_pem, "expired at"),
    ("not Concord's", lambda: create_ca("someone-else").cert_pem,
     "not a Concord sealing certificate"),
    ("wrong key type", ec_pem, "its key is ECPublicKey, not RSA"),
    ("not a certificate", lambda: b"<html>sign in</html>\n", "not a PEM X.509 certificate"),
]  # fmt: skip


@pytest.mark.usefixtures("trust")
@pytest.mark.parametrize(("make", "message"), [c[1:] for c in BAD_CERTS],
                         ids=[c[0] for c in BAD_CERTS])  # fmt: skip
def test_a_bad_certificate_from_a_url_exits_2_and_writes_nothing(
    https: Site, tmp_path: Path, make: Callable[[], bytes], message: str
) -> None:
    url = serve(https, f"/bad-{abs(hash(message))}.pem", make())
    out = tmp_path / "out.yaml"
    res = ctl("seal", "--cert", url, "-w", str(out), input=SECRET)
    assert res.exit_code == 2, res.output
    assert f"{url}: " in res.stderr and message in res.stderr, res.stderr
    assert not out.exists() and res.stdout == ""


def test_url_rules_and_fetch_failures(
    https: Site, http_site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    out = tmp_path / "out.yaml"

    def refused(url: str, code: int, message: str) -> None:
        res = ctl("seal", "--cert", url, "-w", str(out), input=SECRET)
        assert res.exit_code == code, res.output
        assert message in res.stderr, res.stderr
        assert not out.exists() and res.stdout == ""

    # Nothing is dialled for these: the URL itself is refused.
    refused("http://192.0.2.1/sealing.pem", 2, "plain http only to a loopback address")
    refused("http://example.com/sealing.pem", 2, "use https://")
    refused("ftp://127.0.0.1/sealing.pem", 2, "not a certificate file or an https://")
    # No SSL_CERT_FILE: the test CA is not trusted, so the server is not believed.
    refused(serve(https, "/ok.pem", keypair()[1]), 1, "CERTIFICATE_VERIFY_FAILED")
    refused("https://127.0.0.1:1/sealing.pem", 1, "cannot fetch the certificate")
    refused(http_site.url("/missing.pem"), 1, "404 Not Found")


@pytest.mark.usefixtures("trust")
def test_a_redirect_must_keep_to_the_rules(https: Site, tmp_path: Path) -> None:
    moved = serve(https, "/to-http", b"", 302, Location="http://192.0.2.1/sealing.pem")
    out = tmp_path / "out.yaml"
    res = ctl("seal", "--cert", moved, "-w", str(out), input=SECRET)
    assert res.exit_code == 2, res.output
    assert "plain http only to a loopback address" in res.stderr
    assert not out.exists()


# --- precedence and kubeconfig errors --------------------------------------------------------


def test_cert_beats_the_configmap_flags(tmp_path: Path) -> None:
    cert = tmp_path / "sealing.pem"
    cert.write_bytes(keypair()[1])
    res = ctl("seal", "--cert", str(cert), "--controller-namespace", "concord",
              "--kubeconfig", str(tmp_path / "none"), input=SECRET)  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "--cert is used; the ConfigMap flags are ignored" in res.stderr
    assert opened(yaml.safe_load(res.stdout)) == b"hunter2"


def kubeconfig(path: Path, server: str, user: dict[str, object], **cluster: object) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server, **cluster}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path.write_text(json.dumps(config))
    return path


def test_kubeconfig_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out.yaml"

    def refused(args: list[str], code: int, message: str) -> None:
        res = ctl("seal", *args, "-w", str(out), input=SECRET)
        assert res.exit_code == code, res.output
        assert message in res.stderr, res.stderr
        assert not out.exists() and res.stdout == ""

    missing = tmp_path / "missing.kubeconfig"
    refused(["--kubeconfig", str(missing)], 2, f"no kubeconfig at {missing}")
    monkeypatch.setenv("KUBECONFIG", str(missing))
    refused(["--controller-namespace", "concord"], 2, f"no kubeconfig at {missing}")
    monkeypatch.delenv("KUBECONFIG")
    monkeypatch.setenv("HOME", str(tmp_path))
    refused(["--controller-name", "x"], 2, "~/.kube/config")

    plugin = kubeconfig(tmp_path / "exec", "https://127.0.0.1:1", {"exec": {"command": "aws"}})
    refused(["--kubeconfig", str(plugin)], 2, "exec plugin, which concordctl does not run")
    half = kubeconfig(tmp_path / "half", "https://127.0.0.1:1", {"client-certificate": "c.pem"})
    refused(["--kubeconfig", str(half)], 2, "cannot read the kubeconfig's user client-certificate")
    garbage = tmp_path / "garbage"
    garbage.write_text("clusters: [unclosed\n")
    refused(["--kubeconfig", str(garbage)], 2, "is not valid YAML")

    # A usable kubeconfig (a token in a file, relative to it), but nothing listens there.
    (tmp_path / "token").write_text("abc\n")
    down = kubeconfig(tmp_path / "down", "https://127.0.0.1:1", {"tokenFile": "token"})
    refused(["--kubeconfig", str(down)], 1, "cannot reach the Kubernetes API server "
            "https://127.0.0.1:1")  # fmt: skip

"""Workload identity: a pod's projected ServiceAccount token, verified by the Kubernetes API
server with a TokenReview.

Why the API server and not our own JWT check. The API server knows what a token is bound to
(its pod, its Secret, whether they still exist) and which signing keys are current; a member
that checked signatures itself would accept a token for a pod that is gone, and would have to
track key rotation. A TokenReview with `spec.audiences: ["concord"]` asks exactly the question
we need: is this a live token minted for Concord, and whose is it?

`TokenReviewer.verify(token)` answers a `WorkloadIdentity` (system:serviceaccount:NS:SA, plus
the pod name from the token's extra `authentication.kubernetes.io/pod-name`) or raises:

- `TokenRejected` (the service answers UNAUTHENTICATED): the API server said no. `reason`
  names why as far as its message tells (expired, wrong audience, bad signature, not a
  service account), and the message carries the API server's own words.
- `ReviewUnavailable` (UNAVAILABLE): the API server could not be asked (unreachable, timed
  out, answered 5xx, or refused *us*: 401/403 on the TokenReview means the member's own
  credentials or RBAC are wrong, which is not the caller's fault).

Cost. Every call on the workload port carries the token, so answers are cached by SHA-256 of
the token (never the token itself) for min(`cache_s`, the token's own `exp`): a revoked pod
keeps access for at most `cache_s`. Rejections are cached for `negative_cache_s` so that a
client retrying a bad token does not turn into a stream of TokenReviews. The cache is
bounded (`cache_entries_max`; the oldest entries go first). One review at a time per token:
concurrent calls with the same token share one request.

The review runs on the caller's event loop with aiohttp and a timeout (`timeout_s`); the
Raft loop's task never waits on it (handlers await it, the ticker keeps ticking).

Where the API server is: `ApiServer.from_kubeconfig(path)` (a kubeconfig's current context:
server, certificate-authority[-data], client-certificate[-data] + client-key[-data] or
token/tokenFile) or `ApiServer.in_cluster()` (KUBERNETES_SERVICE_HOST/PORT and the
ServiceAccount token and CA mounted at /var/run/secrets/kubernetes.io/serviceaccount; the
token file is re-read for every review, since projected tokens rotate).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import hashlib
import json
import os
import ssl
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .clock import Clock, SystemClock

AUDIENCE = "concord"
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
_SA_PREFIX = "system:serviceaccount:"
RESPONSE_BYTES_MAX = 1 << 20

# aiohttp and yaml are imported where first used: together they are a third of a member's
# import time (~150 ms of ~460 ms here), which every restart pays before it serves, while
# most members never review a token or read a kubeconfig.
if TYPE_CHECKING:
    import aiohttp


@dataclass(frozen=True, slots=True)
class WorkloadIdentity:
    """Who a verified token speaks for."""

    namespace: str
    service_account: str
    pod: str = ""
    """The pod the token is bound to ("" for a token bound to no pod, e.g. kubectl create
    token)."""

    @property
    def username(self) -> str:
        return f"{_SA_PREFIX}{self.namespace}:{self.service_account}"

    def __str__(self) -> str:
        return self.username + (f" (pod {self.pod})" if self.pod else "")


class RejectReason(enum.Enum):
    """Why the API server refused a token (a Prometheus label: a few fixed values)."""

    EXPIRED = "expired"
    AUDIENCE = "audience"
    SIGNATURE = "signature"
    NOT_SERVICE_ACCOUNT = "not-service-account"
    MALFORMED = "malformed"
    REJECTED = "rejected"


class TokenRejected(Exception):
    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class ReviewUnavailable(Exception):
    """The API server could not answer (the caller may retry)."""


class ConfigError(ValueError):
    """The API server settings cannot be used (reported at start-up)."""


@dataclass(frozen=True)
class ApiServer:
    """Where to send TokenReviews and how to authenticate to the API server."""

    url: str
    ssl_context: ssl.SSLContext | None
    """None for a plain http:// server (tests only)."""
    bearer: Callable[[], str] | None = None
    """Our own bearer token, read for each review (in-cluster tokens rotate)."""
    where: str = ""
    """What to name in messages: the kubeconfig's path or "in-cluster"."""

    @classmethod
    def in_cluster(
        cls, env: Mapping[str, str] | None = None, sa_dir: Path = SERVICE_ACCOUNT_DIR
    ) -> ApiServer:
        env = os.environ if env is None else env
        host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
        if not host or not port:
            raise ConfigError(
                "--workload-identity=kubernetes without --token-review-kubeconfig needs the "
                "in-cluster API server: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT "
                "are not set (not running in a pod?)"
            )
        token_file, ca_file = sa_dir / "token", sa_dir / "ca.crt"
        for f in (token_file, ca_file):
            if not f.is_file():
                raise ConfigError(
                    f"in-cluster TokenReview needs {f}: mount the member's ServiceAccount "
                    "token (automountServiceAccountToken or a projected volume)"
                )
        context = ssl.create_default_context(cafile=str(ca_file))
        if ":" in host:
            host = f"[{host}]"
        return cls(
            f"https://{host}:{port}",
            context,
            lambda: token_file.read_text(encoding="utf-8").strip(),
            "in-cluster",
        )

    @classmethod
    def from_kubeconfig(cls, path: Path) -> ApiServer:
        import yaml  # noqa: PLC0415 (see the note on imports at the top)

        try:
            body = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot read the kubeconfig {path}: {err}") from None
        if not isinstance(body, dict):
            raise ConfigError(f"{path} is not a kubeconfig")
        base = path.parent

        def named(section: str, name: str, item: str) -> dict[str, Any]:
            for entry in body.get(section) or []:
                if isinstance(entry, dict) and entry.get("name") == name:
                    value = entry.get(item) or {}
                    return value if isinstance(value, dict) else {}
            raise ConfigError(f"the kubeconfig {path} has no {item} named {name!r}")

        current = body.get("current-context")
        if not isinstance(current, str) or not current:
            raise ConfigError(f"the kubeconfig {path} sets no current-context")
        context = named("contexts", current, "context")
        cluster = named("clusters", str(context.get("cluster", "")), "cluster")
        user = named("users", str(context.get("user", "")), "user")
        server = str(cluster.get("server", "")).rstrip("/")
        if not server.startswith(("https://", "http://")):
            raise ConfigError(f"the kubeconfig {path}: the cluster's server {server!r} is no URL")

        def material(section: Mapping[str, Any], key: str) -> bytes | None:
            """`key-data` (base64) or `key` (a file, relative to the kubeconfig)."""
            data, file = section.get(f"{key}-data"), section.get(key)
            if data:
                try:
                    return base64.b64decode(str(data), validate=True)
                except binascii.Error:
                    raise ConfigError(f"the kubeconfig {path}: {key}-data is not base64") from None
            if file:
                try:
                    return (base / str(file)).read_bytes()
                except OSError as err:
                    raise ConfigError(f"the kubeconfig {path}: cannot read {key}: {err}") from None
            return None

        ssl_context: ssl.SSLContext | None = None
        if server.startswith("https://"):
            ca = material(cluster, "certificate-authority")
            ssl_context = ssl.create_default_context(cadata=ca.decode("ascii") if ca else None)
            cert, key = material(user, "client-certificate"), material(user, "client-key")
            if cert and key:
                # ssl loads a certificate chain from files only: write them to a private
                # temporary directory for the moment of loading.
                with tempfile.TemporaryDirectory(prefix="concord-kube-") as tmp:
                    cert_file, key_file = Path(tmp, "c.pem"), Path(tmp, "k.pem")
                    cert_file.write_bytes(cert)
                    key_file.touch(mode=0o600)
                    key_file.write_bytes(key)
                    ssl_context.load_cert_chain(cert_file, key_file)
        bearer: Callable[[], str] | None = None
        if user.get("token"):
            token = str(user["token"])
            bearer = lambda: token  # noqa: E731
        elif user.get("tokenFile"):
            token_path = base / str(user["tokenFile"])
            bearer = lambda: token_path.read_text(encoding="utf-8").strip()  # noqa: E731
        return cls(server, ssl_context, bearer, str(path))


def _token_exp_s(token: str) -> float | None:
    """The `exp` claim of a JWT, read WITHOUT verifying it: only ever used to shorten how long
    a verified answer is cached, never to accept anything."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    return float(exp) if isinstance(exp, int | float) else None


def classify_rejection(error: str) -> RejectReason:
    """The reason behind the API server's `status.error` (its wording, kept loose)."""
    text = error.lower()
    if "expired" in text:
        return RejectReason.EXPIRED
    if "audience" in text:
        return RejectReason.AUDIENCE
    if "signature" in text or "crypto" in text or "verif" in text:
        return RejectReason.SIGNATURE
    if "malformed" in text or "invalid character" in text or "compact" in text:
        return RejectReason.MALFORMED
    return RejectReason.REJECTED


def identity_of(status: Mapping[str, Any]) -> WorkloadIdentity:
    """The identity in an authenticated TokenReview status; TokenRejected if it is not a
    ServiceAccount (a workload identity is always one)."""
    user = status.get("user") or {}
    username = str(user.get("username", ""))
    if not username.startswith(_SA_PREFIX) or username.count(":") != 3:
        raise TokenRejected(
            RejectReason.NOT_SERVICE_ACCOUNT,
            f"the token is {username or 'nobody'}'s, not a ServiceAccount's: Concord accepts "
            "only pods' projected ServiceAccount tokens",
        )
    namespace, account = username[len(_SA_PREFIX) :].split(":", 1)
    extra = user.get("extra") or {}
    pods = extra.get(POD_NAME_EXTRA) or []
    return WorkloadIdentity(namespace, account, str(pods[0]) if pods else "")


@dataclass(slots=True)
class _Cached:
    until_s: float
    identity: WorkloadIdentity | None
    rejected: TokenRejected | None


async def _read_bounded(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """The whole body, or ReviewUnavailable past `limit` bytes. (`StreamReader.read(n)`
    returns what has arrived so far, up to n: one call reads a partial body whenever the
    answer comes in more than one piece, as it does on a loaded machine.)"""
    body = bytearray()
    while chunk := await stream.read(limit + 1 - len(body)):
        body += chunk
        if len(body) > limit:
            raise ReviewUnavailable(f"the API server's TokenReview answer exceeds {limit} bytes")
    return bytes(body)


@dataclass
class TokenReviewer:
    """Verifies tokens with TokenReview, with a bounded cache (see the module doc)."""

    api: ApiServer
    audience: str = AUDIENCE
    timeout_s: float = 3.0
    cache_s: float = 60.0
    negative_cache_s: float = 10.0
    cache_entries_max: int = 10_000
    clock: Clock = field(default_factory=SystemClock)
    _cache: OrderedDict[bytes, _Cached] = field(default_factory=OrderedDict)
    _inflight: dict[bytes, asyncio.Future[WorkloadIdentity]] = field(default_factory=dict)
    """Reviews under way, by token hash."""
    _session: aiohttp.ClientSession | None = None
    reviews: int = 0
    """TokenReviews sent (tests read it to see the cache work)."""

    async def verify(self, token: str) -> WorkloadIdentity:
        digest = hashlib.sha256(token.encode()).digest()
        now = self.clock.monotonic_s()
        hit = self._cache.get(digest)
        if hit is not None and hit.until_s > now:
            if hit.identity is not None:
                return hit.identity
            if hit.rejected is not None:
                raise TokenRejected(hit.rejected.reason, hit.rejected.message)
        pending = self._inflight.get(digest)
        if pending is None:
            # A task of its own, shared by every caller with this token: a caller that gives
            # up (its deadline, a cancelled RPC) does not cancel the others' review.
            pending = asyncio.ensure_future(self._review(token, digest, now))
            self._inflight[digest] = pending
            pending.add_done_callback(lambda task: self._settled(digest, task))
        return await asyncio.shield(pending)

    def _settled(self, digest: bytes, task: asyncio.Future[WorkloadIdentity]) -> None:
        self._inflight.pop(digest, None)
        if not task.cancelled():
            task.exception()  # retrieved here: every caller may have given up on it

    async def _review(self, token: str, digest: bytes, now: float) -> WorkloadIdentity:
        try:
            status = await self._ask(token)
        except TokenRejected as rejected:
            self._remember(digest, _Cached(now + self.negative_cache_s, None, rejected))
            raise
        try:
            identity = identity_of(status)
        except TokenRejected as rejected:
            self._remember(digest, _Cached(now + self.negative_cache_s, None, rejected))
            raise
        keep_s = self.cache_s
        exp = _token_exp_s(token)
        if exp is not None:
            keep_s = min(keep_s, exp - self.clock.wall_ms() / 1000)
        if keep_s > 0:
            self._remember(digest, _Cached(now + keep_s, identity, None))
        return identity

    def _remember(self, digest: bytes, entry: _Cached) -> None:
        self._cache[digest] = entry
        self._cache.move_to_end(digest)
        while len(self._cache) > self.cache_entries_max:
            self._cache.popitem(last=False)

    async def _ask(self, token: str) -> Mapping[str, Any]:
        """POST a TokenReview; its `status` (authenticated), TokenRejected or
        ReviewUnavailable."""
        import aiohttp  # noqa: PLC0415 (see the note on imports at the top)

        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [self.audience]},
        }
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        try:
            if self.api.bearer is not None:
                headers["Authorization"] = f"Bearer {self.api.bearer()}"
        except OSError as err:
            raise ReviewUnavailable(f"cannot read the member's own API token: {err}") from None
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        url = f"{self.api.url}/apis/authentication.k8s.io/v1/tokenreviews"
        self.reviews += 1
        try:
            async with (
                asyncio.timeout(self.timeout_s),
                self._session.post(
                    url, json=body, headers=headers, ssl=self.api.ssl_context or False
                ) as resp,
            ):
                raw = await _read_bounded(resp.content, RESPONSE_BYTES_MAX)
                code = resp.status
        except TimeoutError:
            raise ReviewUnavailable(
                f"the Kubernetes API server ({self.api.url}) did not answer a TokenReview "
                f"within {self.timeout_s:g} s"
            ) from None
        except (aiohttp.ClientError, OSError, ssl.SSLError) as err:
            raise ReviewUnavailable(
                f"cannot reach the Kubernetes API server ({self.api.url}) for a TokenReview: {err}"
            ) from None
        if code in (401, 403):
            raise ReviewUnavailable(
                f"the Kubernetes API server refused this member's TokenReview ({code}): the "
                f"member's credentials ({self.api.where}) must be allowed to create "
                "tokenreviews (ClusterRole system:auth-delegator)"
            )
        if code not in {200, 201}:
            raise ReviewUnavailable(f"the TokenReview failed on the API server: HTTP {code}")
        try:
            status = json.loads(raw).get("status") or {}
        except (ValueError, AttributeError):
            raise ReviewUnavailable("the API server's TokenReview answer is not JSON") from None
        if not status.get("authenticated"):
            error = str(status.get("error") or "the token is not valid")
            reason = classify_rejection(error)
            raise TokenRejected(
                reason, f"the token was rejected ({reason.value}): the API server says: {error}"
            )
        audiences = status.get("audiences")
        if audiences is not None and self.audience not in audiences:
            raise TokenRejected(
                RejectReason.AUDIENCE,
                f"the token is not for audience {self.audience!r} (it is for {audiences})",
            )
        result: Mapping[str, Any] = status
        return result

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

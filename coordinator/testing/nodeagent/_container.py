"""What a pod runner works with: the container model (`ContainerRun`, `Mount`, probes), the
agent's shared `AgentContext`, image entrypoints, `$(VAR)` expansion, and the private mount
namespace each container runs in (`namespace_wrapper`)."""

from __future__ import annotations

import datetime as dt
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ._kube import Kube, Obj


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def image_entrypoint(image: str, image_map: Mapping[str, Sequence[str]]) -> list[str] | None:
    """The mapped entrypoint of `image`, or None when the image is not one of ours."""
    repo = image.split("@", 1)[0]
    last = repo.rsplit("/", 1)[-1]
    last = last.split(":", 1)[0]
    entry = image_map.get(last)
    return list(entry) if entry is not None else None


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: a defined VAR is replaced, an undefined one left as
    written, and `$$` escapes a dollar."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))

    return _VAR.sub(one, value)


class NotYet(Exception):
    """A volume's source is not there yet (Secret missing, claim unbound): retry later."""


@dataclass
class Mount:
    source: Path
    target: str
    read_only: bool


@dataclass
class _Probe:
    spec: Obj
    next_at: float = 0.0
    successes: int = 0
    failures: int = 0


@dataclass
class ContainerRun:
    """One container's process and what its status shows."""

    spec: Obj
    init: bool = False
    popen: subprocess.Popen[bytes] | None = None
    started_mono: float = 0.0
    started_at: str = ""
    restart_count: int = 0
    started: bool = False
    """The startup probe passed (or there is none) while this process runs."""
    ready: bool = False
    done: bool = False
    """Exited and will not run again (restartPolicy)."""
    last_exit: Obj | None = None
    terminated: Obj | None = None
    backoff_s: float = 0.0
    backoff_until: float = 0.0
    waiting_reason: str = "ContainerCreating"
    probes: dict[str, _Probe] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def sidecar(self) -> bool:
        """A native sidecar: an init container with restartPolicy Always (Kubernetes >= 1.29).
        It starts in its turn among the init containers, the next one starts once it has
        *started* (not exited), and it runs beside the containers, restarted whatever the
        pod's restartPolicy, until they are done."""
        return self.init and self.spec.get("restartPolicy") == "Always"

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


@dataclass
class AgentContext:
    """What every pod runner shares with the agent."""

    kube: Kube
    state_dir: Path
    hosts_file: Path
    """Every pod's and Service's full name (`NAME.NS.svc[.cluster.local]`)."""
    resolv_file: Path
    base_env: Mapping[str, str]
    image_map: Mapping[str, Sequence[str]]

    def hosts_for(self, namespace: str) -> Path:
        """The hosts file pods of `namespace` see: the full names, and that namespace's
        short ones (what cluster DNS's search path gives a pod)."""
        return self.state_dir / "hosts.d" / namespace


def namespace_wrapper(
    mounts: Sequence[Mount],
    hosts_file: Path,
    resolv_file: Path,
    hostname: str,
    workdir: str,
) -> list[str]:
    """The argv prefix that runs what follows it in a private mount (and UTS) namespace with
    the pod's mounts, hosts file and hostname; the program itself is `exec`ed by bash.

    Every source is opened first and bound from /proc/self/fd: a volume mounted at /tmp
    would otherwise hide sources that live under /tmp (the state dir often does) from the
    mounts that follow it. `--no-canonicalize`, because mount(8) otherwise resolves the
    /proc/self/fd link to its path name, which by then names what the earlier mount put
    there."""
    ordered = sorted(mounts, key=lambda m: m.target.count("/"))  # parents before children
    binds = [
        *ordered,
        *_kept_visible(ordered),
        Mount(hosts_file, "/etc/hosts", read_only=False),
        Mount(resolv_file, "/etc/resolv.conf", read_only=False),
    ]
    fds = range(10, 10 + len(binds))
    lines = ["set -e"]
    lines += [f"exec {fd}< {shlex.quote(str(m.source))}" for fd, m in zip(fds, binds, strict=True)]
    for fd, m in zip(fds, binds, strict=True):
        target = shlex.quote(m.target)
        if m.source.is_dir():
            lines.append(f"mkdir -p {target}")
        else:
            parent = shlex.quote(os.path.dirname(m.target) or "/")
            lines.append(f"mkdir -p {parent}; [ -e {target} ] || touch {target}")
        lines.append(f"mount --no-canonicalize --bind /proc/self/fd/{fd} {target}")
        if m.read_only:
            lines.append(f"mount -o remount,bind,ro {target}")
    lines.append(" ".join(f"exec {fd}<&-;" for fd in fds))
    lines.append(f"hostname {shlex.quote(hostname[:63])}")
    lines.append(f"cd {shlex.quote(workdir)} 2>/dev/null || cd /")
    lines.append('exec "$@"')
    unshare = shutil.which("unshare") or "/usr/bin/unshare"
    bash = shutil.which("bash") or "/bin/bash"
    script = "\n".join(lines)
    return [unshare, "--mount", "--uts", "--propagation", "private", bash, "-c", script, "pod"]


HOST_PATHS = tuple(
    dict.fromkeys(
        str(Path(p).resolve()) for p in (Path(__file__).parents[3], sys.prefix, sys.base_prefix)
    )
)
"""What a pod's program is on the host, there being no image: the checkout (an editable
install imports from it) and the Python environment."""


def _kept_visible(mounts: Sequence[Mount]) -> list[Mount]:
    """Each host path a pod's program runs from that one of the pod's volumes would hide (an
    emptyDir at /tmp hides a checkout under /tmp), bound back over it, as an image's files
    would stay visible beside its volumes."""
    hidden = [
        path
        for path in HOST_PATHS
        if any(path == m.target or path.startswith(m.target.rstrip("/") + "/") for m in mounts)
    ]
    return [Mount(Path(path), path, read_only=True) for path in hidden]

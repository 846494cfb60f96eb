"""What a pod's containers are started with (`PodSetup`, a base class of `PodRunner`): its
volumes made host directories and files, and each container's environment, argv, mounts and
namespace wrapper."""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ._container import AgentContext, Mount, NotYet, expand, image_entrypoint, namespace_wrapper
from ._kube import Obj

log = logging.getLogger("concord.nodeagent")


class PodSetup:
    """`PodRunner`'s volumes and container environment, a base class of it."""

    if TYPE_CHECKING:  # what the setup uses of the `PodRunner` it is a base of
        ctx: AgentContext
        uid: str
        namespace: str
        pod_name: str
        ip: str
        host_ip: str
        dir: Path
        mounts_by_volume: dict[str, Path]

        @property
        def pod(self) -> Obj: ...

    # --- volumes --------------------------------------------------------------------------------

    def _prepare_volumes(self) -> None:
        pod = self.pod
        for vol in pod["spec"].get("volumes", []):
            name = vol["name"]
            if name in self.mounts_by_volume:
                continue
            self.mounts_by_volume[name] = self._volume(pod, vol)

    def _volume(self, pod: Obj, vol: Obj) -> Path:
        kube = self.ctx.kube
        ns = self.namespace
        here: Path = self.dir / "volumes" / str(vol["name"])
        if "persistentVolumeClaim" in vol:
            claim = vol["persistentVolumeClaim"]["claimName"]
            pvc = kube.get_or_none(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}")
            if pvc is None or pvc.get("status", {}).get("phase") != "Bound":
                raise NotYet(f"claim {claim} is not bound yet")
            pv = kube.get(f"/api/v1/persistentvolumes/{pvc['spec']['volumeName']}")
            path = pv["spec"].get("hostPath", {}).get("path") or pv["spec"].get("local", {}).get(
                "path"
            )
            if not path:
                raise NotYet(f"volume {pv['metadata']['name']} has no hostPath or local path")
            Path(path).mkdir(parents=True, exist_ok=True)
            return Path(path)
        if "hostPath" in vol:
            return Path(str(vol["hostPath"]["path"]))
        here.mkdir(parents=True, exist_ok=True)
        if "emptyDir" in vol:
            return here
        if "secret" in vol:
            src = vol["secret"]
            self._write_files(here, self._secret(src["secretName"], src), src)
            return here
        if "configMap" in vol:
            src = vol["configMap"]
            self._write_files(here, self._config_map(src["name"], src), src)
            return here
        if "downwardAPI" in vol:
            src = vol["downwardAPI"]
            items = {
                i["path"]: self._field(pod, i["fieldRef"]["fieldPath"]).encode()
                for i in src.get("items", [])
                if "fieldRef" in i
            }
            self._write_files(here, items, {"defaultMode": src.get("defaultMode")})
            return here
        if "projected" in vol:
            files: dict[str, bytes] = {}
            for s in vol["projected"].get("sources", []):
                if "secret" in s:
                    files.update(
                        self._select(self._secret(s["secret"]["name"], s["secret"]), s["secret"])
                    )
                elif "configMap" in s:
                    files.update(
                        self._select(
                            self._config_map(s["configMap"]["name"], s["configMap"]), s["configMap"]
                        )
                    )
                elif "downwardAPI" in s:
                    for i in s["downwardAPI"].get("items", []):
                        if "fieldRef" in i:
                            files[i["path"]] = self._field(pod, i["fieldRef"]["fieldPath"]).encode()
                elif "serviceAccountToken" in s:
                    files[s["serviceAccountToken"]["path"]] = self._token(
                        pod, s["serviceAccountToken"]
                    ).encode()
            self._write_files(here, files, {"defaultMode": vol["projected"].get("defaultMode")})
            return here
        log.warning(
            "%s/%s: volume %s of an unsupported kind: an empty directory",
            self.namespace,
            self.pod_name,
            vol["name"],
        )
        return here

    def _secret(self, name: str, src: Obj) -> dict[str, bytes]:
        obj = self.ctx.kube.get_or_none(f"/api/v1/namespaces/{self.namespace}/secrets/{name}")
        if obj is None:
            if src.get("optional"):
                return {}
            raise NotYet(f"secret {name} not found")
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}

    def _config_map(self, name: str, src: Obj) -> dict[str, bytes]:
        obj = self.ctx.kube.get_or_none(f"/api/v1/namespaces/{self.namespace}/configmaps/{name}")
        if obj is None:
            if src.get("optional"):
                return {}
            raise NotYet(f"configmap {name} not found")
        data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return data

    @staticmethod
    def _select(data: dict[str, bytes], src: Obj) -> dict[str, bytes]:
        items = src.get("items")
        if not items:
            return data
        return {i["path"]: data[i["key"]] for i in items if i["key"] in data}

    def _write_files(self, here: Path, data: dict[str, bytes], src: Obj) -> None:
        mode = src.get("defaultMode") or 0o644
        for rel, content in self._select(data, src).items():
            path = here / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            path.chmod(mode)

    def _token(self, pod: Obj, src: Obj) -> str:
        """A bound service-account token, as the kubelet requests one for the pod."""
        sa = pod["spec"].get("serviceAccountName") or "default"
        body: Obj = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": src.get("expirationSeconds", 3607),
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": self.pod_name,
                    "uid": self.uid,
                },
            },
        }
        if src.get("audience"):
            body["spec"]["audiences"] = [src["audience"]]
        got = self.ctx.kube.create(
            f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{sa}/token", body
        )
        return str(got["status"]["token"])

    def _field(self, pod: Obj, path: str) -> str:
        meta = pod["metadata"]
        simple = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": pod["spec"].get("nodeName", ""),
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
            "status.podIP": self.ip,
            "status.podIPs": self.ip,
            "status.hostIP": self.host_ip,
            "status.hostIPs": self.host_ip,
        }
        if path in simple:
            return str(simple[path])
        m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']*)'\]", path)
        if m:
            return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
        if path in ("metadata.labels", "metadata.annotations"):
            items = (meta.get(path.split(".")[1]) or {}).items()
            return "\n".join(f'{k}="{v}"' for k, v in sorted(items))
        raise NotYet(f"unsupported fieldRef {path}")

    # --- environment and command ----------------------------------------------------------------

    def _env(self, spec: Obj) -> dict[str, str]:
        pod = self.pod
        env: dict[str, str] = dict(self.ctx.base_env)
        env.update(
            {
                "HOSTNAME": pod["spec"].get("hostname") or self.pod_name,
                # The API server at its real loopback address, never the `kubernetes`
                # Service's ClusterIP: nothing routes the service CIDR here.
                "KUBERNETES_SERVICE_HOST": self.ctx.kube.host,
                "KUBERNETES_SERVICE_PORT": str(self.ctx.kube.port),
                "KUBERNETES_SERVICE_PORT_HTTPS": str(self.ctx.kube.port),
            }
        )
        for src in spec.get("envFrom", []):
            prefix = src.get("prefix", "")
            if "secretRef" in src:
                ref = src["secretRef"]
                data = self._secret(ref["name"], ref)
            elif "configMapRef" in src:
                ref = src["configMapRef"]
                data = self._config_map(ref["name"], ref)
            else:
                continue
            env.update({prefix + k: v.decode(errors="replace") for k, v in data.items()})
        for var in spec.get("env", []):
            name = var["name"]
            if "value" in var:
                env[name] = expand(var["value"], env)
                continue
            vf = var.get("valueFrom", {})
            if "fieldRef" in vf:
                env[name] = self._field(pod, vf["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in vf:
                ref = vf["secretKeyRef"]
                data = self._secret(ref["name"], ref)
                if ref["key"] in data:
                    env[name] = data[ref["key"]].decode(errors="replace")
                elif not ref.get("optional"):
                    raise NotYet(f"secret {ref['name']} has no key {ref['key']}")
            elif "configMapKeyRef" in vf:
                ref = vf["configMapKeyRef"]
                data = self._config_map(ref["name"], ref)
                if ref["key"] in data:
                    env[name] = data[ref["key"]].decode(errors="replace")
                elif not ref.get("optional"):
                    raise NotYet(f"configmap {ref['name']} has no key {ref['key']}")
            elif "resourceFieldRef" in vf:
                env[name] = "0"  # no cgroup limits here: nothing to report
        return env

    def _argv(self, spec: Obj, env: Mapping[str, str]) -> list[str]:
        command = spec.get("command")
        if not command:
            command = image_entrypoint(spec.get("image", ""), self.ctx.image_map)
            if command is None:
                raise NotYet(
                    f"image {spec.get('image')!r} maps to no local program and the "
                    "container gives no command"
                )
        return [expand(a, env) for a in [*command, *spec.get("args", [])]]

    def _mounts(self, spec: Obj) -> list[Mount]:
        mounts = []
        for vm in spec.get("volumeMounts", []):
            src = self.mounts_by_volume[vm["name"]]
            if vm.get("subPath"):
                src = src / vm["subPath"]
                if not src.exists():
                    src.mkdir(parents=True)
            mounts.append(Mount(src, vm["mountPath"], bool(vm.get("readOnly"))))
        return mounts

    def _wrapper(self, spec: Obj) -> list[str]:
        pod = self.pod
        hostname = pod["spec"].get("hostname") or self.pod_name
        return namespace_wrapper(
            self._mounts(spec),
            self.ctx.hosts_for(self.namespace),
            self.ctx.resolv_file,
            hostname,
            spec.get("workingDir") or str(self.dir),
        )

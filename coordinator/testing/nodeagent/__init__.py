"""A node agent for tests and the demo: Kubernetes Nodes whose Pods run as local processes.

There is no container engine on these machines; this agent is the one boundary the
Kubernetes tests put around the real control plane (StatefulSet controller, scheduler, PV
controller, garbage collector all run for real). See `_agent.py` (nodes, names, volumes)
and `_pod.py` (one pod's processes, probes and status). Test and demo tooling only: nothing
in `coordinator` or `concord_operator` may import it (.importlinter).

    with NodeAgent(kubeconfig, state_dir) as agent:
        ...  # helm install; pods run; agent.run(["concordctl", ...]) resolves pod names

`python -m coordinator.testing.nodeagent --kubeconfig K --state-dir D` runs it in the
foreground until SIGINT or SIGTERM.
"""

from ._agent import DEFAULT_NODES as DEFAULT_NODES
from ._agent import POD_NETWORK as POD_NETWORK
from ._agent import STORAGE_CLASS as STORAGE_CLASS
from ._agent import NodeAgent as NodeAgent
from ._container import image_entrypoint as image_entrypoint
from ._pod import IMAGE_MAP as IMAGE_MAP

__all__ = [
    "DEFAULT_NODES",
    "IMAGE_MAP",
    "POD_NETWORK",
    "STORAGE_CLASS",
    "NodeAgent",
    "image_entrypoint",
]

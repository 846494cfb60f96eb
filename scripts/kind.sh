#!/usr/bin/env bash
# A kind cluster (kind-config.yaml: one control plane, three workers) running the chart with
# the images `make images` built. `make kind-up`, `make deploy`, `make kind-down` run it.
#
#   scripts/kind.sh up       kind create cluster (kept if it exists)
#   scripts/kind.sh deploy   load the three images into the cluster's nodes, helm upgrade
#                            --install charts/concord with them, wait for the rollouts
#   scripts/kind.sh down     kind delete cluster
#
# Fails fast, before doing anything, when what it needs is missing: a Docker engine that
# answers (kind's nodes are containers), kind, and for deploy helm, kubectl and the images in
# Docker. Exit 3 then, with what is missing and where to get it (make reports it as
# "Error 3" and exits 2); a usage error exits 2; a failing tool's own status otherwise.
#
# helm and kubectl: the pinned ones `make kube-tools` built, when present; else PATH's.
# Environment: KIND_CLUSTER (default concord), KIND_NODE_IMAGE (kind's default if empty),
# RELEASE and NAMESPACE (default concord), IMAGE_REGISTRY and IMAGE_TAG (as
# scripts/build_images.sh), HELM_ARGS (extra helm arguments).
set -euo pipefail

# Builtins only until the checks have passed: the check must work on a bare PATH.
here="${BASH_SOURCE[0]%/*}"
[[ "$here" == "${BASH_SOURCE[0]}" ]] && here=.
repo="$(cd "$here/.." && pwd)"
cluster="${KIND_CLUSTER:-concord}"
release="${RELEASE:-concord}"
namespace="${NAMESPACE:-concord}"
registry="${IMAGE_REGISTRY:-ghcr.io/concord-dev}"

say() { echo "kind: $*" >&2; }
missing() { say "$*"; exit 3; }

usage() { echo "usage: $0 up|deploy|down" >&2; exit 2; }
[[ $# -eq 1 ]] || usage
action=$1
case "$action" in up | deploy | down) ;; *) usage ;; esac

# helm and kubectl from `make kube-tools` first (the versions the chart is tested with).
kube_bin="${CONCORD_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/concord/tools}/kube-v1.34.12/bin"
[[ -d "$kube_bin" ]] && PATH="$kube_bin:$PATH"

need_docker() {
    command -v docker >/dev/null 2>&1 ||
        missing "$action needs Docker (kind's nodes are containers): none on PATH. Install Docker Engine (https://docs.docker.com/engine/install/); without one, make images builds with buildah but kind cannot run."
    docker info >/dev/null 2>&1 ||
        missing "$action needs a Docker engine: the docker client is here, but no engine answers (docker info fails). Start dockerd, or set DOCKER_HOST."
}
need_tool() { # need_tool NAME WHERE
    command -v "$1" >/dev/null 2>&1 || missing "$action needs $1, not on PATH: $2"
}

need_docker
need_tool kind "go install sigs.k8s.io/kind@latest, or https://kind.sigs.k8s.io/docs/user/quick-start/#installation"

tag="${IMAGE_TAG:-$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$repo/charts/concord/Chart.yaml")}"
exists() { kind get clusters 2>/dev/null | grep -qx "$cluster"; }

case "$action" in
up)
    if exists; then
        say "cluster $cluster exists (make kind-down removes it)"
    else
        args=(--config "$repo/kind-config.yaml" --name "$cluster")
        [[ -n "${KIND_NODE_IMAGE:-}" ]] && args+=(--image "$KIND_NODE_IMAGE")
        kind create cluster "${args[@]}"
    fi
    kubectl --context "kind-$cluster" get nodes
    ;;
deploy)
    need_tool helm "make kube-tools builds the pinned helm, or https://helm.sh/docs/intro/install/"
    need_tool kubectl "make kube-tools builds the pinned kubectl"
    exists || missing "no kind cluster $cluster: make kind-up first"
    images=()
    for t in coordinator operator sidecar; do
        image="$registry/concord-$t:$tag"
        docker image inspect "$image" >/dev/null 2>&1 ||
            missing "no image $image in Docker: make images (with a Docker engine) builds it"
        images+=("$image")
    done
    # HELM_ARGS: extra arguments, split on whitespace (e.g. "--set coordinator.replicas=5").
    read -r -a helm_args <<<"${HELM_ARGS:-}"
    say "loading ${images[*]} into the nodes of $cluster"
    kind load docker-image --name "$cluster" "${images[@]}"
    # Never pulled: the nodes hold exactly what was built from this checkout.
    helm upgrade --install "$release" "$repo/charts/concord" --kube-context "kind-$cluster" \
        -n "$namespace" --create-namespace --wait --timeout 5m \
        --set "coordinator.image.repository=$registry/concord-coordinator" \
        --set "coordinator.image.tag=$tag" --set coordinator.image.pullPolicy=Never \
        --set "operator.image.repository=$registry/concord-operator" \
        --set "operator.image.tag=$tag" --set operator.image.pullPolicy=Never \
        "${helm_args[@]}"
    # The chart's full name: the release name if it contains "concord", else RELEASE-concord.
    fullname=$release
    [[ "$release" == *concord* ]] || fullname="$release-concord"
    kubectl --context "kind-$cluster" -n "$namespace" rollout status "statefulset/$fullname" --timeout 5m
    kubectl --context "kind-$cluster" -n "$namespace" get pods -o wide
    ;;
down)
    if exists; then
        kind delete cluster --name "$cluster"
    else
        say "no cluster $cluster"
    fi
    ;;
esac

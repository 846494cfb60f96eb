#!/usr/bin/env bash
# Build the pinned Kubernetes control plane the Kubernetes tests run on, from the Go module
# proxy: kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (k8s.io/kubernetes
# v1.34.12), etcd (v3.6.17) and helm (v3.19.5).
#
# Output: ${CONCORD_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/concord/tools}/kube-v1.34.12/bin
# (outside the repo); that directory is printed on the last line of stdout. Idempotent: a
# binary already there that reports its pinned version is not built again, so a warm machine
# spends a second here. Progress goes to stderr.
#
# `--check` builds nothing: it prints the directory and exits 0 when every binary is there and
# reports its pinned version, else names what is missing and exits 3. The Kubernetes tests use
# it to find the binaries without ever starting a 10-minute build themselves; it takes no
# lock, so it answers at once even while a build runs (a half-written binary fails its check).
#
# Why wrapper modules: k8s.io/kubernetes and go.etcd.io/etcd/server/v3 have `replace` lines
# in their go.mod (to their own staging or sibling directories), which `go install pkg@v`
# refuses. A throw-away main module requires the pinned release and replaces each staging
# module it requires with its published tag (v0.34.12 for Kubernetes 1.34.12), then builds
# the upstream commands unchanged. Versions are set at link time, as upstream's release
# build does, so /version says v1.34.12 and helm knows which Kubernetes it targets.
set -euo pipefail

kube_version="${KUBE_VERSION:-v1.34.12}"
etcd_version="${KUBE_ETCD_VERSION:-v3.6.17}"
helm_version="${HELM_VERSION:-v3.19.5}"
tools="${CONCORD_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/concord/tools}"
dest="$tools/kube-$kube_version"
bin="$dest/bin"

say() { echo "kube-tools: $*" >&2; }
die() { say "$*"; exit 1; }

check_only=0
case "${1:-}" in
--check) check_only=1 ;;
"") ;;
*) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

if [[ $check_only -eq 0 ]]; then
    mkdir -p "$bin"
fi
if [[ $check_only -eq 0 ]] && command -v flock >/dev/null 2>&1; then
    exec 9>"$dest.lock"
    flock 9
fi

# Each check reads the whole output before matching it: `cmd --version | grep -q` under
# pipefail fails at random, because grep exits at the first match and a binary that prints more
# lines after it (etcd, kubectl) dies of SIGPIPE.
reports() { # reports BINARY PATTERN ARGS...: BINARY runs and a line of its output matches
    local binary=$1 pattern=$2 out
    shift 2
    [[ -x "$bin/$binary" ]] || return 1
    out="$("$bin/$binary" "$@" 2>/dev/null)" || return 1
    grep -qx -- "$pattern" <<<"$out"
}
kube_ok() { reports "$1" "Kubernetes $kube_version" --version; }
kubectl_ok() { reports kubectl "Client Version: $kube_version" version --client; }
etcd_ok() { reports etcd "etcd Version: ${etcd_version#v}" --version; }
helm_ok() { reports helm "$helm_version" version --template '{{.Version}}'; }

missing=()
for c in kube-apiserver kube-controller-manager kube-scheduler; do kube_ok "$c" || missing+=("$c"); done
kubectl_ok || missing+=(kubectl)
etcd_ok || missing+=(etcd)
helm_ok || missing+=(helm)
if [[ ${#missing[@]} -eq 0 ]]; then
    say "all present in $bin (build skipped)"
    echo "$bin"
    exit 0
fi
if [[ $check_only -eq 1 ]]; then
    say "missing or not at the pinned version in $bin: ${missing[*]} (make kube-tools builds them)"
    exit 3
fi

command -v go >/dev/null 2>&1 || die "go not found: install Go >= 1.24 (https://go.dev/dl) to build ${missing[*]}"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=mod"
say "building ${missing[*]} into $bin"
say "a cold build takes 6-10 minutes on 2 cores (measured: 6 min here), a warm one ~1;"
say "module and build caches (~5 GB) stay in Go's own cache directories, outside the repo"
started=$SECONDS

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The ldflags upstream's release build sets, for the servers (component-base) and kubectl
# (client-go): without them /version says v0.0.0-master.
kube_ldflags() {
    local minor=${kube_version#v1.}
    minor=${minor%%.*}
    local flags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        flags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    echo "$flags"
}

build_kube() {
    local want=()
    for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
        [[ " ${missing[*]} " == *" $c "* ]] && want+=("k8s.io/kubernetes/cmd/$c")
    done
    [[ ${#want[@]} -gt 0 ]] || return 0
    local dir="$work/kube"
    mkdir -p "$dir"
    cd "$dir"
    printf 'module concord.invalid/kubebuild\n\ngo 1.24\n' >go.mod
    say "fetching k8s.io/kubernetes@$kube_version and its staging modules"
    local gomod
    gomod="$(go mod download -json "k8s.io/kubernetes@$kube_version" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')"
    [[ -f "$gomod" ]] || die "could not download k8s.io/kubernetes@$kube_version"
    # Each staging module that k8s.io/kubernetes requires (they are the ones at v0.0.0),
    # replaced with its published tag; unrequired ones (samples) have no such tag.
    local staging
    staging="$(awk '/^require \(/{r=1;next} r&&/^\)/{r=0} r&&$1~/^k8s\.io\// && $2=="v0.0.0"{print $1}' "$gomod")"
    local tag="v0${kube_version#v1}"
    {
        echo "require k8s.io/kubernetes $kube_version"
        for m in $staging; do echo "replace $m => $m $tag"; done
    } >>go.mod
    go mod download k8s.io/kubernetes >&2
    local t=$SECONDS
    say "compiling ${want[*]##*/} (the longest step: 4-8 minutes cold)"
    go build -trimpath -ldflags "$(kube_ldflags)" -o "$bin/" "${want[@]}" >&2 ||
        die "go build of ${want[*]} failed"
    say "kubernetes commands built in $((SECONDS - t)) s"
}

build_etcd() {
    [[ " ${missing[*]} " == *" etcd "* ]] || return 0
    local dir="$work/etcd"
    mkdir -p "$dir"
    cd "$dir"
    printf 'module concord.invalid/etcdbuild\n\ngo 1.24\n' >go.mod
    local t=$SECONDS
    say "compiling etcd $etcd_version (~1.5 minutes cold)"
    go get "go.etcd.io/etcd/server/v3@$etcd_version" >&2 || die "go get etcd server $etcd_version failed"
    go build -trimpath -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3 >&2 ||
        die "go build of etcd failed"
    say "etcd built in $((SECONDS - t)) s"
}

build_helm() {
    [[ " ${missing[*]} " == *" helm "* ]] || return 0
    local dir="$work/helm"
    mkdir -p "$dir"
    cd "$dir"
    printf 'module concord.invalid/helmbuild\n\ngo 1.24\n' >go.mod
    local t=$SECONDS
    say "compiling helm $helm_version (~2 minutes cold)"
    go get "helm.sh/helm/v3@$helm_version" >&2 || die "go get helm $helm_version failed"
    # helm's own Makefile: the binary's version, and the Kubernetes version it assumes
    # (client-go's minor + 1.x) for `kubeVersion:` checks and `helm template`.
    local cg major minor
    cg="$(go list -m -f '{{.Version}}' k8s.io/client-go)"
    cg="${cg#v}"
    major=$((${cg%%.*} + 1))
    minor="${cg#*.}"
    minor="${minor%%.*}"
    local flags="-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version"
    flags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
        flags+=" -X $pkg.k8sVersionMajor=$major -X $pkg.k8sVersionMinor=$minor"
    done
    go build -trimpath -ldflags "$flags" -o "$bin/helm" helm.sh/helm/v3/cmd/helm >&2 ||
        die "go build of helm failed"
    say "helm built in $((SECONDS - t)) s"
}

build_etcd
build_helm
build_kube

for c in kube-apiserver kube-controller-manager kube-scheduler; do kube_ok "$c" || die "$bin/$c does not report $kube_version"; done
kubectl_ok || die "$bin/kubectl does not report $kube_version"
etcd_ok || die "$bin/etcd does not report etcd ${etcd_version#v}"
helm_ok || die "$bin/helm does not report $helm_version"
say "done in $((SECONDS - started)) s: $(ls "$bin" | tr '\n' ' ')"
echo "$bin"

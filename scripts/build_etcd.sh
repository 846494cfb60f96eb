#!/usr/bin/env bash
# Build a pinned etcd (the `etcd` server binary) from the Go module proxy, for `make bench`.
#
# Output: ${CONCORD_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/concord/tools}/etcd-$VERSION/etcd
# (outside the repo); the path is printed on the last line of stdout. Idempotent: when the
# binary is there and answers `--version` with the pinned version, nothing is built.
#
# Why not `go install go.etcd.io/etcd/server/v3@VERSION`: server/go.mod carries `replace`
# directives (to its sibling modules in the etcd repo), which `go install pkg@version`
# refuses. So a throwaway main module requires go.etcd.io/etcd/server/v3 at the pinned
# version and `go build`s that package (etcd's own main, server/main.go); the sibling
# modules resolve to the versions server/go.mod requires (the same release). The build is
# the upstream source at that tag, built with the local Go toolchain and CGO off (as the
# upstream release binaries are).
set -euo pipefail

version="${ETCD_VERSION:-v3.6.16}"
tools="${CONCORD_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/concord/tools}"
dest="$tools/etcd-$version"
bin="$dest/etcd"

die() { echo "build_etcd: $*" >&2; exit 1; }

if [[ -x "$bin" ]] && "$bin" --version 2>/dev/null | grep -q "etcd Version: ${version#v}\$"; then
    echo "build_etcd: $bin is etcd ${version#v} (build skipped)" >&2
    echo "$bin"
    exit 0
fi

command -v go >/dev/null 2>&1 || die "go not found; install Go to build etcd $version"
mkdir -p "$dest"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$dest.lock"
    flock 9
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
cat >go.mod <<EOF
module concord.invalid/etcdbuild

go 1.24
EOF
export GOFLAGS="${GOFLAGS:-} -mod=mod" CGO_ENABLED=0
echo "build_etcd: building go.etcd.io/etcd/server/v3@$version (a few minutes the first time)" >&2
go get "go.etcd.io/etcd/server/v3@$version" >&2 || die "go get server/v3@$version failed"
go build -trimpath -o "$bin.tmp" go.etcd.io/etcd/server/v3 >&2 || die "go build failed"
mv "$bin.tmp" "$bin"
"$bin" --version >&2
go list -m all >"$dest/modules.txt"
echo "$bin"

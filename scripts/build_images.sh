#!/usr/bin/env bash
# Build Concord's three container images (images/Dockerfile: targets coordinator, operator,
# sidecar), check that each one starts, and print their sizes.
#
#   scripts/build_images.sh            build and check (what `make images` runs)
#   scripts/build_images.sh --check    only check images built before (`make images-check`)
#   scripts/build_images.sh --clean    remove the cache below, buildah's storage and all
#                                      (`make images-clean`; a plain rm -rf cannot: overlay
#                                      storage is mounted)
#
# Two routes, the same Dockerfile:
# - Docker: used when a Docker engine answers (`docker info`; a docker client without an
#   engine, as on these machines, does not count). `docker build --target T`, then
#   `docker run --read-only --user 10001:10001 IMAGE --help`.
# - buildah, without any daemon: Debian's debootstrap, buildah and runc (installed with apt
#   if missing). A minimal Debian bookworm root filesystem with python3 and its venv module
#   (debootstrap --variant=minbase, cached) becomes a local base image (`buildah from
#   scratch`, copy, commit); `buildah bud --isolation chroot --build-arg BASE=that` builds
#   the real Dockerfile; `buildah run --isolation oci` (runc) checks each image's user and
#   bytecode, runc itself starts its entrypoint with --help on a read-only root filesystem,
#   and the coordinator image runs a one-member cluster until its HEALTHCHECK passes.
#
# Idempotent: the root filesystem, the base image and buildah's layer cache persist under
# ${CONCORD_IMAGES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/concord/images} (buildah's storage
# too: --root there, nothing in /var/lib/containers), so a second run rebuilds only what
# changed; `--clean` starts from nothing. Progress goes to stderr; the sizes (JSON) to stdout
# and to sizes.json in the cache.
#
# Environment: IMAGE_REGISTRY (default ghcr.io/concord-dev, as charts/concord/values.yaml),
# IMAGE_TAG (default the chart's appVersion), BASE (a base image to use instead of building
# one; for Docker the Dockerfile's default, python:3.11-slim-bookworm), IMAGES (default
# "coordinator operator sidecar"), DEBIAN_MIRROR.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${CONCORD_IMAGES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/concord/images}"
registry="${IMAGE_REGISTRY:-ghcr.io/concord-dev}"
tag="${IMAGE_TAG:-$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$repo/charts/concord/Chart.yaml")}"
read -r -a targets <<<"${IMAGES:-coordinator operator sidecar}"
suite=bookworm
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# What the base needs beyond minbase: the interpreter and its venv module (ensurepip's
# wheels), which the Dockerfile uses to make the environment.
include=python3,python3-venv
base_image="localhost/concord-base:$suite-py3"

say() { echo "images: $*" >&2; }
die() { say "$*"; exit 1; }

check_only=0
clean=0
case "${1:-}" in
--check) check_only=1 ;;
--clean) clean=1 ;;
"") ;;
*) echo "usage: $0 [--check | --clean]" >&2; exit 2 ;;
esac
[[ -n "$tag" ]] || die "no appVersion in charts/concord/Chart.yaml and no IMAGE_TAG"
started=$SECONDS
mkdir -p "$cache"

image_name() { echo "$registry/concord-$1:$tag"; }

docker_engine() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }

# A CA the host's pip trusts (a TLS-intercepting proxy's), handed to the build as a secret so
# pip inside it reaches the index the way the host's does; never stored in a layer.
pip_ca() {
    local ca="${PIP_CERT:-}"
    if [[ -z "$ca" ]] && command -v pip3 >/dev/null 2>&1; then
        ca="$(pip3 config get global.cert 2>/dev/null || true)"
    fi
    if [[ -n "$ca" && -s "$ca" ]]; then echo "$ca"; fi
}

# --- sizes -------------------------------------------------------------------------------

# report_sizes NAME=UNPACKED[:COMPRESSED]...: JSON on stdout (and sizes.json in the cache),
# a table on stderr. Bytes; compressed is absent where the engine does not say (docker).
report_sizes() {
    python3 - "$cache/sizes.json" "$@" <<'EOF'
import json, sys
doc = {}
for arg in sys.argv[2:]:
    name, _, sizes = arg.partition("=")
    unpacked, _, compressed = sizes.partition(":")
    doc[name] = {"unpacked_bytes": int(unpacked)}
    if compressed:
        doc[name]["compressed_bytes"] = int(compressed)
with open(sys.argv[1], "w") as f:
    json.dump(doc, f, indent=2)
print(json.dumps(doc, indent=2))
mib = lambda n: f"{n / 2**20:.1f}" if n is not None else "-"
width = max(len(n) for n in doc)
print(f"{'image':<{width}}  {'unpacked MiB':>12}  {'compressed MiB':>14}", file=sys.stderr)
for name, d in doc.items():
    print(f"{name:<{width}}  {mib(d['unpacked_bytes']):>12}  {mib(d.get('compressed_bytes')):>14}",
          file=sys.stderr)
EOF
}

# --- the Docker route --------------------------------------------------------------------

docker_route() {
    local args=() t name sizes=()
    [[ -n "${BASE:-}" ]] && args+=(--build-arg "BASE=$BASE")
    local ca
    ca="$(pip_ca)"
    [[ -n "$ca" ]] && args+=(--secret "id=pip-ca,src=$ca")
    if [[ $check_only -eq 0 ]]; then
        for t in "${targets[@]}"; do
            name="$(image_name "$t")"
            say "docker build --target $t -> $name"
            DOCKER_BUILDKIT=1 docker build -f "$repo/images/Dockerfile" --target "$t" \
                --build-arg "VERSION=$tag" "${args[@]}" -t "$name" "$repo" >&2
        done
    fi
    for t in "${targets[@]}"; do
        name="$(image_name "$t")"
        say "check: $name --help as 10001, read-only root filesystem"
        docker run --rm --read-only --user 10001:10001 --network none "$name" --help >/dev/null ||
            die "$name: its entrypoint does not answer --help"
        sizes+=("$name=$(docker image inspect --format '{{.Size}}' "$name")")
    done
    report_sizes "${sizes[@]}"
}

# --- the buildah route -------------------------------------------------------------------

# buildah's storage driver: overlay where the kernel mounts it (a cached layer costs nothing;
# measured here: a warm rebuild of the three images in seconds), else vfs, which copies the
# whole root filesystem for every build step and container (a warm rebuild ~3 minutes).
# BUILDAH_STORAGE_DRIVER picks one. Each driver has a storage directory of its own.
storage_driver() {
    if [[ -n "${BUILDAH_STORAGE_DRIVER:-}" ]]; then
        echo "$BUILDAH_STORAGE_DRIVER"
        return
    fi
    local probe
    probe="$(mktemp -d)"
    mkdir "$probe"/{lower,upper,work,merged}
    if mount -t overlay overlay -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" \
        "$probe/merged" 2>/dev/null; then
        umount "$probe/merged"
        echo overlay
    else
        echo vfs
    fi
    rm -rf "$probe"
}
driver="$(storage_driver)"
storage="$cache/storage-$driver"
bah() { buildah --root "$storage" --runroot "$cache/run-$driver" --storage-driver "$driver" "$@"; }

# Working containers and runc containers this run made, removed however it ends: a mounted
# container left behind would keep an overlay mount in the cache.
containers=()
runc_ids=()
cleanup() {
    local c
    for c in "${runc_ids[@]}"; do runc delete --force "$c" >/dev/null 2>&1 || true; done
    for c in "${containers[@]}"; do bah rm "$c" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

need_tools() {
    local missing=()
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    command -v buildah >/dev/null 2>&1 || missing+=(buildah)
    command -v runc >/dev/null 2>&1 || missing+=(runc)
    [[ ${#missing[@]} -eq 0 ]] && return 0
    command -v apt-get >/dev/null 2>&1 ||
        die "no Docker engine and no apt-get to install ${missing[*]}: install them, or Docker"
    [[ $(id -u) -eq 0 ]] || die "installing ${missing[*]} needs root (apt-get); or install Docker"
    say "installing ${missing[*]} (Debian packages)"
    apt-get install -y -q "${missing[@]}" >&2 ||
        { apt-get update -q >&2 && apt-get install -y -q "${missing[@]}" >&2; } ||
        die "apt-get install ${missing[*]} failed"
}

# debootstrap mounts /proc (and /sys) inside the target while it installs; one that died
# half-way may leave them mounted, and rm -rf must never walk into them.
unmount_under() {
    [[ -d "$1" ]] || return 0
    awk -v d="$(realpath "$1")/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r |
        while read -r m; do umount -l "$m" || true; done
}

# The root filesystem: debootstrap once (about a minute), kept with a stamp naming what it
# was made from; a different suite, include list or mirror makes a new one.
rootfs() {
    local dir="$cache/rootfs-$suite" stamp="$suite $include $mirror"
    if [[ -f "$dir.stamp" && "$(cat "$dir.stamp")" == "$stamp" ]]; then
        say "root filesystem cached: $dir"
        return 0
    fi
    local t=$SECONDS
    say "debootstrap --variant=minbase --include=$include $suite (about a minute)"
    unmount_under "$dir.tmp"
    rm -rf "$dir" "$dir.tmp" "$dir.stamp"
    debootstrap --variant=minbase --include="$include" "$suite" "$dir.tmp" "$mirror" \
        >"$cache/debootstrap.log" 2>&1 || { tail -n 20 "$cache/debootstrap.log" >&2; die "debootstrap failed"; }
    # What an image needs no copy of: package downloads and lists, documentation, man pages,
    # translations (as Docker's debian:*-slim images drop them).
    rm -rf "$dir.tmp"/var/cache/apt/archives/*.deb "$dir.tmp"/var/lib/apt/lists/* \
        "$dir.tmp"/usr/share/doc/* "$dir.tmp"/usr/share/man/* "$dir.tmp"/usr/share/info/* \
        "$dir.tmp"/usr/share/locale/* "$dir.tmp"/var/log/*.log "$dir.tmp"/var/cache/debconf/*-old
    mv "$dir.tmp" "$dir"
    echo "$stamp" >"$dir.stamp"
    say "root filesystem made in $((SECONDS - t)) s: $(du -sh "$dir" | cut -f1)"
}

# The base image from it, committed once per root filesystem (its stamp is a label).
base() {
    local dir="$cache/rootfs-$suite" want have
    want="$(sha256sum "$dir.stamp" | cut -c1-16)"
    # A label, not an annotation: Docker-format images (needed for HEALTHCHECK) drop
    # annotations, and a base recommitted on every run would miss every cached layer.
    have="$( (bah inspect --type image "$base_image" 2>/dev/null || echo '{}') | python3 -c \
        'import json,sys; d=json.load(sys.stdin); print(((d.get("Docker") or {}).get("config") or {}).get("Labels", {}).get("dev.concord.rootfs", ""))')"
    if [[ "$have" == "$want" ]]; then
        say "base image cached: $base_image"
        return 0
    fi
    local t=$SECONDS ctr mnt
    say "committing $base_image from the root filesystem"
    ctr="$(bah from scratch)"
    containers+=("$ctr")
    mnt="$(bah mount "$ctr")"
    cp -a "$dir"/. "$mnt"/
    bah umount "$ctr" >/dev/null
    bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env LANG=C.UTF-8 --cmd python3 --label "dev.concord.rootfs=$want" \
        --label "org.opencontainers.image.description=Debian $suite minbase + $include" "$ctr"
    bah commit --quiet --format docker --rm "$ctr" "$base_image" >/dev/null
    say "base image committed in $((SECONDS - t)) s"
}

buildah_route() {
    need_tools
    say "buildah storage: $driver, in $storage"
    if [[ $check_only -eq 0 ]]; then
        local base_arg="${BASE:-}"
        if [[ -z "$base_arg" ]]; then
            rootfs
            base
            base_arg="$base_image"
        fi
        local args=(--isolation chroot --layers --format docker --pull=false
            --build-arg "BASE=$base_arg" --build-arg "VERSION=$tag" -f "$repo/images/Dockerfile")
        local ca t name
        ca="$(pip_ca)"
        [[ -n "$ca" ]] && args+=(--secret "id=pip-ca,src=$ca")
        for t in "${targets[@]}"; do
            name="$(image_name "$t")"
            local bt=$SECONDS
            say "buildah bud --target $t -> $name"
            bah bud "${args[@]}" --target "$t" -t "$name" "$repo" >"$cache/build-$t.log" 2>&1 ||
                { tail -n 30 "$cache/build-$t.log" >&2; die "building $t failed (log: $cache/build-$t.log)"; }
            say "$t built in $((SECONDS - bt)) s"
        done
    fi
    local sizes=() t
    for t in "${targets[@]}"; do
        check_image "$t"
    done
    report_sizes "${sizes[@]}"
}

# check_image TARGET: start the image twice, as a cluster would run it, and record its sizes.
# 1. `buildah run --isolation oci` (runc) under the image's own USER: the uid and gid are the
#    chart's 10001, and the .pyc for a Concord module was compiled at build time.
# 2. runc directly, with the image's entrypoint, environment and user, a read-only root
#    filesystem and no capabilities (the chart's securityContext): `ENTRYPOINT --help`
#    answers. (buildah run has no read-only root; runc's own spec does.)
check_image() {
    local t=$1 name ctr mnt bundle
    name="$(image_name "$t")"
    bah inspect --type image "$name" >"$cache/inspect-$t.json" 2>/dev/null ||
        die "no image $name: run make images"
    ctr="$(bah from --pull=never "$name")"
    containers+=("$ctr")
    mnt="$(bah mount "$ctr")"
    local log="$cache/check-$t.log" got
    : >"$log"
    say "check $t: uid, gid and build-time bytecode under buildah run --isolation oci"
    got="$(bah run --isolation oci "$ctr" -- python3 -c \
        'import os, importlib.util as u, coordinator.daemon.member as m; print(os.getuid(), os.getgid(), os.path.exists(u.cache_from_source(m.__file__)))' \
        2>>"$log")" || { tail -n 20 "$log" >&2; die "$name: python3 does not start (log: $log)"; }
    if [[ "$got" != "10001 10001 True" ]]; then
        die "$name: want uid 10001, gid 10001 and bytecode compiled at build time; got: $got"
    fi
    bundle="$cache/bundle-$t"
    rm -rf "$bundle"
    mkdir -p "$bundle"
    (cd "$bundle" && runc spec)
    python3 - "$bundle/config.json" "$cache/inspect-$t.json" "$mnt" <<'EOF'
import json, sys
spec_path, inspect_path, rootfs = sys.argv[1:]
spec = json.load(open(spec_path))
config = json.load(open(inspect_path))["Docker"]["config"]
uid, _, gid = (config.get("User") or "0").partition(":")
spec["root"] = {"path": rootfs, "readonly": True}
spec["hostname"] = "concord-image-check"
spec["process"].update(
    terminal=False,
    args=[*config["Entrypoint"], "--help"],
    env=config.get("Env") or [],
    cwd=config.get("WorkingDir") or "/",
    user={"uid": int(uid), "gid": int(gid or uid)},
    capabilities={k: [] for k in ("bounding", "effective", "permitted", "ambient")},
)
json.dump(spec, open(spec_path, "w"), indent=1)
EOF
    say "check $t: $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["Docker"]["config"]["Entrypoint"])' "$cache/inspect-$t.json") --help, read-only root, no capabilities, under runc"
    if ! runc run --bundle "$bundle" "concord-image-check-$t-$$" </dev/null >>"$log" 2>&1; then
        tail -n 20 "$log" >&2
        die "$name: its entrypoint does not answer --help on a read-only root (log: $log)"
    fi
    grep -q '^usage: ' "$log" || die "$name: --help printed no usage (log: $log)"
    [[ "$t" == coordinator ]] && serve_check "$t" "$name" "$bundle"
    # Unpacked: the root filesystem a container starts from.
    local unpacked
    unpacked="$(du -sb "$mnt" | cut -f1)"
    bah umount "$ctr" >/dev/null
    bah rm "$ctr" >/dev/null
    rm -rf "$bundle"
    sizes+=("$name=$unpacked:$(archive "$t" "$name")")
}

# serve_check TARGET NAME BUNDLE: the coordinator image, as the chart runs it
# (read-only root, uid 10001, no capabilities, its data on a volume), starts a one-member
# cluster; its own HEALTHCHECK command passes inside the container, then /readyz. Loopback only: the
# container has a network namespace of its own with nothing but lo.
serve_check() {
    local t=$1 name=$2 bundle=$3 id="concord-image-serve-$$" data="$cache/serve-data"
    local log="$cache/serve-$t.log"
    rm -rf "$data"
    mkdir -p "$data"
    chown 10001:10001 "$data"
    python3 - "$bundle/config.json" "$cache/inspect-$t.json" "$data" <<'EOF'
import json, sys
spec_path, inspect_path, data = sys.argv[1:]
spec = json.load(open(spec_path))
config = json.load(open(inspect_path))["Docker"]["config"]
spec["process"]["args"] = [
    *config["Entrypoint"], "--id", "1", "--cluster-id", "image-check", "--insecure",
    "--data-dir", "/var/lib/concord/data",
    "--client-listen", "127.0.0.1:7070", "--peer-listen", "127.0.0.1:7071",
    "--metrics-listen", "127.0.0.1:7072", "--initial-cluster", "1=127.0.0.1:7071",
]
spec["mounts"].append({"destination": "/var/lib/concord", "type": "bind", "source": data,
                       "options": ["rbind", "rw"]})
json.dump(spec, open(spec_path, "w"), indent=1)
EOF
    local test
    test="$(python3 -c 'import json,sys; t=json.load(open(sys.argv[1]))["Docker"]["config"]["Healthcheck"]["Test"]; assert t[0] == "CMD"; print("\n".join(t[1:]))' "$cache/inspect-$t.json")"
    mapfile -t test <<<"$test"
    say "check $t: a one-member cluster in the container answers its HEALTHCHECK (${test[*]})"
    runc_ids+=("$id")
    runc run --detach --bundle "$bundle" "$id" </dev/null >"$log" 2>&1 ||
        { tail -n 20 "$log" >&2; die "$name: does not start as a member (log: $log)"; }
    status() { runc state "$id" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])' 2>/dev/null; }
    local ok=0 i
    for i in $(seq 1 60); do
        if runc exec "$id" "${test[@]}" >>"$log" 2>&1; then ok=1; break; fi
        [[ "$(status)" == running ]] || break # it exited: its error is in the log
        sleep 0.5
    done
    local waited=$i ready=0
    # Then Ready: it elected itself and applied its first entry (the WAL fsyncs on the
    # volume), so the Raft loop itself runs in the image, not just its HTTP server.
    if [[ $ok -eq 1 ]]; then
        for i in $(seq 1 60); do
            if runc exec "$id" "${test[0]}" "${test[1]}" http://127.0.0.1:7072/readyz >>"$log" 2>&1; then
                ready=1
                break
            fi
            sleep 0.5
        done
    fi
    runc kill "$id" TERM 2>/dev/null || true
    for i in $(seq 1 20); do
        [[ "$(status)" == running ]] || break
        sleep 0.5
    done
    runc delete --force "$id" >/dev/null 2>&1 || true
    [[ $ok -eq 1 ]] || { tail -n 20 "$log" >&2; die "$name: its HEALTHCHECK did not pass within 30 s (log: $log)"; }
    [[ $ready -eq 1 ]] || { tail -n 20 "$log" >&2; die "$name: healthy, but not Ready (a leader) within 30 s (log: $log)"; }
    say "check $t: healthy after ~$((waited / 2)) s, Ready (leader of itself) after ~$((i / 2)) s more; stopped with SIGTERM"
    rm -rf "$data"
}

# The image as an OCI archive (gzip layers, what a pull downloads), made once per image id:
# its size is the compressed size, and `kind load image-archive` takes it on a machine with
# kind but no docker build. Prints the archive's size in bytes.
archive() {
    local t=$1 name=$2 id file
    id="$(bah inspect --type image --format '{{.FromImageID}}' "$name")"
    file="$cache/archives/concord-$t-${id:0:12}.tar"
    if [[ ! -s "$file" ]]; then
        mkdir -p "$cache/archives"
        rm -f "$cache/archives/concord-$t-"*.tar
        bah push --quiet "$name" "oci-archive:$file.tmp:$name" >/dev/null
        mv "$file.tmp" "$file"
    fi
    stat -c %s "$file"
}

exec 9>"$cache/lock"
command -v flock >/dev/null 2>&1 && flock 9
if [[ $clean -eq 1 ]]; then
    for d in overlay vfs; do
        [[ -d "$cache/storage-$d" ]] && command -v buildah >/dev/null 2>&1 &&
            buildah --root "$cache/storage-$d" --runroot "$cache/run-$d" --storage-driver "$d" \
                rm --all >/dev/null 2>&1
    done
    unmount_under "$cache"
    rm -rf "$cache"
    say "removed $cache"
    exit 0
fi
if docker_engine; then
    say "a Docker engine answers: building with docker"
    docker_route
else
    if command -v docker >/dev/null 2>&1; then
        why="$(docker info 2>&1 | grep -m1 -i 'cannot connect' || true)"
        say "docker is here but no engine answers (${why:-docker info failed}): using buildah"
    else
        say "no docker: using buildah"
    fi
    buildah_route
fi
say "done in $((SECONDS - started)) s"

#!/usr/bin/env bash
# Create (or reuse) Concord's development virtualenv and install `-e '.[dev]'` into it.
#
# The venv lives OUTSIDE the repo, at
#     ${CONCORD_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/concord/venv}
# (the Makefile uses the same default). It is built with the machine's python3 (>= 3.11), or
# with $PYTHON if set.
#
# Idempotent and fast when nothing changed: a stamp file inside the venv holds a hash of
# pyproject.toml, the repo path (an editable install points at a path) and the interpreter
# version; pip runs only when that hash differs. Non-interactive (no stdin needed, fine with
# CI=true). When nothing changed it prints one line; when it installs, it first says what and
# how long that usually takes, then a line every 15 s while pip runs (a first install looks
# hung otherwise), then what it did and how long it took. pip's log is shown only on failure.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
venv="${CONCORD_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/concord/venv}"
python="${PYTHON:-python3}"
stamp="$venv/.concord-bootstrap"

die() { echo "bootstrap: $*" >&2; exit 1; }

# Serialize concurrent bootstraps (two `make` runs in the same tree) when flock is available.
mkdir -p "$(dirname "$venv")"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$venv.lock"
    flock 9
fi

# A usable venv: its interpreter runs and is >= 3.11. Anything else is rebuilt from scratch.
venv_ok() {
    [[ -x "$venv/bin/python" ]] &&
        "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}

action="reused"
if ! venv_ok; then
    command -v "$python" >/dev/null 2>&1 || die "$python not found; install Python >= 3.11"
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "$python is $("$python" -V 2>&1); Concord needs Python >= 3.11 (set PYTHON=...)"
    rm -rf "$venv"
    "$python" -m venv "$venv" || die "could not create a venv at $venv with $python"
    action="created"
fi

want="$(
    {
        sha256sum "$repo/pyproject.toml" | cut -d' ' -f1
        echo "$repo"
        "$venv/bin/python" -c 'import sys; print(sys.version)'
    } | sha256sum | cut -d' ' -f1
)"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "bootstrap: venv $venv up to date (pip skipped)"
    exit 0
fi

log="$venv/.concord-bootstrap.log"
rm -f "$stamp"
# Measured on a 2-CPU machine: ~18 s with a warm pip cache; a cold cache downloads ~100 MB.
echo "bootstrap: installing Concord (-e '.[dev]') into $venv: grpcio, protobuf, cryptography," \
    "click, prometheus-client, pyyaml, aiohttp, jsonschema, the operator's kopf and kubernetes," \
    "uvloop, and the dev tools pytest, pytest-xdist, hypothesis, schemathesis, mypy, ruff," \
    "import-linter, grpcio-tools;" \
    "usually ~20 s with a warm pip cache, a few minutes on a first, cold one"
started=$SECONDS
(cd "$repo" && PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    exec "$venv/bin/python" -m pip install --no-input -e "$repo[dev]") </dev/null >"$log" 2>&1 &
pip_pid=$!
# A line every 15 s while pip runs; `wait` afterwards gives pip's own exit status.
while kill -0 "$pip_pid" 2>/dev/null; do
    for _ in $(seq 15); do
        sleep 1
        kill -0 "$pip_pid" 2>/dev/null || break 2
    done
    echo "bootstrap: still installing ($((SECONDS - started)) s; pip's log: $log)"
done
if ! wait "$pip_pid"; then
    cat "$log" >&2
    die "pip install -e '.[dev]' failed (log: $log)"
fi
echo "$want" >"$stamp"
echo "bootstrap: venv $venv $action; installed -e '.[dev]' from $repo in $((SECONDS - started)) s"

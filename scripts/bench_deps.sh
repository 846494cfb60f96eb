#!/usr/bin/env bash
# Install the benchmark-only dependencies (pyproject.toml's `bench` extra: PySyncObj,
# matplotlib, py-spy) into Concord's venv, for `make bench` and `make bench-report` only.
#
# The venv is the one scripts/bootstrap.sh maintains (outside the repo). Only the extra's
# requirements are installed (not the project again), and only when they changed: a stamp in
# the venv holds a hash of the requirement list and the interpreter version. Prints one line.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
venv="${CONCORD_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/concord/venv}"
py="$venv/bin/python"
stamp="$venv/.concord-bench-deps"

[[ -x "$py" ]] || { echo "bench_deps: no venv at $venv (run scripts/bootstrap.sh)" >&2; exit 1; }

reqs="$("$py" - "$repo/pyproject.toml" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["optional-dependencies"]["bench"]))
EOF
)"
want="$({ echo "$reqs"; "$py" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "bench_deps: bench extra up to date (pip skipped)"
    exit 0
fi

log="$venv/.concord-bench-deps.log"
# shellcheck disable=SC2086 # one requirement per line, none with spaces
if ! PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 "$py" -m pip install --no-input $reqs \
    </dev/null >"$log" 2>&1; then
    cat "$log" >&2
    echo "bench_deps: pip install of the bench extra failed (log: $log)" >&2
    exit 1
fi
echo "$want" >"$stamp"
echo "bench_deps: installed the bench extra: $(echo "$reqs" | tr '\n' ' ')"

# Concord's commands. `make run` is the main job, `make test` the whole suite (see README.md).
# Every Python tool runs from the venv that scripts/bootstrap.sh maintains outside the repo.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

# Same default as scripts/bootstrap.sh; exported so both always agree.
VENV ?= $(or $(CONCORD_VENV),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/concord/venv)
export CONCORD_VENV := $(VENV)
BIN := $(VENV)/bin
PY := $(BIN)/python

SEEDS ?= 2000

# pytest-xdist workers for `make test` and `make test-fast`: 2 by default (PYTEST_WORKERS=0 runs
# the suite in one process). Most of the suite waits on real processes, timers and elections,
# so two workers overlap those waits (on a quiet 2-core machine pytest took 16 min serial and
# 11.5 min on two). Test servers take their ports from coordinator/testing/ports.py (below the
# ephemeral range, a cursor shared by every process), so two workers never race for one.
# Plain --dist load (each worker runs a module's tests with its own module fixtures, and
# starts its own control plane on free ports): --dist loadfile would keep modules whole but
# drops tests sharing a node id (the schemathesis cases of tests/sidecar/test_fuzz.py), and
# --dist loadgroup does not group under pytest 9.2 (pytest-xdist issue 1386).
PYTEST_WORKERS ?= 2
PYTEST_PARALLEL := $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS))

.PHONY: help bootstrap run run-local test test-fast test-deploy chart-crds kube-tools images images-check images-clean kind-up deploy kind-down bench-operator bench-sidecar bench-scale bench-reads sim elections soak mutants bench bench-report lint typecheck fmt clean

help:
	@echo "make run           the whole stack: control plane, helm install, operator, a kubectl demo (~35 s warm)"
	@echo "make run-local     3 members on loopback + a lock, sequence, CAS and failover demo (~5 s)"
	@echo "make test          the whole suite: lint, typecheck, import contracts, pytest, sim"
	@echo "make kube-tools    build the pinned Kubernetes control plane, etcd and helm (~10 min cold)"
	@echo "make test-deploy   the Helm chart on the control plane, its pods run by the node agent (~2 min)"
	@echo "make chart-crds    copy crds/ into charts/concord/crds/ (a test checks they are equal)"
	@echo "make images        the coordinator, operator and sidecar images (docker, else buildah; 2-3 min cold, ~15 s warm)"
	@echo "make images-check  start each built image once (uid 10001, read-only root; the coordinator until healthy)"
	@echo "make images-clean  remove the image caches and buildah's storage"
	@echo "make kind-up | deploy | kind-down   a kind cluster running the chart with those images (needs Docker)"
	@echo "make sim SEEDS=N   run N simulation seeds (default $(SEEDS))"
	@echo "make elections     leader-crash downtime distribution (Raft paper Figure 16)"
	@echo "make soak MINUTES=N  random fault schedules on real processes (default $(MINUTES) min)"
	@echo "make mutants      plausible one-line bugs, each applied to a copy of the tree; its test must fail (~2 min)"
	@echo "make bench         Concord vs etcd vs PySyncObj (BENCH_QUICK=1: ~2 min smoke run)"
	@echo "make bench-report  docs/benchmarks.md from the latest 3 make bench runs and make bench-scale (BENCH_ARGS=--runs N)"
	@echo "make bench-operator  the operator under 1,000 churning Leases (BENCH_ARGS=...)"
	@echo "make bench-sidecar   lock cycles/s through the sidecar beside the client library"
	@echo "make bench-scale     5,000 watchers on one prefix, Concord beside etcd (BENCH_ARGS=...; --leases 1000,5000 for leases, --locks 1000,10000 for held locks)"
	@echo "make bench-reads     linearizable reads, --read-mode barrier beside lease, etcd as reference (BENCH_ARGS=--rounds 3 --no-etcd ...)"
	@echo "make lint | typecheck | fmt | clean"

bootstrap:
	@bash scripts/bootstrap.sh
	@$(PY) scripts/gen_protos.py

# The whole stack (README.md, Quick start): the pinned Kubernetes tools (built on first use,
# ~10 min cold), the local control plane, the node agent, `helm install` of charts/concord, a
# kubectl demo; everything stopped at the end. RUN_ARGS=--keep keeps it up until Ctrl-C.
RUN_ARGS ?=
run: bootstrap
	$(PY) -m coordinator.testing.stack $(RUN_ARGS)

# The quick coordinator-only demo: three members on loopback, no Kubernetes.
run-local: bootstrap
	$(PY) -m coordinator.cli.devcluster

test: bootstrap
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy -p coordinator -p concord_operator
	$(BIN)/lint-imports
	@$(MAKE) --no-print-directory kube-tools-if-needed
	$(BIN)/pytest $(PYTEST_PARALLEL)
	$(MAKE) --no-print-directory sim SEEDS=$(SEEDS)

# The suite without the real-process tests (kill -9, TLS handshakes, make run and run-local end to end) and
# without the Kubernetes control plane (four real processes, ~10 s to start).
test-fast: bootstrap
	$(BIN)/pytest $(PYTEST_PARALLEL) -m "not process and not kube"

# The chart on a real control plane through the node agent (docs/deploy.md): lint, render,
# server-side dry runs, helm install, a member pod deleted, a rolling update, the PDB.
test-deploy: bootstrap
	@$(MAKE) --no-print-directory kube-tools-if-needed
	$(BIN)/pytest tests/deploy

# helm installs a chart's crds/ before anything else; they are a copy of the top-level crds/.
chart-crds:
	cp crds/*.yaml charts/concord/crds/

# The Kubernetes control plane the `kube` tests start (docs/kubernetes.md): kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl, etcd and helm, pinned, built from the Go
# module proxy into a cache outside the repo. A second run returns in about a second.
kube-tools:
	@bash scripts/build_kube_tools.sh >/dev/null

# Container images (docs/deploy.md, Images): images/Dockerfile's three targets, built with
# docker where an engine answers, else with buildah on a Debian base made by debootstrap
# (both installed with apt if missing); caches under ~/.cache/concord/images. Each image is
# started once (its entrypoint, --help, uid 10001) and the sizes printed. Not in make test
# (minutes cold).
images:
	@bash scripts/build_images.sh

images-check:
	@bash scripts/build_images.sh --check

images-clean:
	@bash scripts/build_images.sh --clean

# A kind cluster from kind-config.yaml (1 control plane, 3 workers) running the chart with the
# images above (docs/deploy.md, kind). They need a Docker engine and kind: without them they
# stop at once, saying what is missing (scripts/kind.sh exits 3; make then exits 2).
kind-up:
	@bash scripts/kind.sh up

deploy:
	@bash scripts/kind.sh deploy

kind-down:
	@bash scripts/kind.sh down

# For `make test`: build them when they are missing and Go is here; under CI=true always try,
# so a CI without Go fails instead of skipping the Kubernetes tests; elsewhere without Go say
# that they will be skipped. CONCORD_KUBE_BIN (binaries from elsewhere) needs no build.
.PHONY: kube-tools-if-needed
kube-tools-if-needed:
	@if [[ -n "$${CONCORD_KUBE_BIN:-}" ]] || bash scripts/build_kube_tools.sh --check >/dev/null 2>&1; then \
		:; \
	elif command -v go >/dev/null 2>&1 || [[ "$${CI:-}" == true ]]; then \
		$(MAKE) --no-print-directory kube-tools; \
	else \
		echo "make test: no Go toolchain, so the Kubernetes tests will be skipped (see make kube-tools)"; \
	fi

sim: bootstrap
	$(PY) -m coordinator.testing.sim --seeds $(SEEDS)

TRIALS ?= 1000
elections: bootstrap
	$(PY) -m coordinator.testing.elections --trials $(TRIALS)

# Fault injection on real processes (docs/consensus.md): randomized, seeded nemesis schedules,
# one after another for MINUTES; histories and summary.json under .results/nemesis/. `make
# test` runs the bounded set (tests/nemesis). SOAK_SEED picks the first seed.
MINUTES ?= 10
SOAK_SEED ?=
soak: bootstrap
	$(PY) -m coordinator.testing.nemesis soak --minutes $(MINUTES) $(if $(SOAK_SEED),--seed $(SOAK_SEED))

# Source mutants (docs/simulation.md, Tests with teeth): each entry of
# coordinator/testing/source_mutants.py applied alone to a temporary copy of the tree (never
# this one), only its killing tests run; a table, and a non-zero exit if one survives or no
# longer applies. Not in make test (about 2 minutes); tests/test_source_mutants.py checks
# that every entry still applies. MUTANTS_ARGS: --only NAME ..., --list.
MUTANTS_ARGS ?=
mutants: bootstrap
	$(PY) -m coordinator.testing.source_mutants $(MUTANTS_ARGS)

# Benchmarks (issue 5): 3-member Concord, etcd (built by scripts/build_etcd.sh) and PySyncObj
# clusters; results under .results/bench/. Not part of `make test`. BENCH_ARGS passes options.
BENCH_QUICK ?=
BENCH_ARGS ?=
bench: bootstrap
	@bash scripts/bench_deps.sh
	$(PY) -m bench run $(if $(filter-out 0,$(BENCH_QUICK)),--quick) $(BENCH_ARGS)

# The operator under churn (issue 14): 1,000 Lease objects with changing holders on the local
# control plane; operator RSS and CPU, API-server writes/s, status lag p50/p99. Not in make test.
bench-operator: bootstrap kube-tools
	$(PY) -m bench.operator_churn $(BENCH_ARGS)

# Lock acquire+release cycles/s through concord-sidecar beside the client library, one run
# (issue 17). Not in make test.
bench-sidecar: bootstrap
	$(PY) -m bench.sidecar $(BENCH_ARGS)

# Watches at scale (issue 20): N watchers (100, 1,000, 5,000) on one prefix with writes at
# 20/s, Concord beside etcd in one run; delivery, latency, write p50 vs no watchers, leader
# CPU (docs/watches.md). Not in make test. BENCH_ARGS: --watchers, --seconds, --etcd PATH.
bench-scale: bootstrap
	$(PY) -m bench.scale $(BENCH_ARGS)

# Lease reads (issue 19): the read cell of `make bench` at 1/16/64/256 in flight and a
# sequential write as control, on fresh clusters with --read-mode barrier and with lease over
# alternating rounds, etcd as reference; leader CPU and the share of reads served on the lease
# (docs/latency.md). Not in make test. BENCH_ARGS: --levels, --seconds, --warmup, --rounds,
# --no-etcd.
bench-reads: bootstrap
	$(PY) -m bench.read_modes $(BENCH_ARGS)

bench-report: bootstrap
	@bash scripts/bench_deps.sh
	$(PY) -m bench report $(BENCH_ARGS)

lint: bootstrap
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: bootstrap
	$(BIN)/mypy -p coordinator -p concord_operator

fmt: bootstrap
	$(BIN)/ruff check --select I --fix .
	$(BIN)/ruff format .

# Build outputs and tool caches only: never the venv, demo data (.run/) or results (.results/).
clean:
	rm -rf build dist .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
	find . -path ./.git -prune -o \( -name __pycache__ -o -name '*.egg-info' \) -type d \
		-prune -exec rm -rf {} +

# One-command set-up and CI for vws. Every target that needs the environment runs `setup`
# first; `setup` is idempotent and quick (about a second) when nothing changed.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest
VWS    := $(VENV)/bin/vws
BUF    := .tools/node_modules/.bin/buf
# Extra arguments, e.g. `make test PYTEST_ARGS='-k manager -x'`.
PYTEST_ARGS ?=

.PHONY: help setup setup-system setup-python setup-tools setup-libvirt guest gen up down test contract fuzz chaos bench lint fmt clean distclean

help:
	@echo 'make setup      Debian packages, libvirtd, the test guest, .venv (pip install -e .[test]), buf'
	@echo 'make up / down  start / stop the local stack (vws up / vws down)'
	@echo 'make test       the whole test suite (tests/)'
	@echo 'make contract   only tests/contract (protos: buf lint, C++ and Python stubs)'
	@echo 'make fuzz       the fuzz suite (tests/fuzz) long: FUZZ_EXAMPLES=2000 requests per RPC, then its figures'
	@echo 'make chaos      the chaos suite (tests/chaos) long: CHAOS_ROUNDS=50 rounds of kill -9, seed CHAOS_SEED (random), then its figures'
	@echo 'make bench      the benchmarks (bench/), results in bench/results.json'
	@echo 'make lint       buf lint + buf format check of protos/'
	@echo 'make fmt        buf format -w protos/'
	@echo 'make gen        regenerate the Python stubs into services/v1'
	@echo 'make clean      generated files and caches; make distclean also .venv and .tools'

setup:
	@start=$$(date +%s.%N); \
	scripts/setup-system.sh; scripts/setup-libvirt.sh; scripts/build-guest.sh; \
	scripts/setup-python.sh; scripts/setup-tools.sh; scripts/build-fft.sh; \
	awk -v a="$$start" -v b="$$(date +%s.%N)" 'BEGIN { printf "[setup] %-16s %.1fs\n", "done", b - a }'

setup-system setup-python setup-tools setup-libvirt:
	@scripts/$@.sh

# The test guest (Debian cloud kernel, busybox + qemu-guest-agent initramfs, a self-booting
# disk variant) in /var/lib/vws/guest; `vws up` registers it as images busybox and busybox-disk.
guest:
	@scripts/build-guest.sh

gen: setup
	$(PY) protos/generate.py

up: setup
	$(VWS) up

down:
	@test -x $(VWS) || { echo 'no $(VWS): run make setup' >&2; exit 1; }
	$(VWS) down

test: setup
	$(PYTEST) tests -q -p no:cacheprovider --durations=15 $(PYTEST_ARGS)

contract: setup
	$(PYTEST) tests/contract -q -p no:cacheprovider $(PYTEST_ARGS)

# The fuzz suite runs in `make test` with 20 examples per RPC (VWS_FUZZ_EXAMPLES); here long. Its
# figures (requests sent, statuses by code, every distinct failure) close the output.
FUZZ_EXAMPLES ?= 2000
fuzz: setup
	VWS_FUZZ_RANDOM=1 VWS_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PYTEST) tests/fuzz -q -p no:cacheprovider --timeout=0 $(PYTEST_ARGS)

# The chaos suite runs in `make test` with 3 rounds of seed 17 (VWS_CHAOS_ROUNDS, VWS_CHAOS_SEED); here
# many, of a seed drawn afresh unless CHAOS_SEED is given. Its figures (rounds, kills per service,
# operations by outcome, findings by kind, retried creates converged) close the output.
CHAOS_ROUNDS ?= 50
CHAOS_SEED ?= random
chaos: setup
	VWS_CHAOS_SEED=$(CHAOS_SEED) VWS_CHAOS_ROUNDS=$(CHAOS_ROUNDS) $(PYTEST) tests/chaos -q -p no:cacheprovider --timeout=0 $(PYTEST_ARGS)

bench: setup
	@test -d bench || { echo 'no bench/ directory' >&2; exit 1; }
	$(PYTEST) bench -q -p no:cacheprovider --benchmark-only \
	  --benchmark-columns=min,median,max,ops --benchmark-json=bench/results.json $(PYTEST_ARGS)

lint: setup
	cd protos && ../$(BUF) lint && ../$(BUF) format --diff --exit-code

fmt: setup
	cd protos && ../$(BUF) format -w

clean:
	rm -rf services/v1 build dist .pytest_cache .benchmarks bench/results.json
	find . -path ./.venv -prune -o -path ./.tools -prune -o -path ./.git -prune -o \
	  \( -name __pycache__ -o -name '*.egg-info' \) -type d -print0 | xargs -0r rm -rf
	rm -f $(VENV)/.vws-setup-stamp

distclean: clean
	rm -rf $(VENV) .tools

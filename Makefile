# The README's two commands, `make run` and `make test`, each set everything up first.
# A fresh machine needs only Python 3.11 and make: uv comes from PyPI into .uv/, and uv then
# builds .venv/ with exactly what uv.lock says.
PYTHON ?= python3.11
UV := .uv/bin/uv
VENV := .venv
METRION := $(VENV)/bin/metrion
STAMP := $(VENV)/.synced

.PHONY: run test clean bench bench-ab bench-instructions

$(UV):
	$(PYTHON) -m venv .uv
	.uv/bin/pip install --quiet --disable-pip-version-check uv

$(STAMP): $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --python $(PYTHON)
	touch $(STAMP)

run: $(STAMP)
	$(METRION) init
	$(METRION) run

# The dashboard's test renders its pages in Debian's Chromium (headless).
test: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || apt-get install -y chromium || (apt-get update && apt-get install -y chromium)
	$(VENV)/bin/pytest

# Metrion's cost over the bare proxy (bench/README.md); 6 to 10 minutes. wrk is Debian's package.
# `make bench BENCH_ARGS=--quick` for a one-minute smoke run.
bench: $(STAMP)
	@command -v wrk >/dev/null 2>&1 || apt-get install -y wrk || (apt-get update && apt-get install -y wrk)
	$(VENV)/bin/python bench/run.py $(BENCH_ARGS)

# One change judged by itself: Metrion at BASE (a commit; default HEAD, so: the uncommitted
# changes) against this checkout, both loaded at once (bench/ab.py); about two minutes.
# Set with `make bench-ab BASE=...`; unlike `?=`, a BASE in the environment is ignored.
BASE = HEAD
bench-ab: $(STAMP)
	@command -v wrk >/dev/null 2>&1 || apt-get install -y wrk || (apt-get update && apt-get install -y wrk)
	$(VENV)/bin/python bench/ab.py --base $(BASE) $(AB_ARGS)

# Instructions per request under valgrind's callgrind: steadier than time, for judging a change
# to the hot path, and simulated L2 misses (bench/instructions.py); 7 to 25 minutes. valgrind is
# Debian's package.
bench-instructions: $(STAMP)
	@command -v valgrind >/dev/null 2>&1 || apt-get install -y valgrind || (apt-get update && apt-get install -y valgrind)
	$(VENV)/bin/python bench/instructions.py

clean:
	rm -rf .uv $(VENV)

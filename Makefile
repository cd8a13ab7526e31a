# The two commands a person needs:
#   make demo   - set everything up on a fresh machine and run dedicap on the local stack
#   make test   - set everything up and run lint, type checks, unit and integration tests
# Setup is idempotent: packages, the virtual environment and the cached binaries are reused.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup system-packages venv binaries demo test lint unit integration down clean

setup: system-packages venv binaries

# Debian's python3.11 (the Triton Python backend links its libpython3.11), Prometheus (and its
# promtool) and Alertmanager.
system-packages:
	@missing=""; \
	for p in python3.11 python3.11-venv python3.11-dev libpython3.11 prometheus \
	         prometheus-alertmanager; do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "==> installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

venv: $(STAMP)
$(STAMP): pyproject.toml
	@test -x $(PY) || /usr/bin/python3.11 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,plan,local,monitoring]'
	@touch $(STAMP)

binaries:
	bash deploy/local/build-binaries.sh

demo: setup
	$(VENV)/bin/dedicap-local demo

lint: venv
	$(VENV)/bin/ruff check operator deploy/local tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/dedicap crds --check
	$(VENV)/bin/dedicap monitoring --check

unit: venv
	$(VENV)/bin/pytest -q tests/unit

integration: setup
	$(VENV)/bin/pytest -q -m integration tests/integration

test: setup lint
	$(VENV)/bin/pytest -q -rs tests

down:
	-$(VENV)/bin/dedicap-local down

clean: down
	rm -rf $(VENV)

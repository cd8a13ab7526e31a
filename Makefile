# The two commands a person needs:
#   make demo   - set everything up on a fresh machine and run dedicap on the local stack
#   make test   - set everything up and run lint, type checks, unit and integration tests
# Setup is idempotent: packages, the virtual environment and the cached binaries are reused.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CACHE_DIR := $(or $(DEDICAP_CACHE),$(HOME)/.cache/dedicap)

.PHONY: setup system-packages venv binaries image image-docker image-verify image-lock \
	image-lock-debian demo test lint unit integration campaign down clean

setup: system-packages venv binaries

# Debian's python3.11 (the Triton Python backend links its libpython3.11), Prometheus (and its
# promtool) and Alertmanager; the image tools (mmdebstrap, umoci, skopeo) and bubblewrap, which
# also runs the process nodes' pods.
system-packages:
	@missing=""; \
	for p in python3.11 python3.11-venv python3.11-dev libpython3.11 prometheus \
	         prometheus-alertmanager mmdebstrap umoci skopeo bubblewrap; do \
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

# The operator's OCI image, built from Debian's and PyPI's packages at the pins of deploy/image/
# (no container engine): dist/dedicap_<version>.oci.tar. Cached layers make a rebuild quick.
image: setup
	$(PY) deploy/image/build.py

# The same plus a docker-archive (docker load) beside it.
image-docker: setup
	$(PY) deploy/image/build.py --docker-archive

# Build twice with empty caches and compare the digests.
image-verify: setup
	$(PY) deploy/image/build.py --verify

# Re-pin the image's Python packages (from pyproject.toml) and build tools, with hashes.
image-lock: venv
	@test -x $(CACHE_DIR)/image/pip-tools/bin/pip-compile || \
	  (/usr/bin/python3.11 -m venv $(CACHE_DIR)/image/pip-tools && \
	   $(CACHE_DIR)/image/pip-tools/bin/pip install -q pip-tools==7.5.1)
	cd deploy/image && PIP_FIND_LINKS= CUSTOM_COMPILE_COMMAND="make image-lock" \
	  $(CACHE_DIR)/image/pip-tools/bin/pip-compile -q --generate-hashes --strip-extras \
	  --no-emit-index-url --no-emit-find-links --output-file requirements.lock ../../pyproject.toml
	cd deploy/image && PIP_FIND_LINKS= CUSTOM_COMPILE_COMMAND="make image-lock" \
	  $(CACHE_DIR)/image/pip-tools/bin/pip-compile -q --generate-hashes --allow-unsafe \
	  --no-emit-index-url --no-emit-find-links --output-file build-tools.lock build-tools.in

# Re-pin the image's Debian packages at the versions the mirror has now.
image-lock-debian: setup
	$(PY) deploy/image/build.py --lock-debian

demo: setup
	$(VENV)/bin/dedicap-local demo

lint: venv
	$(VENV)/bin/ruff check operator deploy/local deploy/image tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy deploy/image/build.py
	$(VENV)/bin/dedicap crds --check
	$(VENV)/bin/dedicap monitoring --check

unit: venv
	$(VENV)/bin/pytest -q tests/unit

integration: setup image
	$(VENV)/bin/pytest -q -m integration tests/integration

# The integration tests run the operator's image: `image` builds it (cached after the first time).
test: setup lint image
	$(VENV)/bin/pytest -q -rs tests

# The full reliability and security campaign (docs/reliability.md): 100 operator kills, 1,000
# generated objects, Prometheus down for 10 minutes, and the other faults; about 40 minutes on
# 2 cores. `make test` runs the same tests in a bounded form. DEDICAP_CAMPAIGN_SEED=<n> replays a
# run; the record of figures goes to benchmarks/results/campaign.json.
CAMPAIGN_TESTS := tests/campaign tests/unit/test_bad_input.py tests/unit/test_netpol.py \
	tests/integration/test_isolation.py \
	tests/integration/test_autoscaling.py::test_prometheus_down_during_a_load_drop_holds_replicas_and_says_why \
	"tests/integration/test_capacity_operator.py::test_deleted_node_replicas_replaced_within_reservation_and_accounting_follows" \
	tests/integration/test_capacity_operator.py::test_a_zone_drained_and_removed_moves_replicas_within_the_reservation_one_at_a_time \
	tests/integration/test_chart.py
campaign: setup image
	DEDICAP_CAMPAIGN=full DEDICAP_CAMPAIGN_REPORT=benchmarks/results/campaign.json \
	  $(VENV)/bin/pytest -q -rs -p no:cacheprovider $(CAMPAIGN_TESTS)

down:
	-$(VENV)/bin/dedicap-local down

clean: down
	rm -rf $(VENV)

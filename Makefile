# overhaul: `make demo` shows it working, `make test` checks it. Both install what is missing first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Some machines set PYTHONDONTWRITEBYTECODE: every test process (and every `overhaul` it starts) would compile the
# project and rewrite the tests' asserts again, seconds of CPU each time.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: all setup machine test check lint docs unit demo demo-vm demo-agent bench chaos chaos-ha clean

all: test

# The Python environment, rebuilt when either distribution's pyproject.toml changes: the agent (agent/) and the
# orchestrator with the test tools (.), both editable.
$(STAMP): pyproject.toml agent/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ./agent -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# System packages (apt-get, only when absent) and the container engine's machine configuration.
machine:
	scripts/setup-machine

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(PY) scripts/check_shape.py
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

# The documentation site (docs/, mkdocs-material) into site/; `make docs` then open site/index.html.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# Three workers on two cores: most tests wait on I/O; the real-engine modules are grouped (tests/conftest.py).
WORKERS ?= 3
unit: setup machine
	$(PY) -m pytest -q -n $(WORKERS) --dist loadgroup --durations=25

test: lint unit

# The fast lane while working: lint and every level below end to end that needs no container engine or VM (core,
# runtime on the memory driver, the agent, HTTP, the CLI) except the load tests. `make test` runs all of it too.
# Work stealing: an idle worker takes tests queued behind a long one (the schemathesis parts) instead of waiting.
check: setup lint
	$(PY) -m pytest -q -m "not engine and not load" -n 3 --dist worksteal --ignore tests/e2e

demo: setup machine
	$(PY) demo/rollout_demo.py

# The same story on 3 QEMU VMs (TCG here: a few minutes).
demo-vm: setup machine
	$(PY) demo/rollout_demo.py --vm

demo-agent: setup machine
	$(PY) demo/agent_demo.py

bench: setup machine
	$(PY) bench/cli_import_bench.py
	$(PY) bench/agent_bench.py
	$(PY) bench/orchestrator_bench.py
	$(PY) bench/hosts_bench.py
	$(PY) bench/watch_bench.py
	$(PY) bench/decide_bench.py
	$(PY) bench/store_bench.py
	$(PY) bench/vm_bench.py
	$(PY) bench/failover_bench.py

# Every seed of the in-memory chaos test (make test runs a sample), the API fuzzed with 100 examples an operation
# (make test: 10), then real rollouts on Podman with `overhaul serve` SIGKILLed (and sometimes its Podman service)
# at random moments; checks the invariants after each restart.
# KILLS=20 make chaos for a shorter run.
KILLS ?= 100
chaos: setup machine
	OVERHAUL_CHAOS_RUNS=500 $(PY) -m pytest -q -n 2 tests/runtime/test_chaos_memory.py
	OVERHAUL_FUZZ_EXAMPLES=100 $(PY) -m pytest -q -n 2 tests/adapters/http/test_api.py -k schemathesis
	$(PY) bench/chaos_podman.py --kills $(KILLS)

# Three orchestrators on one PostgreSQL and real Podman: the leader SIGKILLed or paused past its lease, a standby
# killed, PostgreSQL restarted, during real rollouts and rollbacks; checks fencing and the fleet's invariants.
# HA_KILLS=20 make chaos-ha for a shorter run.
chaos-ha: setup machine
	$(PY) bench/chaos_ha.py --kills $(or $(HA_KILLS),200)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis site

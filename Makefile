# One task runner for people, the README and CI.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed-stamp

.PHONY: run test unit integration lint bench demo clean ops-check ope-coverage bench-models soak bench-e2e

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

## Run the engine live: embedded broker + Redis, a worker, the simulator, a live terminal view (Ctrl-C stops).
run: $(STAMP)
	$(VENV)/bin/cadence run

## The whole test suite (unit + integration on the real embedded broker and Redis).
test: $(STAMP)
	$(PY) -m pytest -q

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

integration: $(STAMP)
	$(PY) -m pytest -q tests/integration

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy cadence contracts features bandits engine streams simulator policy models ope learning

demo: $(STAMP)
	$(VENV)/bin/cadence demo --duration 120 --json

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) load_tests/bench_bandits.py

clean:
	rm -rf $(VENV) .cadence *.egg-info

## Check the Prometheus alert rules (promtool comes with Debian's prometheus: ops/install_prometheus.sh).
ops-check:
	promtool check rules ops/prometheus/rules.yml
	promtool test rules ops/prometheus/rules_test.yml

## Off-policy evaluation: do the estimators' intervals cover the truth? (simulator, no Kafka)
ope-coverage: $(STAMP)
	$(PY) load_tests/ope_coverage.py --seeds 50 --n 20000 --json load_tests/results/ope_coverage.json

bench-models: $(STAMP)
	$(PY) -m load_tests.bench_models --json load_tests/results/models.json

## Soak: one worker under steady load; is its memory flat? (minutes; not CI)
soak: $(STAMP)
	$(PY) -m load_tests.soak --minutes 10 --rate 2000 --json load_tests/results/soak.json

## End-to-end benchmark against the Faust ceiling and naive yardsticks
bench-e2e: $(STAMP)
	$(PY) -m load_tests.bench_e2e --json load_tests/results/e2e.json

# The README's two commands are `make serve` and `make test`; both set up .venv on a fresh clone.
# Settings pass through: `make serve SERVE_PORT=9000` or `SERVE_PORT=9000 make serve`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SERVE_HOST ?= 127.0.0.1
SERVE_PORT ?= 8000
PYTEST_ARGS ?=
# The lock: exact versions of every dependency (runtime and extras), honoured by setup, bench and the image.
LOCK ?= constraints.txt
export SERVE_HOST SERVE_PORT
.EXPORT_ALL_VARIABLES:

.PHONY: setup serve test test-system test-load test-monitoring test-soak test-browser test-accuracy test-all lint lock bench docker-build train-% clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -c $(LOCK) -e '.[dev]'
	touch $@

# Re-resolve every dependency (runtime, dev, bench, otel) at the newest releases pyproject.toml allows and
# write the lock; run it after changing a dependency, then `make setup` installs those versions.
lock:
	test -x $(BIN)/pip || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q --dry-run --ignore-installed --report $(VENV)/lock-report.json '.[dev,bench,otel]'
	$(BIN)/python docker/lock.py $(VENV)/lock-report.json > $(LOCK).new
	mv $(LOCK).new $(LOCK)

serve: setup
	$(BIN)/python -m service

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-load: setup
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk) || echo "wrk could not be installed: its test will be skipped"
	$(BIN)/python -m pytest -q -m load $(PYTEST_ARGS)

test-system: setup
	$(BIN)/python -m pytest -q -m system $(PYTEST_ARGS)

test-monitoring: setup
	command -v prometheus >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus) || echo "prometheus could not be installed: its test will be skipped"
	$(BIN)/python -m pytest -q -s -m monitoring $(PYTEST_ARGS)

# Ten minutes of mixed traffic to every model on a real server (SOAK_SECONDS=600); prints its report (-s).
test-soak: setup
	$(BIN)/python -m pytest -q -s -m soak $(PYTEST_ARGS)

test-browser: setup
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) || echo "chromium could not be installed: the browser test will be skipped"
	$(BIN)/python -m pytest -q -m browser $(PYTEST_ARGS)

test-accuracy: setup
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

test-all: test test-system test-accuracy test-load test-monitoring test-soak test-browser lint

lint: setup
	$(BIN)/ruff check models training service tests bench
	$(BIN)/mypy service models bench

bench: setup
	$(BIN)/pip install --disable-pip-version-check -q -c $(LOCK) -e '.[dev,bench]'
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m bench $(BENCH_ARGS)

train-%: setup
	$(BIN)/python -m training $* $(TRAIN_ARGS)

docker-build:
	docker build --network host -t serve:cpu $(DOCKER_ARGS) .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

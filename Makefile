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

.PHONY: mutate setup serve test test-system test-load test-monitoring test-soak test-browser test-accuracy test-docker test-all lint lock bench docker-build docker-wheels docker-prepare train-% clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -c $(LOCK) -e '.[dev]'
	touch $@

# Re-resolve every dependency (runtime, dev, bench, otel) at the newest releases pyproject.toml allows and
# write the lock; run it after changing a dependency (on Linux x86_64, CPython 3.11: the image's platform),
# then `make setup` installs those versions. Then the packages of PyPI's CUDA build of the locked torch
# (--isolated, so that no local +cpu wheel stands in for it; PIP_CERT and LOCK_INDEX still apply).
LOCK_INDEX ?= https://pypi.org/simple
lock:
	test -x $(BIN)/pip || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q --dry-run --ignore-installed --report $(VENV)/lock-report.json '.[dev,bench,otel]'
	$(BIN)/python docker/lock.py $(VENV)/lock-report.json > $(LOCK).new
	$(BIN)/pip install --isolated --disable-pip-version-check -q --dry-run --ignore-installed --report $(VENV)/lock-report-cuda.json \
	    $(if $(PIP_CERT),--cert $(PIP_CERT)) --index-url $(LOCK_INDEX) -c $(LOCK).new "$$(grep '^torch==' $(LOCK).new)"
	$(BIN)/python docker/lock.py $(VENV)/lock-report.json $(VENV)/lock-report-cuda.json > $(LOCK).new
	mv $(LOCK).new $(LOCK)

serve: setup
	$(BIN)/python -m service

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# A Debian package a suite needs, installed when its command is missing. Where it cannot be installed, its tests
# skip on a developer's machine; with CI=true the install step fails the run (and so would those skips: conftest).
define apt_need
	@command -v $(1) >/dev/null || (apt-get update -qq && apt-get install -y -qq $(2)) || \
	    { echo "$(2) could not be installed: the tests that need it skip here, and fail the run with CI=true" >&2; \
	      case "$$CI" in true|1|yes) exit 1 ;; esac; }
endef

test-load: setup
	$(call apt_need,wrk,wrk)
	$(BIN)/python -m pytest -q -m load $(PYTEST_ARGS)

test-system: setup
	$(BIN)/python -m pytest -q -m system $(PYTEST_ARGS)

# The dashboard page's test draws it in Chromium: the suite installs it too, so it runs on a fresh runner.
test-monitoring: setup
	$(call apt_need,prometheus,--no-install-recommends prometheus)
	$(call apt_need,chromium,chromium)
	$(BIN)/python -m pytest -q -s -m monitoring $(PYTEST_ARGS)

# Ten minutes of mixed traffic to every model on a real server (SOAK_SECONDS=600); prints its report (-s).
test-soak: setup
	$(BIN)/python -m pytest -q -s -m soak $(PYTEST_ARGS)

test-browser: setup
	$(call apt_need,chromium,chromium)
	$(BIN)/python -m pytest -q -m browser $(PYTEST_ARGS)

test-accuracy: setup
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

# Mutation testing, on demand (not in CI): mutmut mutates the modules listed in pyproject.toml's [tool.mutmut],
# runs for each mutant the tests that reach it, and tests/mutation_score.py prints each module's score against
# the bar (at most 15% of the non-equivalent mutants survive). About 30 minutes on 2 cores. MUTATE_JOBS: workers.
MUTATE_JOBS ?= 2
mutate: setup
	rm -rf mutants
	$(BIN)/mutmut run --max-children $(MUTATE_JOBS) > $(VENV)/mutmut.log 2>&1 || { tail -c 4000 $(VENV)/mutmut.log; exit 1; }
	$(BIN)/python -m tests.mutation_score

test-all: test test-system test-accuracy test-load test-monitoring test-soak test-browser test-docker lint

lint: setup
	$(BIN)/ruff check models training service tests bench
	$(BIN)/mypy service models bench

# make bench: ours against the naive server and LitServe (bench/__main__.py); make bench SCENARIO=mixed (or
# priority, ondemand, loadstall, flood, recovery): that scenario's module, python -m bench.$(SCENARIO).
bench: setup
	$(BIN)/pip install --disable-pip-version-check -q -c $(LOCK) -e '.[dev,bench]'
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m bench$(if $(SCENARIO),.$(SCENARIO)) $(BENCH_ARGS)

train-%: setup
	$(BIN)/python -m training $* $(TRAIN_ARGS)

# Docker (README "Docker"): make docker-build [VARIANT=cpu|cuda] [TAG=...] [BASE_IMAGE=...] [NETWORK=host]
#   [CA_BUNDLE=/path/to/ca.crt] [TORCH_WHEEL=/path/to/torch-*.whl] [OFFLINE=1] [DOCKER_ARGS='...']
#   VARIANT      cpu (default) or cuda: the torch build in the image
#   TAG          the image's name (default serve:cpu or serve:cuda, the names the compose files run)
#   BASE_IMAGE   the base of every stage (default python:3.11-slim): a Debian-like image with python3 3.11+
#                and its venv module, e.g. one made locally where Docker Hub cannot be reached
#   NETWORK      the build's network, e.g. host where pip reaches the index only through the host (a proxy
#                on localhost, a daemon without a bridge)
#   CA_BUNDLE    a CA file for pip in the build (a TLS-intercepting proxy); copied to docker/host-ca.crt
#   TORCH_WHEEL  a torch wheel to install instead of asking the PyTorch index; copied to docker/wheels/
#   OFFLINE=1    no index at all: every wheel from docker/wheels/, which `make docker-wheels` fills
#   HTTP_PROXY, HTTPS_PROXY, NO_PROXY are passed to the build when set.
VARIANT ?= cpu
TAG ?= serve:$(VARIANT)
BASE_IMAGE ?=
NETWORK ?=
CA_BUNDLE ?=
TORCH_WHEEL ?=
OFFLINE ?=
DOCKER_ARGS ?=
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
DOCKER_BUILD_FLAGS = $(if $(NETWORK),--network $(NETWORK)) $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) \
	--build-arg TORCH_VARIANT=$(VARIANT) $(if $(TORCH_WHEEL)$(filter 1,$(OFFLINE)),--build-arg TORCH_INDEX_URL=) \
	$(if $(filter 1,$(OFFLINE)),--build-arg OFFLINE=1) \
	$(foreach v,HTTP_PROXY HTTPS_PROXY NO_PROXY,$(if $($(v)),--build-arg $(v)=$($(v))))

docker-build: docker-prepare
	@if [ "$(OFFLINE)" = 1 ] && ! ls docker/wheels/*.whl >/dev/null 2>&1; then \
	    echo "docker-build: OFFLINE=1 installs only from docker/wheels/, which holds no wheel: run make docker-wheels first" >&2; exit 2; fi
	docker build $(strip $(DOCKER_BUILD_FLAGS)) -t $(TAG) $(DOCKER_ARGS) .

# Every wheel the image installs, at the locked versions, for its platform (CPython 3.11, glibc 2.36 or
# older, x86_64), into docker/wheels/ for OFFLINE=1: run it where PyPI can be reached. torch: TORCH_WHEEL if
# given, else the CPU index (VARIANT=cpu) or PyPI's CUDA build and its nvidia-* wheels (VARIANT=cuda, GBs).
docker-wheels: setup docker-prepare
	$(BIN)/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > $(VENV)/runtime-requirements.txt
	$(BIN)/pip download --disable-pip-version-check -q -d docker/wheels --find-links docker/wheels \
	    --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 --abi abi3 --abi none \
	    $(foreach v,$(shell seq 36 -1 17),--platform manylinux_2_$(v)_x86_64) --platform manylinux2014_x86_64 \
	    --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
	    $(if $(TORCH_WHEEL),,$(if $(filter cpu,$(VARIANT)),--extra-index-url $(TORCH_CPU_INDEX))) \
	    -c $(LOCK) -r $(VENV)/runtime-requirements.txt
	@echo "docker-wheels: $$(ls docker/wheels/*.whl | wc -l) wheels in docker/wheels/; now make docker-build OFFLINE=1"

docker-prepare:
	@case "$(VARIANT)" in cpu|cuda) ;; *) echo "VARIANT must be cpu or cuda, not '$(VARIANT)'" >&2; exit 2 ;; esac
	@if [ -n "$(CA_BUNDLE)" ]; then cp "$(CA_BUNDLE)" docker/host-ca.crt && echo "pip in the build trusts $(CA_BUNDLE) (copied to docker/host-ca.crt)"; fi
	@if [ -n "$(TORCH_WHEEL)" ]; then cp "$(TORCH_WHEEL)" docker/wheels/ && echo "$(notdir $(TORCH_WHEEL)) copied to docker/wheels/"; fi

# Builds the image with the options above and runs it to ready and one prediction (tests/docker/); skipped,
# saying what is missing, without a Docker daemon (or a base image, a torch wheel, an index it needs).
test-docker: setup
	$(BIN)/python -m pytest -q -s -m docker $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Two commands on a fresh Debian machine: `make up` runs the system, `make test` runs the whole suite.
# Both create .venv and install what they need; a second run is quick (stamp files).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | sha1sum | cut -c1-12)
SYSTEM_PACKAGES := chromium coturn docker-compose espeak-ng sox

.PHONY: up test test-fast check chaos bench eval venv system lint lock clean-data test-under-load

up: venv
	$(VENV)/bin/proctor up

test: venv system check
	$(PY) -m pytest $(PYTEST_ARGS)

# `make test` on a machine with other work running (issue 19): HOG_PROCS busy processes (default: one per CPU)
# compete with it for the whole run and are stopped when it ends, fails or is interrupted (tests/support/hog.py).
test-under-load:
	$(PYTHON) tests/support/hog.py $(if $(HOG_PROCS),--procs $(HOG_PROCS)) -- $(MAKE) --no-print-directory test

# The shape of the code, before any test runs: the import direction (import-linter contracts in pyproject.toml:
# core <- plumbing <- store <- features <- web <- cli) and the types (mypy over every package). Fails on a violation.
check: venv
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# The quick loop (~2 minutes on 2 cores): `make test` less the browser tests, the `slow` ones (more than a few
# seconds each: outages, restarts, whole pipelines) and chaos. Needs no chromium (only docker-compose, for the
# compose test). This -m replaces the one in pytest's addopts, so it must keep `not chaos`.
test-fast: SYSTEM_PACKAGES := docker-compose
test-fast: venv system check
	$(PY) -m pytest -m 'not browser and not slow and not chaos' $(PYTEST_ARGS)

# Too slow for `make test` (~15 minutes): the long dependency outage (storage gone for 60 s, with a media node and
# a worker attached; pytest's addopts deselect the `chaos` marker, this -m replaces that), then the 10-minute soak
# at 12 streams, which fails on memory growth, a growing queue or a leaked peer connection, task, thread or fd.
chaos: venv system
	$(PY) -m pytest -m chaos $(PYTEST_ARGS)
	$(PY) -m bench.soak --streams 12 --minutes 10 --check

# Benchmarks (~25 minutes; not part of the tests): every figure against its target in bench/results/summary.md.
bench: venv system
	$(PY) -m bench.all $(BENCH_ARGS)

# Detector quality (~1-2 minutes, no network): every detector over the labelled real photos in bench/quality/data
# (sources and licences in its PROVENANCE.md); writes bench/results/quality.md and quality.json.
eval: venv
	$(PY) -m bench.quality $(EVAL_ARGS)

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@# --no-deps hides a dependency the lock forgot (mypy's ast-serialize once broke CI): fail here instead, except
	@# for the ones mediapipe and deepface declare but never use on our paths (see requirements.lock's header).
	@left=$$($(PY) -m pip check 2>&1 | grep -v -E '^(mediapipe|deepface) [^ ]+ requires (jax|jaxlib|opencv-contrib-python|sounddevice|retina-face|tensorflow|tf-keras|mtcnn|fire|gunicorn|flask|flask-cors|lightdot|lightphe),' | grep -v -E '^silero-vad [^ ]+ requires torch,' | grep -v '^No broken requirements' || true); \
	if [ -n "$$left" ]; then echo "requirements.lock is missing a dependency:"; echo "$$left"; exit 1; fi
	rm -f $(VENV)/.installed-*
	touch $@

# Browser tests need Debian's chromium; the compose test needs docker-compose (v1 validates with no engine).
system:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing system packages:$$missing"; \
			apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
		else \
			echo "missing system packages:$$missing (run: sudo apt-get install$$missing)"; exit 1; \
		fi; \
	fi

lint: venv check
	$(VENV)/bin/ruff check .

# Re-pin after changing pyproject.toml (needs the registries).
lock:
	{ head -3 requirements.lock; $(PY) -m pip freeze --exclude-editable | sort -f; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean-data:
	rm -rf .data

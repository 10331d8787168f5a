# The README's two commands are `make demo` and `make test`; the rest are development chores.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install demo up test test-unit test-integration test-k8s test-browser k8s-binaries promtool firebase-emulators browser-deps ts-types lint fmt sync-crds bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	scripts/bootstrap
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: install  ## start everything locally, generate one image, print its path
	$(VENV)/bin/comfyfleet demo

up: install  ## run the whole system locally until Ctrl-C
	$(VENV)/bin/comfyfleet up

k8s-binaries:  ## build (or reuse) etcd, kube-apiserver, kubectl and helm under ~/.cache/comfyfleet
	scripts/k8s-binaries >/dev/null
	scripts/helm-binary >/dev/null

promtool:  ## build (or reuse) promtool under ~/.cache/comfyfleet (checks the chart's alert rules)
	scripts/promtool-binary >/dev/null

firebase-emulators:  ## install (or reuse) the pinned Firebase emulators from npm under ~/.cache/comfyfleet
	scripts/firebase-emulators >/dev/null

browser-deps:  ## install (or reuse) Debian's chromium and the TypeScript client's npm packages (npm ci)
	scripts/browser-deps

ts-types: install  ## regenerate clients/typescript/openapi.json and src/schema.d.ts from the API
	scripts/gen-ts-types

test: install k8s-binaries promtool firebase-emulators browser-deps  ## every tier: unit, integration (real Redis + simulators), k8s (real apiserver), browser (Node + Chromium)
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: install promtool
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: install firebase-emulators
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

test-browser: install browser-deps
	$(PY) -m pytest tests/browser $(PYTEST_ARGS)

test-k8s: install k8s-binaries
	$(PY) -m pytest tests/k8s $(PYTEST_ARGS)

lint: install  ## ruff, then mypy (strict on comfyfleet/, gradual on tests/; config in pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

fmt: install
	$(VENV)/bin/ruff check --fix .

sync-crds:  ## copy crds/ (the source of truth) into the chart
	scripts/sync-crds

bench: install $(VENV)/.bench-installed  ## every benchmark (bench/run.py, < 15 min on 2 cores); rewrites BENCHMARKS.md
	$(PY) bench/run.py

$(VENV)/.bench-installed: pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $@

clean:
	rm -rf .data outputs

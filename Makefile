# One place for every developer and CI command. Every target installs what it needs, idempotently.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | sha1sum | cut -c1-12)
LAYOUT := $(PY) -c 'from splitrelay.devtools.layout import main; main()'
NODE_STAMP := node_modules/.installed-$(shell cat package.json | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: setup run cost test test-unit test-integration lint fmt bench clean lock

# Locked versions first, then this checkout (editable: the splitrelay namespace maps onto its folders).
$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -r requirements.lock
	@$(PY) -m pip install -q --no-deps -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

# Node tooling (Pyodide for the Worker's runtime tests). Needs node and npm on PATH.
$(NODE_STAMP): package.json
	@command -v npm >/dev/null || { echo "npm is required (apt-get install nodejs npm)"; exit 1; }
	@npm install --no-audit --no-fund --loglevel=error
	@rm -f node_modules/.installed-*
	@touch $(NODE_STAMP)

# The real `workers` module (Cloudflare's Python Workers SDK) for the Pyodide tests of edge/entry.py.
SDK_WHEEL := build/wheels/workers_runtime_sdk-1.9.5-py3-none-any.whl
$(SDK_WHEEL): $(STAMP)
	@$(PY) -m pip download -q --no-deps -d build/wheels workers-runtime-sdk==1.9.5

# The native per-datagram path (relay/media/native, cffi API mode, gcc + Python headers). A failed build
# is not fatal: the relay logs once and runs the Python path; CI's tests/unit/test_native_*.py then fail.
NATIVE_SO := relay/media/native/_fastpath$(shell $(PY) -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))' 2>/dev/null)
$(NATIVE_SO): relay/media/native/fastpath.c relay/native/build.py $(STAMP)
	@$(PY) -m splitrelay.relay.native.build || echo "make: continuing without the native fast path"

setup: $(STAMP) $(NODE_STAMP) $(SDK_WHEEL) $(NATIVE_SO)

## The main command: what a newcomer runs first. The local stack (Realtime emulator, edge, relay, echo
## agent), one measured call, the latency budget, then everything stops. Python only: no node needed.
run: $(STAMP) $(NATIVE_SO)
	$(VENV)/bin/splitrelay dev --call

cost: setup
	$(VENV)/bin/splitrelay cost

## All tiers: unit, real-WebRTC integration on loopback, end to end, deploy. On PYTEST_WORKERS processes
## (pytest-xdist; a whole module per worker, so a module's fixtures start once), in two passes: the tiers
## that use the CPU first, then the real-time ones (markers integration and e2e, set by folder in
## tests/conftest.py), which so share the machine only with each other. PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= 2
XDIST = -n $(PYTEST_WORKERS) --dist loadscope
REALTIME := integration or e2e
test: setup
	@rc=0; ran=0; \
	for tier in 'not ($(REALTIME))' '$(REALTIME)'; do \
	  echo "$(PY) -m pytest -q $(XDIST) -m '$$tier' $(PYTEST_ARGS)"; \
	  $(PY) -m pytest -q $(XDIST) -m "$$tier" $(PYTEST_ARGS); code=$$?; \
	  if [ $$code -ne 5 ]; then ran=1; if [ $$code -ne 0 ]; then rc=$$code; fi; fi; \
	done; \
	if [ $$ran = 0 ]; then exit 5; fi; exit $$rc

test-unit: setup
	$(PY) -m pytest -q $(XDIST) tests/unit $(PYTEST_ARGS)

test-integration: setup
	$(PY) -m pytest -q $(XDIST) tests/integration $(PYTEST_ARGS)

## ruff, the import rules between layers, and mypy strict over the namespace (scripts/devtools/layout.py).
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(LAYOUT) check-imports
	$(LAYOUT) mypy

## Re-resolve requirements.lock from pyproject.toml in a throwaway venv (every extra).
lock:
	rm -rf build/lockenv && python3 -m venv build/lockenv
	build/lockenv/bin/pip install -q --upgrade pip
	build/lockenv/bin/pip install -q '.[dev]'
	{ head -2 requirements.lock; build/lockenv/bin/pip freeze --all --exclude-editable | grep -vi '^splitrelay\|^pip==\|^wheel=='; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

fmt: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info

# One command each: `make demo` (set-up + the main job), `make test` (set-up + the suite).
# `make lock` after changing a dependency, `make audit` to check the lock for known vulnerabilities.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PREFECT_UI_PORT ?= 4200
PREFECT_LOCAL   := PREFECT_API_URL=http://127.0.0.1:$(PREFECT_UI_PORT)/api

# Installs come from requirements.lock (every package pinned, with its hashes); whoever changes a
# dependency in pyproject.toml runs `make lock` and commits both files.
LOCK       := requirements.lock
TOOLS      ?= .venv-tools
UV_VERSION ?= 0.13.9

.PHONY: install lock audit browser postgres hosts demo test ui serve worker upload lint bench clean

# The lock holds the build backend too (setuptools), so the project installs without resolving or
# downloading anything the lock does not name; a lock that no longer satisfies pyproject.toml stops it.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python scripts/lockfile.py check --lock $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# Resolves pyproject.toml (dependencies, dev extras, build backend) for CI's Python 3.11 on Linux
# x86_64 from PyPI, keeping the current pins where they still fit (LOCK_ARGS=--upgrade moves them all).
# Extras stay in the lock (--no-strip-extras): pip's hash-checking install needs `cachecontrol[filecache]` pinned
# as pip-audit asks for it, or a newer release of it on PyPI stops the install (seen: cachecontrol 0.15.0).
lock: $(TOOLS)/bin/uv
	$(PYTHON) -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires']))" \
	| $(TOOLS)/bin/uv pip compile --quiet pyproject.toml - --extra dev --generate-hashes --no-strip-extras \
		--python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
		--custom-compile-command 'make lock' $(LOCK_ARGS) -o $(LOCK)

$(TOOLS)/bin/uv:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet 'uv==$(UV_VERSION)'

# pip-audit over the lock; exits non-zero with one line when any package could not be checked.
audit: install
	$(BIN)/python scripts/lockfile.py audit --lock $(LOCK)

# Headless Chromium for the browser tests (HTML report, upload page, Prefect UI): Debian's package.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# PostgreSQL server binaries for the tests on the fleet store (the tests start and stop their own servers): Debian's.
postgres:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null; }

# iproute2 (`ip netns`) for the multi-host fleet test, which makes network namespaces when run as root (as CI is);
# without root it says so and does not run.
hosts:
	@command -v ip >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null; }

demo: install
	$(BIN)/campaign demo

# Three pytest processes (pytest-xdist), each test file in one of them: the suite mostly waits on servers it started
# (Prefect, PostgreSQL, sandboxes), so on two cores a third process fills the waits (measured on one machine: two
# 17:34, 1.4 cores busy on average; three 15:11). `pytest -n 0` runs in one process.
test: install browser postgres hosts
	$(BIN)/pytest -n 3 --dist loadfile

lint: install
	$(BIN)/ruff check pipeline flows tests benchmarks

ui: install
	PREFECT_UI_API_URL=http://127.0.0.1:$(PREFECT_UI_PORT)/api $(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_UI_PORT)

# The deployments of prefect.yaml against the server of `make ui`, served by one process...
serve: install
	$(PREFECT_LOCAL) $(BIN)/python -m flows.serve

# ...or through a process work pool: pool + zombie automation, register the deployments, start a worker.
worker: install
	$(PREFECT_LOCAL) $(BIN)/python -m flows.serve --setup
	PWD=$(CURDIR) $(PREFECT_LOCAL) $(BIN)/prefect --no-prompt deploy --all
	$(PREFECT_LOCAL) $(BIN)/prefect worker start --pool local-process

# The webhook receiver with the upload page on 127.0.0.1:8802/upload (needs UPLOAD_TOKEN), against `make ui`.
upload: install
	$(PREFECT_LOCAL) $(BIN)/campaign upload-server

clean:
	rm -rf data/demo reports/*/ spool prepared

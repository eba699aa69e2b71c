# One command each: `make demo` (set-up + the main job), `make test` (set-up + the suite).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PREFECT_UI_PORT ?= 4200
PREFECT_LOCAL   := PREFECT_API_URL=http://127.0.0.1:$(PREFECT_UI_PORT)/api

.PHONY: install browser postgres demo test ui serve worker upload lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

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

demo: install
	$(BIN)/campaign demo

test: install browser postgres
	$(BIN)/pytest

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

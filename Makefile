# One command each: `make demo` (set-up + the main job), `make test` (set-up + the suite).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PREFECT_UI_PORT ?= 4200

.PHONY: install browser demo test ui serve lint bench clean

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

demo: install
	$(BIN)/campaign demo

test: install browser
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check pipeline flows tests benchmarks

ui: install
	$(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_UI_PORT)

serve: install
	PREFECT_API_URL=http://127.0.0.1:$(PREFECT_UI_PORT)/api $(BIN)/python -m flows.serve

clean:
	rm -rf data/demo reports/*/ spool prepared

# The two commands of the quickstart: `make demo` and `make test`. Each sets up what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat setup.py pyproject.toml | md5sum | cut -c1-8)

.PHONY: venv jars browser demo test stack-up stack-down stop bench clean

$(STAMP): setup.py pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

jars: venv
	$(BIN)/antenna jars

stack-up: jars
	$(BIN)/antenna stack up

stack-down:
	-$(BIN)/antenna stack down

stop: stack-down

# Debian's chromium for the real-browser tests (Playwright drives it; no browser download).
browser:
	@command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

demo: jars
	$(BIN)/antenna demo

# Two workers: the tests that start stacks of their own beside the ones on the session's stack (conftest.py).
TEST_WORKERS ?= 2

test: jars browser
	$(BIN)/python -m pytest -n $(TEST_WORKERS) antenna_assets_tests $(PYTEST_ARGS)

bench: jars
	$(BIN)/python -m bench.run_all

clean: stack-down
	rm -rf .stack

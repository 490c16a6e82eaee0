# Two entry points: `make run` starts the bot (the demo when nothing is configured), `make test`
# runs ruff, mypy and pytest. Each builds .venv from pyproject.toml first, so a fresh clone needs
# only Python 3.11 and make. `make demo` always starts the demo; `make screenshot` redraws
# docs/playground.png (needs Chromium: apt-get install chromium).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run demo screenshot test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.run-installed

run: $(VENV)/.run-installed
	$(BIN)/python -m bot

demo: $(VENV)/.run-installed
	$(BIN)/python -m bot demo

screenshot: $(VENV)/.test-installed
	$(BIN)/python -m tests.playground_screenshot docs/playground.png

lint: $(VENV)/.test-installed
	$(BIN)/ruff check bot tests bench
	$(BIN)/ruff format --check bot tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -n 3

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache

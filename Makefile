# Two commands do all the set-up on a fresh machine:
#   make demo   bundled Radicale with demo users, davproxy in front
#   make test   the whole suite (lint, unit, integration against real servers)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test soak lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install whenever pyproject.toml changes.
$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[radicale]'
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $@ $(VENV)/.demo-installed

demo: $(VENV)/.demo-installed
	$(BIN)/davproxy demo --data demo-data

lint: $(VENV)/.test-installed
	$(BIN)/ruff check davproxy tests bench
	$(BIN)/ruff format --check davproxy tests bench
	$(BIN)/mypy davproxy

test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not soak or regression"

# The long reliability suite: SIGKILL loop, 200-client load, 10,000 fuzzed requests.
soak: $(VENV)/.test-installed
	DAVPROXY_FUZZ_EXAMPLES=10000 $(BIN)/python -m pytest -q -p no:cacheprovider -s \
		-m "soak" tests/soak
	DAVPROXY_FUZZ_EXAMPLES=10000 DAVPROXY_PARSER_EXAMPLES=2000 \
		$(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/integration/test_fuzz_http.py tests/unit/test_fuzz_parsers.py
	$(BIN)/python bench/fuzz_atheris.py --runs 50000 --max-time 45

bench: $(VENV)/.test-installed
	$(BIN)/python bench/passthrough.py
	$(BIN)/python bench/feeds.py
	$(BIN)/python bench/loop_stall.py
	$(BIN)/python bench/xml_gate.py

clean:
	rm -rf $(VENV) demo-data .pytest_cache .mypy_cache .ruff_cache

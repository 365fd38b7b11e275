# Two commands do all the set-up on a fresh machine:
#   make demo   bundled Radicale with demo users, davproxy in front
#   make test   the whole suite (lint, fuzz smoke, unit, integration against real servers)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

# Every install takes the exact versions in constraints.txt (what was tested and
# measured); pyproject.toml only bounds them for other installs.  `make constraints`
# regenerates the file from the newest releases pyproject.toml allows.
CONSTRAINTS := constraints.txt
PIP_INSTALL  = $(BIN)/python -m pip install --quiet -c $(CONSTRAINTS)

.PHONY: demo test fuzz-smoke soak lint bench constraints clean browser davical postgres

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install whenever pyproject.toml or constraints.txt changes.
$(VENV)/.demo-installed: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP_INSTALL) -e '.[radicale]'
	touch $@

$(VENV)/.test-installed: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP_INSTALL) -e '.[test,dev]'
	touch $@ $(VENV)/.demo-installed

demo: $(VENV)/.demo-installed
	$(BIN)/davproxy demo --data demo-data

lint: $(VENV)/.test-installed
	$(BIN)/ruff check davproxy tests bench
	$(BIN)/ruff format --check davproxy tests bench
	$(BIN)/mypy davproxy

# A few seconds of coverage-guided fuzzing per parser target (about half a minute in
# all), every past finding replayed first as a seed: a finding exits non-zero.
# atheris ships Linux wheels only: elsewhere the smoke is skipped.
fuzz-smoke: $(VENV)/.test-installed
ifeq ($(shell uname -s),Linux)
	$(BIN)/python bench/fuzz_atheris.py --runs 50000 --max-time 2 --minimize-seconds 5
else
	@echo "fuzz-smoke skipped: atheris has Linux wheels only"
endif

# Debian's chromium + chromium-driver for the web page's browser tests, installed when
# missing and this is root with apt-get (else those tests skip and say why).
browser:
	@bash .ci/install-chromium

# Debian's DAViCal (Apache/mod_php, PostgreSQL) for the tests against a third upstream,
# installed when missing and this is root with apt-get (else those tests skip and say why).
davical:
	@bash .ci/install-davical

# Not run again on PostgreSQL: what starts no davproxy of write_config's (the package
# build, the examples and the demo keep SQLite files; the command-line checks) and what
# is on PostgreSQL in both passes.
PG_PASS_SKIPS := $(foreach f,test_package test_examples test_first_hour test_cli \
	test_postgres_helper test_postgres_store,--ignore=tests/integration/$(f).py)

# Debian's PostgreSQL for the PostgreSQL store's tests, installed when missing and this
# is root with apt-get (else they skip and say why).
postgres:
	@bash .ci/install-postgres

# The whole suite on SQLite stores, then the integration and web-page suites again with
# every davproxy on a PostgreSQL store (a throwaway cluster on loopback, tests/pg.py).
test: lint fuzz-smoke browser davical postgres
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not soak or regression"
	@reason=$$($(BIN)/python -c "from davproxy.ops.postgres import unavailable; print(unavailable() or '')"); \
	if [ -n "$$reason" ]; then echo "PostgreSQL pass SKIPPED: $$reason"; else \
	  echo "PostgreSQL pass: the integration and web-page suites on a PostgreSQL store"; \
	  DAVPROXY_TEST_STORE=postgresql $(BIN)/python -m pytest -q -p no:cacheprovider \
	    -m "not soak or regression" $(PG_PASS_SKIPS) tests/integration tests/web; fi

# The long reliability suite: SIGKILL loop, 200-client load, 10,000 fuzzed requests.
soak: $(VENV)/.test-installed
	DAVPROXY_FUZZ_EXAMPLES=10000 $(BIN)/python -m pytest -q -p no:cacheprovider -s \
		-m "soak" tests/soak
	DAVPROXY_FUZZ_EXAMPLES=10000 DAVPROXY_PARSER_EXAMPLES=2000 \
		$(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/integration/test_fuzz_http.py tests/unit/test_fuzz_parsers.py
	$(BIN)/python bench/fuzz_atheris.py --runs 50000 --max-time 45

bench: $(VENV)/.test-installed
	$(BIN)/python bench/speed.py
	$(BIN)/python bench/passthrough.py
	$(BIN)/python bench/sharing_paths.py
	$(BIN)/python bench/feeds.py
	$(BIN)/python bench/scaling.py
	$(BIN)/python bench/loop_stall.py
	$(BIN)/python bench/xml_gate.py
	$(BIN)/python bench/peruser.py
	$(BIN)/python bench/store.py
	$(BIN)/python bench/workers.py
	$(BIN)/python bench/workers.py --store postgresql

# The newest releases pyproject.toml allows, installed in a scratch environment and
# frozen; run make test and make soak before committing the new file.
constraints:
	rm -rf .venv-constraints
	$(PYTHON) -m venv .venv-constraints
	.venv-constraints/bin/python -m pip install --quiet --upgrade pip
	.venv-constraints/bin/python -m pip install --quiet '.[radicale,test,dev]'
	{ echo "# Exact versions make test, make soak, make demo and make bench install"; \
	  echo "# (pip install -c constraints.txt); regenerate with make constraints."; \
	  echo "# Tested on CPython 3.11, Linux x86_64; see pyproject.toml for the bounds."; \
	  .venv-constraints/bin/python -m pip freeze --exclude davproxy; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf .venv-constraints build

clean:
	rm -rf $(VENV) demo-data .pytest_cache .mypy_cache .ruff_cache

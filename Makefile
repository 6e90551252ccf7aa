# Two commands do all the set-up on a fresh machine:
#   make run    installs what is missing into .venv and starts the dashboard on http://127.0.0.1:8501 only
#               (make run HOST=0.0.0.0: on every interface, for a class; it says what that exposes)
#   make test   installs what is missing (the browser too) and runs lint, format check and the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
PORT ?= 8501
# The dashboard listens on loopback only: this machine's own browser. `make run HOST=0.0.0.0` serves every
# interface (a class on a trusted network); for anything wider put it behind a proxy with a login (README).
HOST ?= 127.0.0.1
LOOPBACK := 127.0.0.1 localhost ::1

.PHONY: run test lint bench clean chromium

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

chromium:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	  else echo "browser tests need /usr/bin/chromium: sudo apt-get install chromium" >&2; fi; }

run: $(STAMP)
ifeq ($(filter $(HOST),$(LOOPBACK)),)
	@echo "balance: serving http://$(HOST):$(PORT) to every machine that can reach this one. There is no login:" >&2
	@echo "  anyone who opens it can start runs (this machine's CPU time) and see, download and delete every" >&2
	@echo "  stored run in $${BALANCE_HOME:-~/.balance}. On an untrusted network use a proxy with a login (README)." >&2
endif
	$(BIN)/streamlit run app.py --server.address $(HOST) --server.port $(PORT) --server.fileWatcherType none \
	  --browser.gatherUsageStats false $(if $(filter $(HOST),$(LOOPBACK)),,--client.showErrorDetails type)

# The suite on two pytest-xdist workers, each module on one worker in order (a browser module's server starts once;
# --dist loadgroup reordered a module's tests), then alone the tests that measure wall time, memory or threads
# (tests/conftest.py SERIAL), so load never makes them flaky.
test: $(STAMP) chromium
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -n 2 --dist loadfile -m "not serial"
	$(BIN)/pytest -m serial

lint: $(STAMP)
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis

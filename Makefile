# The two commands of README.md: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test test-clock lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@ $(VENV)/.runtime

run: $(VENV)/.runtime
	$(BIN)/python -m salesreport migrate
	$(BIN)/python -m salesreport demo
	$(BIN)/python -m salesreport serve --host 127.0.0.1 --port 8000

# axe-core for the browser tests' accessibility checks, pinned by tests/browser/package-lock.json. Without
# npm (or Chromium) the browser tests are skipped, saying so.
AXE := tests/browser/node_modules/.installed
$(AXE): tests/browser/package-lock.json
	@if command -v npm >/dev/null; then npm ci --prefix tests/browser --no-audit --no-fund --silent && touch $@; \
	else echo "npm not found: the browser tests will be skipped (Debian: apt-get install npm chromium)"; fi

test: $(VENV)/.dev $(AXE)
	$(BIN)/python -m pytest -q

# The whole suite under faketime (Debian: apt-get install faketime) at a month's and a year's last minutes and at DST changes.
CLOCK_INSTANTS := 2026-11-30T23:31:00Z 2026-12-31T23:58:00Z 2026-03-29T00:59:00Z 2026-10-25T00:59:00Z 2026-11-01T05:59:00Z
test-clock: $(VENV)/.dev
	@command -v faketime >/dev/null || { echo "test-clock needs faketime (Debian: apt-get install faketime)"; exit 1; }
	@failed=; for instant in $(CLOCK_INSTANTS); do \
		echo "== pytest under faketime $$instant"; \
		faketime "$$instant" $(BIN)/python -m pytest -q || failed="$$failed $$instant"; \
	done; \
	if [ -n "$$failed" ]; then echo "test-clock failed at:$$failed"; exit 1; fi

lint: $(VENV)/.dev
	$(BIN)/ruff check salesreport tests bench
	$(BIN)/ruff format --check salesreport tests bench
	$(BIN)/mypy

bench: $(VENV)/.dev
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

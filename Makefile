# The two commands of README.md: `make study` (the main job) and `make test`.
# Each creates .venv on first use: torch==2.13.0 first (a CPU build; an unpinned torch
# pulls a CUDA build of several GB), then this project with its test, dehb and docs extras, then
# dehb itself with --no-deps: its metadata pins numpy<2 (it runs under numpy 2), and pip
# would otherwise downgrade numpy.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER = 0

.PHONY: study test install browser docs

$(BIN)/semiseg-study: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,dehb,docs]'
	$(BIN)/pip install --quiet --no-deps dehb==0.1.2
	touch $@

install: $(BIN)/semiseg-study

study: install
	$(BIN)/semiseg-study run --name main --replace
	$(BIN)/semiseg-study report main

# The report's browser test drives Debian's headless Chromium, and the --storage test a real
# PostgreSQL server it starts itself (root, or passwordless sudo, installs both).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver postgresql \
	  || echo "could not install chromium and postgresql: their tests will be skipped (failed on CI)"; }

# tests/test_docs.py builds the site with `mkdocs build --strict` (a broken link or a page
# missing from mkdocs.yml fails) and runs the README's blocks marked runnable.
test: install browser
	$(BIN)/python -m pytest -q

# The documentation site, rebuilt on every change, at http://127.0.0.1:8000
docs: install
	$(BIN)/mkdocs serve

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

# What the tests of real components need beyond pip: Debian's headless Chromium (the report's
# browser test), PostgreSQL (the --storage test starts a server itself; as root it runs it under
# runuser as the postgres user) and util-linux's unshare and runuser (the isolated-node test, as
# root). Root, or passwordless sudo, installs them. A missing one fails its test under CI=true
# (.ci/run sets it) and skips it elsewhere; the summary lists each skip with its reason.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null && command -v unshare >/dev/null \
	  && command -v runuser >/dev/null && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver \
	    postgresql util-linux \
	  || echo "could not install chromium, postgresql and util-linux: their tests skip here, and fail under CI=true"; }

# tests/test_docs.py builds the site with `mkdocs build --strict` (a broken link or a page
# missing from mkdocs.yml fails) and runs the README's blocks marked runnable.
test: install browser
	$(BIN)/python -m pytest -q

# The documentation site, rebuilt on every change, at http://127.0.0.1:8000
docs: install
	$(BIN)/mkdocs serve

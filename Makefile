# The two commands: `make run` and `make test`. Both set themselves up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SUM    := $(shell cat setup.cfg pyproject.toml | cksum | cut -d' ' -f1)
# two installs: `make run` needs only the daemon's dependencies (quick on a first start); `make test`
# adds the test and lint extras. The stamps name the setup files' checksum: an edit reinstalls.
RUN_STAMP  := $(VENV)/.installed-run-$(SUM)
TEST_STAMP := $(VENV)/.installed-test-$(SUM)
# A pip of 22.3 or newer installs into another interpreter (`pip --python`): the venv is then made without
# pip, which skips ensurepip (about 4 s of a 20 s first `make run` on a 2-core VM, docs/BENCHMARKS.md);
# without such a pip the venv gets its own. The pip is chosen when a recipe line runs (after the venv
# exists): the venv's own pip if it has one (an older .venv), else $(PYTHON)'s pip aimed at the venv.
# pip byte-compiles every installed module (about 3 s of a first install): with PYTHONDONTWRITEBYTECODE set
# (this CI machine, the systemd unit) nothing else would ever cache them, and every process would compile its
# dependencies again at each start (the one-round soak's daemon: 61.4 MB resident against 58.4 MB).
HOST_PIP_OK = $(PYTHON) -m pip --help 2>/dev/null | grep -q -- '--python <python>'
PIP    = $$(test -x $(VENV)/bin/pip && echo $(PY) -m pip || echo $(PYTHON) -m pip --python $(PY)) install -q
# uv (docs.astral.sh/uv) installs what pip would, about ten times faster (a fresh clone's daemon dependencies:
# 11.5-14.5 s with pip, under 2 s with uv; docs/BENCHMARKS.md "First make run"). pip fetches it once into
# $(VENV)/tools. Where that fails (no wheel for this machine, no index: tried once per venv) or where uv fails, pip
# installs as before; UV=no always uses pip. uv reads no pip.conf: a site with a private index sets UV_INDEX_URL (or UV=no).
# --compile-bytecode for the reason above (uv does not compile by default).
UV     ?= yes
UV_BIN := $(VENV)/tools/bin/uv
TOOL_PIP = $$(test -x $(VENV)/bin/pip && echo $(PY) -m pip || echo $(PYTHON) -m pip) install -q --target $(VENV)/tools
NO_UV  := $(VENV)/tools/no-uv
HAVE_UV = [ "$(UV)" != no ] && ! test -e $(NO_UV) && { test -x $(UV_BIN) || \
	{ $(TOOL_PIP) 'uv>=0.4,<1' >/dev/null 2>&1 && test -x $(UV_BIN); } || { mkdir -p $(VENV)/tools; touch $(NO_UV); false; }; }
INSTALL = echo "installing $(1) into $(VENV)"; if $(HAVE_UV); then $(UV_BIN) pip install -q --compile-bytecode --python $(PY) $(1) || $(PIP) $(1); \
	else $(PIP) $(1); fi

.PHONY: run test lint venv mosquitto bench clean

$(RUN_STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || if $(HOST_PIP_OK); then $(PYTHON) -m venv --without-pip $(VENV); else $(PYTHON) -m venv $(VENV); fi
	@$(call INSTALL,-e .)
	@rm -f $(VENV)/.installed-run-*
	@touch $@

$(TEST_STAMP): $(RUN_STAMP)
	@$(call INSTALL,-e '.[test]')
	@rm -f $(VENV)/.installed-test-*
	@touch $@

venv: $(TEST_STAMP)

## run: start the daemon on the built-in simulated cabinet with a live status line (no broker needed);
##      make run SIM=sharing: the power-sharing cabinet (edge/sim/sim-sharing.toml, docs/SIM.md)
run: $(RUN_STAMP)
	$(VENV)/bin/edge run --sim --status-line$(if $(SIM), --config edge/sim/sim-$(SIM).toml)

## mosquitto: tests need a real broker binary; install it when missing and we are root
mosquitto:
	@if command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing mosquitto with apt-get"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mosquitto shellcheck >/dev/null; \
	else \
		echo "mosquitto is missing: install it (sudo apt-get install mosquitto) or run make test as root"; exit 1; \
	fi
	@command -v shellcheck >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends shellcheck >/dev/null; } || echo "note: shellcheck missing; its test will be skipped"

## test: install what the tests need (venv, mosquitto), the static checks (lint), then the whole suite in
##       TEST_JOBS processes (pytest-xdist; TEST_JOBS=1: one process). Most tests wait on daemons, brokers and
##       buses rather than the CPU: two processes take the suite from 580 s to 295 s on this 2-core machine.
TEST_JOBS ?= 2
test: lint mosquitto
	$(PY) -m pytest -q $(if $(filter 1,$(TEST_JOBS)),,-n $(TEST_JOBS) --dist worksteal)

## lint: ruff, ruff format --check, mypy, import contracts; the tools come from the test extra of setup.cfg,
## so a missing one is an error (a broken venv), never a skipped check
LINT_TOOLS := ruff mypy lint-imports
lint: $(TEST_STAMP)
	@for t in $(LINT_TOOLS); do test -x $(VENV)/bin/$$t || { echo "lint: $(VENV)/bin/$$t missing: run make clean test"; exit 1; }; done
	$(VENV)/bin/ruff check edge drivers hal tests bench
	$(VENV)/bin/ruff format --check edge drivers hal tests bench
	$(VENV)/bin/mypy edge drivers hal
	$(VENV)/bin/lint-imports

## bench: every benchmark under bench/ once with its defaults, as `python -m bench.<name>` from here (run as a
## file, bench/ would come first on sys.path and bench/can.py would shadow python-can). Takes about 15 min.
## Not run: bench/memprobe.py, a leak finder that wraps `edge run` until stopped (python -m bench.soak --memprobe)
BENCHES := $(filter-out __init__ memprobe,$(basename $(notdir $(wildcard bench/*.py))))
bench: $(TEST_STAMP) mosquitto
	@for b in $(BENCHES); do echo "== python -m bench.$$b"; $(PY) -m bench.$$b || exit 1; done

clean:
	rm -rf $(VENV) .edge-sim .pytest_cache .mypy_cache .ruff_cache *.egg-info

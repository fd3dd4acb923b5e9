# Everything goes through a private virtual environment in .venv, created on demand.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench soak e2e system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,plot]'
	touch $@

# pciutils (lspci) is used by the tests to validate config space; installed when missing (needs root).
system-deps:
	@command -v lspci >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pciutils) >/dev/null; \
	  else echo "note: lspci missing and not root: the lspci tests will skip"; fi; }

demo: $(STAMP)
	$(BIN)/hugepfn run fixtures/scenarios/demo.toml

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench

# The vfio-user soak for 10 minutes (make bench runs it for 30 s): bench/bench_soak.py.
soak: $(STAMP)
	HUGEPFN_SOAK_SECONDS=$${HUGEPFN_SOAK_SECONDS:-600} $(BIN)/python -m bench bench_soak

clean:
	rm -rf $(VENV) build *.egg-info

# make e2e: QEMU guest against a served gpu-8g (docs/e2e.md); not part of make test.
include e2e/Makefile.inc

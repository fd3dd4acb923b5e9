# Everything goes through a private virtual environment in .venv, created on demand.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench soak e2e system-deps clean

# An out-of-tree variant driver (docs/driver-authors.md), installed next to hugepfn as any
# third-party driver package would be; `make test` runs its own suite too.
EXAMPLE := examples/poison-aware-gpu

$(STAMP): pyproject.toml $(EXAMPLE)/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,plot]'
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e $(EXAMPLE)
	touch $@

# pciutils (lspci) is used by the tests to validate config space; installed when missing (needs root).
system-deps:
	@command -v lspci >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pciutils) >/dev/null; \
	  else echo "note: lspci missing and not root: the lspci tests will skip"; fi; }

demo: $(STAMP)
	$(BIN)/hugepfn run fixtures/scenarios/demo.toml

# The JUnit XML schema the report tests validate against: the Jenkins xunit-plugin's junit-10.xsd
# as pytest's source distribution on PyPI ships it (fetched with pip and its hash checked, never
# committed to this repository).
JUNIT_XSD := $(VENV)/share/hugepfn/junit-10.xsd
JUNIT_XSD_SDIST := pytest==8.3.5 --hash=sha256:f4efe70cc14e511565ac476b57c279e12a855b11f48f212af1080ef2263d3845

$(JUNIT_XSD): | $(STAMP)
	@mkdir -p $(dir $@)
	@tmp=$$(mktemp -d) && echo '$(JUNIT_XSD_SDIST)' > $$tmp/req.txt \
	  && $(BIN)/pip download -q --disable-pip-version-check --no-deps --no-binary :all: --require-hashes \
	       -r $$tmp/req.txt -d $$tmp >/dev/null \
	  && tar -xzf $$tmp/pytest-8.3.5.tar.gz -O pytest-8.3.5/testing/example_scripts/junit-10.xsd > $@.tmp \
	  && mv $@.tmp $@; status=$$?; rm -rf $$tmp; exit $$status

test: $(STAMP) $(JUNIT_XSD) system-deps
	$(BIN)/python -m pytest -q
	cd $(EXAMPLE) && $(CURDIR)/$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench

# The vfio-user soak for 10 minutes (make bench runs it for 30 s): bench/bench_soak.py.
soak: $(STAMP)
	HUGEPFN_SOAK_SECONDS=$${HUGEPFN_SOAK_SECONDS:-600} $(BIN)/python -m bench bench_soak

clean:
	rm -rf $(VENV) build *.egg-info $(EXAMPLE)/src/*.egg-info

# make e2e: QEMU guests against served devices (docs/e2e.md); not part of make test.
include e2e/Makefile.inc

# make crosscheck: every crosscheckable fixture on every kernel of the matrix, in QEMU guests
# (root; the e2e root and Debian's archive on first use; docs/crosscheck.md).  Not part of
# `make test`.  make crosscheck-record also keeps the kernels' output as test data.
XC_ARGS ?=
.PHONY: crosscheck crosscheck-record
crosscheck: $(STAMP)
	@bash e2e/build-root.sh $(E2E_CACHE)
	@$(BIN)/python -m hugepfn.crosscheck.matrix --cache $(E2E_CACHE) --junit out/crosscheck.xml $(XC_ARGS)

crosscheck-record: $(STAMP)
	@bash e2e/build-root.sh $(E2E_CACHE)
	@$(BIN)/python -m hugepfn.crosscheck.matrix --cache $(E2E_CACHE) --record tests/crosscheck/recorded $(XC_ARGS)

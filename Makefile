# lazypull: `make demo` runs the main job, `make test` the test suite. Both install what they need.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean oracle

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install-deps.sh
	bash scripts/install-deps.sh
	test -x $(PY) || /usr/bin/python3 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

demo: install
	# byte-compiled first, as for bench: each lazypull command of the demo is a fresh process
	$(PY) -m compileall -q lazypull
	$(PY) -m devtools.demo

test: install lint oracle
	$(PY) -m pytest -q tests

oracle: install
	bash tests/oracle/build.sh

lint: install
	$(VENV)/bin/ruff check lazypull devtools tests bench
	$(VENV)/bin/mypy

bench: install
	# byte-compile lazypull: with PYTHONDONTWRITEBYTECODE set, every lazypull process (three per container
	# start) and the mount server would otherwise compile ~170 modules from source (~0.3 s CPU each)
	$(PY) -m compileall -q --invalidation-mode checked-hash lazypull
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info

# The two commands README.md starts with. Each creates .venv when it is missing.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin

.PHONY: demo test setup system-deps clean

# Rules call `python`: put the venv first on PATH for them.
demo: $(VENV)/.installed
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --profile local

test: $(VENV)/.installed system-deps
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest

setup: $(VENV)/.installed

# Slurm (controller + node daemon) and headless Chromium for the integration tests.
system-deps:
	bash .ci/system-deps.sh

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

clean:
	rm -rf results logs .snakemake report.zip

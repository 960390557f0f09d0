# The two commands of README.md, "Two commands": `make demo` and `make test`. Each installs what it
# needs on a Debian/Ubuntu machine (scripts/setup.sh holds every install step), then runs.
#
#   make demo                      the CPU build of PyTorch unless a GPU is found (TORCH_BUILD=auto)
#   make demo TORCH_BUILD=cuda     PyPI's CUDA build; TORCH_INDEX=URL picks another torch index
#   make demo VENV=                no virtualenv: install into $(PYTHON)'s environment
#   make test PYTEST_ARGS="-m 'not slow' tests/test_config.py"

PYTHON ?= python3
# A virtualenv in the checkout; an activated one is used instead. Empty: $(PYTHON) itself.
VENV ?= $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),.venv)
TORCH ?= torch==2.13.0
TORCH_BUILD ?= auto
TORCH_INDEX ?=
DEMO_ARGS ?=
PYTEST_ARGS ?=

# The step times of scripts/setup.sh count from here (or from .ci/run's start).
ifndef SETUP_STARTED
SETUP_STARTED := $(shell date +%s)
endif
export PYTHON VENV TORCH TORCH_BUILD TORCH_INDEX SETUP_STARTED

BIN := $(if $(VENV),$(abspath $(VENV))/bin/,)
PY := $(if $(VENV),$(BIN)python,$(PYTHON))

.PHONY: demo test

demo:
	scripts/setup.sh system demo
	scripts/setup.sh python demo
	@printf '\n== dicomnode demo (%ds)\n' $$(( $$(date +%s) - $(SETUP_STARTED) ))
	$(BIN)dicomnode demo $(DEMO_ARGS)

test:
	scripts/setup.sh system test
	scripts/setup.sh postgres
	scripts/setup.sh python test
	@printf '\n== Tests: pytest (%ds)\n' $$(( $$(date +%s) - $(SETUP_STARTED) ))
	$(if $(BIN),PATH="$(BIN):$$PATH") $(PY) -m pytest $(PYTEST_ARGS)

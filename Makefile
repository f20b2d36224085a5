# sgid developer commands. `make demo` and `make test` build their own environment from nothing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.sgid-installed
# pytest-xdist workers for `make test` (each computes with its share of the cores; see tests/conftest.py)
TEST_JOBS ?= 2
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-slow test-all lint bench bench-gpu experiment clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch torchvision
	$(PY) -m pip install -q -c constraints.txt -e '.[all,dev]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/sgid demo --out demo-out

lint: install
	$(VENV)/bin/ruff check src tests benchmarks experiments
	$(VENV)/bin/ruff format --check src tests benchmarks experiments
	$(VENV)/bin/mypy

test: install lint
	$(PY) -m pytest -q -m "not slow and not gpu" -n $(TEST_JOBS) --dist loadgroup

test-slow: install
	$(PY) -m pytest -q -m "slow and not gpu"

test-all: install lint
	$(PY) -m pytest -q -m "not gpu"

bench: install
	$(PY) benchmarks/run_all.py

bench-gpu: install
	$(PY) benchmarks/gpu_throughput.py --out gpu_throughput.json

experiment: install
	$(PY) experiments/digits.py --out experiments/out/digits

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache

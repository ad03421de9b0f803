# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PORT   ?= 8000
STAMP  := $(VENV)/.installed

.PHONY: install run test lint bench quality clean

$(STAMP): pyproject.toml requirements/torch-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/torch-cpu.txt
	$(PY) -m pip install --quiet -e '.[gateway,worker,hub,cli,bench,dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	PORT=$(PORT) PYTHON=$(PY) bash scripts/run.sh

# One torch thread per process in tests: the suite runs worker and gateway processes beside
# the test process on a 2-core machine, and oversubscribed torch threads slow all of them.
test: $(STAMP)
	bash scripts/test-deps.sh
	$(PY) -m ruff check .
	OMP_NUM_THREADS=1 $(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: $(STAMP)
	$(PY) -m benchmarks.service

quality: $(STAMP)
	$(PY) -m benchmarks.quality

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# Two commands do all the set-up: `make demo` and `make test` (each creates .venv first).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN ?= runs/demo

.PHONY: demo test lint clean base

$(VENV)/.installed: requirements.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements.txt
	touch $@

demo: $(VENV)/.installed
	$(PY) demo.py --out $(RUN)

# Rebuilds the shipped perception base models/base (about 2.5 hours on 2 cores; see pretrain_base.py BASE_RECIPE).
base: $(VENV)/.installed
	$(PY) pretrain_base.py --out models/base --work runs/base

test: $(VENV)/.installed
	OMP_NUM_THREADS=1 $(PY) -m pytest tests

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs .pytest_cache

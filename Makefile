# gradleak — the two commands a newcomer runs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint bench bench-breaching clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,flower,nvflare]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gradleak demo

# pytest exits 5 when it collects no tests: that is a failure, not a pass.
test: $(STAMP)
	@$(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do [ -e "$$b" ] || continue; echo "== $$b"; $(PY) $$b || exit 1; done

# gradleak against breaching (pip's breaching, MIT) in a venv of its own, beside the same torch; never committed.
# The torch pins ride along in breaching's install so that pip keeps them (it must not fetch another torch).
BVENV  ?= .venv-breaching
BPY    := $(BVENV)/bin/python
BSTAMP := $(BVENV)/.installed

$(BSTAMP):
	$(PYTHON) -m venv $(BVENV)
	$(BPY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BPY) -m pip install --quiet breaching hydra-core torch==2.14.1 torchvision==0.29.1
	$(BPY) -c "import torch, breaching; assert torch.__version__.split('+')[0] == '2.14.1', torch.__version__"
	touch $(BSTAMP)

bench-breaching: $(STAMP) $(BSTAMP)
	$(PY) benchmarks/vs_breaching.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache

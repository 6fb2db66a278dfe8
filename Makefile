# The two commands of the README: `make demo` and `make test` (CI runs .ci/run, which runs `make test`).
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first, from this machine's wheel folder when there is one (a CPU build); then the project
TORCH_SPEC ?= torch==2.13.0
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

.PHONY: setup demo test test-fast
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(FIND_LINKS) "$(TORCH_SPEC)"
	$(PY) -m pip install -q $(FIND_LINKS) -e '.[test]'
	touch $@

demo: setup
	$(PY) -m jobs.submit demo

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow and not distributed and not slurm and not docker and not demo"

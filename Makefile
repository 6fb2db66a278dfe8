# The two commands of the README: `make demo` and `make test` (CI runs .ci/run, which runs `make test`).
VENV ?= .venv
PY := $(VENV)/bin/python
# torch and its torchvision first (the processors of LLaVA-OneVision, Qwen-VL, InternVL and SmolVLM
# need torchvision; PyPI's has no match for the CPU torch 2.13.0 wheel of /opt/wheels, so the pair
# is a CUDA build that runs on the CPU, ~5.5 GB; pip on Python 3.11 takes it from this machine's
# local index); then the project at the modern stack's lock
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
LOCK := docker/lock/py311.txt

# The dcu stack (docs/scnet.md): Python 3.10, the site's torch and DeepSpeed, docker/lock/dcu-py310.txt.
# Here PyPI's torch 2.1.2 (the DAS torch of DTK 24.04; a CUDA build, run on the CPU) with its
# torchvision 0.16.2, and DeepSpeed 0.14.2 (DAS, DTK 25.04) stand in for Hygon's builds;
# scripts/install-site.sh installs the rest exactly as on an SCNet node.
DCU_VENV ?= .venv-dcu
# a Python 3.10 that runs (pyenv's shim answers but refuses when 3.10 is not selected); else python3
DCU_PYTHON ?= $(shell for p in python3.10 $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.10*/bin/python3.10; do \
  $$p -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null && { echo $$p; exit; }; done; echo python3)
DCU_TORCH_SPEC ?= torch==2.1.2 torchvision==0.16.2
DCU_DEEPSPEED_SPEC ?= deepspeed==0.14.2
# on the dcu stack: every group but the container, Slurm and job-flow ones (those test images,
# launchers and the job system around training, not library versions; CI's 90 minutes hold both
# stacks this way); the short demo instead of the one with DPO (calibrated on the modern stack)
DCU_MARKERS ?= not slurm and not docker and not jobflow
DCU_DESELECT ?= not test_final_model_loads_on_the_other_stack and not dpo_lowers_hallucination
VERMIN = $(VENV)/bin/vermin -t=3.10- --violations --no-tips --eval-annotations --exclude long

.PHONY: setup setup-dcu demo test test-fast test-dcu lint
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(FIND_LINKS) $(TORCH_SPEC)
	$(PY) -m pip install -q $(FIND_LINKS) -c $(LOCK) -e '.[test]'
	touch $@

setup-dcu: $(DCU_VENV)/.installed

$(DCU_VENV)/.installed: pyproject.toml docker/lock/dcu-py310.txt scripts/install-site.sh
	$(DCU_PYTHON) -m venv $(DCU_VENV)
	$(DCU_VENV)/bin/python -m pip install -q $(DCU_TORCH_SPEC) numpy==1.26.4
	$(DCU_VENV)/bin/python -m pip install -q "$(DCU_DEEPSPEED_SPEC)"
	PYTHON=$(DCU_VENV)/bin/python bash scripts/install-site.sh --test
	touch $@

demo: setup
	$(PY) -m jobs.submit demo

lint: setup
	$(VERMIN) llava_core jobs cluster bench tests

# both stacks, each telling the cross-stack checkpoint test where the other one is
test: lint setup-dcu
	LLAVA_OTHER_STACK_PYTHON=$(abspath $(DCU_VENV))/bin/python $(PY) -m pytest --durations=25 -k "not test_short_demo"
	$(MAKE) test-dcu

test-dcu: setup-dcu
	$(DCU_VENV)/bin/python -m pytest --durations=25 -m "$(DCU_MARKERS)" -k "$(DCU_DESELECT)"

test-fast: setup
	$(PY) -m pytest -m "not slow and not distributed and not slurm and not docker and not demo"

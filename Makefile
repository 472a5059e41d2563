# Fresh machine: `make demo` installs and runs the demo; `make test` installs and runs the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned first: a CPU wheel of 2.13.0 is on disk on our machines; a looser requirement with no
# torch installed would pull gigabytes of CUDA packages. Elsewhere pip finds 2.13.0 on PyPI.
TORCH ?= torch==2.13.0

.PHONY: demo test test-fast fuzz install install-test bench-smoke bench bench-peers clean peers

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[test,ray,keras]"
	touch $@

# pytorch-grad-cam (HiResCAM, Ablation-CAM, Eigen-CAM, FullGrad, ...) needs torchvision, which must never enter
# .venv (it replaces the CPU torch): the CAM oracle tests (tests/test_explain_cams_peers.py) run it in this venv
# of its own, ~5.5 GB with the CUDA build of torch that torchvision 0.29.1 requires; skipped where it is absent.
# Zennit (LRP's composites: tests/test_explain_lrp_zennit.py) imports torchvision too and lives there as well.
PEERS_VENV := .venv-peers
$(PEERS_VENV)/.installed:
	$(PY) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1 grad-cam zennit==0.5.1 pytest
	# TorchRay (extremal perturbations' reference code: benchmarks/peers_extremal.py) without its pins: it needs
	# only torch, torchvision and matplotlib at import, which grad-cam brings
	$(PEERS_VENV)/bin/pip install -q --no-deps torchray==1.0.0.2
	touch $@
peers: $(PEERS_VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/cnnlens demo --out demo-run --overwrite

test: install-test
	$(BIN)/python -m pytest -q -n 2 --durations=15

test-fast: install-test
	$(BIN)/python -m pytest -q -n 2 -m "not slow"

# the data loaders' fuzz test with a longer budget than CI's 60 examples per test (FUZZ_EXAMPLES=N to change)
FUZZ_EXAMPLES ?= 2000
fuzz: install-test
	CNNLENS_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q tests/test_data_fuzz.py

bench-smoke: install-test
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/run.py --smoke

bench: install-test
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/run.py --threads 1

# the CAMs against pytorch-grad-cam, in the peers' venv (torchvision; both sides on its torch):
# benchmarks/results/peers-cams-cpu-*.json and .md
bench-peers: peers
	PYTHONPATH=src $(PEERS_VENV)/bin/python benchmarks/peers_cams.py --threads 1
	PYTHONPATH=src $(PEERS_VENV)/bin/python benchmarks/peers_extremal.py --threads 1 --steps 300

clean:
	rm -rf $(VENV) demo-run

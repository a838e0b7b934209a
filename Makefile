# memguard: `make demo` runs the main job on the bundled miniature model, `make test` runs the tests.
# Both create .venv and install the pinned requirements on first use (CPU torch 2.13.0).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint bench clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps open-clip-torch==3.3.0  # only for its CLIP BPE vocabulary file
	touch $@

demo: $(VENV)/.installed
	$(PY) -m memguard demo

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) bench/cost.py
	$(PY) bench/detection.py
	$(PY) bench/explanation.py
	$(PY) bench/finetune.py
	$(PY) bench/mitigation.py
	$(PY) bench/throughput.py
	$(PY) bench/watch_overhead.py
	$(PY) bench/soak.py

clean:
	rm -rf $(VENV) out

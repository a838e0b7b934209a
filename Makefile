# memguard: `make demo` runs the main job on the bundled miniature model, `make test` runs the tests.
# Both create .venv and install the pinned requirements on first use (CPU torch 2.13.0).
# `make test` also builds .venv-a1111 and .venv-forge, the Python stacks of the two WebUI hosts
# (requirements/a1111.txt, requirements/forge.txt), and runs there every test of code that runs inside a WebUI
# (the tests marked host_stack: all but those tests/conftest.py lists in OUR_STACK_ONLY).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The hosts' Python (A1111 1.10 and Forge both recommend 3.10): pyenv's 3.10 where there is one, else python3.10.
HOST_PYTHON ?= $(firstword $(wildcard /root/.pyenv/versions/3.10.*/bin/python3) $(shell command -v python3.10 2>/dev/null))
HOSTS := a1111 forge
# (named indirectly: a recipe line that names $(MAKE) itself would run even under `make -n`)
HOSTS_INSTALL = $(MAKE) --no-print-directory hosts

.PHONY: demo test test-hosts $(addprefix test-,$(HOSTS)) hosts lint bench mutation mutation-js screenshots clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps open-clip-torch==3.3.0  # only for its CLIP BPE vocabulary file
	touch $@

# A host's stack, from nothing: its pins (requirements/<host>.txt), then open-clip-torch without dependencies.
.venv-%/.installed: requirements/%.txt requirements/hosts-no-deps.txt
	@test -n "$(HOST_PYTHON)" || { echo "no Python 3.10 for the host stacks: set HOST_PYTHON"; exit 1; }
	rm -rf .venv-$*
	$(HOST_PYTHON) -m venv .venv-$*
	.venv-$*/bin/python -m pip install -q --upgrade pip
	.venv-$*/bin/python -m pip install -q -r requirements/$*.txt
	.venv-$*/bin/python -m pip install -q --no-deps -r requirements/hosts-no-deps.txt
	touch $@

demo: $(VENV)/.installed
	$(PY) -m memguard demo

# Lint (ruff rules, ruff format, mypy on memguard/: `make lint`), then our stack's whole suite, then each host's
# stack. The host stacks install (mostly downloads) while our suite runs; their pip output goes to
# out/hosts-install.log, shown if an install fails. pytest's exit 5 (no test ran) fails the target like any other
# failure.
test: lint
	@mkdir -p out; $(HOSTS_INSTALL) > out/hosts-install.log 2>&1 & hosts=$$!; \
	echo "$(PY) -m pytest -q  (installing the host stacks meanwhile: out/hosts-install.log)"; \
	$(PY) -m pytest -q; status=$$?; \
	wait $$hosts || { cat out/hosts-install.log; echo "installing the host stacks failed"; exit 1; }; \
	exit $$status
	$(MAKE) --no-print-directory test-hosts

hosts: $(foreach host,$(HOSTS),.venv-$(host)/.installed)

test-hosts: $(addprefix test-,$(HOSTS))

# (-p no:cacheprovider: .pytest_cache keeps the last failures of our stack's run)
$(addprefix test-,$(HOSTS)): test-%: .venv-%/.installed
	MEMGUARD_HOST_STACK=$* .venv-$*/bin/python -m pytest -q -m host_stack -p no:cacheprovider

# Lint rules, formatting, types (the first part of `make test`).
lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy memguard

# Mutation testing (docs/testing.md, Mutation testing): mutmut mutates each module of MUTATE in turn and runs that
# module's own tests against every mutant (the table in tests/mutation.py); prints the surviving mutants that
# tests/mutation_equivalent.txt does not list as equivalent, and the score and time per module. Not part of
# `make test`: about 30 minutes for the whole list on a busy 2-core machine (docs/testing.md).
# `make mutation MUTATE=memguard/detect.py` runs one module.
MUTATE ?= memguard/result.py memguard/flow.py memguard/detect.py memguard/strategies.py memguard/calibrate.py \
	memguard/explain.py memguard/ui/panel.py memguard/hosts/request.py memguard/api.py \
	memguard/hosts/a1111/report.py memguard/hosts/a1111/conditioning.py memguard/algebra.py \
	memguard/mitigate/base.py memguard/prompt_syntax.py
MUTATION_JOBS ?= 2
mutation: $(VENV)/.installed
	$(PY) -u tests/mutation.py --jobs $(MUTATION_JOBS) $(MUTATE)

# The same for javascript/memguard.js: hand-written mutations (tests/js_mutation.py), each against the browser tests
# (Debian's chromium); a few minutes.
mutation-js: $(VENV)/.installed
	$(PY) -u tests/js_mutation.py

# The README's pictures (docs/panel.png, docs/tab.png), taken by the browser tests; a plain test run writes them to
# out/ours/ and leaves the checkout as it was.
screenshots: $(VENV)/.installed
	MEMGUARD_DOCS_SCREENSHOTS=1 $(PY) -m pytest -q tests/browser/test_panel_browser.py tests/browser/test_tab_browser.py

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
	rm -rf $(VENV) $(addprefix .venv-,$(HOSTS)) out mutants

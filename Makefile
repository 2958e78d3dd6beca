# make test  : lint, unit tests, notebooks in sync, every chapter executed by nbval,
#              the book built with warnings as errors, and the site checked in a browser
# make book  : build the HTML site (fully offline) and print where to open it
# make lab   : open the chapters in JupyterLab
# make bench : run every benchmark at its CPU size (JSON under _build/bench)
# make clean : remove what the build made
#
# TORCH picks the PyTorch wheel: plain `torch` gets the default (CUDA) build; CI
# passes TORCH="torch==2.13.0", a CPU build.

PYTHON ?= python3
TORCH ?= torch>=2.4
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
SITE := _build/html/index.html

.PHONY: install test unit lint notebooks nbval site browser book lab clean bench

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[all]"
	touch $@

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

config: install
	$(PY) scripts/book.py config

CHAPTERS = $(shell test -x $(PY) && $(PY) scripts/book.py files)
NOTEBOOKS = $(patsubst chapters/%.md,notebooks/%.ipynb,$(CHAPTERS))

notebooks: config
	$(BIN)/jupytext --sync --quiet $(CHAPTERS)

unit: notebooks
	$(PY) -m pytest tests -q

nbval: notebooks
	TRITON_INTERPRET=1 $(PY) -m pytest --nbval-lax --nbval-cell-timeout=300 \
		$(NOTEBOOKS) -q

site: config
	TRITON_INTERPRET=1 $(BIN)/jupyter-book build . --warningiserror --keep-going \
		--quiet

browser: site
	$(PY) -m pytest site_tests -q

test: lint unit nbval site browser

book: site
	@echo "The book is built: open file://$(CURDIR)/$(SITE)"

lab: notebooks
	$(BIN)/jupyter lab notebooks/

bench: install
	TRITON_INTERPRET=1 $(PY) -m benchmarks --all --out-dir _build/bench

clean:
	rm -rf _build notebooks _toc.yml _config.yml

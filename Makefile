# Two entry points, each doing its own set-up (a virtual environment in .venv, the project installed into it):
#   make quick   the whole DVC pipeline with the quick profile on the real data (minutes on a 2-core CPU)
#   make test    the test suite (what CI runs)
#   make cpu     the quick pipeline with the main `farnet` run trained for about 60 minutes (profile cpu)
#   make study   cpu plus Table 2's rows, FARNet's seeds and spine fold 1 at the cpu scale (profile study, ~3 h more;
#                run again after an interruption, it resumes)
#   make settle  the settling runs of pipelines/settling.yaml (results/settling/)
#   make paper-gpus GPUS=8   the paper's pipeline with its trainings side by side on the node's GPUs
#                (docs/gpu-node.md; SHARE=K/N trains one node's share of them)
#   make carry   the ISBI 2015 carry that `farnet replicate` trains from on a machine without the data mirror
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export FARNET_DATA_MIRROR ?= $(abspath ../shared/data)

.PHONY: setup quick cpu study settle paper paper-gpus test exp-show carry

$(BIN)/farnet: pyproject.toml requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(BIN)/farnet

setup: $(BIN)/farnet

quick: setup
	test -d .dvc || $(BIN)/dvc init --quiet
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/dvc exp run --name quick-$$(date +%Y%m%d-%H%M%S) -S profile=quick

cpu: setup
	test -d .dvc || $(BIN)/dvc init --quiet
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/dvc exp run --name cpu-$$(date +%Y%m%d-%H%M%S) -S profile=cpu

study: setup
	test -d .dvc || $(BIN)/dvc init --quiet
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/dvc exp run --name study-$$(date +%Y%m%d-%H%M%S) -S profile=study

settle: setup
	$(BIN)/farnet settle

paper: setup
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/dvc repro

GPUS ?= $(shell nvidia-smi -L 2>/dev/null | wc -l)
paper-gpus: setup
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/farnet paper-gpus --gpus $(GPUS) \
		$(if $(SHARE),--share $(SHARE) --train-only)

# The experiments with the headline numbers of every table (results/summary.json) and the params that differ
exp-show: setup
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/farnet exp-show

carry: setup
	$(BIN)/farnet carry build --out data/carry/isbi2015-800x640.zip

test: setup
	$(BIN)/python -m pytest -q

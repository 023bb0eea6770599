# d3llm-pipeline — `make help` lists the targets. Each target is one command; no logic hides here.
PY ?= .venv/bin/python
PIP ?= .venv/bin/pip
# pytest-xdist workers for make test: one per core of the 2-core CI machine (each test runs torch on 1 thread; a
# file's tests stay on one worker, so its module fixtures are built once)
TEST_WORKERS ?= 2
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: help setup test test-all test-gpu gpu-prep lint teacher eval sweep demo demo-roster demo-arith demo-long ablation ablation-roster ablation-arith ablation-short ablation-long clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-15s %s\n", $$1, $$2}'

setup:  ## create .venv and install the package (editable) with dev extras; torch is the pinned CPU wheel
	python3 -m venv .venv && $(PIP) install -q --upgrade pip && $(PIP) install -q -e '.[dev]'

test: lint  ## lint, then the test suite (offline, CPU, excludes slow ones) on TEST_WORKERS processes; the 15 slowest
	$(PY) -m pytest -m "not slow" -q -n $(TEST_WORKERS) --dist loadfile --durations=15

test-all:  ## run every test, slow ones included
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-gpu:  ## the CUDA checks (tests/gpu/; they skip without a GPU): fixtures, batching, cache, host syncs
	$(PY) -m pytest -m gpu -q

gpu-prep:  ## for a lent GPU machine: .gpu/ = the wheels its image lacks (benchmarks/gpu_session.sh)
	mkdir -p .gpu/whl
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	    -d .gpu/whl -r benchmarks/gpu_wheels.txt
	$(PY) -m pip wheel -q --no-deps -w .gpu/whl antlr4-python3-runtime==4.9.3   # an sdist only: built here
	du -sh .gpu tests/fixtures   # with the repo (its official fixtures: 45 MiB) under the 64 MiB a device call carries

lint:  ## ruff (pyflakes, pycodestyle, isort, pyupgrade, bugbear) + import contracts (layers, no cycles, pure core)
	$(PY) -m ruff check d3llm_pipeline tests benchmarks
	$(dir $(PY))lint-imports --no-cache

teacher:  ## train the embedded tiny teacher (4,800 steps, ~11 min on 2 idle CPU cores)
	$(PY) -m d3llm_pipeline stage=teacher

eval:  ## evaluate the teacher with vanilla (one token per forward) decoding
	$(PY) -m d3llm_pipeline stage=eval decode=vanilla

sweep:  ## threshold sweep: one eval job per entropy threshold (preset conf/experiment/sweep_threshold.yaml)
	$(PY) -m d3llm_pipeline stage=eval experiment=sweep_threshold

demo:  ## end to end on task=roster: teacher -> trajectories -> distill -> sweeps -> AUP plot + leaderboard (reuses artifacts; ~18 min from scratch on 2 cores)
	$(PY) -m d3llm_pipeline stage=pipeline experiment=roster

demo-roster: demo  ## the same as make demo (task=roster, experiment=roster)

demo-arith:  ## the end-to-end demo on task=arith (one right answer: the block schedule limits it; artifacts under artifacts)
	$(PY) -m d3llm_pipeline stage=pipeline

demo-long:  ## the end-to-end demo on the long-generation task (task=arith_long, own artifacts under artifacts_long; ~36 min from scratch on 2 idle cores)
	$(PY) -m d3llm_pipeline stage=pipeline experiment=demo_long

ablation: ablation-roster  ## the paper's ablations on task=roster, 3 training seeds, with the teacher/d3llm control

ablation-arith: ablation-short ablation-long  ## the paper's ablations on both arith tasks, 3 training seeds each

# One run dir per task (not per launch), so a rerun finds its evals and only re-tabulates (stage.reuse_evals).
ablation-short:  ## ablations on task=arith -> outputs/runs/ablation/default/ablation.md + .csv + curves
	$(PY) -m d3llm_pipeline stage=ablation 'hydra.run.dir=$${paths.output_dir}/runs/ablation/default'

ablation-long:  ## ablations on task=arith_long (experiment=demo_long) -> outputs/runs/ablation/demo_long/
	$(PY) -m d3llm_pipeline stage=ablation experiment=demo_long 'hydra.run.dir=$${paths.output_dir}/runs/ablation/demo_long'

ablation-roster:  ## ablations on task=roster (experiment=roster) -> outputs/runs/ablation/roster/ (~2 h on 2 idle cores)
	$(PY) -m d3llm_pipeline stage=ablation experiment=roster 'stage.thresholds=$${suite.thresholds}' 'hydra.run.dir=$${paths.output_dir}/runs/ablation/roster'

clean:  ## remove run outputs (keeps outputs/.gitkeep)
	find outputs -mindepth 1 ! -name .gitkeep -exec rm -rf {} +

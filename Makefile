# Every target sets up what it needs first, so each works on a fresh clone.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(CURDIR)/node_modules/.bin:$(PATH)
# jsii warns on every synth that Node 20 is end of life; Node 20 is what these machines have.
export JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION := 1
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
# The CDK CLI would otherwise ask npm for a newer version of itself on every run.
export CDK_DISABLE_VERSION_CHECK := 1
export PYTHONPATH := $(CURDIR)/lambda:$(CURDIR)

.PHONY: setup demo synth test unit lint integration prefect-venvs dry-run bench time-to-scale day-replay clean

setup: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

## Main job: the whole loop locally (real Prefect 3 server, publisher, moto CloudWatch, simulated ECS and scaling); chart in out/.
## ARGS="--no-protection" runs it with taskProtection off, to show what protection prevents.
demo: setup
	bash scripts/install-prefect.sh 3 .venvs/prefect3
	$(PY) -m demo.run $(ARGS)

## Synthesize the stack from the example config in cdk.json and summarize it (no AWS account needed).
synth: setup
	cdk synth --quiet --no-notices
	$(PY) -m infra.summary cdk.out

## Everything CI runs: lint, type check, unit and infra tests, then the real-Prefect integration suite.
test: lint unit integration

unit: setup
	$(PY) -m pytest -m "not integration"

lint: setup
	$(PY) -m ruff check .
	$(PY) -m mypy

prefect-venvs:
	bash scripts/install-prefect.sh 2 .venvs/prefect2
	bash scripts/install-prefect.sh 3 .venvs/prefect3
	bash scripts/install-prefect.sh 3.9 .venvs/prefect39

integration: setup prefect-venvs
	$(PY) -m pytest -m integration

## One publisher run against any Prefect API, printing what would be published: make dry-run ARGS="--api-url http://127.0.0.1:4200/api --queue my-pool/default"
# Quiet: stdout holds only the dry run's own output (with --json, only JSON); setup talks on stderr.
# Scripts call scripts/dry-run directly: make exits 2 on any failure, the script keeps the dry run's 1 or 2.
dry-run:
	@bash scripts/dry-run $(ARGS)

## Publisher tick vs the per-queue baseline on a real Prefect 3 server and moto_server, server CPU included (~7 min),
## then reading in-flight runs by their changes at 50 / 1,000 / 5,000 in flight (~4 min; RC_ARGS); docs/performance.md
bench: setup
	bash scripts/install-prefect.sh 3 .venvs/prefect3
	$(PY) -m bench.run $(ARGS)
	$(PY) -m bench.read_changes $(RC_ARGS)

## Three days replayed on the AWS model (harness/aws_model): the recipe, ours and a causal lower bound (~20 s)
day-replay: setup
	$(PY) -m bench.day_replay $(ARGS)

## Time from a due run to a worker running it on the AWS model, default and fast mode vs the recipe (~15 s)
time-to-scale: setup
	$(PY) -m bench.time_to_scale $(ARGS)

clean:
	rm -rf cdk.out .build .pytest_cache .mypy_cache .ruff_cache

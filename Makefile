# Janus — two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
ROUTING_DATA ?= ../shared/data/routing

.PHONY: install test-tools run test unit validate-deploy gen-deploy bench bench-instructions bench-bytecodes \
        bench-metering bench-router \
        token faults compose-keys \
        train-router eval-routing lint soak clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## make run: install, start nats-server + the four services with the fake provider, print a dev token
run: install
	$(BIN)/python -m tools.localstack

## make test: install and run the whole suite (unit, contract, integration, end to end, faults and
## scale-out, deploy checks, lint and types)
test: install test-tools
	$(BIN)/python -m pytest
	$(MAKE) validate-deploy
	$(MAKE) lint

## make faults: only the fault and scale-out tests (worker/metering/NATS kills, a JetStream leader
## loss, two replicas of everything, 64 streams for a minute); `make test` runs them too
faults: install
	$(BIN)/python -m pytest tests/faults tests/scale

## make unit: the suite without the fault and scale-out tests (a quicker loop while working)
unit: install test-tools
	$(BIN)/python -m pytest --ignore=tests/faults --ignore=tests/scale

## programs the tests drive, from Debian's packages, installed with apt-get when missing: headless
## chromium (the console's browser tests), prometheus (the live dashboard test) and valgrind
## (make bench-instructions, which the bench tests run once with tiny numbers)
test-tools:
	@bash scripts/ensure-tool.sh chromium chromium fonts-dejavu-core >/dev/null
	@bash scripts/ensure-tool.sh prometheus prometheus >/dev/null
	@bash scripts/ensure-tool.sh valgrind valgrind >/dev/null

validate-deploy: install
	bash deploy/validate.sh

## make bench: direct vs through Janus, at concurrency 1, 16 and 64, buffered and streaming
bench: install
	$(BIN)/python -m tools.bench

## make bench-instructions: instructions per request in the gateway and the worker beside the bare
## pipeline's, counted by callgrind: repeatable to 0.1 % whatever the machine's speed that minute
bench-instructions: install
	@bash scripts/ensure-tool.sh valgrind valgrind >/dev/null
	$(BIN)/python -m tools.bench.instructions

## make bench-bytecodes: Python bytecodes per request in the gateway and the worker, by function and
## line, beside the bare pipeline's: where in Python the counted instructions go
bench-bytecodes: install
	$(BIN)/python -m tools.bench.bytecodes

bench-metering: install
	$(BIN)/python -m tools.bench_metering

bench-router: install
	$(BIN)/python -m tools.eval_routing --bench

## make soak: 64 concurrent streams for 10 minutes; reports RSS growth per service
soak: install
	$(BIN)/python -m tools.soak

## regenerate deploy/ files derived from config/ and shared/metrics.py, and the README's models table
gen-deploy: install
	$(BIN)/python deploy/gen.py
	$(BIN)/python -m tools.readme_models

## make compose-keys: NATS identities (NKey seeds) and TLS files for docker compose, in .janus/compose/
compose-keys: install
	$(BIN)/python -m tools.natsauth compose .janus/compose

## make token USER=<id> PLAN=<tier> [EMAIL=<e>]
token: install
	@$(BIN)/python -m tools.token --user "$(USER)" --plan "$(or $(PLAN),free)" $(if $(EMAIL),--email "$(EMAIL)")

train-router: install
	ROUTING_DATA=$(ROUTING_DATA) $(BIN)/python -m tools.train_router

eval-routing: install
	ROUTING_DATA=$(ROUTING_DATA) $(BIN)/python -m tools.eval_routing

lint: install
	$(BIN)/ruff check shared services tools tests
	$(BIN)/mypy shared services

clean:
	rm -rf $(VENV) .janus .pytest_cache .mypy_cache .ruff_cache bench-results

# lattice — `make` lists the targets.
SHELL := /bin/bash
GO ?= go
BIN := bin/lattice
PKGS := ./...

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## build bin/lattice
	$(GO) build -o $(BIN) ./cmd/lattice

.PHONY: run
run: build ## build and start a local three-node cluster on 127.0.0.1:7101-7103 (quickstart config); Ctrl-C stops
	$(BIN) dev --nodes 3 --config cmd/lattice/quickstart.yaml

.PHONY: demo
demo: build deps ## scripted tour: two PostgreSQL databases kept in sync by a three-node cluster (needs 127.0.0.1:7101-7403 free)
	$(GO) run ./cmd/lattice-demo --lattice $(BIN)

PGBIN := /usr/lib/postgresql/15/bin

.PHONY: deps
deps: ## install what the tests need from Debian when missing (PostgreSQL 15 binaries, iptables)
	@missing=""; \
	test -x $(PGBIN)/initdb || missing="$$missing postgresql"; \
	command -v iptables >/dev/null || missing="$$missing iptables"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		(apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

.PHONY: test
test: deps verify-generate ## run every test with -race (installs what the tests need)
	$(GO) vet $(PKGS)
	$(GO) test -race -count=1 -timeout 20m $(PKGS)

.PHONY: bench
bench: ## run the benchmarks quoted in BENCHMARKS.md
	$(GO) test -run '^$$' -bench . -benchmem -count 1 ./crdt/ ./storage/
	$(GO) run ./cmd/lattice-bench
	LATTICE_BENCH_REPS=3 $(GO) test ./connectors/postgres/ -run '^$$' -bench . -benchtime 1x -timeout 30m

.PHONY: jepsen
jepsen: deps ## fault-injection suite: 20 runs of 60 s, API and PostgreSQL workloads, every fault (pass flags with ARGS='--runs 3 --seed 7 --faults partition,kill --workload api'; see jepsen/README.md)
	$(GO) run ./cmd/lattice-jepsen $(ARGS)

.PHONY: jepsen-scenarios
jepsen-scenarios: deps ## replay the regression scenario of every bug the fault harness found
	LATTICE_JEPSEN_SCENARIOS=1 $(GO) test -count=1 -timeout 30m -v -run 'TestScenarios|TestTokenCovers' ./jepsen

.PHONY: lint
lint: ## gofmt and go vet
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); echo "run gofmt -w on the files above"; exit 1)
	$(GO) vet $(PKGS)

.PHONY: generate
generate: ## regenerate protobuf code (installs protoc and plugins when missing)
	bash api/generate.sh

.PHONY: verify-generate
verify-generate: ## fail when the committed generated code is stale
	bash api/verify-generate.sh

.PHONY: clean
clean: ## remove build output and local data
	rm -rf bin data

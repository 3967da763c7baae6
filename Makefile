# tcpgate build. Every tool is pinned in go.mod as a `tool` line; nothing else
# needs installing beyond Go.
GO        ?= go
BIN       := bin
# `make run`'s addresses: GRPC_ADDR=... on the command line, or the daemon's
# own TCPGATE_GRPC_ADDR and TCPGATE_HTTP_ADDR from the environment.
GRPC_ADDR ?= $(or $(TCPGATE_GRPC_ADDR),127.0.0.1:50051)
HTTP_ADDR ?= $(or $(TCPGATE_HTTP_ADDR),127.0.0.1:50080)
TESTFLAGS ?=

.PHONY: all generate build run run-cluster test test-short lint verify bench fuzz clean

all: build

## generate: regenerate gen/ from proto/ (offline: plugins run via `go tool`),
## the OpenAPI document and the descriptors with comments that reflection serves
generate:
	$(GO) tool buf generate
	cp gen/tcpgate/v1/gateway.swagger.json gateway/openapi.json
	$(GO) tool buf build --as-file-descriptor-set -o server/descriptor.binpb

## build: build the daemon and CLI to bin/tcpgate
build:
	$(GO) build -o $(BIN)/tcpgate ./cmd/tcpgate

## run: start the gateway on GRPC_ADDR and HTTP_ADDR (or TCPGATE_GRPC_ADDR and
## TCPGATE_HTTP_ADDR); every other TCPGATE_* variable sets its flag as usual
run: build
	./$(BIN)/tcpgate serve --grpc-addr $(GRPC_ADDR) --http-addr $(HTTP_ADDR)

## run-cluster: a NATS server with JetStream (built from go.mod) and three
## gateway nodes on loopback (gRPC 127.0.0.1:50051-50053, REST
## 127.0.0.1:50080-50082, listeners on 127.0.0.11-13); Ctrl-C stops them
## all (scripts/run-cluster says how to move them)
run-cluster: build
	$(GO) build -o $(BIN)/nats-server github.com/nats-io/nats-server/v2
	BIN=$(BIN) ./scripts/run-cluster

## test: install what the tests run besides Go (curl, jq, python3: .ci/deps),
## build everything and run every test with the race detector
test:
	./.ci/deps
	$(GO) build ./...
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 30m $(TESTFLAGS) ./...

## test-short: the same without the heavy load and memory repros (-short)
test-short:
	./.ci/deps
	$(GO) build ./...
	$(GO) vet ./...
	$(GO) test -race -short -count=1 -timeout 20m $(TESTFLAGS) ./...

## lint: vet, gofmt and buf lint
lint:
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^gen/')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) tool buf lint

## verify: fail on stale gen/, untidy go.mod, buf lint or buf format findings
verify: lint
	$(GO) mod tidy -diff
	$(GO) tool buf format --diff --exit-code
	$(MAKE) --no-print-directory generate
	@if [ -n "$$(git status --porcelain -- gen gateway/openapi.json server/descriptor.binpb)" ]; then echo "generated code is stale: run 'make generate' and commit"; git status --porcelain -- gen gateway/openapi.json server/descriptor.binpb; exit 1; fi

## bench: build the daemon, tcpgate-bench and the NATS server of go.mod (for
## the cluster row), run every scenario against real
## processes over loopback (BENCH_RUNS runs; medians on stdout, JSON in
## bin/bench.json; socat installed for the baseline if missing, and Node-RED 4
## from bench/nodered's lockfile with `npm ci` for the browser baseline), then
## the framing and hub micro-benchmarks. docs/BENCHMARKS.md explains the figures.
BENCH_RUNS ?= 3
bench:
	$(GO) build -o $(BIN)/ ./cmd/tcpgate ./cmd/tcpgate-bench
	$(GO) build -o $(BIN)/nats-server github.com/nats-io/nats-server/v2
	@command -v socat >/dev/null 2>&1 || { \
		SUDO=; [ "$$(id -u)" -ne 0 ] && SUDO=sudo; echo "installing socat for the baseline"; \
		{ $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q socat || \
		  { $$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q socat; }; } >/dev/null 2>&1 || \
		echo "socat could not be installed: the baseline is reported unavailable"; }
	@[ -f bench/nodered/node_modules/node-red/red.js ] || { \
		if command -v npm >/dev/null 2>&1; then \
			echo "installing Node-RED 4 for the browser baseline (npm ci in bench/nodered)"; \
			(cd bench/nodered && npm ci --no-audit --no-fund --loglevel=error) || \
			echo "npm ci failed (is the npm registry reachable?): the Node-RED baseline is reported unavailable"; \
		else echo "npm is not installed: the Node-RED baseline is reported unavailable"; fi; }
	./$(BIN)/tcpgate-bench run --tcpgate $(BIN)/tcpgate --nats-server $(BIN)/nats-server --runs $(BENCH_RUNS) --json $(BIN)/bench.json
	$(GO) test -run '^$$' -bench . -benchmem ./server/internal/framing ./server/internal/hub

## fuzz: run every fuzz target of every package for FUZZTIME each
FUZZTIME ?= 20s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
		for t in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			echo "== $$pkg $$t"; \
			$(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
		done; \
	done

clean:
	rm -rf $(BIN)

# fedcluster: build, test, demo and benchmarks. Every target works on a fresh
# machine with Go 1.26; `.ci/run` installs the few system packages first.
GO        ?= go
BIN       := bin/fedcluster
CUDA_DIR  ?= $(CURDIR)/.cache/cuda
PKGS      := ./...

.PHONY: all build build-cuda test test-race test-purego vet lint vet-cuda check-generated wire-gen demo bench bench-heavy bench-peers bench-cycle-peers soak gpu-check fuzz \
	docker docker-gpu test-deploy test-compose k8s-validate clean

all: build

## build: the static CPU binary (no cgo) at bin/fedcluster
build:
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN) ./cmd/fedcluster

## build-cuda: the GPU binary (needs cuda.h and libcuda; see README)
build-cuda:
	CGO_CFLAGS="-I$(CUDA_DIR)/usr/include" CGO_LDFLAGS="-L$(CUDA_DIR)/usr/lib/x86_64-linux-gnu/stubs" \
	  $(GO) build -tags cuda -o bin/fedcluster-cuda ./cmd/fedcluster

## test: vet, the race-checked suite, and the suite again without assembly
test: vet test-race test-purego

vet:
	$(GO) vet $(PKGS)
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }

test-race:
	$(GO) test -race -count=1 -timeout 8m $(PKGS)

test-purego:
	$(GO) test -tags purego -count=1 -timeout 5m ./native/... ./node/agg/...

## lint: staticcheck over the default build
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
lint:
	$(GO) run $(STATICCHECK) ./...

## vet-cuda: compile-check the CUDA engine against CUDA 11.8 headers in $(CUDA_DIR)
vet-cuda:
	CGO_CFLAGS="-I$(CUDA_DIR)/usr/include" CGO_LDFLAGS="-L$(CUDA_DIR)/usr/lib/x86_64-linux-gnu/stubs" \
	  $(GO) vet -tags cuda ./cuda/... ./kernels/... ./node/agg/...

## check-generated: regenerating the assembly and the FlatBuffers code changes nothing
check-generated:
	$(GO) generate ./native/...
	./scripts/gen-wire.sh
	git diff --exit-code -- native wire

## wire-gen: regenerate wire/fbs from wire/schema with flatc 2.0.8 (Debian's flatbuffers-compiler)
wire-gen:
	./scripts/gen-wire.sh

## demo: a real local cluster training LeNet on MNIST with simulated devices
demo: build
	./$(BIN) demo

## bench: kernel and system benchmarks (long; see bench/RESULTS.md)
bench: build
	$(GO) test -run '^$$' -bench . -benchmem -count 1 -timeout 60m ./native/ ./wire/flmsg/ ./node/iteration/ ./bench/

## bench-heavy: adds the 10M-parameter model and 1,024-device cases
bench-heavy: build
	FEDCLUSTER_BENCH_HEAVY=1 $(GO) test -run '^$$' -bench 'DeviceCycle' -benchtime 2x -timeout 60m ./bench/

## bench-peers: FedAvg of 100 x 1M against Flower's aggregate and numpy, same run (needs python3-numpy)
bench-peers:
	./scripts/fedavg-peers.sh

## bench-cycle-peers: the 8- and 32-device cycle against Flower's round, same run (needs python3-grpcio, python3-protobuf, python3-numpy)
bench-cycle-peers:
	./scripts/cycle-peers.sh

## soak: the fault scenarios (scaling, kill -9, partitions) over 200 iterations each
soak: build
	FEDCLUSTER_FAULT_ITERATIONS=200 $(GO) test -count=1 -v -timeout 60m -run 'TestScaleOutAndIn|TestKill|TestPartitioned' ./cmd/fedcluster/

## gpu-check: build the CUDA test binary and the script to run on a GPU machine
gpu-check:
	./scripts/gpu-check.sh build

## fuzz: run every fuzz target briefly (FUZZTIME=20s each)
FUZZTIME ?= 20s
FUZZPKGS := ./wire/frame/ ./wire/peer/ ./wire/flmsg/ ./wire/safetensors/ ./wire/ctl/ ./native/ ./node/scheduler/ ./node/config/ ./node/device/
fuzz:
	@set -e; for p in $(FUZZPKGS); do for t in $$($(GO) test -list 'Fuzz.*' $$p | grep ^Fuzz); do \
	  echo "== $$p $$t"; $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) $$p; done; done

## docker: the FROM-scratch CPU image fedcluster:cpu
docker:
	./deploy/docker-build.sh

## docker-gpu: the CUDA image fedcluster:gpu (fetches cuda.h into .cache/cuda if needed)
docker-gpu:
	./deploy/docker-build-gpu.sh

## test-deploy: the seed's launcher scripts against a real local cluster
test-deploy: build
	./deploy/test-scripts.sh

## test-compose: scheduler + 3 servers in containers, kill and restart one
test-compose:
	./deploy/test-compose.sh

k8s-validate:
	./deploy/k8s/validate.sh

clean:
	rm -rf bin .devcarry .cache/docker-gpu

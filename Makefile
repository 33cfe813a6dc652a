# fedcluster: build, test, demo and benchmarks. Every target works on a fresh
# machine with Go 1.26; `.ci/run` installs the few system packages first.
GO        ?= go
BIN       := bin/fedcluster
CUDA_DIR  ?= $(CURDIR)/.cache/cuda
PKGS      := ./...

.PHONY: all build build-cuda test test-race test-purego vet vet-cuda check-generated demo bench soak gpu-check fuzz clean

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

## vet-cuda: compile-check the CUDA engine against CUDA 11.8 headers in $(CUDA_DIR)
vet-cuda:
	CGO_CFLAGS="-I$(CUDA_DIR)/usr/include" CGO_LDFLAGS="-L$(CUDA_DIR)/usr/lib/x86_64-linux-gnu/stubs" \
	  $(GO) vet -tags cuda ./cuda/... ./kernels/... ./node/agg/...

## check-generated: regenerating the assembly and the FlatBuffers code changes nothing
check-generated:
	$(GO) generate ./native/...
	./scripts/gen-wire.sh
	git diff --exit-code -- native wire

## demo: a real local cluster training LeNet on MNIST with simulated devices
demo: build
	./$(BIN) demo

## bench: kernel and system benchmarks (long; see bench/RESULTS.md)
bench: build
	$(GO) test -run '^$$' -bench . -benchmem -count 1 -timeout 60m ./native/ ./bench/

## soak: long multi-process fault scenarios
soak: build
	FEDCLUSTER_SOAK=1 $(GO) test -count=1 -timeout 60m -run Soak ./cmd/fedcluster/

## gpu-check: build the CUDA test binary and the script to run on a GPU machine
gpu-check:
	./scripts/gpu-check.sh build

## fuzz: run every fuzz target briefly
fuzz:
	@for t in $$($(GO) test -list 'Fuzz.*' ./wire/frame/ | grep ^Fuzz); do $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime 20s ./wire/frame/; done

clean:
	rm -rf bin .devcarry

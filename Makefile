# pxe-anywhere. `make check` is what CI and the README's test command run.
GO      ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
BIN     ?= bin/pxe-anywhere
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
PKGS    := ./...
# sudo drops /usr/local/go/bin from PATH; tests and the lab call go too.
export PATH := $(patsubst %/,%,$(dir $(GO))):$(PATH)

.PHONY: all build test lint run demo e2e bench chain-bench setup check fuzz clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/pxe-anywhere

setup:
	./scripts/setup.sh

# Unit tests and real-peer tests in network namespaces (root) with the
# race detector. PXE_LAB_REQUIRED=1 turns a missing tool into a failure.
test:
	PXE_LAB_REQUIRED=$${PXE_LAB_REQUIRED:-0} $(GO) test -race -count=1 -timeout 20m $(PKGS)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

# Short fuzzing of every parser of untrusted bytes.
fuzz:
	./scripts/fuzz.sh 20s

# The whole chain in qemu VMs (BIOS and UEFI) inside a lab namespace.
e2e: build
	PXE_E2E=1 PXE_LAB_REQUIRED=1 PXE_E2E_BIN=$(abspath $(BIN)) $(GO) test -count=1 -timeout 35m -v ./e2e/

# The main job, safe anywhere: a lab namespace, the server in it, one VM
# installed while you watch. lab/demo.sh runs scripts/setup.sh itself.
demo: build
	PXE_ANYWHERE_BIN=$(abspath $(BIN)) ./lab/demo.sh

run: demo

bench: setup build
	./bench/run.sh all

# Power-on to installer kernel, BIOS and UEFI, pxe-anywhere beside
# dnsmasq: one VM at a time under the VM lock (about 3 minutes per
# repetition; PXE_CHAIN_REPS, default 2).
chain-bench: build
	flock /tmp/pxe-vm.lock env PXE_E2E=1 PXE_E2E_CHAIN=1 PXE_CHAIN_REPS=$${PXE_CHAIN_REPS:-2} PXE_LAB_REQUIRED=1 PXE_E2E_BIN=$(abspath $(BIN)) $(GO) test -count=1 -timeout 60m -v -run TestChainTimings ./e2e/

check: setup lint
	PXE_LAB_REQUIRED=1 $(MAKE) test
	$(MAKE) e2e

clean:
	rm -rf bin

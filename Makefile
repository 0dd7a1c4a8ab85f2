# Convenience wrapper over CMake presets. The two commands of the README:
#   make demo   installs missing packages, builds Release, runs moe-run on the demo model
#   make test   builds Release and runs the whole test suite through CTest
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
DEMO_ARGS ?=

.PHONY: all deps build demo test asan test-asan debug clean

all: build

deps:
	@bash scripts/deps.sh

build: deps
	@cmake --preset release >/dev/null
	@cmake --build --preset release -j $(JOBS)

demo: build
	./build/release/moe-run $(DEMO_ARGS)

test: build
	ctest --preset release -j $(JOBS)

asan: deps
	@cmake --preset asan >/dev/null
	@cmake --build --preset asan -j $(JOBS)

test-asan: asan
	ctest --preset asan -j $(JOBS)

debug: deps
	@cmake --preset debug >/dev/null
	@cmake --build --preset debug -j $(JOBS)

clean:
	rm -rf build

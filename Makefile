# Convenience wrapper over CMake presets. The two commands of the README:
#   make demo   installs missing packages, builds Release, runs moe-run on the demo model
#   make test   builds Release and runs the whole test suite through CTest
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
DEMO_ARGS ?=
BENCH_ARGS ?=

.PHONY: all deps build demo test bench asan test-asan debug clean

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

# Benchmarks (not tests): the CPU engine on the real models' shapes, and a
# DeepSeek-V2-Lite layer. Spinning OpenMP threads, as in inference.
bench: build
	OMP_WAIT_POLICY=active ./build/release/moe-bench cpu $(BENCH_ARGS)

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

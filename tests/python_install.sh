#!/bin/sh
# python_install.sh SRCDIR - the Python package installed as docs/plugin.md
# says (issue 28): a clean copy of the checkout, a fresh virtual
# environment, `pip install ./python` (which builds libmoerun, here with
# CMAKE_ARGS passed through); then an sdist made by
# `python -m build --sdist ./python`, installed with default options into
# another fresh environment after the copy of the checkout is deleted. Each
# time python/tests/check_install.py runs from outside the checkout.
# Skipped (77), never passed, where pip cannot reach PyPI for the build
# backend, or there is no python3 with venv.
set -eu
src=$1
py=${MOE_PIP_PYTHON:-python3}
pip_opts="--disable-pip-version-check --no-cache-dir -q"
export CMAKE_BUILD_PARALLEL_LEVEL=2 # pip's builds: two jobs, as everything on a 2-core machine

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
step() { echo "== python_install: $* ($(date +%T))"; }

if ! "$py" -m venv "$tmp/venv" >/dev/null 2>&1; then
    echo "skipped: $py -m venv fails here (python3 with the venv module is needed)"
    exit 77
fi
if ! timeout 120 "$tmp/venv/bin/pip" download $pip_opts --no-deps -d "$tmp/probe" "scikit-build-core>=1.0" >/dev/null 2>&1; then
    echo "skipped: pip cannot download scikit-build-core from PyPI (no network?)"
    exit 77
fi

# A clean checkout: the files git tracks or would track (the working tree's,
# so uncommitted edits are tested too), nothing ignored such as build/.
mkdir "$tmp/src"
if git -C "$src" rev-parse --git-dir >/dev/null 2>&1; then
    git -C "$src" ls-files -z --cached --others --exclude-standard |
        tar -C "$src" --null -T - --ignore-failed-read -cf - | tar -C "$tmp/src" -xf -
else
    tar -C "$src" --exclude=./build --exclude=./.git -cf - . | tar -C "$tmp/src" -xf -
fi

step "pip install ./python (CMAKE_ARGS=-DMOE_CUDA=OFF -DMOE_NATIVE=OFF)"
(cd "$tmp/src" && CMAKE_ARGS="-DMOE_CUDA=OFF -DMOE_NATIVE=OFF" "$tmp/venv/bin/pip" install $pip_opts ./python)
cp "$tmp/src/python/tests/check_install.py" "$tmp/"
(cd "$tmp" && "$tmp/venv/bin/python" check_install.py package off)

step "python -m build --sdist ./python"
"$tmp/venv/bin/pip" install $pip_opts build
(cd "$tmp/src" && "$tmp/venv/bin/python" -m build --sdist ./python >/dev/null)
sdist=$(ls "$tmp"/src/python/dist/moerun-*.tar.gz)
tar -tzf "$sdist" | grep -q '/csrc/include/moerun.h$' || { echo "FAIL: $sdist has no csrc/include/moerun.h"; exit 1; }
mv "$sdist" "$tmp/"
rm -rf "$tmp/src" "$tmp/venv" # nothing of the checkout is left to build from

cuda=off
if command -v nvcc >/dev/null 2>&1; then cuda=on; fi # MOE_CUDA=AUTO builds CUDA where nvcc is found
step "pip install $(basename "$sdist") (default options: CUDA $cuda) in a fresh environment"
"$py" -m venv "$tmp/venv2"
(cd "$tmp" && "$tmp/venv2/bin/pip" install $pip_opts "./$(basename "$sdist")")
(cd "$tmp" && "$tmp/venv2/bin/python" check_install.py package "$cuda")
step "done"

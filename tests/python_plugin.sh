#!/bin/sh
# python_plugin.sh LIB SRCDIR - the Python binding's tests (python/tests)
# against the library just built, with the interpreter in $MOE_PYTHON (a
# virtual environment with torch, transformers and pytest; .ci/run makes
# one). Skipped (77), never passed, where there is none.
lib=$1 src=$2
py=${MOE_PYTHON:-}
if [ -z "$py" ]; then
    echo "skipped: MOE_PYTHON is not set (an interpreter with torch, transformers and pytest; .ci/run sets it)"
    exit 77
fi
if ! "$py" -c "import torch, transformers, pytest" 2>/dev/null; then
    echo "skipped: $py cannot import torch, transformers and pytest"
    exit 77
fi
MOERUN_LIB=$lib PYTHONPATH=$src/python exec "$py" -m pytest -q -p no:cacheprovider "$src/python/tests"

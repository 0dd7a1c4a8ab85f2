#!/bin/sh
# python_lib.sh LIB SRCDIR - the Python binding without torch against the
# library just built (python/tests/check_install.py through $MOERUN_LIB):
# loading, versions, info(), one expert through moe_layer_forward, and the
# refusals. No network; skipped (77) only where there is no python3.
lib=$1 src=$2
py=${MOE_PIP_PYTHON:-python3}
if ! command -v "$py" >/dev/null 2>&1; then
    echo "skipped: no $py"
    exit 77
fi
cd "$(dirname "$lib")" && MOERUN_LIB=$lib PYTHONPATH=$src/python exec "$py" "$src/python/tests/check_install.py" MOERUN_LIB

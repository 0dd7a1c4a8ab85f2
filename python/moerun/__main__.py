"""python -m moerun --version: the package's and the library's versions,
the library's path and build, whether CUDA was built, and the CPU path."""
from __future__ import annotations

import os
import sys

from . import MoerunError, __version__, info


def main(argv: list[str]) -> int:
    if argv not in ([], ["--version"], ["-V"]):
        print("usage: python -m moerun [--version]", file=sys.stderr)
        return 2
    print(f"moerun {__version__} (Python package in {os.path.dirname(sys.modules[__package__].__file__)})")
    try:
        i = info()
    except MoerunError as e:
        print(f"libmoerun: {e}")
        return 1
    print(f"libmoerun {i['library_version']}, API {i['api_version']}: {i['library']} (found in: {i['found_in']})")
    print(f"build: {i['build']}")
    print(f"CUDA: {'built' if i['cuda'] else 'not built'}")
    kernels = ", ".join(f"{d} {k}" for d, k in i["cpu_kernels"].items())
    print(f"CPU: {i['cores']} cores, {i['numa_nodes']} NUMA node(s); decode kernels {kernels}; "
          f"AMX tiles {'yes' if i['amx'] else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

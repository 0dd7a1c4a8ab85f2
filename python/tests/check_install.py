"""check_install.py WHERE [CUDA] - the moerun package as a user gets it,
without torch: it imports, finds its library where expected (WHERE:
"package" after pip install, "MOERUN_LIB" against a build tree), runs one
registered expert through moe_layer_forward equal to a plain Python
reference, reports itself (info(), python -m moerun --version), and
refuses a wrong $MOERUN_LIB or a library of another version by name.
CUDA: "on" or "off" checks whether the library was built with CUDA.

Plain Python, no pytest: tests/python_install.sh runs it in fresh virtual
environments, and tests/python_lib.sh against the library just built.
Prints "N passed, N failed"."""
import ctypes
import math
import os
import random
import subprocess
import sys
import traceback

WHERE = sys.argv[1] if len(sys.argv) > 1 else "package"
CUDA = sys.argv[2] if len(sys.argv) > 2 else None
passed, failed = 0, 0


def case(fn):
    global passed, failed
    try:
        fn()
        passed += 1
        print(f"ok   {fn.__name__}")
    except Exception:  # noqa: BLE001 - every failure is reported, then the next case runs
        failed += 1
        print(f"FAIL {fn.__name__}")
        traceback.print_exc(file=sys.stdout)


def run(code, **env):
    """Runs `code` in a fresh interpreter (a library is loaded once per process)."""
    e = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=120)


import moerun  # noqa: E402 - after the helpers, so an import failure is the first thing reported


def imports_without_torch():
    assert "torch" not in sys.modules, "importing moerun imported torch"
    lib = moerun.lib()
    assert lib.moe_api_version() == moerun.API_VERSION
    assert "torch" not in sys.modules


def finds_its_library():
    path, where = moerun._lib.lib_path()
    assert where == WHERE, f"library found in {where} ({path}), expected {WHERE}"
    if WHERE == "package":
        pkg = os.path.dirname(os.path.realpath(moerun.__file__))
        assert os.path.realpath(sys.prefix) in pkg, f"moerun imported from {pkg}, not the environment {sys.prefix}"
        assert os.path.dirname(os.path.realpath(path)) == pkg, f"{path} is not inside the package {pkg}"


def versions_match():
    assert moerun.__version__ == moerun.lib().moe_version().decode()


def info_reports():
    i = moerun.info()
    assert i["version"] == i["library_version"] == moerun.__version__
    assert i["api_version"] == moerun.API_VERSION
    assert os.path.samefile(i["library"], moerun._lib.lib_path()[0])
    for dt in ("f32", "bf16", "f16", "int8"):
        k = i["cpu_kernels"][dt]
        assert k == "c" or k.startswith("avx512"), f"{dt}: {k}"
    assert i["cores"] >= 1 and i["numa_nodes"] >= 1
    if CUDA is not None:
        assert i["cuda"] == (CUDA == "on"), f"cuda {i['cuda']}, expected {CUDA}: {i['build']}"


def version_command():
    r = subprocess.run([sys.executable, "-m", "moerun", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    for want in (f"moerun {moerun.__version__}", f"libmoerun {moerun.__version__}, API {moerun.API_VERSION}",
                 "build: moerun", "CUDA: ", "decode kernels f32 "):
        assert want in r.stdout, f"{want!r} not in:\n{r.stdout}"
    print("     " + r.stdout.rstrip().replace("\n", "\n     "))


def expert_forward():
    """One f32 expert, three tokens, top-1 with gate weights: moerun's result
    against out[t] = w[t] * down @ (silu(gate @ x[t]) * (up @ x[t]))."""
    L = moerun.lib()
    H, I, T = 64, 32, 3
    rng = random.Random(28)
    gate = [rng.uniform(-0.2, 0.2) for _ in range(I * H)]
    up = [rng.uniform(-0.2, 0.2) for _ in range(I * H)]
    down = [rng.uniform(-0.2, 0.2) for _ in range(H * I)]
    x = [rng.uniform(-1, 1) for _ in range(T * H)]
    w = [0.5, 1.0, 0.75]
    f32 = lambda v: (ctypes.c_float * len(v))(*v)  # noqa: E731
    cg, cu, cd, cx, cw = f32(gate), f32(up), f32(down), f32(x), f32(w)
    ids = (ctypes.c_int32 * T)(0, 0, 0)
    out = (ctypes.c_float * (T * H))()

    model, rt = ctypes.c_void_p(), ctypes.c_void_p()
    moerun.check(L.moe_model_create(ctypes.byref(model), 1), "moe_model_create")
    try:
        desc = L.moe_layer_desc_init(1, H, I, moerun.DTYPE_F32)
        moerun.check(L.moe_model_set_layer(model, 0, ctypes.byref(desc)), "moe_model_set_layer")
        ew = moerun.ExpertWeights(ctypes.addressof(cg), ctypes.addressof(cu), ctypes.addressof(cd), None, None, None)
        moerun.check(L.moe_model_set_expert(model, 0, 0, ctypes.byref(ew)), "moe_model_set_expert")
        p = L.moe_runtime_default_params()
        p.device = moerun.DEVICES["cpu"]
        p.profile_path = b""  # no machine profile: the result must not depend on one
        moerun.check(L.moe_runtime_create(ctypes.byref(rt), model, ctypes.byref(p)), "moe_runtime_create")
    finally:
        L.moe_model_free(ctypes.byref(model))
    try:
        moerun.check(L.moe_layer_forward(rt, 0, T, ctypes.addressof(cx), 1, ctypes.addressof(ids),
                                         ctypes.addressof(cw), ctypes.addressof(out)), "moe_layer_forward")
    finally:
        L.moe_runtime_free(ctypes.byref(rt))

    def dot(row, v, k, n):
        return [sum(row[j * k + i] * v[i] for i in range(k)) for j in range(n)]

    worst, scale = 0.0, 0.0
    for t in range(T):
        xt = x[t * H:(t + 1) * H]
        g, u = dot(gate, xt, H, I), dot(up, xt, H, I)
        h = [gi / (1.0 + math.exp(-gi)) * ui for gi, ui in zip(g, u)]
        ref = [w[t] * y for y in dot(down, h, I, H)]
        for j in range(H):
            worst = max(worst, abs(out[t * H + j] - ref[j]))
            scale = max(scale, abs(ref[j]))
    assert scale > 0.0
    assert worst <= 1e-5 * max(scale, 1.0), f"max |moerun - reference| = {worst:.3g} (scale {scale:.3g})"


def wrong_moerun_lib_is_named():
    for bad in ("/nonexistent/moerun-28/libmoerun.so", os.path.abspath(__file__)):
        r = run("import moerun\ntry:\n    moerun.lib()\nexcept moerun.MoerunError as e:\n    print('refused:', e)",
                MOERUN_LIB=bad)
        assert r.returncode == 0 and r.stdout.startswith("refused: "), r.stdout + r.stderr
        assert f"MOERUN_LIB={bad}" in r.stdout, r.stdout
    r = subprocess.run([sys.executable, "-m", "moerun", "--version"], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, MOERUN_LIB="/nonexistent/moerun-28/libmoerun.so"))
    assert r.returncode == 1 and "MOERUN_LIB=/nonexistent/moerun-28/libmoerun.so: no such file" in r.stdout, r.stdout


def other_version_is_refused():
    """A binding that expects another version or API refuses the library,
    naming both and how to rebuild (by where the library came from)."""
    how = "pip install --force-reinstall ./python" if WHERE == "package" else "make build"
    code = ("import moerun, moerun._lib as l\n{}\ntry:\n    moerun.lib()\nexcept moerun.MoerunError as e:\n"
            "    print('refused:', e)")
    api = moerun.API_VERSION
    for patch_, want in ((f"l.API_VERSION = {api + 1}", f"needs API version {api + 1}"),
                         ("moerun.__version__ = '9.9.9'", "this moerun package is 9.9.9")):
        r = run(code.format(patch_))
        out = r.stdout
        assert r.returncode == 0 and out.startswith("refused: "), out + r.stderr
        for w in (want, f"is libmoerun {moerun.__version__} with API version {api}", how):
            assert w in out, f"{w!r} not in {out!r}"


for fn in (imports_without_torch, finds_its_library, versions_match, info_reports, version_command, expert_forward,
           wrong_moerun_lib_is_named, other_version_is_refused):
    case(fn)
print(f"check_install ({WHERE}): {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)

#!/usr/bin/env python3
"""Cross-check the tiny GGUF fixtures against llama.cpp (optional, not run in CI).

1. --llama-cpp-src DIR: runs llama.cpp's own converter (DIR/conversion, the
   code behind convert_hf_to_gguf.py, with DIR/gguf-py) on each HF fixture
   directory and compares the result with our model.gguf: tensor names, types,
   shapes and bytes, and every metadata key except general.* and tokenizer.*
   (the converter cannot build a vocabulary for a tokenizer-less model, so its
   set_vocab is replaced by ours).
2. If llama_cpp (llama-cpp-python) imports: evaluates the prompt of
   reference.json with llama.cpp on model.gguf (and model-q8_0.gguf) and prints
   the max abs difference of the logits against transformers' reference, and
   whether greedy decoding agrees.

Usage:
    python tests/gen/check_gguf_llamacpp.py --models tests/data/models \
        [--llama-cpp-src /path/to/llama.cpp] [--arch NAME ...]

Needs: numpy, gguf; torch + transformers for step 1; llama-cpp-python for 2.
llama-cpp-python can be built from its sdist (it vendors llama.cpp, whose
source tree then also serves --llama-cpp-src):
    pip download --no-deps --no-binary :all: llama-cpp-python
    tar xzf llama_cpp_python-*.tar.gz
    CMAKE_ARGS="-DGGML_NATIVE=ON" pip install ./llama_cpp_python-*.tar.gz
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ARCHS = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3", "glm4_moe"]

CONVERT_DRIVER = r"""
import sys, logging
from pathlib import Path
src, model_dir, out, outtype = sys.argv[1:5]
sys.path.insert(0, src + "/gguf-py")
sys.path.insert(0, src)
import gguf, torch
from conversion import ModelBase, ModelType, get_model_class  # noqa
from conversion.base import get_model_architecture
logging.basicConfig(level=logging.WARNING)
hp = ModelBase.load_hparams(Path(model_dir), False)
cls = get_model_class(get_model_architecture(hp, ModelType.TEXT), mmproj=False)
def set_vocab(self):
    pass
cls.set_vocab = set_vocab
ftype = {"bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]
with torch.inference_mode():
    m = cls(Path(model_dir), ftype, Path(out), eager=True)
    m.write()
"""


def read_gguf(path: Path):
    import gguf
    r = gguf.GGUFReader(str(path))
    kv = {}
    for f in r.fields.values():
        if f.name.startswith("GGUF."):
            continue
        kv[f.name] = f.contents()
    tensors = {t.name: (t.tensor_type.name, tuple(int(x) for x in t.shape), bytes(t.data.tobytes()))
               for t in r.tensors}
    return kv, tensors


def compare_converter(models: Path, src: Path) -> bool:
    ok = True
    for arch in ARCHS:
        d = models / arch
        for ours_name, outtype in (("model.gguf", "bf16"), ("model-q8_0.gguf", "q8_0")):
            ours = d / ours_name
            if not ours.exists():
                continue
            with tempfile.TemporaryDirectory() as td:
                out = Path(td) / "conv.gguf"
                drv = Path(td) / "drv.py"
                drv.write_text(CONVERT_DRIVER)
                p = subprocess.run([sys.executable, str(drv), str(src), str(d), str(out), outtype],
                                   capture_output=True, text=True)
                if p.returncode != 0:
                    print(f"{arch}/{ours_name}: converter failed:\n{p.stderr[-3000:]}")
                    ok = False
                    continue
                kv_c, t_c = read_gguf(out)
            kv_o, t_o = read_gguf(ours)
            skip = ("general.", "tokenizer.")
            kc = {k: v for k, v in kv_c.items() if not k.startswith(skip)}
            ko = {k: v for k, v in kv_o.items() if not k.startswith(skip)}
            probs = []
            for k in sorted(set(kc) | set(ko)):
                if k not in kc:
                    probs.append(f"  key only in ours: {k}={ko[k]}")
                elif k not in ko:
                    probs.append(f"  key only in converter's: {k}={kc[k]}")
                elif not _eq(kc[k], ko[k]):
                    probs.append(f"  key {k}: converter {kc[k]} vs ours {ko[k]}")
            for k in ("general.architecture", "general.file_type", "general.quantization_version"):
                if not _eq(kv_c.get(k), kv_o.get(k)):
                    probs.append(f"  key {k}: converter {kv_c.get(k)} vs ours {kv_o.get(k)}")
            for n in sorted(set(t_c) | set(t_o)):
                if n not in t_c:
                    probs.append(f"  tensor only in ours: {n}")
                elif n not in t_o:
                    probs.append(f"  tensor only in converter's: {n}")
                elif t_c[n][:2] != t_o[n][:2]:
                    probs.append(f"  tensor {n}: converter {t_c[n][:2]} vs ours {t_o[n][:2]}")
                elif t_c[n][2] != t_o[n][2]:
                    probs.append(f"  tensor {n}: data differs")
            status = "IDENTICAL tensors+hparams" if not probs else "DIFFERS"
            print(f"{arch:12s} {ours_name:16s} vs llama.cpp converter: {status} "
                  f"({len(t_o)} tensors, {len(ko)} arch keys)")
            for line in probs:
                print(line)
            ok = ok and not probs
    return ok


def _eq(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(a)))
    return a == b


EVAL_DRIVER = r"""
import json, sys
import numpy as np
import llama_cpp
path, prompt, n_gen, kv_type = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
llm = llama_cpp.Llama(model_path=path, n_ctx=64, n_batch=64, n_ubatch=64, logits_all=True,
                      verbose=False, n_threads=2, seed=0, type_k=kv_type, type_v=kv_type)
llm.eval(prompt)
prompt_logits = np.array(llm.scores[: len(prompt)], dtype=np.float64)
toks = [int(prompt_logits[-1].argmax())]
glog = [prompt_logits[-1]]
for _ in range(n_gen - 1):                      # greedy with llama.cpp's own KV cache
    llm.eval([toks[-1]])
    row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
    glog.append(row)
    toks.append(int(row.argmax()))
print(json.dumps({"logits": prompt_logits.tolist(), "greedy": toks, "greedy_logits": np.array(glog).tolist()}))
"""


def run_llamacpp(path: Path, prompt: list[int], n_gen: int, f32_kv: bool):
    """Evaluate in a subprocess: a ggml build for the wrong CPU dies with SIGILL."""
    with tempfile.TemporaryDirectory() as td:
        drv = Path(td) / "eval.py"
        drv.write_text(EVAL_DRIVER)
        kv_type = "0" if f32_kv else "1"   # GGML_TYPE_F32 / GGML_TYPE_F16 (llama.cpp's default)
        p = subprocess.run([sys.executable, str(drv), str(path), json.dumps(prompt), str(n_gen), kv_type],
                           capture_output=True, text=True)
    if p.returncode != 0:
        return None, f"llama.cpp run failed (exit {p.returncode}): {p.stderr.strip()[-300:]}"
    return json.loads(p.stdout.strip().splitlines()[-1]), None


# llama.cpp decides whether a deepseek2 model has q_lora_rank from its layer
# count (27 or 26 layers = "lite", no q_a/q_b); for any other count it insists
# on deepseek2.attention.q_lora_rank.  The converter writes no such key for a
# model without q_lora (as for the real DeepSeek-V2-Lite), so the committed
# file keeps it absent and the check runs on a copy with q_lora_rank = 0.
LLAMACPP_EXTRA = {"deepseek_v2": {"deepseek2.attention.q_lora_rank": 0}}


def gguf_copy(d: Path, arch: str, out: Path, ftype_name: str) -> None:
    """A GGUF of the fixture (not committed), ALL_F32 or with llama.cpp's extra keys.
    The all-F32 one isolates llama.cpp's BF16 activation rounding from layout errors."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import make_tiny_models as mtm
    import gguf
    from safetensors.torch import load_file
    cfg = json.loads((d / "config.json").read_text())
    sd = load_file(str(d / "model.safetensors"))
    mtm.write_gguf(out, arch, cfg, sd, getattr(gguf.LlamaFileType, ftype_name),
                   extra_u32=LLAMACPP_EXTRA.get(arch))


def compare_llamacpp(models: Path, f32: bool) -> bool:
    import importlib.util
    if importlib.util.find_spec("llama_cpp") is None:
        print("llama_cpp not importable: skipping the logits comparison")
        return True
    ok = True
    # tolerances: llama.cpp rounds activations to bf16 for BF16 matmuls and
    # keeps an F16 KV cache (~3e-2); with F32 weights and an F32 KV cache it
    # must agree to float rounding.
    for arch in ARCHS:
        d = models / arch
        ref = json.loads((d / "reference.json").read_text())
        prompt, want = ref["prompt"], np.array(ref["logits"], dtype=np.float64)
        greedy, want_g = ref["greedy"], np.array(ref["greedy_logits"], dtype=np.float64)
        with tempfile.TemporaryDirectory() as td:
            main = d / "model.gguf"
            if arch in LLAMACPP_EXTRA:
                main = Path(td) / "model-bf16.gguf"
                gguf_copy(d, arch, main, "MOSTLY_BF16")
            files = [(main, "model.gguf", 1e-1, False),
                     (d / "model-q8_0.gguf", "model-q8_0.gguf", None, False)]
            if f32:
                f32_path = Path(td) / "model-f32.gguf"
                gguf_copy(d, arch, f32_path, "ALL_F32")
                files.append((f32_path, "(f32 copy)", 1e-4, True))
            for path, label, tol, f32_kv in files:
                if not path.exists():
                    continue
                res, err = run_llamacpp(path, prompt, len(greedy), f32_kv)
                if err:
                    print(f"{arch:12s} {label:16s} {err}")
                    ok = ok and tol is None
                    continue
                got = np.array(res["logits"])
                diff = float(np.abs(got - want).max())
                argmax_ok = bool((got.argmax(-1) == want.argmax(-1)).all())
                toks = res["greedy"]
                gdiff = float(np.abs(np.array(res["greedy_logits"]) - want_g).max()) \
                    if toks == greedy else float("nan")
                verdict = "(informative)" if tol is None else (
                    "OK" if diff < tol and toks == greedy else "MISMATCH")
                print(f"{arch:12s} {label:16s} llama.cpp vs transformers: prompt logits max|diff|={diff:.3e} "
                      f"argmax_equal={argmax_ok} greedy_equal={toks == greedy} "
                      f"greedy_logits max|diff|={gdiff:.3e} {verdict}")
                if verdict == "MISMATCH":
                    ok = False
                    print("   llama.cpp greedy:", toks)
                    print("   reference greedy:", greedy)
    return ok


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=Path, default=Path("tests/data/models"))
    ap.add_argument("--llama-cpp-src", type=Path)
    ap.add_argument("--no-f32", action="store_true", help="skip the all-F32 GGUF comparison")
    ap.add_argument("--arch", action="append", choices=ARCHS, help="check only these (repeatable)")
    args = ap.parse_args()
    if args.arch:
        ARCHS[:] = [a for a in ARCHS if a in args.arch]
    ok = True
    if args.llama_cpp_src:
        ok = compare_converter(args.models, args.llama_cpp_src) and ok
    ok = compare_llamacpp(args.models, not args.no_f32) and ok
    print("ALL OK" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Writes tests/data/gguf/pygguf-sample.gguf with llama.cpp's own writer
(pip install gguf numpy), for test_gguf to read back. The values follow
formulas that test_gguf.c repeats:
    x(i) = ((i * 7) % 17 - 8) / 8    element i of every tensor, row-major
Usage: python3 tests/gen/make_gguf_sample.py [OUT]"""
import sys

import gguf
import numpy as np

out = sys.argv[1] if len(sys.argv) > 1 else "tests/data/gguf/pygguf-sample.gguf"


def values(shape):
    n = int(np.prod(shape))
    return ((np.arange(n) * 7 % 17 - 8) / 8).astype(np.float32).reshape(shape)


w = gguf.GGUFWriter(out, "qwen3moe")
w.add_uint32("qwen3moe.block_count", 2)
w.add_uint64("qwen3moe.context_length", 40960)
w.add_float32("qwen3moe.rope.freq_base", 1000000.0)
w.add_bool("tokenizer.ggml.add_bos_token", False)
w.add_int32("sample.negative", -7)
w.add_float64("sample.f64", -0.125)
w.add_string("tokenizer.ggml.model", "gpt2")
w.add_array("tokenizer.ggml.tokens", ["a", "b", "\u0120the", "", "<|im_end|>"])
w.add_array("tokenizer.ggml.scores", [0.0, -1.0, -2.5, 3.0, 0.25])
w.add_array("tokenizer.ggml.token_type", [1, 1, 1, 3, 3])
w.add_tensor("blk.0.attn_norm.weight", values((64,)))
w.add_tensor("token_embd.weight", values((6, 32)).astype(np.float16))
w.add_tensor("output.weight", gguf.quants.quantize(values((3, 32)), gguf.GGMLQuantizationType.BF16),
             raw_dtype=gguf.GGMLQuantizationType.BF16)
w.add_tensor("blk.0.ffn_gate_exps.weight", gguf.quants.quantize(values((2, 4, 64)), gguf.GGMLQuantizationType.Q8_0),
             raw_dtype=gguf.GGMLQuantizationType.Q8_0)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()

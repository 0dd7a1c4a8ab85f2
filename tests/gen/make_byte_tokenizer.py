"""Writes the byte-level tokenizer.json of the tiny test models
(tests/data/models/qwen3_moe/tokenizer.json): 256 tokens, one per byte, in
GPT-2's byte-to-unicode spelling, no merges, ByteLevel pre-tokenizer and
decoder. It lets moe-run take a text prompt on a vocabulary-256 model.

    python3 tests/gen/make_byte_tokenizer.py tests/data/models/qwen3_moe/tokenizer.json
"""
import json
import sys


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def main(out):
    m = bytes_to_unicode()
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tok = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
           "pre_tokenizer": byte_level, "post_processor": None,
           "decoder": dict(byte_level, add_prefix_space=True),
           "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                     "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                     "vocab": {m[b]: b for b in range(256)}, "merges": []}}
    with open(out, "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])

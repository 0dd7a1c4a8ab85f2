#!/usr/bin/env python3
"""GGUF tokenizer fixtures for tests/test_tokenizer.c (moe_tokenizer_from_gguf),
written the way llama.cpp's convert_hf_to_gguf.py stores tokenizers, with
gguf-py (fixtures were made with gguf 0.19, tokenizers 0.23.3 and
llama-cpp-python 0.3.36):

    gguf_tokenizers.py [DATA_DIR]      (default: tests/data/tokenizer)

writes into DATA_DIR:
  bytebpe/tokenizer.json   a small byte-level BPE trained here with
                           `tokenizers`: Qwen2's Split pattern + ByteLevel,
                           no normalizer, ~400 merges, added tokens
                           <|endoftext|> <|im_start|> <|im_end|> (special)
                           and <think> (not special);
  bytebpe_cases.json       HF's encodings of it (tokenizer_cases.py);
  bytebpe.gguf             it as _set_vocab_gpt2 stores it: model "gpt2",
                           pre "qwen2", tokens (GPT-2 alphabet), token types
                           (special added tokens CONTROL, others
                           USER_DEFINED), merges "a b", bos/eos/pad ids,
                           add_bos_token false, a chat template;
  spbpe.gguf               spbpe/tokenizer.json (SentencePiece-style BPE with
                           byte fallback) as _set_vocab_llama_hf stores it:
                           model "llama", pre "default", the model vocabulary
                           in id order then the added tokens, token types
                           (<unk> UNKNOWN, <s> </s> CONTROL, <0xXX> BYTE,
                           other added tokens USER_DEFINED), scores, bos 1,
                           eos 2, unk 0, add_bos true, add_eos false. One
                           departure: LlamaHfVocab writes the placeholder
                           score -1000 for every token, which makes
                           llama.cpp's SPM merging (by score) meaningless;
                           here a merged token scores -(rank of the merge
                           that makes it), others 0, as a SentencePiece BPE
                           .model file (what _set_vocab_sentencepiece reads)
                           would have them;
  spbpe_gguf_cases.json    llama.cpp's own encodings of spbpe.gguf (via
                           llama-cpp-python, vocab_only), the reference for
                           the "llama" loader, which implements llama.cpp's
                           SPM algorithm; how many differ from HF's
                           encodings of spbpe/tokenizer.json is printed and
                           stored as "differ_from_hf";
  gguf-bad/*.gguf          tiny files the loader must refuse.

Both GGUF files also carry the few hyperparameters llama.cpp wants before it
loads a vocabulary (vocab_only still reads them); moerun ignores them."""
import json
import os
import sys

import gguf
import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tokenizer_cases  # noqa: E402

QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
                 r"\s+(?!\S)|\s+")
T = gguf.TokenType


def hparams(w):
    # What llama.cpp's llama_model::load_hparams requires even for vocab_only.
    w.add_context_length(512)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(16)


def write(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()


# ---- byte-level BPE ----

def make_bytebpe(out_dir):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=256 + 420, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(tokenizer_cases.training_text(), trainer)
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.add_tokens([AddedToken("<think>", normalized=False, special=False)])
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))


def does_token_look_special(text):  # convert_hf_to_gguf.py's
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (text.startswith("<|") and text.endswith("|>")) or
            (text.startswith("<｜") and text.endswith("｜>")) or (text.startswith("<unused") and text.endswith(">")))


def convert_gpt2(json_path, out_path):
    spec = json.load(open(json_path, encoding="utf-8"))
    vocab = dict(spec["model"]["vocab"])
    added = {a["id"]: a for a in spec["added_tokens"]}
    for a in added.values():
        vocab[a["content"]] = a["id"]
    rev = {i: t for t, i in vocab.items()}
    n = max(rev) + 1
    tokens, types = [], []
    for i in range(n):  # get_vocab_base
        if i not in rev:
            tokens.append(f"[PAD{i}]")
            types.append(T.UNUSED)
        elif i in added:
            tokens.append(rev[i])
            types.append(T.CONTROL if added[i]["special"] or does_token_look_special(rev[i]) else T.USER_DEFINED)
        else:
            tokens.append(rev[i])
            types.append(T.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    w = gguf.GGUFWriter(out_path, "qwen2")
    hparams(w)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(vocab["<|endoftext|>"])
    w.add_eos_token_id(vocab["<|im_end|>"])
    w.add_pad_token_id(vocab["<|endoftext|>"])
    w.add_add_bos_token(False)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}")
    write(w)


# ---- SentencePiece-style BPE ----

def convert_llama(json_path, out_path):
    spec = json.load(open(json_path, encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    base = len(vocab)
    rev = {i: t for t, i in vocab.items()}
    assert sorted(rev) == list(range(base))
    rank = {}
    for r, m in enumerate(spec["model"]["merges"]):
        a, b = m.split(" ") if isinstance(m, str) else m
        rank.setdefault(a + b, r)
    specials = {a["content"]: a for a in spec["added_tokens"] if a["special"]}
    user = sorted((a for a in spec["added_tokens"] if a["id"] >= base), key=lambda a: a["id"])
    tokens, scores, types = [], [], []
    for i in range(base):
        t = rev[i]
        tokens.append(t)
        scores.append(-float(rank[t]) if t in rank else 0.0)
        if t.startswith("<0x") and len(t) == 6:
            types.append(T.BYTE)
        elif t == "<unk>":
            types.append(T.UNKNOWN)
        elif t in specials:
            types.append(T.CONTROL)
        else:
            types.append(T.NORMAL)
    for a in user:
        assert a["id"] == len(tokens)
        tokens.append(a["content"])
        scores.append(-1000.0)
        types.append(T.CONTROL if a["special"] else T.USER_DEFINED)
    w = gguf.GGUFWriter(out_path, "llama")
    hparams(w)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(vocab["<s>"])
    w.add_eos_token_id(vocab["</s>"])
    w.add_unk_token_id(vocab["<unk>"])
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template("{% for m in messages %}[INST] {{ m.content }} [/INST]{% endfor %}")
    write(w)
    return types


def llama_cases(gguf_path, json_path, types, out_path):
    import llama_cpp
    llm = llama_cpp.Llama(model_path=gguf_path, vocab_only=True, verbose=False)
    hf = Tokenizer.from_file(json_path)
    cases, differ = [], 0
    for text in tokenizer_cases.all_strings(hf):
        ids = llm.tokenize(text.encode(), add_bos=False, special=True)
        ids_special = llm.tokenize(text.encode(), add_bos=True, special=True)
        differ += ids != hf.encode(text, add_special_tokens=False).ids
        case = {"text": text, "ids": ids}
        if ids_special != ids:
            case["ids_special"] = ids_special
        # HF's decoder is the reference for decoding, except for user-defined
        # tokens (HF decodes a normalized added token in its normalized form).
        if any(types[i] == T.USER_DEFINED for i in ids_special):
            case["decoded"] = case["decoded_skip"] = None
        else:
            dec = hf.decode(ids_special, skip_special_tokens=False)
            dec_skip = hf.decode(ids_special, skip_special_tokens=True)
            if dec != text:
                case["decoded"] = dec
            if dec_skip != dec:
                case["decoded_skip"] = dec_skip
        cases.append(case)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump({"reference": f"llama.cpp (llama-cpp-python {llama_cpp.__version__})", "differ_from_hf": differ,
                   "cases": cases}, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"{out_path}: {len(cases)} cases, {differ} of them encoded differently by HF tokenizers "
          f"{tokenizers.__version__}")


def check_llama_cpp_agrees(gguf_path, cases_path):
    """How many of HF's byte-level encodings llama.cpp reproduces from the GGUF file (informational)."""
    import llama_cpp
    llm = llama_cpp.Llama(model_path=gguf_path, vocab_only=True, verbose=False)
    cases = json.load(open(cases_path, encoding="utf-8"))["cases"]
    same = sum(llm.tokenize(c["text"].encode(), add_bos=False, special=True) == c["ids"] for c in cases)
    print(f"{gguf_path}: llama.cpp encodes {same} of {len(cases)} cases as HF does")


# ---- files to refuse ----

def bad_files(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    tokens = ["a", "b", "ab"]

    def make(name, model="gpt2", pre="qwen2", toks=tokens, types=(1, 1, 1), merges=("a b",)):
        w = gguf.GGUFWriter(os.path.join(out_dir, name), "qwen2")
        if model is not None:
            w.add_tokenizer_model(model)
        if pre is not None:
            w.add_tokenizer_pre(pre)
        if toks is not None:
            w.add_token_list(list(toks))
        if types is not None:
            w.add_token_types(list(types))
        if merges is not None:
            w.add_token_merges(list(merges))
        write(w)

    make("ok.gguf")
    make("model-bert.gguf", model="bert")
    make("no-model.gguf", model=None)
    make("pre-deepseek-llm.gguf", pre="deepseek-llm")
    make("no-tokens.gguf", toks=None)
    make("types-short.gguf", types=(1, 1))
    make("type-bad.gguf", types=(1, 9, 1))
    make("merge-unknown.gguf", merges=("a c",))


def main():
    data = sys.argv[1] if len(sys.argv) > 1 else "tests/data/tokenizer"
    if len(sys.argv) > 2:
        sys.exit(__doc__)
    make_bytebpe(os.path.join(data, "bytebpe"))
    bjson = os.path.join(data, "bytebpe/tokenizer.json")
    tokenizer_cases.make_cases(bjson, os.path.join(data, "bytebpe_cases.json"))
    convert_gpt2(bjson, os.path.join(data, "bytebpe.gguf"))
    check_llama_cpp_agrees(os.path.join(data, "bytebpe.gguf"), os.path.join(data, "bytebpe_cases.json"))
    sjson = os.path.join(data, "spbpe/tokenizer.json")
    types = convert_llama(sjson, os.path.join(data, "spbpe.gguf"))
    llama_cases(os.path.join(data, "spbpe.gguf"), sjson, types, os.path.join(data, "spbpe_gguf_cases.json"))
    bad_files(os.path.join(data, "gguf-bad"))


if __name__ == "__main__":
    main()

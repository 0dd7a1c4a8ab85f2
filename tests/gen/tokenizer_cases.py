#!/usr/bin/env python3
"""Reference encodings for tests/test_tokenizer.c, made with Hugging Face
`tokenizers` (pip install tokenizers; fixtures were made with 0.23.3).

    tokenizer_cases.py TOKENIZER_JSON OUT_JSON
        Encodes the built-in strings (plus some made from the tokenizer's
        added tokens) and writes OUT_JSON:
        {"tokenizers": VERSION, "cases": [{"text", "ids", "ids_special",
         "decoded", "decoded_skip"}]}
        ids: encode(text, add_special_tokens=False); ids_special: with them
        (left out when the same as ids); decoded / decoded_skip:
        decode(ids_special, skip_special_tokens=False / True), left out when
        the same as text / decoded, null when HF replaced invalid UTF-8 with
        U+FFFD (moerun returns the bytes instead).
    tokenizer_cases.py --make-spbpe DIR
        Trains the small SentencePiece-style BPE (Llama-2 layout: Prepend
        and Replace normalizer, byte fallback <0xXX> tokens, Replace/
        ByteFallback/Fuse/Strip decoder, <s> template) on built-in text and
        writes DIR/tokenizer.json, and the same model with the newer
        Metaspace pre-tokenizer and decoder into DIR-metaspace/."""
import json
import random
import sys

import tokenizers
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

ENGLISH = [
    "Hello world", "Hello, world!", "The quick brown fox jumps over the lazy dog.",
    "I'm sure you'll see they've done what we'd said it's", "DON'T SHOUT, IT'S RUDE; YOU'LL SEE, WE'VE I'M",
    "'s 't 're 've 'm 'll 'd", "'S 'T 'RE 'VE 'M 'LL 'D 'Ll 'rE", "rock'n'roll o'clock 'tis", "'ſ long s",
    "' quote", "''", "don't\nwon't", "Mixture-of-Experts models route each token to a few experts.",
    "e.g. i.e. etc. Mr. Dr. U.S.A.", "hello\tworld", "hello  world", "hello   world   ", "  leading spaces",
    "trailing spaces   ", " ", "  ", "\t", "\n", "\n\n", "\r\n", " \n ", "a\n\nb", "a \n b", "line1\r\nline2\r\n",
    "tabs\t\tand  spaces \t mixed\t", "   \n\n   \t\n x", "x\n\n\n", "end with space ", "a  b   c    d",
    "CamelCaseIdentifier snake_case_identifier kebab-case-identifier SCREAMING_CASE",
]
CODE = [
    "def f(x):\n    return x * 2\n", "int main(void) {\n\treturn 0;\n}\n", "for (int i = 0; i < n; i++) a[i] += b[i];",
    '{"key": "value", "n": [1, 2, 3], "ok": true}', "<html><body><p>Hi</p></body></html>",
    "x = y ** 2 // 3 % 4 != 5 && z || !w", "#include <stdio.h>\n#define MAX(a, b) ((a) > (b) ? (a) : (b))",
    "SELECT * FROM users WHERE id = 42;", "git commit -m 'fix: tokenizer'", "$ ls -la ~/.config | grep -v '^d'",
    "https://huggingface.co/Qwen/Qwen3-30B-A3B?x=1&y=2#frag", "user@example.com", "C:\\Windows\\System32",
    "if x:\n        pass\n    else:\n        return", "/* comment */ // another", "a=>b->c::d<=>e...f",
]
NUMBERS = [
    "1", "12", "123", "1234", "12345", "1234567890", "3.14159", "1,000,000", "-42", "+7", "1e10", "0x1F",
    "2024-06-01 12:34:56", "+1 (555) 123-4567", "v1.2.3", "100%", "$9.99", "1st 2nd 3rd 4th", "x2 y22 z222",
    "٠١٢٣٤٥٦٧٨٩", "１２３４５", "Ⅻ ⅻ Ⅳ", "x² + y³ = z¹", "½ ¼ ¾", "१२३", "〇一二三", "⑴ ⑵ ① ②",
]
SCRIPTS = [
    "你好，世界！", "我爱北京天安门。", "人工智能是未来", "日本語のテキストです。カタカナ、ひらがな。",
    "한국어 텍스트입니다", "안녕하세요 세계", "Привет, мир! Как дела?", "Γειά σου Κόσμε", "مرحبا بالعالم",
    "שלום עולם", "नमस्ते दुनिया", "สวัสดีชาวโลก", "Xin chào thế giới", "Ελληνικά καὶ ἀρχαῖα",
    "ქართული ენა", "Հայերեն", "አማርኛ", "ᏣᎳᎩ", "ᚠᚢᚦᚨᚱᚲ", "𐌰𐌱𐌲", "𝐀𝐁𝐂 𝑎𝑏𝑐 𝔄𝔅", "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ",
    "naïve café résumé façade coöperate", "Straße Größe ÄÖÜ äöü ß ẞ", "ǅ ǈ ǋ ǲ titlecase", "ʰʲ ˢ ᵃ modifier letters",
    "mixed 中文 and English 文字", "数字123和文字abc混合", "Ünïcödé Tëxt", "ÿ Ÿ ŉ ſ ﬁ ﬂ ﬀ",
]
EMOJI = [
    "😀😃😄", "I ❤️ you", "👍🏽 thumbs", "👨‍👩‍👧‍👦 family", "🇺🇸🇯🇵🇩🇪", "🏳️‍🌈", "emoji🙂inside",
    "✓ ✗ ★ ☆ ♠ ♣", "→ ← ↑ ↓ ⇒ ∀ ∃ ∈ ∑ ∏ √ ∞", "©®™", "…—–-‐", "«guillemets» „quotes“ ‘single’",
]
COMBINING = [
    "e\u0301", "cafe\u0301", "A\u030a", "n\u0303o", "o\u0308\u0304", "a\u0323\u0302", "a\u0302\u0323",
    "\u1100\u1161\u11a8", "\u1112\u1161\u11ab\u1100\u1173\u11af", "\u0915\u093c", "\u2126 \u212b \u212a",
    "\u0041\u0308\u0301 \u0061\u0328\u0301", "\u0301 leading mark", "x\u0300\u0301\u0302\u0303\u0304\u0305",
    "\u00c5\u030a", "\u1e9b\u0323", "\u0344", "\u0f73", "\u2000\u2001", "\u0958\u0959", "\uf900\uf901",
    "Ω Å K", "e\u0301\u0301", "\u05d0\u05b7\u05bc", "\u3099\u309a \u304b\u3099", "\u30cf\u309a",
]
SPACES = [
    "a\u00a0b", "a\u3000b", "a\u2003b", "a\u0085b", "a\u2028b", "a\u2029b", "a\u200bb", "a\ufeffb", "a\u180eb",
    "a\u202fb", "a\u205fb", "\u3000\u3000x", "x\u00a0\u00a0", "a\x0bb", "a\x0cb", "a\x1cb", "a\x1fb", "a\x00b",
    "a\x7fb", "\x00", "\x01\x02\x03", " \u00a0 \u3000 ", "tab\t\u3000space", "\u2000\u2001\u2002 x",
]


def special_cases(tok):
    out = []
    for t in tok.get_added_tokens_decoder().values():
        c = t.content
        out += [c, "x" + c + "y", " " + c + " ", c + c, "a " + c + "\nb", c[:-1], c + " " + c, "\n" + c + "\n"]
    return out


def long_cases(rng):
    words = "the of and to in a is that for it as was with be by on not he I this are or his".split()
    text = " ".join(rng.choice(words) for _ in range(500))
    return [text, " " * 3000, "\n" * 1000, "a" * 1000, "ab" * 500, "9" * 300, "😀" * 50, "中" * 200,
            " x" * 200, "\t \n" * 100, "Hello world. " * 50, "é" * 100, "e\u0301" * 100]


def random_cases(rng, n):
    pool = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789     \t\n\r"
            ".,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`"
            "éèêëàâäôöûüçñßæøåÉÀÇ中文字日本語한국어ПриветΓειάمرحبا שלוםनमस्ते๑๒Ⅻⅻ²½😀👍🏽❤️\u0301\u0308\u00a0\u3000\u200b"
            "\u2028\u0085\x0b\x1c")
    out = []
    for _ in range(n):
        k = rng.randint(1, 40)
        out.append("".join(rng.choice(pool) for _ in range(k)))
    return out


def all_strings(tok):
    rng = random.Random(1234)
    chat = ["<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\n4<|im_end|>", "<s>[INST] Hello [/INST]", "<s> hello</s>",
            "<s>hello", "hello</s>", "<unk>", "text <|endoftext|> more", "<|im_start|><|im_end|>", "<|im_start|"]
    base = [""] + ENGLISH + CODE + NUMBERS + SCRIPTS + EMOJI + COMBINING + SPACES + chat + special_cases(tok)
    mixed = [rng.choice(base) + rng.choice(["", " ", "\n", "  "]) + rng.choice(base) for _ in range(60)]
    seen, out = set(), []
    for s in base + mixed + random_cases(rng, 150) + long_cases(rng):
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def make_cases(tok_path, out_path):
    tok = Tokenizer.from_file(tok_path)
    cases = []
    for text in all_strings(tok):
        ids = tok.encode(text, add_special_tokens=False).ids
        ids_special = tok.encode(text, add_special_tokens=True).ids
        dec = tok.decode(ids_special, skip_special_tokens=False)
        dec_skip = tok.decode(ids_special, skip_special_tokens=True)
        clean = "\ufffd" in text or "\ufffd" not in dec
        case = {"text": text, "ids": ids}
        if ids_special != ids:
            case["ids_special"] = ids_special
        if not clean or dec != text:
            case["decoded"] = dec if clean else None
        if not clean or dec_skip != dec:
            case["decoded_skip"] = dec_skip if clean else None
        cases.append(case)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump({"tokenizers": tokenizers.__version__, "cases": cases}, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"{out_path}: {len(cases)} cases")


def training_text():
    rng = random.Random(7)
    lines = ENGLISH + CODE + NUMBERS + SCRIPTS[:12]
    words = ("the of and to in a is that for it as was with be by on not he I this are or his from at which but have "
             "an they you were her she there been one all we their has would when if so no what up out who them some "
             "model expert token layer weight cache memory compute router attention hello world").split()
    lines += [" ".join(rng.choice(words) for _ in range(rng.randint(3, 15))) for _ in range(3000)]
    return lines


def make_spbpe(out_dir):
    import os
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trainer = trainers.BpeTrainer(vocab_size=700, limit_alphabet=120, special_tokens=["<unk>", "<s>", "</s>"],
                                  show_progress=False)
    tok.train_from_iterator(training_text(), trainer)
    spec = json.loads(tok.to_str())
    # Llama-2's layout: the specials, then the 256 byte tokens, then the rest.
    vocab = spec["model"]["vocab"]
    order = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    rest = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if t not in order]
    spec["model"]["vocab"] = {t: i for i, t in enumerate(order + rest)}
    spec["added_tokens"] = [a | {"id": spec["model"]["vocab"][a["content"]]} for a in spec["added_tokens"]]
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    # Flags worth testing: a normalized added token (matched after Prepend
    # and Replace), lstrip/rstrip, single_word.
    tok.add_tokens([AddedToken("<sep>", normalized=True), AddedToken("yes no", normalized=True),
                    AddedToken("[MASK]", lstrip=True, rstrip=True, normalized=False),
                    AddedToken("word", single_word=True, normalized=False)])
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False),
                                     decoders.ByteFallback(), decoders.Fuse()])
    meta = out_dir.rstrip("/") + "-metaspace"
    os.makedirs(meta, exist_ok=True)
    tok.save(os.path.join(meta, "tokenizer.json"))


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--make-spbpe":
        make_spbpe(sys.argv[2])
    elif len(sys.argv) == 3:
        make_cases(sys.argv[1], sys.argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Independent reference for ramem's sentence encoder (all-MiniLM-L6-v2).

Uses numpy and the Python standard library only: no Rust, no Hugging Face
libraries. It has its own BERT tokenizer (basic tokenization + WordPiece over
vocab.txt), its own safetensors reader and its own BERT forward pass in
float64, then mean-pools with the attention mask and L2-normalises, as the
sentence-transformers model does.

    python3 minilm_numpy.py --model-dir DIR --captions CAPTIONS.json --out OUT.npy

CAPTIONS.json is a JSON list of strings; OUT.npy gets an (N, hidden) float64
matrix. `--print-ids` also prints the token ids of each caption.
"""

import argparse
import json
import math
import os
import struct
import sys
import unicodedata

try:
    import numpy as np
except ImportError:  # the Rust test turns this exit code into an install hint
    sys.stderr.write("numpy is not installed: pip install numpy\n")
    sys.exit(3)


# ---------------------------------------------------------------- tokenizer


def is_whitespace(ch):
    if ch in (" ", "\t", "\n", "\r"):
        return True
    return unicodedata.category(ch) == "Zs"


def is_control(ch):
    if ch in ("\t", "\n", "\r"):
        return False
    return unicodedata.category(ch).startswith("C")


def is_punctuation(ch):
    cp = ord(ch)
    # Every non-alphanumeric ASCII symbol ($, ^, `, ...) counts, as in BERT.
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def is_cjk(cp):
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def basic_tokenize(text):
    """Clean, lowercase, strip accents, split on whitespace and punctuation."""
    cleaned = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or is_control(ch):
            continue
        if is_whitespace(ch):
            cleaned.append(" ")
        elif is_cjk(cp):
            cleaned.append(" " + ch + " ")
        else:
            cleaned.append(ch)
    text = "".join(cleaned)
    words = []
    for word in text.split():
        word = word.lower()
        word = "".join(
            c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn"
        )
        current = ""
        for ch in word:
            if is_punctuation(ch):
                if current:
                    words.append(current)
                    current = ""
                words.append(ch)
            else:
                current += ch
        if current:
            words.append(current)
    return words


def wordpiece(word, vocab, unk="[UNK]", max_chars=100):
    """Greedy longest-match-first split of one word into vocabulary pieces."""
    if len(word) > max_chars:
        return [unk]
    pieces = []
    start = 0
    while start < len(word):
        end = len(word)
        found = None
        while start < end:
            piece = word[start:end]
            if start > 0:
                piece = "##" + piece
            if piece in vocab:
                found = piece
                break
            end -= 1
        if found is None:
            return [unk]
        pieces.append(found)
        start = end
    return pieces


def load_vocab(path):
    vocab = {}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            vocab[line.rstrip("\n")] = i
    return vocab


def encode(text, vocab, max_len):
    tokens = []
    for word in basic_tokenize(text):
        tokens.extend(wordpiece(word, vocab))
    tokens = tokens[: max_len - 2]
    return [vocab["[CLS]"]] + [vocab[t] for t in tokens] + [vocab["[SEP]"]]


# -------------------------------------------------------------- safetensors

DTYPES = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "I64": "<i8", "I32": "<i4"}


def load_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len].decode("utf-8"))
    base = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype = DTYPES[info["dtype"]]
        arr = np.frombuffer(data[base + start : base + end], dtype=dtype)
        tensors[name] = arr.reshape(info["shape"]).astype(np.float64)
    return tensors


# --------------------------------------------------------------------- BERT


def layer_norm(x, w, b, eps):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


_erf = np.vectorize(math.erf)


def gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def bert_forward(ids, W, cfg):
    """Hidden states (len, hidden) for one unpadded sequence."""
    eps = cfg["layer_norm_eps"]
    heads = cfg["num_attention_heads"]
    hidden = cfg["hidden_size"]
    hd = hidden // heads
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in W else ""

    def p(name):
        return W[prefix + name]

    n = len(ids)
    x = (
        p("embeddings.word_embeddings.weight")[ids]
        + p("embeddings.position_embeddings.weight")[:n]
        + p("embeddings.token_type_embeddings.weight")[0]
    )
    x = layer_norm(x, p("embeddings.LayerNorm.weight"), p("embeddings.LayerNorm.bias"), eps)

    def linear(x, name):
        return x @ p(name + ".weight").T + p(name + ".bias")

    for layer in range(cfg["num_hidden_layers"]):
        pre = "encoder.layer.%d." % layer
        q = linear(x, pre + "attention.self.query").reshape(n, heads, hd).transpose(1, 0, 2)
        k = linear(x, pre + "attention.self.key").reshape(n, heads, hd).transpose(1, 0, 2)
        v = linear(x, pre + "attention.self.value").reshape(n, heads, hd).transpose(1, 0, 2)
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
        scores = scores - scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs = probs / probs.sum(axis=-1, keepdims=True)
        ctx = (probs @ v).transpose(1, 0, 2).reshape(n, hidden)
        attn = linear(ctx, pre + "attention.output.dense")
        x = layer_norm(
            attn + x,
            p(pre + "attention.output.LayerNorm.weight"),
            p(pre + "attention.output.LayerNorm.bias"),
            eps,
        )
        inter = gelu(linear(x, pre + "intermediate.dense"))
        out = linear(inter, pre + "output.dense")
        x = layer_norm(
            out + x, p(pre + "output.LayerNorm.weight"), p(pre + "output.LayerNorm.bias"), eps
        )
    return x


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--captions", required=True, help="JSON list of strings")
    ap.add_argument("--out", required=True, help="output .npy, (N, hidden) float64")
    ap.add_argument("--print-ids", action="store_true")
    args = ap.parse_args()

    d = args.model_dir
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    if cfg.get("hidden_act", "gelu") != "gelu":
        sys.exit("only the erf GELU is implemented, config has %r" % cfg["hidden_act"])
    with open(os.path.join(d, "1_Pooling", "config.json")) as f:
        pooling = json.load(f)
    if not pooling.get("pooling_mode_mean_tokens"):
        sys.exit("only mean pooling is implemented")
    max_len = 512
    sbert = os.path.join(d, "sentence_bert_config.json")
    if os.path.exists(sbert):
        with open(sbert) as f:
            max_len = json.load(f).get("max_seq_length", 512)
    max_len = min(max_len, cfg["max_position_embeddings"])

    vocab = load_vocab(os.path.join(d, "vocab.txt"))
    weights = load_safetensors(os.path.join(d, "model.safetensors"))
    with open(args.captions, encoding="utf-8") as f:
        captions = json.load(f)

    rows = []
    for text in captions:
        ids = encode(text, vocab, max_len)
        if args.print_ids:
            print(json.dumps(ids))
        h = bert_forward(ids, weights, cfg)
        # Unpadded sequence: mean pooling over every token is the masked mean.
        v = h.mean(axis=0)
        rows.append(v / max(np.linalg.norm(v), 1e-12))
    out = np.stack(rows) if rows else np.zeros((0, cfg["hidden_size"]))
    np.save(args.out, out.astype(np.float64))


if __name__ == "__main__":
    main()

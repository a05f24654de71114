#!/usr/bin/env python3
"""A tokenizer for the tiny random Llama fixture, so the whole CLI (recipe → train → export) runs
on it in seconds: tests/fixtures/llama/tiny-llama/{tokenizer.json,tokenizer_config.json}.

Byte-level BPE without merges over the model's 256-token vocabulary: ids 0-2 are <unk>, <s>,
</s> (config.json's bos/eos ids), ids 3-255 the GPT-2 byte alphabet of bytes 0x03-0xFF (bytes
0x00-0x02 fall back to <unk>). Usage: python3 tools/reference/tiny_tokenizer.py
"""
import json
import pathlib

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tokenizers.pre_tokenizers import ByteLevel

OUT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "llama" / "tiny-llama"
SPECIAL = ["<unk>", "<s>", "</s>"]

# ByteLevel.alphabet() is a set; rebuild GPT-2's byte → char table to order it by byte.
bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
cs = bs[:]
n = 0
for b in range(256):
    if b not in bs:
        bs.append(b)
        cs.append(256 + n)
        n += 1
byte_to_char = dict(zip(bs, map(chr, cs)))
vocab = {tok: i for i, tok in enumerate(SPECIAL)}
for b in range(3, 256):
    vocab[byte_to_char[b]] = len(vocab)
assert len(vocab) == 256

tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
tok.add_special_tokens(SPECIAL)
tok.save(str(OUT / "tokenizer.json"))
(OUT / "tokenizer_config.json").write_text(
    json.dumps(
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "model_max_length": 128,
        },
        indent=2,
    )
    + "\n"
)
# The check the tests rely on: transformers reads it and round-trips text.
from transformers import AutoTokenizer  # noqa: E402

t = AutoTokenizer.from_pretrained(OUT)
ids = t("Refund my invoice, please.")["input_ids"]
assert max(ids) < 256 and t.decode(ids) == "Refund my invoice, please.", ids
print(OUT / "tokenizer.json", len(vocab), ids)

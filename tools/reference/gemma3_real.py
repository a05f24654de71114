#!/usr/bin/env python3
"""Reloads what recipes/gemma3-support.toml exported from the real Gemma 3 270M (Q4_K_M GGUF)
in the reference implementations and prints each one's mean loss over the recipe's eval split,
to set against `lora-tune eval recipes/gemma3-support.toml --adapter …`:

  peft     transformers' own reading of the GGUF (`from_pretrained(gguf_file=…)`, dequantised to
           f32) with the PEFT folder loaded by PeftModel
  merged   the merged model directory, loaded by transformers
  llama    llama.cpp (llama-cpp-python 0.3.36) running the GGUF base with the GGUF LoRA
  base     transformers' reading of the GGUF alone (the untrained model)
  llama-base  llama.cpp running the GGUF alone

The loss is lora-tune's: each chat rendered in Gemma's turn format (BOS, `<start_of_turn>user` /
`model`, each message trimmed and closed by `<end_of_turn>\\n`, a system message opening the first
user turn), cut into prompt and answer pieces, each piece tokenized without special tokens added,
the answers (with their `<end_of_turn>\\n`) the only targets; the mean over every target token of
the split. The token and target counts are printed too: they must equal `lora-tune plan`'s.

Environment: pip install torch transformers==5.23.0 peft==0.21.2 gguf numpy
             llama-cpp-python==0.3.36 (for `llama`; on a CPU with AMX, build it with
             CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON": the
             native AMX build crashes on this model's first batch).
Usage: python3 tools/reference/gemma3_real.py GGUF EVAL_JSONL OUT_DIR [peft] [merged] [llama] [base]
       (OUT_DIR: the recipe's export directory: the PEFT folder, merged/ and the .gguf LoRA)
"""
import json
import math
import pathlib
import sys

import torch


def pieces(messages):
    """(text, is_target) pieces of one chat, as lora-tune cuts Gemma's rendering."""
    prefix = ""
    if messages[0]["role"] == "system":
        prefix = messages[0]["content"] + "\n\n"
        messages = messages[1:]
    out, text = [], "<bos>"
    for i, m in enumerate(messages):
        role = "model" if m["role"] == "assistant" else m["role"]
        head = f"<start_of_turn>{role}\n" + (prefix if i == 0 else "")
        body = m["content"].strip() + "<end_of_turn>\n"
        if m["role"] == "assistant":
            out += [(text + head, False), (body, True)]
            text = ""
        else:
            text += head + body
    if text:
        out.append((text, False))
    return out


def encode(tokenizer, rows):
    examples = []
    for messages in rows:
        ids, targets = [], []
        for text, target in pieces(messages):
            piece = tokenizer(text, add_special_tokens=False).input_ids
            ids += piece
            targets += [target] * len(piece)
        examples.append((ids, targets))
    return examples


def mean_loss(logits_of, examples):
    total, count = 0.0, 0
    for ids, targets in examples:
        logits = logits_of(ids).double()
        logp = torch.log_softmax(logits[:-1], dim=-1)
        labels = torch.tensor(ids[1:])
        mask = torch.tensor(targets[1:])
        nll = -logp[torch.arange(len(labels)), labels]
        total += nll[mask].sum().item()
        count += int(mask.sum())
    return total / count


def torch_logits(model):
    @torch.no_grad()
    def run(ids):
        return model(torch.tensor([ids])).logits[0].float()

    return run


def main():
    gguf, eval_jsonl, out_dir = map(pathlib.Path, sys.argv[1:4])
    which = sys.argv[4:] or ["peft", "merged", "llama"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    rows = [json.loads(line)["messages"] for line in open(eval_jsonl) if line.strip()]
    examples = encode(tokenizer, rows)
    tokens = sum(len(ids) for ids, _ in examples)
    targets = sum(sum(t) for _, t in examples)
    print(f"eval split: {len(rows)} rows, {tokens} tokens, {100 * targets / tokens:.1f}% targets")

    def gguf_model():
        return AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        ).eval()

    for name in which:
        if name == "base":
            loss = mean_loss(torch_logits(gguf_model()), examples)
        elif name == "peft":
            from peft import PeftModel

            model = PeftModel.from_pretrained(gguf_model(), out_dir).eval()
            loss = mean_loss(torch_logits(model), examples)
        elif name == "merged":
            model = AutoModelForCausalLM.from_pretrained(
                out_dir / "merged", dtype=torch.float32
            ).eval()
            loss = mean_loss(torch_logits(model), examples)
        elif name in ("llama", "llama-base"):
            from llama_cpp import Llama
            import numpy as np

            lora = sorted(out_dir.glob("*.gguf"))
            assert len(lora) == 1, f"one GGUF LoRA expected in {out_dir}, found {lora}"
            llm = Llama(
                model_path=str(gguf),
                lora_path=str(lora[0]) if name == "llama" else None,
                n_ctx=512,
                n_batch=512,
                logits_all=True,
                verbose=False,
                type_k=0,  # the KV cache in f32 (llama.cpp's default f16 rounds k and v)
                type_v=0,
            )

            def run(ids):
                llm.reset()
                llm.eval(ids)
                return torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float32))

            loss = mean_loss(run, examples)
        else:
            sys.exit(f"unknown check {name}")
        print(f"{name}: eval loss {loss:.6f}, perplexity {math.exp(loss):.2f}")


if __name__ == "__main__":
    main()

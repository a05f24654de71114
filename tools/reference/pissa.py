#!/usr/bin/env python3
"""PEFT's PiSSA and OLoRA on the tiny Llama fixture, the reference for lora-tune's `lora.init =
"pissa" | "olora"` and its export to a plain LoRA.

For each init: LoraConfig(r=4, lora_alpha=8, dropout 0, the 7 Llama targets,
init_lora_weights=INIT) → tests/fixtures/lora/init-INIT/: init.safetensors (A, B as PEFT
initialised them) and residual.safetensors (layer 0's adapted base weights after the init,
W − s·B·A, HF names). Then the ten steps of lora_train.py (its batches.json, accumulation,
clipping, AdamW, schedule) → trajectory.json, and the adapter converted back to a plain LoRA by
save_pretrained(path_initial_model_for_weight_conversion=…) → converted/ (adapter_config.json,
adapter_model.safetensors); logits.safetensors: that converted folder loaded by PEFT onto the original
tiny-llama, on the first micro-batch (the trained PiSSA/OLoRA model's logits, checked equal).

With `check DIR`: loads lora-tune's exported folder DIR with PEFT onto the original tiny-llama
and prints the largest |Δlogit| against that init's logits.safetensors.
Environment: transformers==5.23.0 peft==0.21.2, torch per DESIGN.md §6.
Usage: python3 tools/reference/pissa.py            (writes both fixtures)
       python3 tools/reference/pissa.py check DIR pissa|olora
"""
import json
import pathlib
import sys
import tempfile

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from lora_train import train_steps  # noqa: E402  (the same ten steps)

ROOT = pathlib.Path(__file__).resolve().parents[2]
BASE = ROOT / "tests/fixtures/llama/tiny-llama"
FIXTURES = ROOT / "tests/fixtures/lora"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_state(model):
    return {k.replace(".default", ""): v.detach().clone().contiguous()
            for k, v in model.named_parameters() if "lora_" in k}


def tensors(batch):
    return (torch.tensor(batch[k]) for k in ("input_ids", "attention_mask", "labels"))


def logits_on_original(folder, batch):
    base = AutoModelForCausalLM.from_pretrained(BASE, attn_implementation="eager")
    model = PeftModel.from_pretrained(base, folder)
    ids, mask, _ = tensors(batch)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def build(init):
    out = FIXTURES / f"init-{init}"
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(7)
    model = AutoModelForCausalLM.from_pretrained(BASE, attn_implementation="eager")
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS, init_lora_weights=init)
    model = get_peft_model(model, config)
    save_file(lora_state(model), out / "init.safetensors")
    residual = {}
    for name, p in model.named_parameters():
        if ".layers.0." in name and "base_layer.weight" in name:
            residual[name.replace("base_model.model.", "").replace(".base_layer", "")] = p.detach().clone()
    assert len(residual) == 7
    save_file(residual, out / "residual.safetensors")

    with tempfile.TemporaryDirectory() as tmp:
        initial = pathlib.Path(tmp) / "initial"
        # PEFT's recipe: the initial adapter saved with init_lora_weights=True, before training.
        model.peft_config["default"].init_lora_weights = True
        model.save_pretrained(initial)
        model.peft_config["default"].init_lora_weights = init

        batches = json.loads((FIXTURES / "train" / "batches.json").read_text())
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=5e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
        trajectory = train_steps(model, params, opt, batches, init)
        (out / "trajectory.json").write_text(json.dumps(trajectory, indent=1) + "\n")

        ids, mask, _ = tensors(batches[0])
        with torch.no_grad():
            trained = model(input_ids=ids, attention_mask=mask).logits
        converted = out / "converted"
        model.save_pretrained(converted, path_initial_model_for_weight_conversion=initial)
        (converted / "README.md").unlink(missing_ok=True)
    reloaded = logits_on_original(converted, batches[0])
    print(init, "converted on the original base vs trained:", float((reloaded - trained).abs().max()))
    save_file({"logits": reloaded.contiguous()}, out / "logits.safetensors")


def check(folder, init):
    batches = json.loads((FIXTURES / "train" / "batches.json").read_text())
    want = load_file(FIXTURES / f"init-{init}" / "logits.safetensors")["logits"]
    got = logits_on_original(folder, batches[0])
    print(f"{init}: PEFT on lora-tune's export vs PEFT's own conversion: max |Δlogit| "
          f"{float((got - want).abs().max()):.3e}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["check"]:
        check(sys.argv[2], sys.argv[3])
    else:
        for init in ("pissa", "olora"):
            build(init)

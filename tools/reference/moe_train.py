#!/usr/bin/env python3
"""lora_train.py's ten PEFT steps (same micro-batches, accumulation, clipping, AdamW, schedule,
r=4, α=8, no dropout, seed 7) on the tiny mixtures of experts of moe_fixtures.py, with LoRA on
attention and on every expert:

  qwen3-moe        tiny-qwen3-moe in the per-expert layout: transformers 5 fuses experts in
                   memory, so each sparse layer's experts are put back as per-expert modules
                   (Qwen3MoeMLP each, the Qwen3MoeExperts loop over them) and PEFT's
                   target_modules adapt q/k/v/o and each expert's gate_proj, up_proj, down_proj.
  qwen3-moe-fused  tiny-qwen3-moe as transformers 5 holds it: target_modules for attention and
                   PEFT's target_parameters for mlp.experts.gate_up_proj / down_proj (one
                   adapter per expert over gate and up together).
  qwen2-moe        tiny-qwen2-moe, per-expert as qwen3-moe; the seven names also adapt the
                   shared expert (mlp.shared_expert.*), not its gate.
  mixtral          tiny-mixtral per expert (w1/w3/w2), the keys written as its checkpoint names
                   the block (block_sparse_moe; transformers 5 calls it mlp).
  granitemoe-fused tiny-granitemoe (its checkpoint has no per-expert modules): target_parameters
                   on block_sparse_moe.experts.gate_up_proj / down_proj, as qwen3-moe-fused; also
                   PEFT's own folder (peft/, target_parameters form) and its logits.
  olmoe            tiny-olmoe, per-expert as qwen3-moe.
  qwen3-moe-aux, mixtral-aux
                   qwen3-moe and mixtral with transformers' router load-balancing loss added at
                   router_aux_loss_coef = 0.1 (train_steps: load_balancing_loss_func over every
                   sparse layer and the attention mask, weighted by each micro-batch's share of
                   the step's labelled tokens).

Writes tests/fixtures/lora/train-<variant>/: init.safetensors and final.safetensors in the
per-expert PEFT keys lora-tune uses (`…mlp.experts.{e}.gate_up_proj.lora_A.weight` for the
fused run: PEFT's [r·E, in] A split expert-major, its [out, r·E] B expert-minor), and
trajectory.json; the per-expert runs also PEFT's own folder of the final adapters (peft/,
save_pretrained) and their logits on the first micro-batch (logits.safetensors), and check that
PeftModel.from_pretrained loads that folder onto the stock (fused) transformers model with the
same logits (not for qwen2-moe: PEFT leaves its expert adapters out there). The fused run
also checks that mapping: its final adapters, mapped and loaded
into per-expert modules, give the fused PEFT model's logits.

Every expert of every sparse layer is routed some token in every optimiser step (checked): PEFT
skips an adapter without a gradient in AdamW, where lora-tune's zero gradient would still decay.

Environment: transformers==5.23.0, peft==0.21.2, torch per DESIGN.md §6.
Usage: python3 tools/reference/moe_train.py qwen3-moe|qwen3-moe-fused|qwen2-moe|mixtral|granitemoe-fused|olmoe
       |qwen3-moe-aux|mixtral-aux
"""
import json
import sys

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM

from lora_train import ROOT, lora_state, micro_batches, train_steps

VARIANT = sys.argv[1]
AUX_COEF = 0.1 if VARIANT.endswith("-aux") else 0.0
BASE = ROOT / "tests/fixtures/llama" / f"tiny-{VARIANT.removesuffix('-fused').removesuffix('-aux')}"
OUT = ROOT / "tests/fixtures/lora" / f"train-{VARIANT}"
FUSED = VARIANT.endswith("-fused")
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


# Each expert's gate, up and down projections as the per-expert checkpoint names them.
NAMES = ("w1", "w3", "w2") if VARIANT.startswith("mixtral") else ("gate_proj", "up_proj", "down_proj")


class Expert(nn.Module):
    """One expert as the per-expert checkpoint names it."""

    def __init__(self, gate_up, down, act):
        super().__init__()
        i, h = down.shape[1], down.shape[0]
        for name, rows, shape in zip(NAMES, (gate_up[:i], gate_up[i:], down), ((h, i), (h, i), (i, h))):
            setattr(self, name, nn.Linear(*shape, bias=False))
            with torch.no_grad():
                getattr(self, name).weight.copy_(rows)
        self.act = act

    def forward(self, x):
        gate, up, down = (getattr(self, n) for n in NAMES)
        return down(self.act(gate(x)) * up(x))


class PerExpert(nn.ModuleList):
    """The fused experts' loop (Qwen3MoeExperts.forward / OlmoeExperts.forward) over
    per-expert modules."""

    def __init__(self, fused):
        super().__init__(Expert(fused.gate_up_proj[e], fused.down_proj[e], fused.act_fn)
                         for e in range(fused.gate_up_proj.shape[0]))
        self.hits = set()

    def forward(self, hidden_states, top_k_index, top_k_weights):
        out = torch.zeros_like(hidden_states)
        for e, expert in enumerate(self):
            token, slot = torch.where(top_k_index == e)
            if len(token) == 0:
                continue
            self.hits.add(e)
            y = expert(hidden_states[token]) * top_k_weights[token, slot, None]
            out.index_add_(0, token, y.to(out.dtype))
        return out


def per_expert(model):
    """`model` with each sparse layer's fused experts replaced by per-expert modules. Its
    model_type is hidden from PEFT, which would otherwise rewrite per-expert target_modules
    into target_parameters on the fused tensors (utils/transformers_weight_conversion.py: one
    rank-2r adapter over gate and up), which these modules no longer have."""
    for layer in model.model.layers:
        if hasattr(layer.mlp, "experts"):
            layer.mlp.experts = PerExpert(layer.mlp.experts)
    model.config.model_type = f"{model.config.model_type}-per-expert"
    return model


def checkpoint_keys(state):
    """Mixtral's block is `mlp` in transformers 5 but `block_sparse_moe` in its checkpoints (and
    in PEFT folders written before transformers 5): keys as the checkpoint names modules."""
    if not VARIANT.startswith("mixtral"):
        return state
    return {k.replace(".mlp.", ".block_sparse_moe."): v for k, v in state.items()}


def to_per_expert_keys(model, experts):
    """The adapters in per-expert keys: PEFT's target_parameters wrappers (ParamWrapper, one
    per targeted parameter, nested) hold A [r·E, in] expert-major and B [out, r·E]
    expert-minor (ParamWrapper.get_delta_weight); the rest as lora_state gives them."""
    out = {k: v for k, v in lora_state(model).items() if ".experts." not in k}
    for name, module in model.named_modules():
        if type(module).__name__ != "ParamWrapper":
            continue
        stem = name.removesuffix(".base_layer").removesuffix(".base_layer")
        a, b = module.lora_A["default"].weight.detach(), module.lora_B["default"].weight.detach()
        for e in range(experts):
            at = f"{stem}.{e}.{module.parameter_name}"
            out[f"{at}.lora_A.weight"] = a.reshape(experts, -1, a.shape[-1])[e].clone().contiguous()
            out[f"{at}.lora_B.weight"] = b.reshape(b.shape[0], -1, experts)[:, :, e].clone().contiguous()
    return out


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(7)
    model = AutoModelForCausalLM.from_pretrained(BASE, attn_implementation="eager")
    experts = getattr(model.config, "num_experts", None) or model.config.num_local_experts
    if FUSED:
        block = "block_sparse_moe" if "granite" in VARIANT else "mlp"
        config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=ATTENTION,
                            target_parameters=[f"{block}.experts.gate_up_proj", f"{block}.experts.down_proj"])
    else:
        model = per_expert(model)
        config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=ATTENTION + list(NAMES))
    model = get_peft_model(model, config)
    print("PEFT keys:", [k for k in lora_state(model) if ".mlp." in k][:4])
    state = lambda: to_per_expert_keys(model, experts) if FUSED else checkpoint_keys(lora_state(model))
    save_file(state(), OUT / "init.safetensors")
    batches = micro_batches(torch.Generator().manual_seed(11))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    hook_every_step_hits_every_expert(model, opt, experts)
    trajectory = train_steps(model, params, opt, batches, router_aux_loss_coef=AUX_COEF)
    final = state()
    save_file(final, OUT / "final.safetensors")
    (OUT / "trajectory.json").write_text(json.dumps(trajectory, indent=1) + "\n")
    if VARIANT == "qwen3-moe-fused":
        check_mapping(model, final, batches[0])
    elif FUSED:
        save_target_parameters_folder(model, batches[0])
    elif not AUX_COEF:  # the aux runs' adapters load as the plain runs' do
        save_and_reload(model, batches[0])


def save_target_parameters_folder(model, batch):
    """PEFT's folder in its target_parameters form (peft/) and the logits on the first
    micro-batch (logits.safetensors); PeftModel.from_pretrained loads it back to them."""
    ids, mask = torch.tensor(batch["input_ids"]), torch.tensor(batch["attention_mask"])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    model.save_pretrained(OUT / "peft")
    (OUT / "peft" / "README.md").unlink(missing_ok=True)
    save_file({"logits": logits.contiguous()}, OUT / "logits.safetensors")
    stock = AutoModelForCausalLM.from_pretrained(BASE, attn_implementation="eager").eval()
    with torch.no_grad():
        got = PeftModel.from_pretrained(stock, OUT / "peft").eval()(input_ids=ids, attention_mask=mask).logits
    diff = float((got - logits).abs().max())
    print("PeftModel.from_pretrained of the target_parameters folder: max |Δlogit|", diff)
    assert diff < 1e-5


def save_and_reload(model, batch):
    """PEFT's own folder of the trained per-expert adapters (peft/) and their logits on the first
    micro-batch (logits.safetensors); the folder loaded by PeftModel.from_pretrained onto the
    stock transformers model (fused experts: PEFT converts the per-expert adapters into
    target_parameters, gate and up as one rank-2r block-diagonal adapter) gives those logits."""
    ids, mask = torch.tensor(batch["input_ids"]), torch.tensor(batch["attention_mask"])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    model.save_pretrained(OUT / "peft")
    (OUT / "peft" / "README.md").unlink(missing_ok=True)
    weights = OUT / "peft" / "adapter_model.safetensors"
    save_file(checkpoint_keys(load_file(weights)), weights, metadata={"format": "pt"})
    config = OUT / "peft" / "adapter_config.json"
    settings = json.loads(config.read_text())
    settings["base_model_name_or_path"] = BASE.name
    config.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    save_file({"logits": logits.contiguous()}, OUT / "logits.safetensors")
    if VARIANT == "qwen2-moe":
        # PEFT 0.21.2 on transformers 5.23 converts per-expert folders for qwen3_moe (and
        # mixtral) into target_parameters on the fused experts, but not for qwen2_moe: there
        # the expert adapters are left out of the stock model (only the shared expert's
        # gate/up/down modules match), so this check cannot pass and is skipped.
        print("qwen2_moe: PEFT does not load per-expert adapters onto stock transformers; skipped")
        return
    stock = AutoModelForCausalLM.from_pretrained(BASE, attn_implementation="eager").eval()
    reloaded = PeftModel.from_pretrained(stock, OUT / "peft").eval()
    with torch.no_grad():
        got = reloaded(input_ids=ids, attention_mask=mask).logits
    diff = float((got - logits).abs().max())
    print("PeftModel.from_pretrained on the fused transformers model: max |Δlogit|", diff)
    assert diff < 1e-5


def hook_every_step_hits_every_expert(model, opt, experts):
    """Asserts before each optimiser step that every expert of every sparse layer got a token."""
    seen = {}

    def record(module, args, out, i):
        seen.setdefault(i, set()).update(out[2].flatten().tolist())
    for i, layer in enumerate(model.base_model.model.model.layers):
        router = layer.block_sparse_moe.router if hasattr(layer, "block_sparse_moe") else getattr(layer.mlp, "gate", None)
        if router is not None:
            router.register_forward_hook(lambda m, a, o, i=i: record(m, a, o, i))

    def check(optimizer, args, kwargs):
        for i, hit in seen.items():
            assert hit == set(range(experts)), f"layer {i}: experts {sorted(hit)} only"
        seen.clear()
    opt.register_step_pre_hook(check)


def check_mapping(model, final, batch):
    """The fused PEFT model's logits equal those of per-expert modules holding the mapped
    adapters."""
    ids, mask = torch.tensor(batch["input_ids"]), torch.tensor(batch["attention_mask"])
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
    base = per_expert(AutoModelForCausalLM.from_pretrained(BASE, attn_implementation="eager"))
    # per-expert adapters: gate_up's A serves gate and up, its B splits in halves
    split = {}
    for k, v in final.items():
        if ".gate_up_proj." in k:
            if "lora_A" in k:
                split[k.replace("gate_up_proj", "gate_proj")] = v
                split[k.replace("gate_up_proj", "up_proj")] = v
            else:
                half = v.shape[0] // 2
                split[k.replace("gate_up_proj", "gate_proj")] = v[:half]
                split[k.replace("gate_up_proj", "up_proj")] = v[half:]
        else:
            split[k] = v
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=ATTENTION + ["gate_proj", "up_proj", "down_proj"]))
    named = dict(peft.named_parameters())
    with torch.no_grad():
        for k, v in split.items():
            named[k.replace(".weight", ".default.weight")].copy_(v)
        got = peft(input_ids=ids, attention_mask=mask).logits
    diff = float((got - want).abs().max())
    print("per-expert mapping of the fused adapters: max |Δlogit|", diff)
    assert diff < 1e-5


if __name__ == "__main__":
    main()

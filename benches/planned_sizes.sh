#!/usr/bin/env bash
# What `lora-tune plan` predicts a training run needs at Qwen2.5's sizes (0.5B, 1.5B, 7B),
# with and without gradient checkpointing, on models with their shapes and no weights
# (benches/shaped_model.py: sparse files, so nothing is downloaded or stored). LoRA r=16 on
# every linear layer, packed support-ticket chats in 2×256 micro-batches (the issue #35 shape);
# QUANTIZE=q4_k plans the layers' linears quantised at load, QEMB=q6_k the embedding and an
# untied head too. One line per size and mode; "GPU" is plan's
# device estimate, "CPU" its host one.
# Usage: [QUANTIZE=q4_k] [QEMB=q6_k] [TARGETS='"all-linear"'] [SHAPE=2:256] benches/planned_sizes.sh [0.5b 1.5b 7b]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${BIN:-$root/target/release/lora-tune}
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(0.5b 1.5b 7b)
shape=${SHAPE:-2:256}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for size in "${sizes[@]}"; do
    python3 "$root/benches/shaped_model.py" "$size" "$work/$size" >/dev/null
    for ckpt in false true; do
        cat > "$work/r.toml" <<TOML
[model]
source = "$work/$size"
$([ -n "${QUANTIZE:-}" ] && echo "quantize = \"$QUANTIZE\"")
$([ -n "${QEMB:-}" ] && echo "quantize_embeddings = \"$QEMB\"")
[lora]
rank = 16
alpha = 32
targets = ${TARGETS:-\"all-linear\"}
[data]
train = "$root/datasets/support-tickets/train.jsonl"
format = "chat"
template = "chatml"  # what Qwen2.5 uses; the fixture tokenizer has none
max_len = ${shape##*:}
packing = true
pad_to_multiple_of = ${shape##*:}
[train]
max_steps = 2
batch_size = ${shape%%:*}
gradient_checkpointing = $ckpt
[export]
out_dir = "$work/out"
TOML
        "$bin" plan "$work/r.toml" > "$work/plan.txt"
        echo "$size checkpointing=$ckpt: $(grep -E '^memory: peak|on a GPU with' "$work/plan.txt" | tr '\n' ' ')"
        grep -E "trainable params" "$work/plan.txt" | head -1
    done
done

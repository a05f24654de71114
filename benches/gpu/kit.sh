#!/usr/bin/env bash
# The GPU benchmark kit (issue #22): lora-tune's training bench (benches/train.rs) against
# PEFT + torch on the same shapes and token ids, on random-weight checkpoints with the real
# shapes of SmolLM2-135M, -360M and -1.7B (benches/gpu/make_models.py), W1 (4×256) and W2
# (1×1024), in f32, with bf16 or f16 products (model.compute_dtype; f16 with its loss scaling —
# on Vulkan, where bf16 is conversion-only, f16 is the half type shaders have) and with a base
# quantised to Q4_0 at load. PEFT runs once per model and workload: on a GPU under torch.autocast(bf16), as PEFT
# users train there; on the CPU in f32 on 2 threads, as BENCHMARKS.md's CPU figures.
#
#   benches/gpu/kit.sh build [vulkan]
#       Here, where the toolchain is: builds the bench (default features: wgpu + flex; with
#       `vulkan` also `--features vulkan`, burn's SPIR-V compiler), strips it and packs it into
#       benches/gpu/carry/ (ignored by git). Carry that folder to the GPU machine.
#   benches/gpu/kit.sh run [--device cpu|gpu] [--models a,b] [--workloads w1,w2]
#                          [--modes f32,bf16,f16,q4_0] [--out DIR]
#       Where it is measured: unpacks the builds, writes the checkpoints (transformers, into
#       $KIT_MODELS, default /tmp/lora-tune-kit-models), runs every model × workload × mode ×
#       build (gpu: the default build on `wgpu`, the vulkan build on `vulkan`; cpu: the default
#       build on `cpu`) and PEFT, and writes one JSON line per run to OUT/kit.jsonl (default
#       benches/gpu/out) and the ratios to OUT/summary.json. A mode the device refuses (bf16
#       or f16 without that arithmetic) is recorded with its reason, not skipped silently.
#
# The same commands run on the CPU (`--device cpu`), which is how the kit is exercised without a
# GPU. Needs python3 with torch, transformers and peft, and xz.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
kit=$root/benches/gpu
carry=$kit/carry

build() {
    mkdir -p "$carry"
    local variants=(default)
    [ "${1:-}" = vulkan ] && variants+=(vulkan)
    for v in "${variants[@]}"; do
        local features=() target=()
        [ "$v" = vulkan ] && features=(--features vulkan) && target=(--target-dir "$root/target/vulkan")
        local exe
        exe=$(cd "$root" && cargo bench --bench train --no-run "${features[@]}" "${target[@]}" \
            --message-format=json 2>/dev/null |
            python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "train":
        print(m["executable"])' | tail -1)
        [ -n "$exe" ] || { echo "kit: building the $v bench failed; run cargo bench --bench train --no-run ${features[*]} to see why" >&2; exit 1; }
        strip -o "$carry/train-$v" "$exe"
        xz -T0 -6 -f "$carry/train-$v"
        echo "kit: $carry/train-$v.xz ($(du -h "$carry/train-$v.xz" | cut -f1))"
    done
}

run() {
    local device=gpu models=smollm2-135m,smollm2-360m,smollm2-1.7b workloads=w1,w2
    local modes=f32,bf16,f16,q4_0 out=$kit/out
    while [ $# -gt 0 ]; do
        case $1 in
            --device) device=$2 ;; --models) models=$2 ;; --workloads) workloads=$2 ;;
            --modes) modes=$2 ;; --out) out=$2 ;;
            *) echo "kit run: unknown option $1" >&2; exit 2 ;;
        esac
        shift 2
    done
    mkdir -p "$out"
    local bins=$out/bin
    mkdir -p "$bins"
    for packed in "$carry"/train-*.xz; do
        [ -e "$packed" ] || { echo "kit: nothing in $carry; run benches/gpu/kit.sh build first" >&2; exit 1; }
        xz -dc "$packed" > "$bins/$(basename "$packed" .xz)"
        chmod +x "$bins/$(basename "$packed" .xz)"
    done
    local models_dir=${KIT_MODELS:-/tmp/lora-tune-kit-models}
    python3 "$kit/make_models.py" "$models_dir" ${models//,/ }
    local builds=() peft=(device=cpu)
    if [ "$device" = cpu ]; then
        builds=("default:cpu")
    else
        builds=("default:wgpu")
        [ -e "$bins/train-vulkan" ] && builds+=("vulkan:vulkan")
        peft=(device=cuda autocast=bf16)
    fi
    local log=$out/kit.jsonl
    : > "$log"
    for m in ${models//,/ }; do
        for w in ${workloads//,/ }; do
            local w2=()
            [ "$w" = w2 ] && w2=(w2)
            echo "kit: PEFT $m $w" >&2
            python3 "$root/tools/reference/bench_peft.py" - "${w2[@]}" "model=$models_dir/$m" "${peft[@]}" |
                python3 -c 'import json,sys; r=json.load(sys.stdin); r.update(side="peft", model_name=sys.argv[1], w=sys.argv[2]); print(json.dumps(r))' "$m" "$w" >> "$log"
            for b in "${builds[@]}"; do
                local build=${b%%:*} dev=${b##*:}
                for mode in ${modes//,/ }; do
                    local settings=(compute=f32)
                    [ "$mode" = bf16 ] && settings=(compute=bf16)
                    [ "$mode" = f16 ] && settings=(compute=f16)
                    [ "$mode" = q4_0 ] && settings=(compute=f32 quantize=q4_0)
                    echo "kit: lora-tune ($build build) $m $w $mode on $dev" >&2
                    local result
                    if result=$(cd "$root" && "$bins/train-$build" "model=$models_dir/$m" "device=$dev" "${settings[@]}" "${w2[@]}" 2>"$out/stderr.txt" | tail -1); then
                        :
                    else
                        result=$(python3 -c 'import json,sys; print(json.dumps({"refused_or_failed": open(sys.argv[1]).read()[-2000:]}))' "$out/stderr.txt")
                    fi
                    echo "$result" | python3 -c 'import json,sys; r=json.load(sys.stdin); r.update(side="lora-tune", build=sys.argv[1], mode=sys.argv[2], model_name=sys.argv[3], w=sys.argv[4]); print(json.dumps(r))' "$build" "$mode" "$m" "$w" >> "$log"
                done
            done
        done
    done
    python3 - "$log" "$out/summary.json" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
peft = {(r["model_name"], r["w"]): r for r in rows if r["side"] == "peft"}
summary = []
for r in rows:
    if r["side"] != "lora-tune":
        continue
    ref = peft[(r["model_name"], r["w"])]
    entry = {k: r.get(k) for k in ("model_name", "w", "build", "mode", "device", "tokens_per_s", "device_memory_reserved_gb", "peak_rss_gb", "refused_or_failed")}
    entry["peft_tokens_per_s"] = ref["tokens_per_s"]
    if r.get("tokens_per_s"):
        entry["tokens_per_s_ratio"] = r["tokens_per_s"] / ref["tokens_per_s"]
        ours_mem, ref_mem = (r.get("device_memory_reserved_gb"), ref.get("peak_gpu_memory_gb"))
        if not (ours_mem and ref_mem):
            ours_mem, ref_mem = r.get("peak_rss_gb"), ref.get("peak_rss_gb")
        entry["memory_ratio"] = ours_mem / ref_mem if ours_mem and ref_mem else None
    summary.append(entry)
json.dump(summary, open(sys.argv[2], "w"), indent=1)
for e in summary:
    print(json.dumps(e))
PY
}

case ${1:-} in
    build) shift; build "$@" ;;
    run) shift; run "$@" ;;
    *) sed -n '2,26p' "$0"; exit 2 ;;
esac

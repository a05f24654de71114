#!/usr/bin/env bash
# The GPU benchmark in ONE call of the device tool (issue #34): lora-tune's training bench
# (benches/train.rs, built here by `benches/gpu/kit.sh build vulkan`) against PEFT + torch as GPU
# users run it (bf16 weights, torch.autocast(bf16), sdpa attention), on random-weight checkpoints
# with the shapes of SmolLM2-1.7B and -360M written on the card (benches/gpu/make_models.py).
#
# On the lent machine, from the repository root (carry: .gl and benches/gpu/carry):
#     bash benches/gpu/run.sh
# Here, as a dry run on the CPU (ours on flex, PEFT on the CPU, the 360M shapes only):
#     KIT_DEVICE=cpu OUT=/tmp/kit-out bash benches/gpu/run.sh
#
# Jobs run in priority order, each under its own timeout and all under one deadline
# (KIT_DEADLINE_S, default 450 s from the start), and each appends one JSON line to
# $OUT/results.jsonl as it ends — a timeout or a failure is a line too (with its stderr's end),
# never the end of the queue. The autotune decisions cubecl logged (which kernel won each
# product, cooperative-matrix ones included) go to $OUT/autotune-decisions.jsonl; the card and
# driver to $OUT/nvidia-smi.txt; a table of ratios is printed last and kept in $OUT/summary.txt.
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
kit=$root/benches/gpu
out=${OUT:-$kit/out}
device=${KIT_DEVICE:-gpu}
deadline=$(( $(date +%s) + ${KIT_DEADLINE_S:-450} ))
work=${KIT_WORK:-/tmp/lora-tune-kit}
mkdir -p "$out" "$work/bin" "$work/models"
log=$out/run.log
results=$out/results.jsonl
: > "$results"
say() { echo "kit: $*" | tee -a "$log" >&2; }

# The Vulkan loader (the device image has the NVIDIA driver, not libvulkan): the .debs carried
# in .gl, unpacked into / as the device tool's README says.
if [ "$device" = gpu ]; then
    if ! ldconfig -p | grep -q libvulkan && ls "$root"/.gl/*.deb >/dev/null 2>&1; then
        for f in "$root"/.gl/*.deb; do dpkg -x "$f" /; done
        ldconfig
    fi
    icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    [ -e "$icd" ] && export VK_DRIVER_FILES=$icd
    egl=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
    [ -e "$egl" ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$egl
    { nvidia-smi; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv; } \
        > "$out/nvidia-smi.txt" 2>&1
    head -20 "$out/nvidia-smi.txt" >&2
fi

# The prebuilt benches, unpacked outside the repository copy ($OUT is only for results).
python3 - "$kit/carry" "$work/bin" <<'PY' || say "no prebuilt bench in benches/gpu/carry: run benches/gpu/kit.sh build vulkan here first"
import lzma, os, pathlib, sys
for packed in sorted(pathlib.Path(sys.argv[1]).glob("train-*.xz")):
    target = pathlib.Path(sys.argv[2]) / packed.stem
    target.write_bytes(lzma.decompress(packed.read_bytes()))
    os.chmod(target, 0o755)
    print(f"kit: unpacked {target}", file=sys.stderr)
PY

if [ "$device" = gpu ]; then
    models=(smollm2-1.7b smollm2-360m)
    ours=vulkan peft_device=cuda
else
    models=(smollm2-360m)
    ours=cpu peft_device=cpu
fi
say "writing ${models[*]} in $work/models"
python3 "$kit/make_models.py" "$work/models" "${models[@]}" 2>&1 | tee -a "$log" >&2

# Autotune results and decisions of this call, kept apart from any other cache.
export LORA_TUNE_CACHE=$work/cache

# job NAME SECONDS COMMAND...: runs it under min(SECONDS, what the deadline leaves), appends
# {"job", "rc", "seconds", ...its last JSON line, or "error": stderr's end} to results.jsonl.
job() {
    local name=$1 limit=$2
    shift 2
    local left=$(( deadline - $(date +%s) ))
    if [ "$left" -lt 20 ]; then
        say "$name: skipped, ${left} s left before the deadline"
        python3 -c 'import json,sys; print(json.dumps({"job": sys.argv[1], "skipped": "deadline"}))' "$name" >> "$results"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    say "$name (timeout ${limit} s): $*"
    local start rc
    start=$(date +%s.%N)
    # A fresh shell runs the job, so that `timeout` can end it: peft and bench are functions.
    timeout -k 5 "$limit" bash -c "$(declare -f peft bench); \"\$@\"" job "$@" \
        > "$work/stdout" 2> "$work/stderr"
    rc=$?
    python3 - "$name" "$rc" "$start" "$work/stdout" "$work/stderr" >> "$results" <<'PY'
import json, sys, time
name, rc, start, stdout, stderr = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
row = {"job": name, "rc": rc, "seconds": round(time.time() - start, 1)}
last = [l for l in open(stdout, errors="replace").read().splitlines() if l.startswith("{")]
if rc == 0 and last:
    row.update(json.loads(last[-1]))
else:
    row["error"] = ("timed out; " if rc in (124, 137) else "") + open(stderr, errors="replace").read()[-1500:]
print(json.dumps(row))
PY
    tail -3 "$work/stderr" >> "$log"
    tail -1 "$results" | cut -c1-400 >&2
    # What autotune decided so far (cooperative-matrix kernels show in the names).
    cat "$LORA_TUNE_CACHE"/autotune/*/decisions.jsonl > "$out/autotune-decisions.jsonl" 2>/dev/null
}

peft() { # peft MODEL [w2]
    python3 "$root/tools/reference/bench_peft.py" - "model=$work/models/$1" "device=$peft_device" \
        autocast=bf16 weights=bf16 attn=sdpa "${@:2}"
}
bench() { # bench BUILD MODEL SETTINGS...
    local build=$1 model=$2
    shift 2
    local bin=$work/bin/train-$build
    [ -x "$bin" ] || bin=$work/bin/train-default
    (cd "$root" && "$bin" "model=$work/models/$model" "$@")
}

export root work peft_device
big=${models[0]}
job "peft-w1-$big" 120 peft "$big"
job "ours-f16-w1-$big" 150 bench "$ours" "$big" "device=$ours" compute=f16
job "ours-f32-w1-$big" 120 bench "$ours" "$big" "device=$ours" compute=f32
job "peft-w2-$big" 120 peft "$big" w2
job "ours-f16-w2-$big" 120 bench "$ours" "$big" "device=$ours" compute=f16 w2
job "ours-f16-w1-dropout0-$big" 90 bench "$ours" "$big" "device=$ours" compute=f16 dropout=0
# Training attention as tiles of autotuned (tensor-core) matmuls instead of our kernels: which
# is faster on the card decides the default.
job "ours-f16-tiles-w1-$big" 90 bench "$ours" "$big" "device=$ours" compute=f16 attention=tiles
if [ "$device" = gpu ]; then
    job "ours-default-wgsl-f32-w1-$big" 120 bench default "$big" device=wgpu compute=f32
    job "peft-w1-smollm2-360m" 60 peft smollm2-360m
    job "ours-f16-w1-smollm2-360m" 90 bench "$ours" smollm2-360m "device=$ours" compute=f16
fi
cp "$LORA_TUNE_CACHE"/autotune/*/autotune.log "$out/autotune.log" 2>/dev/null

python3 - "$results" <<'PY' | tee "$out/summary.txt"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
peft = {}
for r in rows:
    if r["job"].startswith("peft-") and "tokens_per_s" in r:
        peft[(r["job"].split("-")[1], r["job"].split("-", 2)[2])] = r
print(f"{'job':44} {'tok/s':>9} {'x PEFT':>7} {'mem GB':>7} {'x PEFT':>7}")
for r in rows:
    tps = r.get("tokens_per_s")
    mem = r.get("device_memory_reserved_gb") or r.get("peak_gpu_memory_reserved_gb") or r.get("peak_rss_gb")
    ratio = mem_ratio = ""
    if tps and not r["job"].startswith("peft-"):
        parts = r["job"].split("-")
        w = next((p for p in parts if p in ("w1", "w2")), "w1")
        model = r["job"].split(f"-{w}-", 1)[1].replace("dropout0-", "")
        ref = peft.get((w, model))
        if ref:
            ratio = f"{tps / ref['tokens_per_s']:.2f}"
            ref_mem = ref.get("peak_gpu_memory_reserved_gb") or ref.get("peak_rss_gb")
            if mem and ref_mem:
                mem_ratio = f"{mem / ref_mem:.2f}"
    state = f"{tps:9.0f}" if tps else f"{(r.get('error') or r.get('skipped') or '')[:9]:>9}"
    print(f"{r['job']:44} {state} {ratio:>7} {(f'{mem:.2f}' if mem else ''):>7} {mem_ratio:>7}")
PY

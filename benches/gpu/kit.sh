#!/usr/bin/env bash
# Prepares, here, what the one-call GPU benchmark (benches/gpu/run.sh) carries to the lent
# machine: nothing there can be built or fetched.
#
#   benches/gpu/kit.sh build [vulkan]
#       Builds the training bench (benches/train.rs; default features: wgpu + flex; with
#       `vulkan` also `--features vulkan`, burn's SPIR-V compiler with cooperative matrices),
#       strips it and packs it with xz into benches/gpu/carry/ (ignored by git; run.sh unpacks
#       it with Python's lzma, so the machine needs no xz).
#   benches/gpu/kit.sh loaders
#       Downloads the Vulkan / EGL loader .debs (amd64, Debian) into .gl/ (ignored), as the
#       device tool's README says: that machine has the NVIDIA driver but no libvulkan.
#
# Then one device call: carry [".gl", "benches/gpu/carry"], command `bash benches/gpu/run.sh`,
# timeout_s 540 (run.sh's own deadline is 450 s).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
carry=$root/benches/gpu/carry

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

loaders() {
    cd "$root"
    grep -qx '/.gl/' .git/info/exclude 2>/dev/null || echo /.gl/ >> .git/info/exclude
    mkdir -p .gl /tmp/amd64/partial
    local o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
    apt-get "${o[@]}" update -q
    (cd .gl && apt-get "${o[@]}" download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
    ls -la .gl
}

case ${1:-} in
    build) shift; build "$@" ;;
    loaders) loaders ;;
    *) sed -n '2,17p' "$0"; exit 2 ;;
esac

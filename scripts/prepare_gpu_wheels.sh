#!/usr/bin/env bash
# Fill the ignored folder .whl/ with the wheels a GPU machine without network lacks (Python 3.12, manylinux
# x86_64), at the versions constraints.txt pins, within the 64 MiB that travels with the working tree.
# The image is expected to hold torch, transformers, accelerate, triton and pytest (its own versions are tested:
# they are our lower bounds); carried: peft, liger-kernel, bitsandbytes (CUDA 13 libraries only), deepspeed
# (built here as a pure-Python wheel, no precompiled ops) and what deepspeed needs beyond the image.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
LIMIT=$((64 * 1024 * 1024))
pin() { grep -i "^$1==" constraints.txt | head -1; }

rm -rf .whl && mkdir -p .whl
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do PLATFORMS+=(--platform "$p"); done
WHEELS=(peft liger-kernel bitsandbytes hjson pydantic pydantic_core annotated-types typing-inspection
        typing_extensions)
SPECS=()
for name in "${WHEELS[@]}"; do
    spec=$(pin "$name")
    [ -n "$spec" ] || { echo "prepare_gpu_wheels: $name has no pin in constraints.txt" >&2; exit 1; }
    SPECS+=("$spec")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d .whl "${SPECS[@]}"

# DeepSpeed publishes only a source archive: build it here (no ops compiled; they JIT-compile on the GPU
# machine if ever needed) for the CUDA accelerator.
tmp=$(mktemp -d)
"$PY" -m pip download -q --no-deps --no-binary=:all: -d "$tmp" "$(pin deepspeed)"
DS_ACCELERATOR=cuda DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl "$tmp"/deepspeed-*
rm -rf "$tmp"

# bitsandbytes ships libraries for every CUDA and ROCm version (43 MB); keep the CPU and CUDA 13 ones.
"$PY" - <<'PY'
import glob, os, re, zipfile
(src,) = glob.glob(".whl/bitsandbytes-*.whl")
keep = re.compile(r"libbitsandbytes_(cpu|cuda13\d)\.so$")
out = src + ".slim"
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        name = item.filename
        if name.endswith(".so") and "libbitsandbytes_" in name and not keep.search(name):
            continue
        data = zin.read(name)
        if name.endswith(".dist-info/RECORD"):
            lines = data.decode().splitlines()
            data = "\n".join(l for l in lines if not ("libbitsandbytes_" in l and ".so," in l
                                                      and not keep.search(l.split(",")[0]))).encode() + b"\n"
        zout.writestr(item, data)
os.replace(out, src)
PY

tree=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
wheels=$(du -cb .whl/*.whl | tail -1 | cut -f1)
ls -l .whl
echo "prepare_gpu_wheels: wheels $((wheels / 1024)) KiB + working tree $((tree / 1024)) KiB of $((LIMIT / 1024)) KiB"
if [ $((wheels + tree)) -gt "$LIMIT" ]; then
    echo "prepare_gpu_wheels: over the 64 MiB that travels; drop a wheel" >&2
    exit 1
fi

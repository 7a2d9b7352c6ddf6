#!/usr/bin/env bash
# Prepare what the GPU check (scripts/gpu_check.py) needs on the lent GPU machine, in .gpu/
# (git-ignored; name it in the device tool's `carry`):
#   .gpu/site.tar.xz    the Python packages that machine lacks, unpacked from pinned cp312
#                       wheels (its python3 is 3.12 with torch 2.11 + CUDA 13; see
#                       /work/.library/device/KINDS.md). The spconv wheel alone is 70 MB zipped
#                       (284 MB of multi-arch CUDA code) and the travelling tree is capped at
#                       64 MiB, so the wheels are unpacked here and re-packed with xz (~43 MB).
#   .gpu/shared/data/3dgs/guitar.ply   the real 3DGS scene of the gsplat parity test (optional:
#                       copied when ../shared has it; the device gets CHORUS_SHARED_DIR=.gpu/shared)
#   .gpu/MANIFEST.txt   the wheels and their sha256;  .gpu/PKGS  the pinned list the pack was made from
#   .gpu/COMMIT         `git rev-parse --short HEAD` now (the GPU machine gets no .git; the
#                       results name this commit)
# Run here (needs PyPI): bash scripts/gpu_pack.sh   (or `make gpu-pack`); a few minutes (xz) the
# first time; again it only refreshes COMMIT and guitar.ply unless PKGS changed (FORCE=1 redoes it).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
# Versions: those of requirements.txt where the package is there; spconv/cumm as their CUDA 12.6
# builds (the CPU `spconv` wheel cannot run CUDA; a CUDA 12.6 runtime runs on the device's
# CUDA 13 driver and is bundled in the wheel). The device already has torch, numpy, ninja,
# jaxtyping, rich, pybind11, portalocker, requests, sympy, timm, huggingface-hub, regex, tqdm,
# safetensors, pyyaml, opencv and pytest (KINDS.md's package list).
PKGS=(gsplat==1.5.3 spconv-cu126==2.3.8 cumm-cu126==0.7.11 pccm==0.4.16 ccimport==0.4.4 lark==1.3.1
      fire==0.7.1 termcolor==3.3.0 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.5)
WHEELS=.cache/gpu_wheels
STAGE=.cache/gpu_site
OUT=.gpu

mkdir -p "$OUT"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -z "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] || commit="$commit (with uncommitted changes)"
echo "$commit" > "$OUT/COMMIT"

GUITAR=${CHORUS_SHARED_DIR:-../shared}/data/3dgs/guitar.ply
if [ -f "$GUITAR" ]; then
    mkdir -p "$OUT/shared/data/3dgs"
    cp "$GUITAR" "$OUT/shared/data/3dgs/guitar.ply"
fi

if [ -z "${FORCE:-}" ] && [ -f "$OUT/site.tar.xz" ] && [ "$(cat "$OUT/PKGS" 2>/dev/null)" = "${PKGS[*]}" ]; then
    echo "gpu_pack: $OUT/site.tar.xz is up to date (FORCE=1 to rebuild); COMMIT: $commit"
    exit 0
fi
rm -rf "$WHEELS" "$STAGE" "$OUT/PKGS"
mkdir -p "$WHEELS" "$STAGE"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHEELS" "${PKGS[@]}"
n=$(ls "$WHEELS"/*.whl | wc -l)
[ "$n" -eq "${#PKGS[@]}" ] || { echo "gpu_pack: expected ${#PKGS[@]} wheels, got $n" >&2; exit 1; }
"$PY" - "$WHEELS" "$STAGE" <<'EOF'
import pathlib, sys, zipfile
src, dst = map(pathlib.Path, sys.argv[1:])
for w in sorted(src.glob("*.whl")):
    with zipfile.ZipFile(w) as z:
        for info in z.infolist():
            z.extract(info, dst)
            mode = info.external_attr >> 16  # keep executable bits (shared libraries)
            if mode:
                (dst / info.filename).chmod(mode & 0o777 | 0o444)
EOF
# glm's documentation and tests (21 MB) are not needed to build gsplat
rm -rf "$STAGE"/gsplat/cuda/csrc/third_party/glm/doc "$STAGE"/gsplat/cuda/csrc/third_party/glm/test
(cd "$WHEELS" && sha256sum *.whl) > "$OUT/MANIFEST.txt"
tar -C "$STAGE" -cf - . | xz -T2 -9 > "$OUT/site.tar.xz.part"
mv "$OUT/site.tar.xz.part" "$OUT/site.tar.xz"
echo "${PKGS[*]}" > "$OUT/PKGS"
rm -rf "$STAGE"
du -sh "$OUT"/* | sed 's/^/gpu_pack: /'
echo "gpu_pack: carry .gpu in the device tool's run (see docs/benchmarks.md, 'GPU')"

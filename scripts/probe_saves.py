#!/usr/bin/env python3
"""Probe the save format (issue 12): damage a real pipeline save in many ways and count what
``PerceptionPipeline.load`` does with each: *refused* (a ChorusError naming the problem, the
pipeline unchanged), *loaded* (the damage left a consistent, valid state: possible when a
re-manifested byte flip lands in tensor data), or *crashed* (any other exception: the bug class
of issue 12). Also times save and load (hashing included) of a larger map.

    .venv/bin/python scripts/probe_saves.py --cases 300 --big 400000

Two damage families, each over the three data files and the manifest:
  raw        bytes flipped / truncated / appended after the save (a crash, a disk error): the
             manifest must catch all of them;
  consistent the same damage, then the manifest rewritten to match (a hostile or buggy writer):
             the parsers behind the manifest must refuse or load, never crash.
Prints a Markdown table (used in docs/reliability.md).
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from chorus_ros.core.errors import ChorusError  # noqa: E402
from chorus_ros.core.gaussians import GaussianArrays  # noqa: E402
from chorus_ros.core.labels import LabelSet  # noqa: E402
from chorus_ros.core.persist import MANIFEST, write_manifest  # noqa: E402
from chorus_ros.core.pipeline import PerceptionPipeline, PipelineConfig  # noqa: E402
from chorus_ros.core.text import TextEncoderSpec, build_text_encoder  # noqa: E402

FILES = ["map.safetensors", "codebook.safetensors", "pipeline.json", MANIFEST]


def _stand_in_features():
    """The test suite's deterministic stand-in encoder (features from Gaussian ids), so the probe and
    test/core/test_persist.py exercise saves with the same pipeline."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("_chorus_test_persist", REPO / "test" / "core" / "test_persist.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod._Features


def pipeline(text):
    cfg = PipelineConfig(incremental=None)
    cfg.instances.voxel_size = 0.2
    labels = LabelSet(["floor", "chair", "table"], [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    return PerceptionPipeline(cfg, None, text, labels, incremental_factory=lambda m: _stand_in_features()(m, text.dim))


def scene(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=g) * 2
    means[:, 0] += (torch.arange(n) // 100 % 3).float() * 3
    return GaussianArrays(means, torch.rand(n, 1, 3, generator=g), torch.full((n,), 2.0),
                          torch.full((n, 3), -3.0), torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1), torch.arange(n))


def damage(path: Path, rng: random.Random) -> str:
    data = bytearray(path.read_bytes())
    kind = rng.choice(["flip", "flip", "truncate", "append", "zero_head"])
    if kind == "flip" and data:
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        data = data[:rng.randrange(max(1, len(data)))]
    elif kind == "append":
        data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    else:
        data[:16] = bytes(16)
    path.write_bytes(bytes(data))
    return kind


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=300, help="damaged saves per family")
    ap.add_argument("--big", type=int, default=400_000, help="Gaussians of the map timed (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    text = build_text_encoder(TextEncoderSpec(tiny=True, seed=0))
    src = pipeline(text)
    src.apply_update(scene(300), None, full=True)
    src.encode()
    rng = random.Random(a.seed)
    work = Path(tempfile.mkdtemp(prefix="probe_saves_"))
    rows = []
    try:
        src.save(work / "good", meta={"map_id": "m", "map_sequence": 0})
        for family in ("raw", "consistent"):
            outcomes: Counter = Counter()
            crashes = []
            for i in range(a.cases):
                case = work / f"{family}{i}"
                shutil.copytree(work / "good", case)
                name = rng.choice(FILES if family == "raw" else FILES[:3])
                kind = damage(case / name, rng)
                if family == "consistent":
                    write_manifest(case, "chorus_ros.PerceptionPipeline")
                target = pipeline(text)
                target.apply_update(scene(50, seed=2), None, full=True)
                before = (len(target.map), target.map.version)
                try:
                    target.load(case)
                    outcomes["loaded"] += 1
                except ChorusError:
                    outcomes["refused"] += 1
                    assert (len(target.map), target.map.version) == before, "refused but changed"
                except Exception as e:  # noqa: BLE001 - what we are counting
                    outcomes["crashed"] += 1
                    crashes.append(f"{name}/{kind}: {type(e).__name__}: {e}"[:200])
                shutil.rmtree(case)
            rows.append((family, a.cases, outcomes["refused"], outcomes["loaded"], outcomes["crashed"]))
            for c in crashes[:10]:
                print("CRASH", family, c, file=sys.stderr)
        print("| damage | cases | refused (ChorusError, map unchanged) | loaded (consistent) | crashed |")
        print("|---|---|---|---|---|")
        for r in rows:
            print("| " + " | ".join(str(v) for v in r) + " |")
        if a.big:
            big = pipeline(text)
            big.apply_update(scene(a.big), None, full=True)
            big.encode()
            t0 = time.perf_counter()
            big.save(work / "big")
            t1 = time.perf_counter()
            size = sum(p.stat().st_size for p in (work / "big").iterdir())
            other = pipeline(text)
            t2 = time.perf_counter()
            other.load(work / "big")
            t3 = time.perf_counter()
            print(f"\n{a.big} Gaussians ({size / 2**20:.0f} MiB on disk, estimate "
                  f"{big.saved_nbytes() / 2**20:.0f} MiB): save {t1 - t0:.2f} s, load {t3 - t2:.2f} s "
                  f"(hashes, checks and re-scoring included), {os.cpu_count()} CPUs")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if any(r[4] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())

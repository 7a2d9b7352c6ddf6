"""Long fuzz run: the property-based cases of test/fuzz_cases.py (PointCloud2 decoding, PLY
reading, pipeline saves) with many more generated inputs than ``make test`` runs.

Each target's property (see test/fuzz_cases.py) must hold for every case; the section reports
the cases run per target, how many were accepted and which package exception refused the rest,
and any property failure (with the failing case, as hypothesis prints it).

Run: ``python benchmarks/bench_fuzz.py [--quick] [--cases N]`` (N per PointCloud2 and PLY target,
default 5000, the save target runs N / 2; quick: 300).
"""
from __future__ import annotations

import collections
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _load(name: str, path: Path):
    """Import a helper module of the test suite by path (``test`` is also a stdlib package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _run(name: str, strategy, check, n: int, seed: int) -> tuple[collections.Counter, float, str]:
    from hypothesis import HealthCheck, Phase, given, seed as hseed, settings
    counts: collections.Counter = collections.Counter()

    @hseed(seed)
    @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate, Phase.shrink],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def target(case):
        counts[check(case)] += 1
    t0 = time.perf_counter()
    err = ""
    try:
        target()
    except Exception:  # a property failure: report it in the section
        err = traceback.format_exc(limit=3)[-1500:]
    return counts, time.perf_counter() - t0, err


def main(quick: bool = False, cases: int | None = None) -> str:
    import torch

    from chorus_ros.core.labels import LabelSet
    from chorus_ros.core.pipeline import PerceptionPipeline, PipelineConfig
    from chorus_ros.core.text import TextEncoderSpec, build_text_encoder
    fc = _load("chorus_fuzz_cases", REPO / "test" / "fuzz_cases.py")
    persist_tests = _load("chorus_test_persist", REPO / "test" / "core" / "test_persist.py")
    _Features, _scene = persist_tests._Features, persist_tests._scene

    n = cases or (300 if quick else 5000)
    text = build_text_encoder(TextEncoderSpec(tiny=True, seed=0))

    def make():
        cfg = PipelineConfig(incremental=None)
        cfg.instances.voxel_size = 0.2
        labels = LabelSet(["wall", "chair", "table"], torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9]]).numpy())
        return PerceptionPipeline(cfg, None, text, labels, incremental_factory=lambda m: _Features(m, text.dim))

    fx = fc.SaveFixture(make, _scene(60))
    try:
        runs = [("PointCloud2 decoding", fc.pointcloud_cases(), fc.check_pointcloud, n),
                ("PLY reading", fc.ply_cases(), fc.check_ply, n),
                ("pipeline save (read_saved + install)", fc.save_cases(), lambda c: fc.check_save(c, fx), n // 2)]
        lines = ["## Fuzzing (`benchmarks/bench_fuzz.py`)", "",
                 "Property-based cases (hypothesis, test/fuzz_cases.py): every decoder returns valid data or "
                 "raises a package exception with a message, never anything else; valid inputs round-trip. "
                 "Fixed seed per target.", "",
                 "| target | cases | accepted | refused (by exception) | property failures | seconds |",
                 "|---|---|---|---|---|---|"]
        total, failures = 0, []
        for i, (name, strat, check, k) in enumerate(runs):
            counts, secs, err = _run(name, strat, check, k, 1000 + i)
            ran = sum(counts.values())
            total += ran
            refused = ", ".join(f"{c} {e}" for e, c in counts.most_common() if e != "accepted") or "-"
            lines.append(f"| {name} | {ran} | {counts.get('accepted', 0)} | {refused} | {1 if err else 0} | "
                         f"{secs:.0f} |")
            print(lines[-1], file=sys.stderr, flush=True)      # progress of a long run
            if err:
                failures.append(f"{name}:\n```\n{err}\n```")
        lines += ["", f"**{total} generated cases in all, {len(failures)} property failures.**"]
        lines += failures
        return "\n".join(lines) + "\n"
    finally:
        fx.close()


if __name__ == "__main__":
    args = sys.argv[1:]
    k = int(args[args.index("--cases") + 1]) if "--cases" in args else None
    print(main(quick="--quick" in args, cases=k))

"""``chorus-eval``: held-out evaluation tables for docs/ (see chorus_ros.core.metrics.evaluation).

    chorus-eval --checkpoint checkpoints/demo --seeds 1000 1001 1002 --out docs/evaluation.md
    chorus-eval --ablation full=checkpoints/demo no_object=checkpoints/ablation/no_object \\
                no_calibration=checkpoints/ablation/no_calibration --out docs/ablation.md
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from chorus_ros.core.metrics.evaluation import (EvalConfig, ablation_markdown, evaluate_checkpoint,
                                                    evaluation_markdown)
    from chorus_ros.core.pipeline import PerceptionPipeline, PipelineConfig

    d = EvalConfig()
    ap = argparse.ArgumentParser(prog="chorus-eval", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="checkpoint folder (model.safetensors + config.yaml)")
    ap.add_argument("--ablation", nargs="+", metavar="NAME=DIR", help="evaluate several checkpoints into one table")
    ap.add_argument("--seeds", type=int, nargs="+", default=d.seeds, help="held-out scene seeds")
    ap.add_argument("--views", type=int, default=d.loop_views + d.random_views,
                    help="views per scene (2/3 loop, 1/3 random)")
    ap.add_argument("--gaussians", type=int, default=d.target_gaussians, help="Gaussians per scene")
    ap.add_argument("--size", type=int, nargs=2, default=[d.width, d.height], metavar=("W", "H"))
    ap.add_argument("--chunks", type=int, default=d.chunks, help="add each scene in N slabs (incremental)")
    ap.add_argument("--device", default=d.device)
    ap.add_argument("--out", default="docs/evaluation.md", help="markdown file to write ('-' prints only)")
    a = ap.parse_args(argv)
    if bool(a.checkpoint) == bool(a.ablation):
        ap.error("give exactly one of --checkpoint or --ablation")
    loop = max(1, round(a.views * 2 / 3))
    cfg = EvalConfig(seeds=a.seeds, target_gaussians=a.gaussians, loop_views=loop, random_views=max(0, a.views - loop),
                     width=a.size[0], height=a.size[1], chunks=a.chunks, device=a.device)
    runs = [("demo", a.checkpoint)] if a.checkpoint else [tuple(s.split("=", 1)) if "=" in s else (Path(s).name, s)
                                                         for s in a.ablation]
    cache: dict = {}
    results = []
    for name, ckpt in runs:
        def make(ckpt=ckpt):
            return PerceptionPipeline.from_checkpoint(ckpt, PipelineConfig(device=cfg.device))
        results.append(evaluate_checkpoint(name, make, cfg, cache, progress=lambda s: print(s, file=sys.stderr)))
    cmd = "chorus-eval " + " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    md = evaluation_markdown(results[0], cfg, cmd) if a.checkpoint else ablation_markdown(results, cfg, cmd)
    print(md)
    if a.out != "-":
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(md, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Instance decoding before/after on held-out and shifted scenes (docs/instances.md).

Runs several (checkpoint, decoding rules) pairs over the same scenes (built once) and prints one
JSON object per run: PQ/SQ/RQ, id consistency, predicted objects / true instances, query top-1.

    python scripts/instances_eval.py --runs old=checkpoints/demo:old new=checkpoints/demo:new \
        --seeds 1000 1001 1002 --json /tmp/heldout.json
    python scripts/instances_eval.py --suite shift --shifts sparse dense mesh --runs ... --json /tmp/shift.json
    python scripts/instances_eval.py --suite dataset --dataset /work/data/scannet/scene0451_01 \
        --labels-map scripts/scannet/scannet20_to_demo.yaml --runs ... --json /tmp/s451.json

Rules: 'old' = the grouping of commit 29d64d3 (no cross-class fragment merging, raw cosine query
scores); 'new' = the current defaults (PipelineConfig()). A run may add dotted overrides after
the rules, e.g. ``new,instances.min_support_area=0.01``.
"""
import argparse
import json
import sys
from pathlib import Path

import torch


def pipeline_config(rules: str, device: str):
    from chorus_ros.core.pipeline import PipelineConfig
    parts = rules.split(",")
    d: dict = {"device": device}
    if parts[0] == "old":
        d["instances"] = {"merge_across_classes": False, "min_support_area": 0.0, "stuff_feature_threshold": -1.0}
        d["support"] = {"half": 0.0}
    elif parts[0] != "new":
        raise SystemExit(f"rules must start with 'old' or 'new', got {rules!r}")
    for kv in parts[1:]:
        k, v = kv.split("=", 1)
        sec, key = k.split(".", 1)
        d.setdefault(sec, {})[key] = json.loads(v)
    return PipelineConfig.from_dict(d)


def main(argv=None) -> int:
    from chorus_ros.core.metrics.scenes import results_json
    from chorus_ros.core.pipeline import PerceptionPipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", required=True, metavar="NAME=CKPT:RULES")
    ap.add_argument("--suite", choices=["heldout", "shift", "dataset"], default="heldout")
    ap.add_argument("--dataset", nargs="+", default=None, help="--suite dataset: scene folders")
    ap.add_argument("--labels-map", default=None, help="--suite dataset: YAML 'gt name: model name'")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1000, 1001, 1002])
    ap.add_argument("--shifts", nargs="+", default=None)
    ap.add_argument("--suite-seeds", type=int, nargs="+", default=None)
    ap.add_argument("--json", required=True)
    ap.add_argument("--plots", default=None, help="folder for each run's contact sheet")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--chunks", type=int, default=1, help="held-out: add each scene in N slabs (id consistency "
                    "then also spans map growth)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = {}
    cache: dict = {}
    for run in a.runs:
        name, rest = run.split("=", 1)
        ckpt, rules = rest.rsplit(":", 1)
        pc = pipeline_config(rules, a.device)

        def make(ckpt=ckpt, pc=pc):
            return PerceptionPipeline.from_checkpoint(ckpt, pc)
        if a.suite == "heldout":
            from chorus_ros.core.metrics.evaluation import EvalConfig, evaluate_checkpoint
            cfg = EvalConfig(seeds=a.seeds, device=a.device, chunks=a.chunks)
            res = {"heldout": evaluate_checkpoint(name, make, cfg, cache).dataset}
        elif a.suite == "dataset":
            from chorus_ros.core.datasets import load_labels_map, open_scene
            from chorus_ros.core.metrics.scenes import SceneEvalConfig, evaluate_scenes
            lm = load_labels_map(a.labels_map) if a.labels_map else None
            scenes = cache.setdefault("dataset", [open_scene(p, labels_map=lm) for p in a.dataset])
            res = {"dataset": evaluate_scenes(make, scenes, SceneEvalConfig(), progress=False)}
        else:
            from chorus_ros.core.metrics.shift_suite import ShiftSuiteConfig, evaluate_shift_suite
            cfg = ShiftSuiteConfig(query=True)
            if a.shifts:
                cfg.shifts = list(a.shifts)
            if a.suite_seeds:
                cfg.seeds = list(a.suite_seeds)
            res = evaluate_shift_suite(make, cfg, cache=cache, progress=True)
        out[name] = {}
        for sname, r in res.items():
            j = results_json(r)
            out[name][sname] = {k: j.get(k) for k in ("mIoU", "PQ", "SQ", "RQ", "id_consistency", "id_consistency_px",
                                                      "query_top1", "n_pred_objects", "n_gt_instances", "PQ_3d", "mIoU_3d")}
            print(name, sname, json.dumps(out[name][sname]), file=sys.stderr, flush=True)
            if a.plots:
                from chorus_ros.core.metrics.plots import write_plots
                write_plots(r, Path(a.plots) / name / sname, max_views=3)
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

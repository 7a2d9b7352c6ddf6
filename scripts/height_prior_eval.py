#!/usr/bin/env python3
"""Per-Gaussian (3D) mIoU of a checkpoint with its height prior at several weights.

    python scripts/height_prior_eval.py --checkpoint checkpoints/demo --prior /tmp/prior.json \\
        --dataset /work/data/scannet/train/* --labels-map scripts/scannet/nyu40_to_demo.yaml \\
        --weights 0 0.1 0.25 0.5 1 --json out.json
    python scripts/height_prior_eval.py --checkpoint checkpoints/demo --seeds 1000 1001 1002 --shifts none photometric

Each map is encoded once (faint Gaussians below opacity 0.1 set aside, as the pipeline does); the
language head's features are then decoded by the pipeline's SemanticDecoder with the heights above
the map's estimated floor, once per weight. One confusion matrix is pooled per set. This is how the
default ``semantic.height_prior_weight`` was chosen: on real ScanNet training scans that no
reported number uses (docs/generalisation.md, "Height above the floor").
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _maps(a, names):
    """Yield (set name, map name, GaussianArrays, per-Gaussian class ids in ``names`` (-1 none))."""
    from chorus_ros.tools.height_prior import folder_maps, labels_by_name, synthetic_maps
    for name, g, lab in folder_maps(a.dataset, a.labels_map, names):
        yield "dataset", name, g, lab
    for name, g, lab in synthetic_maps(a.seeds, names):
        yield "heldout", name, g, lab
    for shift in a.shifts:
        from chorus_ros.core.synthetic.shifts import generate_shifted_scene
        for s in a.suite_seeds:
            sh = generate_shifted_scene(shift, s)
            yield shift, f"{shift}:{s}", sh.gaussians, labels_by_name(sh.gaussians.extras["label"].numpy(),
                                                                     sh.labels.names, names)


def main(argv=None) -> int:
    from chorus_ros.core.decode.height import HEIGHT_PRIOR_FILE, HeightPrior, estimate_floor
    from chorus_ros.core.decode.semantic import SemanticConfig, SemanticDecoder
    from chorus_ros.core.encoder.checkpoint import load_checkpoint
    from chorus_ros.core.metrics.semantic import ConfusionMatrix
    from chorus_ros.core.pipeline import DEFAULT_MIN_OPACITY, labels_from_meta, text_spec_from_meta
    from chorus_ros.core.text import build_text_encoder

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--prior", help=f"height prior JSON (default: <checkpoint>/{HEIGHT_PRIOR_FILE})")
    ap.add_argument("--dataset", nargs="*", default=[])
    ap.add_argument("--labels-map")
    ap.add_argument("--seeds", nargs="*", type=int, default=[])
    ap.add_argument("--shifts", nargs="*", default=[])
    ap.add_argument("--suite-seeds", nargs="*", type=int, default=[5000, 5001])
    ap.add_argument("--weights", nargs="+", type=float, default=[0.0, 0.1, 0.25, 0.5, 1.0])
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    ck = load_checkpoint(a.checkpoint)
    model = ck.model.eval()
    names = labels_from_meta(ck.meta).names
    prior = HeightPrior.load(a.prior or Path(a.checkpoint) / HEIGHT_PRIOR_FILE)
    text = build_text_encoder(text_spec_from_meta(ck.meta, a.checkpoint))
    decoders = {w: SemanticDecoder(text, list(names), SemanticConfig(height_prior_weight=w)) for w in a.weights}
    for d in decoders.values():
        d.set_height_prior(prior)
    cms: dict[str, dict[float, ConfusionMatrix]] = {}
    per_map = []
    t0 = time.time()
    for set_name, map_name, g, lab in _maps(a, list(names)):
        keep = ~g.faint_mask(DEFAULT_MIN_OPACITY)
        g, lab = g.index(keep.nonzero().squeeze(1)), lab[keep.numpy()]
        with torch.no_grad():
            lang = model(g).heads["language"]
        fl = estimate_floor(g.means[:, 2], g.opacity)
        h = (g.means[:, 2].double() - fl.z).float()
        ok = torch.from_numpy(lab >= 0)
        gt = torch.from_numpy(lab)[ok]
        row = {"set": set_name, "map": map_name, "floor_z": round(fl.z, 3)}
        for w, dec in decoders.items():
            pred = dec.decode(lang, heights=h).label[ok]
            cm = cms.setdefault(set_name, {}).setdefault(w, ConfusionMatrix(len(names)))
            cm.update(pred, gt)
            one = ConfusionMatrix(len(names))
            one.update(pred, gt)
            row[str(w)] = round(100 * one.compute(list(names)).miou, 2)
        per_map.append(row)
        print(json.dumps(row), f"({time.time() - t0:.0f} s)", flush=True)
    pooled = {s: {str(w): round(100 * cm.compute(list(names)).miou, 2) for w, cm in d.items()} for s, d in cms.items()}
    print("pooled 3D mIoU:", json.dumps(pooled), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"pooled": pooled, "maps": per_map, "prior": str(a.prior)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``chorus-height-prior``: count a checkpoint's height prior from labelled training maps.

    chorus-height-prior --checkpoint checkpoints/demo --seeds 0-47
    chorus-height-prior --checkpoint CKPT --dataset DIR [DIR ...] --labels-map map.yaml [--out FILE]

Per class of the checkpoint's label set, the log-likelihood ratio of the height above the floor
(chorus_ros.core.decode.height) over the generator's rooms ``--seeds`` (use the rooms the checkpoint
was trained on, never the held-out seeds 1000+ or the shift suite's 5000+) and/or scene folders with
per-Gaussian labels. Written to ``<checkpoint>/height_prior.json`` (or ``--out``); the perception
pipeline uses it with ``semantic.height_prior_weight`` > 0. Measured in docs/generalisation.md,
"Height above the floor".
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _seeds(spec: list[str]) -> list[int]:
    out: list[int] = []
    for s in spec:
        if "-" in s.strip("-"):
            a, b = s.split("-", 1)
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(s))
    return out


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    from chorus_ros.core.decode.height import HEIGHT_PRIOR_FILE, fit_height_prior
    from chorus_ros.core.encoder.checkpoint import load_checkpoint
    from chorus_ros.core.errors import ChorusError
    from chorus_ros.core.labels import UNLABELED
    from chorus_ros.core.pipeline import labels_from_meta

    ap = argparse.ArgumentParser(prog="chorus-height-prior", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="checkpoint folder whose label set the prior covers")
    ap.add_argument("--seeds", nargs="*", default=[], help="generator room seeds ('0-47' ranges allowed)")
    ap.add_argument("--dataset", nargs="*", default=[], metavar="DIR",
                    help="scene folders whose map carries per-Gaussian labels")
    ap.add_argument("--labels-map", help="YAML 'dataset name: model name' for --dataset (null drops a class)")
    ap.add_argument("--out", help=f"output file (default: <checkpoint>/{HEIGHT_PRIOR_FILE})")
    a = ap.parse_args(argv)
    try:
        seeds = _seeds(a.seeds)
        if not seeds and not a.dataset:
            raise ChorusError("nothing to count: give --seeds and/or --dataset")
        ck = load_checkpoint(a.checkpoint)
        names = labels_from_meta(ck.meta).names

        def samples():
            if seeds:
                from chorus_ros.core.synthetic.room import SceneConfig, generate_scene
                for s in seeds:
                    sc = generate_scene(SceneConfig(seed=s))
                    g = sc.gaussians
                    lut = np.array([names.index(n) if n in names else -1 for n in sc.labels.names] + [-1])
                    lab = g.extras["label"].numpy().astype(np.int64)
                    yield g.means[:, 2].numpy(), lut[np.clip(lab, 0, len(lut) - 1)], g.opacity.numpy()
            if a.dataset:
                from chorus_ros.core.datasets import load_labels_map, open_scene
                from chorus_ros.core.labels import LabelSet
                lm = load_labels_map(a.labels_map) if a.labels_map else None
                for d in a.dataset:
                    sc = open_scene(d, labels_map=lm)
                    if sc.gt_gaussian_labels is None:
                        raise ChorusError(f"{d}: its map has no per-Gaussian labels")
                    lut = sc.class_map_to(LabelSet(list(names), np.zeros((len(names), 3), np.uint8)))
                    lab = lut[np.clip(np.asarray(sc.gt_gaussian_labels), 0, UNLABELED).astype(np.int64)].astype(np.int64)
                    lab[lab >= len(names)] = -1
                    g = sc.gaussians
                    yield g.means[:, 2].numpy(), lab, g.opacity.numpy()

        prior = fit_height_prior(samples(), names, provenance={
            "checkpoint": str(a.checkpoint), "synthetic_seeds": seeds, "datasets": [str(d) for d in a.dataset]})
        out = prior.save(Path(a.out) if a.out else Path(a.checkpoint) / HEIGHT_PRIOR_FILE)
    except ChorusError as e:
        print(f"chorus-height-prior: error: {e}", file=sys.stderr)
        return 2
    print(f"chorus-height-prior: {prior.provenance['maps']} maps, {len(names)} classes, {prior.bins} bins -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

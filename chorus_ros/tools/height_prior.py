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
import itertools
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


def labels_by_name(class_ids, source_names, names):
    """``[N]`` int64 class ids into ``names`` of per-Gaussian ``class_ids`` into ``source_names``
    (matched by name; -1 for names ``names`` lacks and for out-of-range ids)."""
    import numpy as np
    lut = np.array([names.index(n) if n in names else -1 for n in source_names] + [-1])
    return lut[np.clip(np.asarray(class_ids).astype(np.int64), 0, len(lut) - 1)]


def synthetic_maps(seeds, names):
    """Yield ``(name, GaussianArrays, class ids into names)`` of the generator's rooms ``seeds``."""
    from chorus_ros.core.synthetic.room import SceneConfig, generate_scene
    for s in seeds:
        sc = generate_scene(SceneConfig(seed=s))
        yield f"seed {s}", sc.gaussians, labels_by_name(sc.gaussians.extras["label"].numpy(), sc.labels.names, names)


def folder_maps(dirs, labels_map, names):
    """Yield ``(name, GaussianArrays, class ids into names)`` of scene folders whose map carries
    per-Gaussian labels (``labels_map``: YAML path or None)."""
    import numpy as np

    from chorus_ros.core.datasets import load_labels_map, open_scene
    from chorus_ros.core.errors import ChorusError
    from chorus_ros.core.labels import UNLABELED, LabelSet
    lm = load_labels_map(labels_map) if labels_map else None
    ls = LabelSet(list(names), np.zeros((len(names), 3), np.uint8))
    for d in dirs:
        sc = open_scene(d, labels_map=lm)
        if sc.gt_gaussian_labels is None:
            raise ChorusError(f"{d}: its map has no per-Gaussian labels")
        lab = sc.class_map_to(ls)[np.clip(np.asarray(sc.gt_gaussian_labels), 0, UNLABELED).astype(np.int64)]
        lab = lab.astype(np.int64)
        lab[lab >= len(names)] = -1
        yield Path(d).name, sc.gaussians, lab


def main(argv: list[str] | None = None) -> int:
    from chorus_ros.core.decode.height import HEIGHT_PRIOR_FILE, fit_height_prior
    from chorus_ros.core.encoder.checkpoint import load_checkpoint
    from chorus_ros.core.errors import ChorusError
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
        maps = itertools.chain(synthetic_maps(seeds, names), folder_maps(a.dataset, a.labels_map, names))
        samples = ((g.means[:, 2].numpy(), lab, g.opacity.numpy()) for _, g, lab in maps)
        prior = fit_height_prior(samples, names, provenance={
            "checkpoint": str(a.checkpoint), "synthetic_seeds": seeds, "datasets": [str(d) for d in a.dataset]})
        out = prior.save(Path(a.out) if a.out else Path(a.checkpoint) / HEIGHT_PRIOR_FILE)
    except ChorusError as e:
        print(f"chorus-height-prior: error: {e}", file=sys.stderr)
        return 2
    print(f"chorus-height-prior: {prior.provenance['maps']} maps, {len(names)} classes, {prior.bins} bins -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

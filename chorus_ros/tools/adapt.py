"""``chorus-adapt``: fit an encoder checkpoint to a new site from its posed images (render-and-distill).

    chorus-adapt --checkpoint checkpoints/demo --dataset /work/data/scannet/scene0470_00 \\
                 --labels-map scripts/scannet/nyu40_to_demo.yaml --views 0::2 --eval-views 1::2 \\
                 --train heads --steps 300 --budget-s 600 --out checkpoints/site0470

``--views`` / ``--eval-views`` are Python slices over the folder's frames (``0:30``, ``::4``);
evaluation views never provide targets and must not overlap the training views. The output is
a normal checkpoint folder (every tool and node loads it) whose ``config.yaml`` holds the
provenance under ``meta.adaptation``. Scene folder layouts: chorus_ros.core.datasets.folder;
the method and measurements: docs/adaptation.md.
"""
from __future__ import annotations

import argparse
import json
import sys


def _positions(n: int, text: str | None, what: str) -> list[int]:
    from chorus_ros.core.datasets import parse_views
    from chorus_ros.core.errors import InvalidInputError

    sl = parse_views(text)
    pos = list(range(n))[sl] if sl is not None else list(range(n))
    if not pos:
        raise InvalidInputError(f"{what} {text!r} selects none of the {n} frames")
    return pos


def main(argv: list[str] | None = None) -> int:
    from chorus_ros.core.adapt import AdaptConfig, LossWeights
    from chorus_ros.core.adapt.config import LR_SCHEDULES, TARGETS, TRAIN_MODES
    from chorus_ros.core.pipeline import DEFAULT_MIN_OPACITY

    d, dl = AdaptConfig(), LossWeights()
    ap = argparse.ArgumentParser(prog="chorus-adapt", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="base checkpoint folder")
    ap.add_argument("--dataset", required=True, metavar="DIR", help="scene folder (posed images + label PNGs + 3DGS PLY)")
    ap.add_argument("--out", required=True, metavar="NEW_CKPT", help="folder of the adapted checkpoint")
    ap.add_argument("--map", metavar="PLY", help="the 3DGS map (default: the folder's gaussians.ply / scene.ply)")
    ap.add_argument("--views", help="training frames, Python slice syntax (default: all)")
    ap.add_argument("--eval-views", help="held-out frames to score before/after and against the lifting baseline")
    ap.add_argument("--labels-map", metavar="FILE", help="YAML 'folder class name: model class name' (null drops)")
    ap.add_argument("--targets", choices=TARGETS, default=d.targets)
    ap.add_argument("--train", choices=TRAIN_MODES, default=d.train)
    ap.add_argument("--steps", type=int, default=d.steps)
    ap.add_argument("--epochs", type=float, default=d.epochs,
                    help="visits per training view; steps = ceil(epochs * ceil(views / views-per-step)) (0: --steps)")
    ap.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=d.lr_schedule)
    ap.add_argument("--val-views", type=int, default=0, metavar="K",
                    help="keep K of the training views (evenly spaced) for model selection: scored every "
                         "--val-every steps, the best step's weights are kept (also the fusion decoder's, which is dropped "
                         "if it cannot beat the adapted labels there)")
    ap.add_argument("--val-every", type=int, default=d.val_every)
    ap.add_argument("--budget-s", type=float, default=d.budget_s, help="wall-clock budget, seconds (0: none)")
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--lora-rank", type=int, default=d.lora_rank)
    ap.add_argument("--widen", type=int, default=d.widen, metavar="K",
                    help="heads/all: add K hidden units to the per-Gaussian decoder (function-preserving)")
    ap.add_argument("--widen-only", action="store_true", help="with --widen and heads: train only the new units")
    ap.add_argument("--lora-convs", action="store_true", help="adapters on the sparse convolutions too")
    ap.add_argument("--views-per-step", type=int, default=d.views_per_step)
    ap.add_argument("--pixels-per-view", type=int, default=d.pixels_per_view)
    ap.add_argument("--rgb", type=float, default=dl.rgb, help="weight of the RGB self-supervision")
    ap.add_argument("--depth-gate", type=float, default=dl.depth_gate, help="depth gate strength in [0, 1]")
    ap.add_argument("--boundary", type=float, default=dl.boundary, help="extra weight near label borders")
    ap.add_argument("--replay", type=float, default=dl.replay, help="weight of the replay term (0: off)")
    ap.add_argument("--absent", type=float, default=dl.absent,
                    help="weight of the term holding classes no training view shows off the map (0: off)")
    ap.add_argument("--replay-seeds", type=int, nargs="*", default=d.replay_seeds,
                    help="synthetic training-distribution scenes kept by the replay term (none: off)")
    ap.add_argument("--replay-batch", type=int, default=d.replay_batch, help="replay Gaussians per scene and step")
    ap.add_argument("--min-alpha", type=float, default=d.min_alpha)
    ap.add_argument("--min-opacity", type=float, default=DEFAULT_MIN_OPACITY,
                    help="Gaussians below this opacity are left out, as the perception pipeline sets them "
                         "aside (its min_opacity; 0 keeps all)")
    ap.add_argument("--fusion-steps", type=int, default=d.fusion_steps, metavar="N",
                    help="then train a per-site fusion decoder N steps on the training views' camera images, "
                         "correcting the adapted labels (used with per_view.fusion: camera; 0: none)")
    ap.add_argument("--fusion-lr", type=float, default=d.fusion_lr)
    ap.add_argument("--fusion-prior-input", action=argparse.BooleanOptionalAction, default=d.fusion_prior_input,
                    help="the fusion decoder also reads the adapted 3D class probabilities as input channels")
    ap.add_argument("--fusion-flip", action=argparse.BooleanOptionalAction, default=d.fusion_flip,
                    help="mirror the fusion decoder's training views left to right at random")
    ap.add_argument("--fusion-init", default=d.fusion_init, metavar="SPEC",
                    help="where the fusion decoder starts: '' from scratch, 'base' the base checkpoint's own "
                         "feed-forward decoder (its fusion/), or a decoder directory (class channels matched by name)")
    ap.add_argument("--splat", choices=("auto", "cached", "render"), default=d.splat)
    ap.add_argument("--device", default=d.device)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--json", metavar="FILE", help="write a summary (losses, times, scores) as JSON")
    a = ap.parse_args(argv)

    from chorus_ros.core.adapt import adapt_checkpoint, evaluate_views, lift_baseline
    from chorus_ros.core.adapt.loop import carve_validation
    from chorus_ros.core.datasets import load_labels_map, open_scene
    from chorus_ros.core.errors import ChorusError
    try:
        lm = load_labels_map(a.labels_map) if a.labels_map else None
        scene = open_scene(a.dataset, map_path=a.map, labels_map=lm).without_faint(a.min_opacity)
        train = _positions(len(scene), a.views, "--views")
        held = _positions(len(scene), a.eval_views, "--eval-views") if a.eval_views else []
        both = sorted(set(train) & set(held))
        if both:
            from chorus_ros.core.errors import InvalidInputError
            raise InvalidInputError(f"--eval-views overlap the training views at positions {both[:10]}: "
                                    "held-out views must never provide targets")
        train, val = carve_validation(train, a.val_views)
        cfg = AdaptConfig(targets=a.targets, train=a.train, steps=a.steps, budget_s=a.budget_s, lr=a.lr,
                          epochs=a.epochs, lr_schedule=a.lr_schedule, val_every=a.val_every, widen=a.widen,
                          widen_only=a.widen_only,
                          lora_rank=a.lora_rank, lora_convs=a.lora_convs, views_per_step=a.views_per_step,
                          pixels_per_view=a.pixels_per_view, min_alpha=a.min_alpha, splat=a.splat,
                          device=a.device, seed=a.seed, progress=not a.no_progress, replay_seeds=list(a.replay_seeds),
                          replay_batch=a.replay_batch, fusion_steps=a.fusion_steps, fusion_lr=a.fusion_lr,
                          fusion_prior_input=a.fusion_prior_input, fusion_flip=a.fusion_flip, fusion_init=a.fusion_init,
                          loss=LossWeights(rgb=a.rgb, depth_gate=a.depth_gate, boundary=a.boundary,
                                           replay=a.replay, absent=a.absent))
        summary: dict = {}
        if held:
            summary.update(_before(a.checkpoint, scene, train, held, cfg))
        res = adapt_checkpoint(a.checkpoint, scene, train, cfg, out_dir=a.out, val_positions=val)
        if held:
            lut = scene.class_map_to(res.label_set)
            after = evaluate_views(scene.gaussians, scene, held, res.scores, lut, res.label_set, cfg.min_alpha)
            one_hot, unseen = lift_baseline(scene.gaussians, scene, train, lut, len(res.label_set))
            lifted = evaluate_views(scene.gaussians, scene, held, one_hot, lut, res.label_set, cfg.min_alpha)
            summary.update({"miou_after": 100 * after.miou, "miou_lift_baseline": 100 * lifted.miou,
                            "never_labelled_fraction": unseen})
            if res.fusion is not None and res.fusion.used:
                from chorus_ros.core.adapt.fusion import score_adapted_fusion
                summary["miou_after_fused"] = 100 * score_adapted_fusion(
                    res, scene, held, lut, cfg.score_temperature, cfg.min_alpha, cfg.render_backend).miou
    except ChorusError as e:
        print(f"chorus-adapt: error: {e}", file=sys.stderr)
        return 2
    first, last = res.history[0] if res.history else {}, res.history[-1] if res.history else {}
    summary.update({"checkpoint": a.out, "steps": res.steps, "stopped_by_budget": res.stopped_by_budget,
                    "seconds_prepare": round(res.seconds_prepare, 2), "seconds_train": round(res.seconds_train, 2),
                    "loss_first": first.get("loss"), "loss_last": last.get("loss"),
                    "peak_rss_mib": round(res.peak_rss_mib, 1), "train_views": len(train), "eval_views": len(held),
                    "val_views": len(val), "best_step": res.best_step,
                    "val_miou": None if res.val_miou is None else 100 * res.val_miou})
    if res.fusion is not None:
        summary.update({"fusion_steps": res.fusion.steps, "fusion_seconds": round(res.fusion.seconds, 2),
                        "fusion_stopped_by_budget": res.fusion.stopped_by_budget,
                        "fusion_used": res.fusion.used, "fusion_best_step": res.fusion.best_step,
                        "fusion_val_miou": None if res.fusion.val_miou is None else 100 * res.fusion.val_miou,
                        "fusion_prior_val_miou": None if res.fusion.prior_val_miou is None
                        else 100 * res.fusion.prior_val_miou})
    print(f"chorus-adapt: {res.steps} steps in {res.seconds_train:.1f} s (+{res.seconds_prepare:.1f} s preparing); "
          f"checkpoint in {a.out}")
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()}, sort_keys=True))
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1, sort_keys=True)
    return 0


def _before(checkpoint, scene, train, held, cfg) -> dict:
    """Held-out mIoU of the base checkpoint in the adaptation label set (no learning)."""
    import torch
    import torch.nn.functional as F

    from chorus_ros.core.adapt import adaptation_label_set, evaluate_views
    from chorus_ros.core.adapt.loop import class_probabilities
    from chorus_ros.core.encoder.checkpoint import load_checkpoint
    from chorus_ros.core.pipeline import labels_from_meta, text_spec_from_meta
    from chorus_ros.core.text import build_text_encoder

    ck = load_checkpoint(checkpoint, device=cfg.device)
    text = build_text_encoder(text_spec_from_meta(ck.meta, checkpoint))
    ls = adaptation_label_set(scene, labels_from_meta(ck.meta))
    temb = F.normalize(text.encode(ls.names).float(), dim=-1)
    with torch.no_grad():
        lang = ck.model(scene.gaussians.to(cfg.device)).heads["language"].cpu()
    s = evaluate_views(scene.gaussians, scene, held, class_probabilities(lang, temb, cfg.score_temperature),
                       scene.class_map_to(ls), ls,
                       cfg.min_alpha)
    return {"miou_before": 100 * s.miou}


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Measure render-and-distill adaptation for docs/adaptation.md (appends JSON lines).

    # real ScanNet scene (rebuilt with 60 views, see scripts/scannet/build_scene0470_00.py)
    python scripts/adapt_tables.py --scene real:/work/data/scannet/scene0470_00_v60 \\
        --labels-map scripts/scannet/nyu40_to_demo.yaml --counts 5 10 30 --modes heads heads+ss lora
    # a synthetic shifted scene (chorus_ros.core.synthetic.shifts), 60 views at 160x120
    python scripts/adapt_tables.py --scene shift:mesh:2001 --counts 10 30 --modes heads
    python scripts/adapt_tables.py --tables .cache/h5/adapt_results.jsonl     # markdown tables

Protocol: the frames are split into held-out positions 1, 3, 5, ... (never give targets) and
training positions 0, 2, 4, ...; with N training views, N of the even positions evenly spaced.
Every method is scored on the same held-out views (pixels with a label; a pixel whose
rendered alpha is below 0.5 is a miss): the base checkpoint before adaptation, the lifting
baseline (no learning) and each adaptation mode. ``heads+ss`` adds the RGB self-supervision
(weight 0.5) and the depth gate (0.5). In-distribution mIoU: the adapted checkpoint on the
held-out synthetic seed 1000 (chorus_ros.core.metrics.evaluation), against the base.

Model selection without the held-out views: ``--val K`` carves K of the N training views
(evenly spaced) as validation views; the run trains on the other N - K, scores the validation
views every ``--val-every`` steps and keeps the best step's weights. Its record holds the
validation curve, from which the number of epochs of a run on all N views is chosen.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

OUT = Path(".cache/h5/adapt_results.jsonl")
MODES = {
    "heads": dict(train="heads"),
    "heads+ss": dict(train="heads", loss={"rgb": 0.5, "depth_gate": 0.5}),
    "lora": dict(train="lora"),
    "lora+convs": dict(train="lora", lora_convs=True),
    "all": dict(train="all"),
}


def _shift_scene(name: str, seed: int, width: int, height: int, views: int, gaussians: int = 60000, *,
                 gt_from_source: bool = False):
    """A shifted scene as an in-memory folder; with ``gt_from_source`` (shifts that re-fit the map
    photometrically) the images and label images are rendered from the source room, not from the
    fitted map -- as a real camera sees the scene, not the robot's map of it."""
    import dataclasses
    from chorus_ros.core.datasets import Intrinsics, SceneFolder, SceneFrame
    from chorus_ros.core.render import RenderSettings
    from chorus_ros.core.synthetic.groundtruth import render_ground_truth
    from chorus_ros.core.synthetic.shifts import SHIFT_SUITE, generate_shifted_scene
    cfg = SHIFT_SUITE[name]
    scene = None if cfg.density else {"target_gaussians": gaussians}
    sh = generate_shifted_scene(name, seed, scene=scene,
                                views={"loop_views": views * 2 // 3, "random_views": views - views * 2 // 3,
                                       "width": width, "height": height})
    seen = sh.gaussians
    if gt_from_source:
        from chorus_ros.core.synthetic.shifts import base_scene
        if not cfg.photometric_steps or cfg.per_gaussian or cfg.yaw_deg or cfg.tilt_deg:
            raise SystemExit(f"--gt-from-source needs a shift that only re-fits the map photometrically, not {name!r}")
        seen = base_scene(seed, dataclasses.replace(cfg, photometric_steps=0), scene).gaussians
    frames = []
    for i, cam in enumerate(sh.cameras):
        gt = render_ground_truth(seen, cam, RenderSettings(backend="reference"), min_alpha=0.3)
        rgb = np.clip(np.round(gt.rgb.numpy() * 255.0), 0, 255).astype(np.uint8)
        frames.append(SceneFrame(i, cam.c2w, rgb, gt.depth.numpy().astype(np.float32),
                                 gt.semantic.numpy().astype(np.uint16), gt.instance.numpy().astype(np.uint16), cam))
    K = sh.cameras[0].K.double().numpy()
    intr = Intrinsics(float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]), width, height)
    return SceneFolder.in_memory(f"shift-{name}-{seed}", sh.gaussians, dict(enumerate(sh.labels.names)), frames,
                                 intrinsics=intr)


def _open(spec: str, labels_map: str | None, width: int, height: int, views: int, gt_from_source: bool = False):
    from chorus_ros.core.datasets import load_labels_map, open_scene
    kind, _, rest = spec.partition(":")
    if kind == "real":
        return open_scene(rest, labels_map=load_labels_map(labels_map) if labels_map else None)
    if kind == "shift":
        name, seed, *n = rest.split(":")
        return _shift_scene(name, int(seed), width, height, views, *(int(v) for v in n[:1]),
                            gt_from_source=gt_from_source)
    raise SystemExit(f"--scene {spec!r}: expected real:DIR or shift:NAME:SEED[:GAUSSIANS]")


def _indist(ckpt: str, labels_file: str = "") -> float:
    """mIoU on the held-out synthetic seed 1000 (8 views at 128x96), optionally with another label set."""
    from chorus_ros.core.metrics.evaluation import EvalConfig, evaluate_checkpoint
    from chorus_ros.core.pipeline import PerceptionPipeline, PipelineConfig
    cfg = EvalConfig(seeds=[1000], loop_views=6, random_views=2)
    r = evaluate_checkpoint("x", lambda: PerceptionPipeline.from_checkpoint(ckpt, PipelineConfig(labels_file=labels_file)),
                            cfg)
    return 100 * r.semantic.miou


def run(a) -> None:
    import torch.nn.functional as F

    from chorus_ros.core.adapt import AdaptConfig, adapt_checkpoint, adaptation_label_set, evaluate_views, lift_baseline
    from chorus_ros.core.adapt.loop import carve_validation, class_probabilities
    from chorus_ros.core.encoder.checkpoint import load_checkpoint
    from chorus_ros.core.pipeline import labels_from_meta, text_spec_from_meta
    from chorus_ros.core.text import build_text_encoder

    torch.set_num_threads(1)
    t0 = time.time()
    scene = _open(a.scene, a.labels_map, a.size[0], a.size[1], a.views, a.gt_from_source).without_faint(a.min_opacity)
    held = list(range(1, len(scene), 2))[:: a.held_stride]
    even = list(range(0, len(scene), 2))
    ck = load_checkpoint(a.checkpoint)
    text = build_text_encoder(text_spec_from_meta(ck.meta, a.checkpoint))
    ls = adaptation_label_set(scene, labels_from_meta(ck.meta))
    lut = scene.class_map_to(ls)
    temb = F.normalize(text.encode(ls.names).float(), dim=-1)
    with torch.no_grad():
        before = class_probabilities(ck.model(scene.gaussians).heads["language"], temb, 0.05)
    base = {"scene": a.scene + (" (gt from source)" if a.gt_from_source else "") + (f" (min_opacity {a.min_opacity:g})" if a.min_opacity > 0 else "")
            + (f" (scored at alpha >= {a.eval_min_alpha:g})" if a.eval_min_alpha != 0.5 else ""), "gaussians": len(scene.gaussians), "classes": len(ls), "held_out": len(held),
            "size": [scene.camera.width, scene.camera.height]}
    _emit(dict(base, method="before", miou=100 * evaluate_views(scene.gaussians, scene, held, before, lut, ls, min_alpha=a.eval_min_alpha).miou))
    if a.ceiling and scene.gt_gaussian_labels is not None:
        # the map's own per-Gaussian labels rendered like a prediction: what a perfect per-Gaussian
        # labelling scores under this renderer and ground-truth rule (the ceiling of lifting and adaptation)
        true = torch.from_numpy(lut[np.clip(scene.gt_gaussian_labels, 0, None).astype(np.int64)].astype(np.int64))
        ok = true < len(ls)
        one_hot = torch.zeros(len(true), len(ls))
        one_hot[ok.nonzero().squeeze(1), true[ok]] = 1.0
        s = evaluate_views(scene.gaussians, scene, held, one_hot, lut, ls, min_alpha=a.eval_min_alpha)
        _emit(dict(base, method="ceiling", miou=100 * s.miou, miou_present=100 * s.miou_present))
    if a.ceiling:
        # lifting from every view, the held-out ones included: the best a per-Gaussian labelling
        # learnt from these images does on them (an estimate of the ceiling, not a method)
        one_hot, _ = lift_baseline(scene.gaussians, scene, list(range(len(scene))), lut, len(ls))
        s = evaluate_views(scene.gaussians, scene, held, one_hot, lut, ls, min_alpha=a.eval_min_alpha)
        _emit(dict(base, method="lift_all_views", miou=100 * s.miou, miou_present=100 * s.miou_present))
    if not a.counts:
        return
    print(f"scene ready in {time.time() - t0:.0f} s", flush=True)
    for n in a.counts:
        idx = np.unique(np.round(np.linspace(0, len(even) - 1, n)).astype(int))
        train = [even[i] for i in idx]
        one_hot, unseen = lift_baseline(scene.gaussians, scene, train, lut, len(ls))
        s = evaluate_views(scene.gaussians, scene, held, one_hot, lut, ls, min_alpha=a.eval_min_alpha)
        _emit(dict(base, method="lift", n=n, miou=100 * s.miou, miou_present=100 * s.miou_present,
                   never_labelled=unseen))
        fit, val = carve_validation(train, a.val)
        for mode in a.modes:
            kw = dict(MODES[mode])
            kw.setdefault("loss", {})
            kw["loss"] = dict(kw["loss"], replay=a.replay, absent=a.absent)
            cfg = AdaptConfig(steps=a.steps, budget_s=a.budget_s, progress=False, pixels_per_view=a.pixels_per_view,
                              lr=a.lr, epochs=a.epochs, lr_schedule=a.lr_schedule, val_every=a.val_every,
                              widen=a.widen, widen_only=a.widen_only, replay_site_classes=not a.replay_base_only,
                              replay_seeds=list(a.replay_seeds), replay_batch=a.replay_batch,
                              fusion_steps=a.fusion_steps, fusion_prior_input=a.fusion_prior_input,
                              fusion_flip=a.fusion_flip, fusion_init=a.fusion_init, **kw)
            out = Path(a.ckpt_dir) / f"{Path(a.scene).name.replace(':', '_')}_{mode}{a.tag}_{n}"
            res = adapt_checkpoint(a.checkpoint, scene, fit, cfg, out_dir=out, val_positions=val)
            s = evaluate_views(scene.gaussians, scene, held, res.scores, lut, ls, min_alpha=a.eval_min_alpha)
            rec = dict(base, method=mode + a.tag, n=n, miou=100 * s.miou, miou_present=100 * s.miou_present,
                       steps=res.steps, wall_s=res.seconds_prepare + res.seconds_train,
                       cpu_s=res.cpu_seconds_prepare + res.cpu_seconds_train, peak_rss_mib=res.peak_rss_mib,
                       loss_first=res.history[0]["loss"], loss_last=res.history[-1]["loss"], ckpt=str(out),
                       absent_classes=len(res.absent_classes), per_class=_per_class(s), config=cfg.to_dict())
            if val:
                rec.update(val_views=val, train_views_used=len(fit), best_step=res.best_step,
                           val_miou=100 * res.val_miou,
                           val_curve=[[h["step"], round(100 * h["val_miou"], 2)] for h in res.history
                                      if "val_miou" in h])
            held_views = None                    # the held-out views rendered once for every decoder scored
            if res.scores is not None and ((res.fusion is not None and res.fusion.used) or a.fusion_first_steps
                                           or a.fusion_warm_steps):
                from chorus_ros.core.adapt.fusion import render_site_views
                held_views = render_site_views(scene.gaussians, scene, held, res.language, res.scores, lut)
            if res.fusion is not None and res.fusion.steps:
                # the per-site fusion decoder on the held-out views' images, correcting these labels
                # (what score_adapted_fusion reports; a decoder the validation views rejected is not
                # used: the site keeps the adapted labels)
                from chorus_ros.core.adapt.fusion import evaluate_fused
                fs = (evaluate_fused(res.fusion.decoder, held_views, res.fusion.text, res.label_set, 0.05,
                                     a.eval_min_alpha) if res.fusion.used else None)
                fr = res.fusion
                _emit(dict(base, method=mode + a.tag + "+fusion", n=n, miou=100 * (fs.miou if fs else s.miou),
                           miou_present=100 * (fs.miou_present if fs else s.miou_present), steps=fr.steps,
                           per_class=_per_class(fs if fs else s),
                           wall_s=fr.seconds, loss_first=fr.history[0]["loss"], loss_last=fr.history[-1]["loss"],
                           ckpt=str(out), peak_rss_mib=res.peak_rss_mib, fusion_used=fr.used,
                           fusion_best_step=fr.best_step,
                           fusion_val_miou=None if fr.val_miou is None else 100 * fr.val_miou,
                           fusion_prior_val_miou=None if fr.prior_val_miou is None else 100 * fr.prior_val_miou,
                           fusion_val_curve=[[h["step"], round(100 * h["miou"], 2)] for h in fr.val_history],
                           config={"fusion_steps": a.fusion_steps, "fusion_lr": cfg.fusion_lr,
                                   "fusion_views_per_step": cfg.fusion_views_per_step,
                                   "fusion_prior_input": cfg.fusion_prior_input, "fusion_flip": cfg.fusion_flip}))
            tv = temb_site = None                # training views and text of the extra decoders, made once
            if (a.fusion_first_steps or a.fusion_warm_steps) and res.scores is not None:
                from chorus_ros.core.adapt.fusion import render_site_views
                tv = render_site_views(scene.gaussians, scene, fit, res.language, res.scores, lut)
                with torch.no_grad():
                    temb_site = text.encode(list(res.label_set.names)).float()
            if a.fusion_first_steps and res.scores is not None:
                # the first site decoder (3D probabilities only added to its logits, no flips), trained
                # on the same adapted labels and views: an A/B of the decoder alone
                from chorus_ros.core.adapt.fusion import evaluate_fused, train_site_fusion
                f0 = train_site_fusion(tv, temb_site, steps=a.fusion_first_steps, lr=cfg.fusion_lr,
                                       views_per_step=cfg.fusion_views_per_step, seed=cfg.seed,
                                       prior_input=False, flip=False)
                s0 = evaluate_fused(f0.decoder, held_views, f0.text, res.label_set, 0.05, a.eval_min_alpha)
                _emit(dict(base, method=mode + a.tag + "+fusion0", n=n, miou=100 * s0.miou,
                           miou_present=100 * s0.miou_present, steps=f0.steps, wall_s=f0.seconds,
                           per_class=_per_class(s0),
                           loss_first=f0.history[0]["loss"], loss_last=f0.history[-1]["loss"], ckpt=str(out),
                           config={"fusion_steps": a.fusion_first_steps, "fusion_prior_input": False,
                                   "fusion_flip": False}))
            if a.fusion_warm_steps and res.scores is not None:
                # site decoders started from a trained decoder (--fusion-warm-init), on the same
                # adapted labels and views, with the main decoder's validation: an A/B of the start
                from chorus_ros.core.adapt.fusion import evaluate_fused, render_site_views, train_site_fusion
                from chorus_ros.core.adapt.loop import load_fusion_init
                vv = render_site_views(scene.gaussians, scene, val, res.language, res.scores, lut) if val else None
                init = load_fusion_init(a.fusion_warm_init, a.checkpoint)
                for steps in a.fusion_warm_steps:
                    fw = train_site_fusion(tv, temb_site, steps=steps, names=list(res.label_set.names),
                                           lr=a.fusion_warm_lr or cfg.fusion_lr,
                                           views_per_step=cfg.fusion_views_per_step, seed=cfg.seed,
                                           val_views=vv, val_every=cfg.val_every, init=init)
                    sw = (evaluate_fused(fw.decoder, held_views, fw.text, res.label_set, 0.05, a.eval_min_alpha)
                          if fw.used else s)
                    _emit(dict(base, method=mode + a.tag + f"+fusionw{steps}", n=n, miou=100 * sw.miou,
                               miou_present=100 * sw.miou_present, steps=fw.steps, wall_s=fw.seconds,
                               per_class=_per_class(sw), fusion_used=fw.used, fusion_best_step=fw.best_step,
                               fusion_val_miou=None if fw.val_miou is None else 100 * fw.val_miou,
                               fusion_prior_val_miou=None if fw.prior_val_miou is None else 100 * fw.prior_val_miou,
                               loss_first=fw.history[0]["loss"], loss_last=fw.history[-1]["loss"], ckpt=str(out),
                               warm_start=fw.warm_start,
                               config={"fusion_steps": steps, "fusion_init": a.fusion_warm_init,
                                       "fusion_lr": a.fusion_warm_lr or cfg.fusion_lr}))
            if a.indist and mode != "all" and n == max(a.counts):
                rec["indist_miou"] = _indist(str(out))
                rec["indist_base_same_labels"] = _indist(a.checkpoint, str(out / "labels.yaml"))
            _emit(rec)
    if a.indist:
        _emit(dict(base, method="base_indist", miou=_indist(a.checkpoint)))


def _per_class(s) -> dict:
    """IoU (%) of each class with a non-empty union."""
    return {n: round(100 * float(v), 1) for n, v in zip(s.class_names, s.iou) if np.isfinite(v)}


def _emit(rec: dict) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    rec["time"] = time.strftime("%H:%M:%S")
    with open(OUT, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps({k: v for k, v in rec.items() if k != "config"}), flush=True)


def _base_digest(ckpt: str | None) -> str:
    """The SHA-256 prefix of the base checkpoint's weights, from the adapted checkpoint's provenance."""
    from chorus_ros.core.encoder.checkpoint import load_checkpoint_config
    from chorus_ros.core.errors import CheckpointError
    try:
        return str(load_checkpoint_config(ckpt)[1]["adaptation"]["base_digest"])[:8]
    except (CheckpointError, TypeError, KeyError):
        return "?"


def tables(path: str) -> None:
    recs = [json.loads(line) for line in open(path, encoding="utf-8")]
    for scene in dict.fromkeys(r["scene"] for r in recs):
        rs = [r for r in recs if r["scene"] == scene]
        befores = list(dict.fromkeys(round(r["miou"], 1) for r in rs if r["method"] == "before"))
        before = befores[0] if befores else float("nan")
        counts = sorted({r["n"] for r in rs if "n" in r})
        methods = [m for m in dict.fromkeys(r["method"] for r in rs) if m not in ("before", "base_indist", "ceiling", "lift_all_views")]
        ceil = list(dict.fromkeys(round(r["miou"], 1) for r in rs if r["method"] == "ceiling"))
        print(f"\n### {scene} ({rs[0]['gaussians']} Gaussians, {rs[0]['classes']} classes, "
              f"{rs[0]['held_out']} held-out views at {rs[0]['size'][0]}x{rs[0]['size'][1]}; before adaptation "
              + " / ".join(f"{b:.1f}" for b in befores) + (" (one per base checkpoint, in run order)" if len(befores) > 1
                                                            else "")
              + (f"; ceiling (the map's own labels rendered like a prediction) {ceil[0]:.1f}" if ceil else "") + ")\n")
        print("| training views | before | " + " | ".join("lifting baseline" if m == "lift" else m for m in methods)
              + " |")
        print("|---" * (len(methods) + 2) + "|")
        for n in counts:
            cells = []
            for m in methods:
                r = next((r for r in rs if r.get("n") == n and r["method"] == m), None)
                if r is None:
                    cells.append("")
                elif m == "lift":
                    cells.append(f"{r['miou']:.1f} ({100 * r['never_labelled']:.0f} % unlabelled)")
                else:
                    cells.append(f"{r['miou']:.1f}")
            print(f"| {n} | {before:.1f} | " + " | ".join(cells) + " |")
        print("\n| method | views | steps | wall s | CPU s | peak RSS MiB | loss first -> last | in-dist. mIoU "
              "| held-out mIoU, present classes | validation: views, best step (mIoU) | base weights |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rs:
            if r["method"] in ("before", "lift", "base_indist", "ceiling", "lift_all_views"):
                continue
            ind = f"{r['indist_miou']:.1f}" if "indist_miou" in r else "n/a"
            if "indist_base_same_labels" in r:
                ind += f" (base {r['indist_base_same_labels']:.1f})"
            pres = f"{r['miou_present']:.1f}" if "miou_present" in r else "n/a"
            val = f"{len(r['val_views'])} of {r['n']}, {r['best_step']} ({r['val_miou']:.1f})" if "val_views" in r else ""
            print(f"| {r['method']} | {r['n']} | {r['steps']} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | "
                  f"{r['peak_rss_mib']:.0f} | {r['loss_first']:.3f} -> {r['loss_last']:.3f} | {ind} | {pres} | {val} "
                  f"| {_base_digest(r.get('ckpt'))} |")
        bs = list(dict.fromkeys(round(r["miou"], 1) for r in rs if r["method"] == "base_indist"))
        if bs:
            print("\nIn-distribution mIoU of the base checkpoint on the same evaluation: "
                  + " / ".join(f"{b:.1f}" for b in bs) + (" (one per base checkpoint, in run order)" if len(bs) > 1 else ""))


def main() -> None:
    global OUT
    from chorus_ros.core.adapt.config import LR_SCHEDULES
    from chorus_ros.core.pipeline import DEFAULT_MIN_OPACITY
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", help="real:DIR or shift:NAME:SEED[:GAUSSIANS] (default 60000 Gaussians)")
    ap.add_argument("--labels-map")
    ap.add_argument("--checkpoint", default="checkpoints/demo")
    ap.add_argument("--counts", type=int, nargs="*", default=[5, 10, 30])
    ap.add_argument("--modes", nargs="*", default=["heads"], choices=sorted(MODES),
                    help="adaptation variants to run (none: only the baselines)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--budget-s", type=float, default=600.0)
    ap.add_argument("--size", type=int, nargs=2, default=[160, 120])
    ap.add_argument("--views", type=int, default=60)
    ap.add_argument("--held-stride", type=int, default=1)
    ap.add_argument("--pixels-per-view", type=int, default=4096)
    ap.add_argument("--replay", type=float, default=1.0, help="weight of the replay term (0: off)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--epochs", type=float, default=0.0, help="visits per training view (0: --steps)")
    ap.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant")
    ap.add_argument("--absent", type=float, default=0.0, help="weight of the absent-class term (0: off; this script keeps 0 so that the older "
                    "tables reproduce, chorus-adapt defaults to 1.0)")
    ap.add_argument("--val", type=int, default=0, help="validation views carved from the training views")
    ap.add_argument("--val-every", type=int, default=50)
    ap.add_argument("--widen", type=int, default=0, help="hidden units added to the decoder (heads)")
    ap.add_argument("--widen-only", action="store_true", help="train only the added decoder units")
    ap.add_argument("--replay-seeds", type=int, nargs="*", default=[0], help="synthetic replay scenes")
    ap.add_argument("--replay-batch", type=int, default=4096, help="replay Gaussians per scene and step")
    ap.add_argument("--replay-base-only", action="store_true", help="replay KL over the base names only")
    ap.add_argument("--jsonl", default=str(OUT), help="results file to append to")
    ap.add_argument("--gt-from-source", action="store_true",
                    help="photometric shift: images and label images rendered from the source room, not the fitted map")
    ap.add_argument("--eval-min-alpha", type=float, default=0.5,
                    help="held-out pixels whose rendered alpha is below this count as misses (the synthetic label "
                         "images label pixels down to alpha 0.3)")
    ap.add_argument("--min-opacity", type=float, default=DEFAULT_MIN_OPACITY,
                    help="Gaussians below this opacity are left out, as the pipeline sets them aside (0: keep all)")
    ap.add_argument("--ceiling", action="store_true",
                    help="also score the map's own per-Gaussian labels rendered like a prediction (synthetic scenes)")
    ap.add_argument("--fusion-steps", type=int, default=0,
                    help="then train the per-site fusion decoder this many steps and score it too (method '<mode>+fusion')")
    ap.add_argument("--fusion-prior-input", action=argparse.BooleanOptionalAction, default=True,
                    help="the fusion decoder reads the 3D class probabilities as input (--no-...: the first decoder)")
    ap.add_argument("--fusion-flip", action=argparse.BooleanOptionalAction, default=True,
                    help="mirror the fusion decoder's training views at random")
    ap.add_argument("--fusion-init", default="",
                    help="where the main site decoder starts: '' scratch, 'base' the checkpoint's fusion/, or a dir")
    ap.add_argument("--fusion-warm-steps", type=int, nargs="*", default=[],
                    help="also train site decoders started from --fusion-warm-init for each of these step counts "
                         "on the same adapted labels and score them (methods '<mode>+fusionw<N>')")
    ap.add_argument("--fusion-warm-init", default="base", help="their start ('base' or a decoder dir)")
    ap.add_argument("--fusion-warm-lr", type=float, default=0.0, help="their peak learning rate (0: AdaptConfig.fusion_lr)")
    ap.add_argument("--fusion-first-steps", type=int, default=0,
                    help="also train the first site decoder (no 3D input, no flips) this many steps on the same "
                         "adapted labels and score it (method '<mode>+fusion0')")
    ap.add_argument("--tag", default="", help="suffix of the method names in the tables")
    ap.add_argument("--indist", action="store_true")
    ap.add_argument("--ckpt-dir", default=".cache/h5/ckpts")
    ap.add_argument("--tables", metavar="JSONL")
    a = ap.parse_args()
    OUT = Path(a.jsonl)
    if a.tables:
        tables(a.tables)
    else:
        run(a)


if __name__ == "__main__":
    main()

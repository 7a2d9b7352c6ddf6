#!/usr/bin/env python3
"""Per-Gaussian (3D) semantic evaluation of encoder features on held-out synthetic scenes.

Used by docs/contrastive.md and docs/ablation.md (small CPU setups; see those docs).

    # linear probe on frozen embeddings (labels of the training scenes), 3D mIoU on held-out ones
    python scripts/eval_features.py probe --ckpt .cache/h7/ckpt/contrastive --out probe.json
    python scripts/eval_features.py probe --ckpt random:.cache/h7/ckpt/contrastive --out probe_rand.json
    # fine-tune encoder + linear classifier with a fraction of the Gaussians labelled
    python scripts/eval_features.py finetune --ckpt ... --fraction 0.01 --steps 250 --out ft.json
    # open-vocabulary decode of the language head (trained checkpoints)
    python scripts/eval_features.py heads --ckpt DIR [DIR ...] --out heads.json

``random:DIR`` = the architecture of checkpoint DIR with a fresh random initialisation (seed 0).
Held-out scenes: seeds 1000.. (never trained on), plus shifted variants from
chorus_ros.core.synthetic.shifts (the generalisation issue's shift suite) at the same size.
Ground truth: each synthetic Gaussian's class (``extras['label']``); the score is the mIoU over
classes present, pooled over the scenes of a set.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

torch.set_num_threads(1)


def _scene_sets(args):
    from chorus_ros.core.synthetic import SceneConfig, generate_scene
    sc = {"target_gaussians": args.gaussians}
    train = [generate_scene(SceneConfig(seed=s, **sc)).gaussians for s in range(args.train_scenes)]
    held = {"held_out": [generate_scene(SceneConfig(seed=s, **sc)).gaussians for s in args.held_out]}
    if args.shifts:
        from chorus_ros.core.synthetic.shifts import generate_shifted_scene
        for name in args.shifts:
            held[f"shift:{name}"] = [generate_shifted_scene(name, s, scene=sc, cache_dir=None).gaussians
                                     for s in args.held_out[: args.shift_scenes]]
    return train, held


def _load(spec: str):
    from chorus_ros.core.encoder.checkpoint import load_checkpoint
    from chorus_ros.core.encoder.model import ChorusEncoder
    if spec.startswith("random:"):
        ck = load_checkpoint(spec[len("random:"):])
        torch.manual_seed(0)
        return ChorusEncoder(ck.model.config), ck
    ck = load_checkpoint(spec)
    return ck.model, ck


def miou(pred: torch.Tensor, gt: torch.Tensor, k: int) -> float:
    """Mean IoU (percent) over classes present in ``gt`` or ``pred``: pooled confusion of [M] ids."""
    cm = torch.bincount(gt * k + pred, minlength=k * k).reshape(k, k).double()
    inter = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - inter
    present = cm.sum(1) > 0
    return float((inter[present] / union[present].clamp_min(1)).mean() * 100)


@torch.no_grad()
def _embed(model, gs):
    model.eval()
    return [model(g).embedding for g in gs]


def _fit_linear(x, y, k, steps=300, lr=0.05, wd=1e-4):
    lin = torch.nn.Linear(x.shape[1], k)
    opt = torch.optim.Adam(lin.parameters(), lr, weight_decay=wd)
    for _ in range(steps):
        loss = F.cross_entropy(lin(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return lin


def cmd_probe(args, train, held, k):
    model, _ = _load(args.ckpt)
    xs = _embed(model, train)
    x = torch.cat(xs)
    y = torch.cat([g.extras["label"] for g in train])
    lin = _fit_linear(x, y, k)
    out = {}
    with torch.no_grad():
        for name, gs in held.items():
            e = _embed(model, gs)
            pred = torch.cat([lin(v).argmax(1) for v in e])
            out[name] = miou(pred, torch.cat([g.extras["label"] for g in gs]), k)
        out["train"] = miou(lin(x).argmax(1), y, k)
    return out


def cmd_finetune(args, train, held, k):
    from chorus_ros.core.train.augment import quat_multiply, rotate_about_axis
    from chorus_ros.core.gaussians import GaussianArrays
    model, _ = _load(args.ckpt)
    gen = torch.Generator().manual_seed(args.seed)
    masks = []
    for g in train:  # a fixed labelled subset per scene
        m = torch.rand(len(g), generator=gen) < args.fraction
        if not bool(m.any()):
            m[0] = True
        masks.append(m)
    lin = torch.nn.Linear(model.config.embed_dim, k)
    params = list(model.parameters()) + list(lin.parameters())
    opt = torch.optim.AdamW(params, args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.steps, pct_start=0.1)
    t0 = time.time()
    for step in range(args.steps):
        model.train()
        i = int(torch.randint(len(train), (1,), generator=gen))
        g = train[i]
        ang = float(torch.rand((), generator=gen)) * 6.283
        R, q = rotate_about_axis(ang, 2)
        c = g.means.mean(0)
        ga = GaussianArrays((g.means - c) @ R.T + c, g.sh, g.opacities, g.log_scales,
                            quat_multiply(q.expand_as(g.quats), g.quats), g.ids)
        logits = lin(model(ga).embedding)
        m = masks[i]
        loss = F.cross_entropy(logits[m], g.extras["label"][m])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0:
            print(f"step {step} loss {float(loss):.3f} {time.time() - t0:.0f}s", flush=True)
    out = {}
    with torch.no_grad():
        model.eval()
        for name, gs in held.items():
            pred = torch.cat([lin(model(g).embedding).argmax(1) for g in gs])
            out[name] = miou(pred, torch.cat([g.extras["label"] for g in gs]), k)
    out["seconds"] = time.time() - t0
    return out


def cmd_heads(args, train, held, k):
    from chorus_ros.core.decode.semantic import SemanticDecoder
    from chorus_ros.core.labels import LabelSet
    from chorus_ros.core.text import build_text_encoder
    out = {}
    for ck_dir in args.ckpts:
        model, ck = _load(ck_dir)
        te = dict(ck.meta["text_encoder"])
        w = te.pop("weights", None)
        if w:
            te["weights"] = str(Path(ck_dir) / w)
        dec = SemanticDecoder(build_text_encoder(te), LabelSet.from_dict(ck.meta["label_set"]))
        res = {}
        with torch.no_grad():
            model.eval()
            for name, gs in held.items():
                pred = torch.cat([dec.decode(model(g).heads["language"]).label.long() for g in gs])
                res[name] = miou(pred.clamp(0, k - 1), torch.cat([g.extras["label"] for g in gs]), k)
        out[ck_dir] = res
        print(ck_dir, res, flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cmd", choices=["probe", "finetune", "heads"])
    ap.add_argument("--ckpt", help="checkpoint dir, or random:DIR (probe/finetune)")
    ap.add_argument("--ckpts", nargs="*", default=[], help="checkpoint dirs (heads)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--gaussians", type=int, default=8000)
    ap.add_argument("--train-scenes", type=int, default=16)
    ap.add_argument("--held-out", type=int, nargs="*", default=[1000, 1001, 1002, 1003])
    ap.add_argument("--shifts", nargs="*", default=["colour", "rotated", "noise"])
    ap.add_argument("--shift-scenes", type=int, default=2)
    ap.add_argument("--fraction", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from chorus_ros.core.synthetic.classes import synthetic_label_set
    k = len(synthetic_label_set().names)
    t0 = time.time()
    if args.cmd == "heads":
        args.train_scenes = 0
    train, held = _scene_sets(args)
    print(f"scenes ready in {time.time() - t0:.0f}s", flush=True)
    res = {"probe": cmd_probe, "finetune": cmd_finetune, "heads": cmd_heads}[args.cmd](args, train, held, k)
    res = {"cmd": args.cmd, "ckpt": args.ckpt, "fraction": args.fraction, "steps": args.steps, "result": res}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())

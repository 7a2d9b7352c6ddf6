"""``chorus-eval``: score a checkpoint on outside scene folders or held-out synthetic scenes.

    chorus-eval --dataset data/scene0470_00 --checkpoint checkpoints/demo \\
                --labels-map nyu40_to_demo.yaml --views ::4 --out report.md --json r.json --plots plots/
    chorus-eval --checkpoint checkpoints/demo --seeds 1000 1001 1002 --out docs/evaluation.md
    chorus-eval --ablation full=checkpoints/demo no_object=checkpoints/ablation/no_object --out docs/ablation.md
    chorus-eval --suite shift --checkpoint checkpoints/demo [--shifts rotated mesh] --json shift.json
    chorus-eval --suite shift --ablation before=OLD after=checkpoints/demo --out - (side by side)
    chorus-eval --bag BAG --checkpoint checkpoints/demo [--rate 0] --json r.json (through the nodes:
                chorus_ros.ros.bag_eval; the bag from `chorus-ros make-bag --dataset DIR`)

Scene folder layouts: chorus_ros.core.datasets.folder; metrics: chorus_ros.core.metrics.scenes
(definitions also in docs/evaluation.md). A malformed folder prints one error naming the file
and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path


def _write(md: str, out: str, section: str | None) -> None:
    from chorus_ros.core.metrics.report import replace_section

    print(md)
    if out == "-":
        return
    if section:
        replace_section(out, section, md)
    else:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(md, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    from chorus_ros.core.decode.fusion import FUSION_MODES
    from chorus_ros.core.decode.instance_image import INSTANCE_IMAGE_MODES
    from chorus_ros.core.errors import ChorusError
    from chorus_ros.core.metrics.evaluation import EvalConfig
    from chorus_ros.core.metrics.shift_suite import GROUND_TRUTHS

    d = EvalConfig()
    ap = argparse.ArgumentParser(prog="chorus-eval", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="checkpoint folder (model.safetensors + config.yaml)")
    ap.add_argument("--dataset", nargs="+", metavar="DIR", help="scene folders to evaluate (outside data)")
    ap.add_argument("--ablation", nargs="+", metavar="NAME=DIR", help="evaluate several checkpoints into one table")
    ap.add_argument("--labels-map", metavar="FILE", help="YAML 'gt name: model name' (null drops a class)")
    ap.add_argument("--views", help="with --dataset: Python slice over frame indices ('30:60', '::4'); "
                                    "with --seeds: views per scene (2/3 loop, 1/3 random)")
    ap.add_argument("--map", metavar="PLY", help="with one --dataset folder: the 3DGS map (default gaussians.ply)")
    ap.add_argument("--min-alpha", type=float, default=None,
                    help="alpha threshold shared by prediction and ground truth (default: the pipeline's)")
    ap.add_argument("--seeds", type=int, nargs="+", default=d.seeds, help="held-out scene seeds")
    ap.add_argument("--gaussians", type=int, default=d.target_gaussians, help="Gaussians per synthetic scene")
    ap.add_argument("--size", type=int, nargs=2, default=[d.width, d.height], metavar=("W", "H"))
    ap.add_argument("--chunks", type=int, default=d.chunks, help="add each scene in N slabs (incremental)")
    ap.add_argument("--device", default=d.device)
    ap.add_argument("--instance-image", choices=list(INSTANCE_IMAGE_MODES), default=None,
                    help="instance image of a view (pipeline per_view.instance_image; default: the pipeline's, 'top')")
    ap.add_argument("--min-opacity", type=float, default=None,
                    help="the pipeline's min_opacity: Gaussians below it are set aside, not encoded "
                         "(default: the pipeline's, 0.1; 0 keeps all)")
    ap.add_argument("--rotations", type=int, default=1, metavar="K",
                    help="rotation ensemble: average the encoder over K copies of the map rotated about the "
                         "vertical (pipeline incremental.rotations, with incremental.mode 'halo'; K x the encode "
                         "time; default 1 = off)")
    ap.add_argument("--height-prior-weight", type=float, default=None, metavar="W",
                    help="weight of the checkpoint's height prior (pipeline semantic.height_prior_weight; "
                         "0 = off; default: the pipeline's; no effect without <checkpoint>/height_prior.json)")
    ap.add_argument("--fusion", choices=list(FUSION_MODES), default=None,
                    help="per-view labels (pipeline per_view.fusion): 'rendered' runs the checkpoint's fusion decoder "
                         "on the rendered view (the checkpoint needs fusion/); default: the pipeline's, 'off'")
    ap.add_argument("--snap-radius", type=int, default=None, metavar="PX",
                    help="with --fusion: pixels an instance border may move to follow the fused labels (pipeline "
                         "per_view.snap_radius; 0 keeps the 3D instance image; default: the pipeline's, 0)")
    ap.add_argument("--out", default="-", help="markdown report to write ('-' prints only)")
    ap.add_argument("--section", help="replace only this marked section of --out (keeps the rest of the file)")
    ap.add_argument("--json", metavar="FILE", help="write the results as one JSON object (percent)")
    ap.add_argument("--plots", metavar="DIR", help="write PNG plots (confusion, per-class IoU, contact sheet)")
    ap.add_argument("--contact-views", type=int, default=2, help="views per scene on the contact sheet")
    ap.add_argument("--title", default=None, help="report title")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.add_argument("--suite", choices=["shift"], help="run a suite: 'shift' = held-out scenes under named "
                    "distribution shifts (chorus_ros.core.metrics.shift_suite)")
    ap.add_argument("--shifts", nargs="+", metavar="NAME", help="with --suite shift: only these shifts")
    ap.add_argument("--suite-ground-truth", choices=list(GROUND_TRUTHS), default="map",
                    help="with --suite shift: label the views from the shifted map itself (default) or from "
                         "the source room before its per-Gaussian shifts and photometric fit (as a camera sees it)")
    ap.add_argument("--suite-seeds", type=int, nargs="+", metavar="SEED", help="with --suite shift: scene seeds "
                    "(default 5000 5001)")
    from chorus_ros.ros.bag_eval import add_arguments as bag_arguments  # --bag: the ROS path (issue 7)
    bag_arguments(ap)
    a = ap.parse_args(argv)
    if a.bag and (a.dataset or a.ablation or a.suite):
        ap.error("--bag cannot be combined with --dataset, --ablation or --suite")
    if a.bag and a.rotations != 1:
        ap.error("--rotations does not apply to --bag: set the node's incremental.rotations (and incremental.mode halo)")
    if a.bag and a.height_prior_weight is not None:
        ap.error("--height-prior-weight does not apply to --bag: set the node's semantic.height_prior_weight")
    if a.ablation and (a.checkpoint or a.dataset):
        ap.error("--ablation cannot be combined with --checkpoint or --dataset")
    if not a.ablation and not a.checkpoint:
        ap.error("give --checkpoint (with --dataset or --seeds) or --ablation")
    if a.map and (not a.dataset or len(a.dataset) != 1):
        ap.error("--map needs exactly one --dataset folder")
    cmd = "chorus-eval " + " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    try:
        if a.bag:
            from chorus_ros.ros.bag_eval import run_cli
            return run_cli(a, cmd)
        if a.suite:
            return _suite(a, cmd)
        if a.dataset:
            return _dataset(a, cmd)
        return _seeds(a, ap, cmd)
    except ChorusError as e:  # malformed data, checkpoint or labels map: one line, no traceback
        print(f"chorus-eval: error: {e}", file=sys.stderr)
        return 2


def _factory(ckpt: str, device: str, min_opacity: float | None = None, instance_image: str | None = None,
             rotations: int = 1, height_prior_weight: float | None = None, fusion: str | None = None,
             snap_radius: int | None = None):
    from chorus_ros.core.pipeline import PerceptionPipeline, PipelineConfig

    def make():
        cfg = PipelineConfig(device=device)
        if min_opacity is not None:
            cfg.min_opacity = float(min_opacity)
        if rotations != 1:
            cfg.incremental.rotations = int(rotations)
            cfg.incremental.mode = "halo"
        if instance_image is not None:
            cfg.per_view.instance_image = instance_image
        if height_prior_weight is not None:
            cfg.semantic.height_prior_weight = float(height_prior_weight)
            cfg.semantic.validate()
        if fusion is not None:
            cfg.per_view.fusion = fusion
        if snap_radius is not None:
            cfg.per_view.snap_radius = int(snap_radius)
        cfg.validate()
        return PerceptionPipeline.from_checkpoint(ckpt, cfg)
    return make


def _outputs(a, result, md_fn) -> None:
    """Plots, JSON and the markdown report of one DatasetEvalResult."""
    from chorus_ros.core.metrics.plots import write_plots
    from chorus_ros.core.metrics.scenes import results_json

    plots = write_plots(result, a.plots) if a.plots else None
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(results_json(result), indent=1) + "\n", encoding="utf-8")
    _write(md_fn(plots), a.out, a.section)


def _note_plain_maps(scenes, checkpoint: str) -> None:
    """Name the scenes whose map PLY is a plain coloured point cloud (3DGS parameters are defaults),
    with a warning when the checkpoint's encoder reads them (variant 'gaussian')."""
    from chorus_ros.core.encoder.checkpoint import load_checkpoint_config
    from chorus_ros.core.plain_cloud import LAYOUT_POINTCLOUD, detect_layout, variant_warning
    from chorus_ros.core.ply import read_ply_header
    plain = [s for s in scenes if s.map_path is not None
             and detect_layout(read_ply_header(s.map_path).property_types) == LAYOUT_POINTCLOUD]
    for s in plain:
        print(f"{s.name}: the map {s.map_path} is a plain point cloud (3DGS parameters filled in by "
              f"chorus_ros.core.plain_cloud defaults)", file=sys.stderr)
    warning = variant_warning(load_checkpoint_config(checkpoint)[0].variant, what="a map") if plain else None
    if warning:
        print(f"chorus-eval: warning: {warning}", file=sys.stderr)


def _dataset(a, cmd: str) -> int:
    from chorus_ros.core.datasets import check_labels_map, load_labels_map, open_scene, parse_views
    from chorus_ros.core.metrics.report import dataset_markdown
    from chorus_ros.core.metrics.scenes import SceneEvalConfig, evaluate_scenes

    lm = load_labels_map(a.labels_map) if a.labels_map else None
    views = parse_views(a.views)
    scenes = [open_scene(root, map_path=a.map, views=views, labels_map=lm, check_map_keys=False) for root in a.dataset]
    check_labels_map(lm, scenes)
    for s in scenes:
        print(f"{s.name}: {len(s)} views, {len(s.gaussians)} Gaussians ({s.layout} layout); not given to the "
              f"model: {', '.join(s.ignored_properties) or 'nothing'}", file=sys.stderr)
    _note_plain_maps(scenes, a.checkpoint)
    res = evaluate_scenes(_factory(a.checkpoint, a.device, a.min_opacity, a.instance_image, a.rotations,
                 a.height_prior_weight, a.fusion, a.snap_radius), scenes,
                          SceneEvalConfig(min_alpha=a.min_alpha, chunks=a.chunks, contact_views=a.contact_views),
                          progress=not a.no_progress)
    setup = (f"Checkpoint `{a.checkpoint}`; scene folders {', '.join(f'`{p}`' for p in a.dataset)}"
             + (f", views `{a.views}`" if a.views else "") + (f", labels map `{a.labels_map}`" if a.labels_map else "")
             + f". Shared alpha threshold {res.total.min_alpha:g}; {res.total.n_views} views; about "
             f"{res.total.n_gaussians} Gaussians per scene; " + ("one feed-forward encode per scene." if a.chunks <= 1
                                                                 else f"each scene added in {a.chunks} slabs."))
    _outputs(a, res, lambda plots: dataset_markdown(res, title=a.title or "Evaluation on scene folders", command=cmd,
                                                    setup=setup, plots=plots, heading_level=2 if a.section else 1,
                                                    report_path=None if a.out == "-" else a.out))
    return 0


def _suite(a, cmd: str) -> int:
    from chorus_ros.core.metrics.shift_suite import (ShiftSuiteConfig, evaluate_shift_suite, shift_suite_json,
                                                     shift_suite_markdown)

    from chorus_ros.core.metrics.evaluation import EvalConfig

    d = EvalConfig()
    cfg = ShiftSuiteConfig(target_gaussians=a.gaussians)  # 320x240 views unless --size is given
    if list(a.size) != [d.width, d.height]:
        cfg.width, cfg.height = a.size
    if a.shifts:
        cfg.shifts = list(a.shifts)
    if a.suite_seeds:
        cfg.seeds = list(a.suite_seeds)
    cfg.ground_truth = a.suite_ground_truth
    runs = [("checkpoint", a.checkpoint)] if a.checkpoint else [
        tuple(s.split("=", 1)) if "=" in s else (Path(s).name, s) for s in a.ablation]
    cache: dict = {}
    results = {name: evaluate_shift_suite(_factory(ckpt, a.device, a.min_opacity, a.instance_image, a.rotations,
                 a.height_prior_weight, a.fusion, a.snap_radius), cfg, cache=cache,
                                          progress=not a.no_progress)
               for name, ckpt in runs}
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(shift_suite_json(results), indent=1) + "\n", encoding="utf-8")
    if a.plots:  # rgb | ground truth | prediction | instances of the first view of every shift
        from chorus_ros.core.metrics.plots import contact_sheet_png
        for name, per in results.items():
            for shift, r in per.items():
                if r.contact:
                    contact_sheet_png(Path(a.plots) / f"{name}_{shift}.png", r.contact[:1], title=f"{name}: {shift}")
    _write(shift_suite_markdown(results, cfg, cmd), a.out, a.section)
    return 0


def _seeds(a, ap, cmd: str) -> int:
    from chorus_ros.core.metrics.evaluation import EvalConfig, ablation_markdown, evaluate_checkpoint, evaluation_markdown

    d = EvalConfig()
    try:
        n_views = int(a.views) if a.views is not None else d.loop_views + d.random_views
    except ValueError:
        ap.error(f"--views {a.views!r}: with --seeds it is a number of views per scene")
    loop = max(1, round(n_views * 2 / 3))
    cfg = EvalConfig(seeds=a.seeds, target_gaussians=a.gaussians, loop_views=loop, random_views=max(0, n_views - loop),
                     width=a.size[0], height=a.size[1], chunks=a.chunks, device=a.device, min_alpha=a.min_alpha)
    runs = [("demo", a.checkpoint)] if a.checkpoint else [tuple(s.split("=", 1)) if "=" in s else (Path(s).name, s)
                                                         for s in a.ablation]
    cache: dict = {}
    progress = None if a.no_progress else (lambda s: print(s, file=sys.stderr))
    results = [evaluate_checkpoint(name, _factory(ckpt, cfg.device, a.min_opacity, a.instance_image, a.rotations,
                 a.height_prior_weight, a.fusion, a.snap_radius), cfg, cache, progress=progress,
                                   contact_views=a.contact_views) for name, ckpt in runs]
    if a.checkpoint:
        _outputs(a, results[0].dataset,
                 lambda plots: evaluation_markdown(results[0], cfg, cmd, plots=plots, title=a.title,
                                                   heading_level=2 if a.section else 1,
                                                   report_path=None if a.out == "-" else a.out))
    else:
        _write(ablation_markdown(results, cfg, cmd), a.out, a.section)
    return 0


if __name__ == "__main__":
    sys.exit(main())

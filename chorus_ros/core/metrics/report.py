"""Markdown report of :func:`~chorus_ros.core.metrics.scenes.evaluate_scenes`, and replacement of
one marked section of an existing markdown file (so generated tables can live inside a
hand-written document such as ``docs/evaluation.md``)."""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

__all__ = ["dataset_markdown", "replace_section", "DEFINITIONS"]

DEFINITIONS = """\
Definitions (percent). Pixels where the map's accumulated alpha is below the shared threshold are
unlabeled in the prediction and void in the ground truth; ground truth that maps to no model
class is void. mIoU / mAcc / oAcc come from one confusion matrix over all views (rows ground
truth); mIoU averages the classes that occur in the ground truth or the prediction, mIoU (present)
only those that occur in the ground truth (ScanNet protocol); fg- variants leave out wall, floor,
ceiling. PQ / SQ / RQ: panoptic quality over thing classes, per view, segments matched at IoU > 0.5
within a class, accumulated over views. id cons.: per ground-truth object, the share of its pixels
over all views that carry its majority predicted id, averaged over objects. 3D mIoU: each
Gaussian's decoded class against its ground-truth class (only when the PLY carries labels;
"present" as above).
objects: decoded objects of thing classes / ground-truth instances whose class maps to a thing.
query top-1: for each class present in the ground truth, the class name is queried and passes when the top
object is mostly (> 50 %) made of that class (its Gaussians' ground truth when the map is
labelled, else the ground truth of the pixels it covers)."""


def _p(x) -> str:
    return "n/a" if x is None or not math.isfinite(float(x)) else f"{100 * float(x):.1f}"


_COLS = ("| {} | mIoU | mIoU (present) | mAcc | oAcc | fg-mIoU | PQ | SQ | RQ | id cons. | 3D mIoU | 3D mIoU (present) "
         "| query top-1 | objects (pred / gt) | views | encode s | render ms/view |\n"
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")


def _row(s) -> str:
    sem, pq = s.semantic, s.panoptic
    s3 = _p(s.semantic_3d.miou) if s.semantic_3d is not None else "n/a"
    s3p = _p(s.semantic_3d.miou_present) if s.semantic_3d is not None else "n/a"
    rm = f"{s.render_ms_per_view:.0f}" if math.isfinite(s.render_ms_per_view) else "n/a"
    return (f"| {s.name} | {_p(sem.miou)} | {_p(sem.miou_present)} | {_p(sem.macc)} | {_p(sem.oacc)} | "
            f"{_p(sem.fg_miou)} | {_p(pq.pq)} | {_p(pq.sq)} | {_p(pq.rq)} | {_p(s.consistency.object_mean)} | {s3} | {s3p} | "
            f"{_p(s.query_top1)} | {s.n_pred_objects} / {s.n_gt_instances} | {s.n_views} | {s.encode_s:.2f} | {rm} |\n")


def dataset_markdown(result, *, title: str = "Evaluation", command: str = "", setup: str = "",
                     plots: dict | None = None, report_path: str | Path | None = None,
                     heading_level: int = 1, total_label: str | None = None) -> str:
    """Markdown: setup line, one row per scene plus the pooled row (always, named ``total_label``,
    when given; else ``all`` with more than one scene), per-class IoU/Acc, query
    details, ignored PLY properties, class mapping, plots (linked relative to ``report_path``)
    and the definitions."""
    h = "#" * heading_level
    out = f"{h} {title}\n\n"
    if command:
        out += f"Produced by `{command}`.\n\n"
    if setup:
        out += setup.rstrip() + "\n\n"
    t = result.total
    if not setup:
        out += (f"Shared alpha threshold {t.min_alpha:g}; {t.n_views} views; about {t.n_gaussians} Gaussians per "
                "scene.\n\n")
    out += _COLS.format("scene") + "".join(_row(s) for s in result.scenes)
    if total_label or len(result.scenes) > 1:
        out += _row(t).replace(f"| {t.name} |", f"| **{total_label or 'all'}** |", 1)
    if not t.has_language:
        out += "\nThe checkpoint has no language head: nothing can be labelled.\n"
    ign = sorted({p for s in result.scenes for p in s.ignored_properties})
    if ign:
        out += f"\nPLY properties not given to the model (ground truth and other extras): {', '.join(ign)}.\n"
    for s in result.scenes:
        void = sorted(n for n, m in s.mapping.items() if m is None)
        renamed = sorted(f"{n} -> {m}" for n, m in s.mapping.items() if m is not None and m != n)
        if renamed or void:
            out += f"\n{s.name}: ground-truth classes mapped by the labels map: {', '.join(renamed) or 'none'}"
            out += f"; void (no model class): {', '.join(void) or 'none'}.\n"
    out += f"\n{h}# Per-class IoU and accuracy (all scenes)\n\n| class | IoU | Acc | 3D IoU |\n|---|---|---|---|\n"
    s3 = t.semantic_3d
    for i, n in enumerate(result.class_names):
        iou, acc = t.semantic.iou[i], t.semantic.acc[i]
        i3 = s3.iou[i] if s3 is not None else float("nan")
        if not (math.isfinite(iou) or math.isfinite(acc) or math.isfinite(i3)):
            continue
        out += f"| {n} | {_p(iou)} | {_p(acc)} | {_p(i3)} |\n"
    if t.query_details:
        out += f"\n{h}# Query top-1\n\n| query | top object made of the class | by | pass |\n|---|---|---|---|\n"
        for q, d in t.query_details.items():
            out += f"| {q} | {_p(d['share'])} % | {d['by']} | {'yes' if d['pass'] else 'no'} |\n"
    if plots:
        out += f"\n{h}# Plots\n\n"
        base = Path(report_path).parent if report_path else Path(".")
        for key, cap in (("confusion", "confusion matrix"), ("iou", "per-class IoU"),
                         ("contact", "rgb | ground truth | prediction | instances")):
            if key in plots:
                rel = os.path.relpath(Path(plots[key]).resolve(), base.resolve())
                out += f"![{cap}]({Path(rel).as_posix()})\n\n"
    return out + "\n" + DEFINITIONS + "\n"


_MARK = "<!-- chorus-eval:{} {} -->"


def replace_section(path: str | Path, name: str, text: str) -> str:
    """Put ``text`` between ``<!-- chorus-eval:NAME begin -->`` and ``... end -->`` markers in
    ``path`` (appended, with markers, when the file or the section does not exist yet); the rest of
    the file is kept. Returns the new file contents (also written)."""
    p = Path(path)
    old = p.read_text(encoding="utf-8") if p.is_file() else ""
    b, e = _MARK.format(name, "begin"), _MARK.format(name, "end")
    block = f"{b}\n{text.rstrip()}\n{e}"
    pat = re.compile(re.escape(b) + r".*?" + re.escape(e), re.S)
    new = pat.sub(lambda _m: block, old, count=1) if pat.search(old) else (old.rstrip() + "\n\n" if old else "") + block
    new = new.rstrip() + "\n"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(new, encoding="utf-8")
    return new

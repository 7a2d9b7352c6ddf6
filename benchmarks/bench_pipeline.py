"""Perception pipeline: cost of decoding on top of the encoder, on the CPU.

* Per-Gaussian decoding of a whole synthetic room: class scores (cosine against K=18 text
  embeddings), a label-set switch (text encoding of the new names + re-scoring + regrouping,
  no encoder), instance grouping of the whole map vs the incremental regrouping of a 1% change
  (the objects around one changed spot), and an object query.
* ``PerceptionPipeline.encode`` after a 1% change with the real encoder (when the incremental
  encoder is available), split into encoder / scores / instances.
* One output view (labels + instances + colours) vs a plain RGB render of the same view.
* One output view with the shipped fusion decoder (``per_view.fusion: rendered``) vs off, with
  the real demo encoder (when ``checkpoints/demo/fusion`` exists).

Features are oracle-like (text embedding of the true class and one prototype per true instance,
plus noise) so grouping works on realistic object layouts. Run:
``python benchmarks/bench_pipeline.py [--quick]``. Medians of repeated runs in this process;
torch single-threaded (as bench_map.py) so both sides of each ratio are measured alike.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from chorus_ros.core.decode.instances import InstanceConfig, InstanceDecoder  # noqa: E402
from chorus_ros.core.decode.semantic import SemanticConfig, SemanticDecoder  # noqa: E402
from chorus_ros.core.text import TextEncoderSpec, build_text_encoder  # noqa: E402


def _median(fn, reps: int) -> float:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def _scene(n: int, seed: int = 7):
    from chorus_ros.core.synthetic import SceneConfig, generate_scene
    return generate_scene(SceneConfig(seed=seed, target_gaussians=n))


def _features(scene, text, noise: float = 0.05):
    g = scene.gaussians
    gen = torch.Generator().manual_seed(0)
    lang = text.encode(scene.labels.names)[g.extras["label"]]
    lang = lang + noise * torch.randn(lang.shape, generator=gen)
    ninst = int(g.extras["instance"].max()) + 1
    protos = torch.nn.functional.normalize(torch.randn(ninst, 16, generator=gen), dim=-1)
    obj = protos[g.extras["instance"]] + noise * torch.randn(len(g), 16, generator=gen)
    return lang, obj


def _decode_section(sizes: list[int], reps: int) -> str:
    text = build_text_encoder(TextEncoderSpec(tiny=True, prompt_template="{}"))
    rows = []
    for n in sizes:
        scene = _scene(n)
        g = scene.gaussians
        lang, obj = _features(scene, text)
        dec = SemanticDecoder(text, scene.labels, SemanticConfig())
        stuff = [i for i, s in enumerate(scene.labels.stuff) if s]
        t_scores = _median(lambda: dec.decode(lang), reps)
        lab = dec.decode(lang)
        inst = InstanceDecoder(InstanceConfig())

        def full(prev=None):
            start = torch.zeros(len(g), dtype=torch.long) if prev is None else prev
            return inst.regroup(g.means, obj, lab.label, start, stuff_label_ids=stuff, lang_feats=lang,
                                confidence=lab.confidence, gaussian_ids=g.ids, scales=g.scales)
        t_full = _median(full, reps)
        base = full().instance_ids
        # a 1% change: the Gaussians nearest to one thing's centre
        things = [i for i, info in scene.instances.items() if not info.stuff]
        c = g.means[g.extras["instance"] == things[len(things) // 2]].mean(0)
        k = max(1, len(g) // 100)
        seed = torch.zeros(len(g), dtype=torch.bool)
        seed[torch.topk(-(g.means - c).norm(dim=1), k).indices] = True
        res = inst.regroup(g.means, obj, lab.label, base, region=seed, stuff_label_ids=stuff, lang_feats=lang,
                           confidence=lab.confidence, gaussian_ids=g.ids, scales=g.scales)
        t_inc = _median(lambda: inst.regroup(g.means, obj, lab.label, base, region=seed, stuff_label_ids=stuff,
                                             lang_feats=lang, confidence=lab.confidence, gaussian_ids=g.ids,
                                             scales=g.scales), reps)
        new_names = list(reversed(scene.labels.names))

        def switch():
            dec.set_labels(new_names)
            out = dec.decode(lang)
            inst.regroup(g.means, obj, out.label, base, stuff_label_ids=stuff, lang_feats=lang,
                         confidence=out.confidence, gaussian_ids=g.ids, scales=g.scales)
            dec.set_labels(scene.labels)
        t_switch = _median(switch, reps)
        recs = inst.records(scene.labels.names)
        q = text.encode(["chair"])[0]
        emb = torch.from_numpy(np.stack([r.embedding for r in recs]))
        t_query = _median(lambda: torch.argsort(emb @ q, descending=True)[:5], reps * 5)
        rows.append(f"| {len(g):,} | {1e3 * t_scores:.1f} | {1e3 * t_full:.0f} | {1e3 * t_inc:.0f} "
                    f"({int(res.region.sum()):,} G) | {t_full / t_inc:.1f}x | {1e3 * t_switch:.0f} | "
                    f"{len(recs)} | {1e6 * t_query:.0f} |")
    return ("### Decoding cost per map (CPU, 1 thread)\n\n"
            "| Gaussians | scores K=18 (ms) | instances, whole map (ms) | instances, 1% change (ms) "
            "| speed-up | label switch, no encoder (ms) | objects | query (us) |\n"
            "|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
            "The 1% change regroups the changed Gaussians plus every object touching them (whole "
            "objects and the stuff surface they stand on), so its cost depends on the neighbourhood.\n")


def _encode_section(n: int, reps: int) -> str:
    try:
        from chorus_ros.core.encoder import ChorusEncoder, EncoderConfig
        import chorus_ros.core.encoder.incremental  # noqa: F401  (skip the section without it)
    except ImportError as e:
        return f"### Pipeline encode after a 1% change\n\nSkipped: {e}\n"
    from chorus_ros.core.gaussians import GaussianArrays
    from chorus_ros.core.map import MapConfig
    from chorus_ros.core.pipeline import PerceptionPipeline, PipelineConfig
    text = build_text_encoder(TextEncoderSpec(tiny=True, prompt_template="{}"))
    # four rooms side by side (a flat): a 1% change is local to one room
    rooms = [_scene(n // 4, seed=7 + i) for i in range(4)]
    parts, off = [], 0
    for i, sc in enumerate(rooms):
        r = sc.gaussians
        parts.append(GaussianArrays(r.means + torch.tensor([9.0 * i, 0.0, 0.0]), r.sh, r.opacities, r.log_scales,
                                    r.quats, r.ids + off))
        off += len(r)
    plain = GaussianArrays.concat(parts)
    g = plain
    torch.manual_seed(0)
    model = ChorusEncoder(EncoderConfig())
    pipe = PerceptionPipeline(PipelineConfig(map=MapConfig(sh_degree=0)), model, text, rooms[0].labels)
    pipe.apply_update(plain, None, full=True)
    t = time.perf_counter()
    s_full = pipe.encode()
    t_full = time.perf_counter() - t
    k = max(1, len(g) // 100)
    rows = []
    for r in range(reps):
        idx = torch.randperm(len(g), generator=torch.Generator().manual_seed(r))[:1]
        c = g.means[idx[0]]
        near = torch.topk(-(g.means - c).norm(dim=1), k).indices
        moved = plain.index(near)
        moved = GaussianArrays(moved.means + 0.01, moved.sh, moved.opacities, moved.log_scales, moved.quats, moved.ids)
        pipe.apply_update(moved, None)
        t = time.perf_counter()
        s = pipe.encode()
        rows.append((time.perf_counter() - t, s))
    med = sorted(rows, key=lambda x: x[0])[len(rows) // 2]
    s = med[1]
    return ("### Pipeline encode after a 1% change (four rooms side by side, random-init encoder, CPU)\n\n"
            "| Gaussians | full encode (s) | 1% update (s) | speed-up | of which encoder / scores / instances (s) "
            "| Gaussians re-encoded | regrouped |\n|---|---|---|---|---|---|---|\n"
            f"| {len(g):,} | {t_full:.2f} | {med[0]:.2f} | {t_full / med[0]:.1f}x | {s.seconds_encode:.2f} / "
            f"{s.seconds_semantic:.3f} / {s.seconds_instances:.2f} | {s.n_encoded:,} | {s.regrouped_gaussians:,} |\n\n"
            f"(Full encode: {s_full.seconds_encode:.2f} s encoder, {s_full.seconds_semantic:.3f} s scores, "
            f"{s_full.seconds_instances:.2f} s instances.)\n")


def _render_section(n: int, reps: int, size: tuple[int, int]) -> str:
    from chorus_ros.core.map import MapConfig
    from chorus_ros.core.pipeline import PerceptionPipeline, PipelineConfig
    from chorus_ros.core.render import RenderSettings, render
    from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory
    text = build_text_encoder(TextEncoderSpec(tiny=True, prompt_template="{}"))
    scene = _scene(n)
    lang, obj = _features(scene, text)

    class Oracle:
        def __init__(self, m):
            self.m = m

        def encode_full(self):
            self.m.take_dirty()
            ids = self.m.arrays().ids.long()
            self.m.set_attribute("feat.language", lang[ids])
            self.m.set_attribute("feat.object", obj[ids])
            return type("R", (), {"updated_slots": torch.arange(len(ids)), "n_encoded": len(ids), "full": True})()
        update = encode_full

    cfg = PipelineConfig(map=MapConfig(sh_degree=0), incremental=None, render=RenderSettings(backend="reference"))
    pipe = PerceptionPipeline(cfg, None, text, scene.labels, incremental_factory=Oracle)
    pipe.apply_update(scene.gaussians, None, full=True)
    pipe.encode()
    traj = make_trajectory(scene, TrajectoryConfig(loop_views=1, random_views=0, width=size[0], height=size[1]))
    cam = traj.cameras[0]
    t_rgb = _median(lambda: render(scene.gaussians, cam, RenderSettings(backend="reference")), reps)
    t_view = _median(lambda: pipe.render_view(cam), reps)
    return ("### One output view (reference renderer, CPU)\n\n"
            "| Gaussians | size | RGB render (s) "
            "| render_view: 18 score channels + top index + decode (s) | ratio |\n"
            "|---|---|---|---|---|\n"
            f"| {len(scene.gaussians):,} | {size[0]}x{size[1]} | {t_rgb:.2f} | {t_view:.2f} "
            f"| {t_view / t_rgb:.2f}x |\n")


def _fusion_section(n: int, reps: int, sizes: list[tuple[int, int]]) -> str:
    """One output view with the shipped fusion decoder on (``per_view.fusion: rendered``) against
    off, with the real demo encoder (skipped without checkpoints/demo/fusion)."""
    from chorus_ros.core.decode.fusion import FUSION_DIR, PerViewConfig
    from chorus_ros.core.pipeline import PerceptionPipeline, PipelineConfig
    from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory
    ckpt = REPO / "checkpoints" / "demo"
    if not (ckpt / FUSION_DIR / "fusion.json").is_file():
        return "### One output view with the fusion decoder\n\nskipped: checkpoints/demo has no fusion/ decoder\n"
    scene = _scene(n)
    pipe = PerceptionPipeline.from_checkpoint(ckpt, PipelineConfig())
    pipe.apply_update(scene.gaussians, None, full=True)
    pipe.encode()
    rows = []
    for w, h in sizes:
        cam = make_trajectory(scene, TrajectoryConfig(loop_views=1, random_views=0, width=w, height=h)).cameras[0]
        t = {}
        for mode in ("off", "rendered"):
            pipe.config.per_view = PerViewConfig(fusion=mode)
            pipe.render_view(cam)                               # warm-up
            t[mode] = _median(lambda: pipe.render_view(cam), reps)
        rows.append(f"| {len(scene.gaussians):,} | {w}x{h} | {t['off']:.2f} | {t['rendered']:.2f} "
                    f"| {t['rendered'] / t['off']:.2f}x |")
    return ("### One output view with the fusion decoder (checkpoints/demo, reference renderer, CPU)\n\n"
            "| Gaussians | size | render_view, fusion off (s) | fusion 'rendered' (s) | ratio |\n"
            "|---|---|---|---|---|\n" + "\n".join(rows) + "\n")


def main(quick: bool = False) -> str:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sizes = [20_000] if quick else [50_000, 200_000]
        reps = 2 if quick else 3
        out = "## Perception pipeline (decoding)\n\n" + _decode_section(sizes, reps) + "\n"
        out += _encode_section(20_000 if quick else 200_000, reps) + "\n"
        out += _render_section(20_000 if quick else 100_000, reps, (80, 60) if quick else (320, 240)) + "\n"
        out += _fusion_section(20_000 if quick else 100_000, reps, [(80, 60)] if quick else [(320, 240), (640, 480)])
        return out
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    print(main(quick="--quick" in sys.argv))

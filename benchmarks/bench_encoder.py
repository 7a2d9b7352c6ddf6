"""Chorus encoder: full-pass inference time and memory, and incremental vs full re-encoding.

* Full pass of the default encoder (random weights: the cost does not depend on them) on
  synthetic rooms of 50K and 200K Gaussians: median wall time and the peak resident-memory
  increase of the pass (Linux ``VmHWM`` after resetting it through ``/proc/self/clear_refs``).
* A 200K-Gaussian map -- a building of synthetic rooms laid out on a grid, as a robot's map of
  one floor -- held in a :class:`GaussianMap`; spatially local changes of a given fraction of
  the map (the Gaussians nearest to a point, moved by 3 cm and recoloured; and for 1 % also
  "the robot maps a new region": the Gaussians nearest to a point on the building's edge
  arrive as new ids), each followed by :meth:`IncrementalEncoder.update`, against
  :meth:`IncrementalEncoder.encode_full` of the same map.

Run: ``python benchmarks/bench_encoder.py [--quick]``. torch runs single-threaded here (restored
afterwards): on small shared machines the intra-op pool's spin-waiting threads make timings
erratic (10x slower under contention), and both sides of every ratio are measured the same way.
"""
from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from chorus_ros.core.encoder import ChorusEncoder, EncoderConfig  # noqa: E402
from chorus_ros.core.encoder.features import voxelize  # noqa: E402
from chorus_ros.core.encoder.incremental import IncrementalConfig, IncrementalEncoder  # noqa: E402
from chorus_ros.core.gaussians import GaussianArrays  # noqa: E402
from chorus_ros.core.map import GaussianMap, MapConfig  # noqa: E402

FRACTIONS = (0.001, 0.01, 0.05, 0.2, 0.5)


# ------------------------------------------------------------------------------ scenes
def _room(seed: int, n: int) -> GaussianArrays:
    try:
        from chorus_ros.core.synthetic import SceneConfig, generate_scene
    except ImportError:  # pragma: no cover - the synthetic package is part of the repo
        return _random_room(seed, n)
    g = generate_scene(SceneConfig(seed=seed, target_gaussians=n)).gaussians
    return GaussianArrays(g.means, g.sh[:, :1], g.opacities, g.log_scales, g.quats)


def _random_room(seed: int, n: int) -> GaussianArrays:
    """Fallback: surface-like Gaussians on the floor and walls of a 6 x 5 x 2.7 m room."""
    gen = torch.Generator().manual_seed(seed)
    size = torch.tensor([6.0, 5.0, 2.7])
    p = torch.rand(n, 3, generator=gen) * size
    face = torch.randint(0, 5, (n,), generator=gen)
    p[face == 0, 2] = 0.0
    p[face == 1, 0] = 0.0
    p[face == 2, 0] = size[0]
    p[face == 3, 1] = 0.0
    p[face == 4, 1] = size[1]
    return GaussianArrays(p, torch.randn(n, 1, 3, generator=gen), torch.randn(n, generator=gen),
                          torch.log(0.01 + 0.04 * torch.rand(n, 3, generator=gen)), torch.randn(n, 4, generator=gen))


def building(n_total: int, per_room: int, seed: int = 100, workers: int = 1) -> GaussianArrays:
    """Rooms on a grid (0.3 m apart), ``n_total`` Gaussians in all, ids 0..n-1. ``workers`` > 1
    generates the rooms in that many processes (same result; scripts/gpu_check.py's 1M map)."""
    k = max(1, round(n_total / per_room))
    cols = math.ceil(math.sqrt(k))
    args = [(seed + i, n_total // k) for i in range(k)]
    if workers > 1:
        import multiprocessing
        with multiprocessing.get_context("spawn").Pool(min(workers, k)) as pool:
            rooms = pool.starmap(_room, args)
    else:
        rooms = (_room(*a) for a in args)
    parts, x0, y0, row_h = [], 0.0, 0.0, 0.0
    for i, g in enumerate(rooms):
        ext = g.means.max(0).values - g.means.min(0).values
        if i and i % cols == 0:
            x0, y0, row_h = 0.0, y0 + row_h + 0.3, 0.0
        shift = torch.tensor([x0, y0, 0.0]) - g.means.min(0).values * torch.tensor([1.0, 1.0, 0.0])
        parts.append(GaussianArrays(g.means + shift, g.sh, g.opacities, g.log_scales, g.quats))
        x0 += float(ext[0]) + 0.3
        row_h = max(row_h, float(ext[1]))
    g = GaussianArrays.concat(parts)
    return GaussianArrays(g.means, g.sh, g.opacities, g.log_scales, g.quats, torch.arange(len(g), dtype=torch.int64))


# ------------------------------------------------------------------------------ measuring
def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _full_pass(model: ChorusEncoder, g: GaussianArrays, reps: int) -> tuple[float, float, float]:
    """(median wall s, median CPU s, peak RSS increase MiB) of ``model(g)``."""
    wall, cpu, peak = [], [], float("nan")
    with torch.no_grad():
        model(g)  # warm-up
        for i in range(reps):
            ok = i == 0 and _reset_peak()
            base = _rss_kb("VmRSS")
            t, c = time.perf_counter(), time.thread_time()
            out = model(g)
            cpu.append(time.thread_time() - c)
            wall.append(time.perf_counter() - t)
            if ok:
                peak = (_rss_kb("VmHWM") - base) / 1024
            del out
    return statistics.median(wall), statistics.median(cpu), peak


def _timed(fn):
    t, c = time.perf_counter(), time.thread_time()
    r = fn()
    return r, time.perf_counter() - t, time.thread_time() - c


def _nearest(means: torch.Tensor, point: torch.Tensor, k: int) -> torch.Tensor:
    d = (means[:, :2] - point[:2].to(means.device)).norm(dim=1)
    return torch.topk(d, k, largest=False).indices


def _local_edit(gmap: GaussianMap, centre: torch.Tensor, k: int, sign: float) -> None:
    """Move the ``k`` Gaussians nearest to ``centre`` (xy) by 3 cm along x and recolour them
    (on the map's device; also scripts/gpu_check.py's edits)."""
    g = gmap.arrays()
    idx = _nearest(g.means, centre, k)
    upd = GaussianArrays(g.means[idx] + sign * torch.tensor([0.03, 0.0, 0.0], device=g.means.device),
                         g.sh[idx] + 0.1 * sign,
                         g.opacities[idx].clone(), g.log_scales[idx].clone(), g.quats[idx].clone(), g.ids[idx].clone())
    gmap.update(upd)


def main(quick: bool = False) -> str:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _main(quick)
    finally:
        torch.set_num_threads(threads)


def _scenarios(gmap: GaussianMap, inc: IncrementalEncoder, big: GaussianArrays, reps: int):
    """Run every change scenario on ``gmap``; yields (name, changed, last EncodeResult, wall, cpu)."""
    n = len(big)
    lo, hi = big.means.min(0).values, big.means.max(0).values
    centre = (lo + hi) / 2
    for frac in FRACTIONS:
        k = max(1, int(round(frac * n)))
        walls, cpus, res = [], [], None
        for rep in range(reps):
            _local_edit(gmap, centre, k, 1.0 if rep % 2 == 0 else -1.0)
            res, w, c = _timed(inc.update)
            walls.append(w)
            cpus.append(c)
        yield f"local edit {frac * 100:g} %", k, res, statistics.median(walls), statistics.median(cpus)
        if frac == 0.01:
            # the robot maps a new region: the 1 % nearest to the middle of the building's east
            # edge are removed, encoded, and arrive again under new ids
            edge = torch.tensor([float(hi[0]), float(centre[1]), 0.0])
            walls, cpus = [], []
            for rep in range(reps):
                g = gmap.arrays()
                idx = _nearest(g.means, edge, k)
                reg = g.index(idx)
                reg = GaussianArrays(reg.means.clone(), reg.sh.clone(), reg.opacities.clone(),
                                     reg.log_scales.clone(), reg.quats.clone(), reg.ids.clone())
                gmap.remove(reg.ids)
                inc.update()
                gmap.add(GaussianArrays(reg.means, reg.sh, reg.opacities, reg.log_scales, reg.quats,
                                        reg.ids + 10_000_000 * (rep + 1)))
                res, w, c = _timed(inc.update)
                walls.append(w)
                cpus.append(c)
            yield "new region at the edge 1 %", k, res, statistics.median(walls), statistics.median(cpus)


def _main(quick: bool) -> str:
    torch.manual_seed(0)
    cfg = EncoderConfig()
    model = ChorusEncoder(cfg).eval()
    rf = model.receptive_field
    n_big = 40_000 if quick else 200_000
    per_room = 20_000 if quick else 25_000
    reps = 1 if quick else 3
    block = 0.25
    lines = ["## Encoder: full pass and incremental updates", ""]
    lines.append(f"Default `EncoderConfig` ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
                 f"channels {list(cfg.channels)}, {cfg.voxel_size * 100:.0f} cm voxels); receptive field derived "
                 f"from the modules: {rf.network_voxels} voxels for the U-Net, {rf.voxels} voxels with "
                 f"interpolation = **{rf.metres:.2f} m** (L-inf). CPU, torch single-threaded; medians of "
                 f"{reps} run(s); CPU = this thread's CPU time (what an idle core would take; wall time "
                 f"on a shared machine adds waiting).")
    lines += ["", "| scene | Gaussians | voxels | full pass wall (s) | full pass CPU (s) | peak RSS increase (MiB) |",
              "|---|---|---|---|---|---|"]
    sizes = [(f"one room, {n_big // 4000}K" if quick else "one room, 50K", n_big // 4 if quick else 50_000, True),
             (f"building of rooms, {n_big // 1000}K", n_big, False)]
    big, room, t_fwd = None, None, float("nan")
    for name, n, single in sizes:
        g = _room(7, n) if single else building(n, per_room)
        nv = len(voxelize(g.means, cfg.voxel_size))
        w, c, peak = _full_pass(model, g, reps)
        lines.append(f"| {name} | {len(g)} | {nv} | {w:.2f} | {c:.2f} | {peak:.0f} |")
        if single:
            room = g
        else:
            big, t_fwd = g, c
    assert big is not None
    n = len(big)
    lines += ["", f"Incremental updates of the {n // 1000}K-Gaussian building map (`GaussianMap` with "
              f"{block:g} m dirty blocks) against a full re-encode: **full** = one forward pass of the whole map "
              f"({t_fwd:.2f} s CPU). 'cached' (default) keeps per-level U-Net activations and recomputes each "
              "layer only within its own reach of the change; 'halo' re-encodes the change plus twice the "
              "receptive field from scratch.", "",
              "| mode | change | changed Gaussians | features rewritten | update wall (s) | update CPU (s) "
              "| full / update (CPU) |", "|---|---|---|---|---|---|---|"]
    for mode in ("cached", "halo"):
        gmap = GaussianMap(MapConfig(sh_degree=0, block_size=block, initial_capacity=n + 1024))
        gmap.add(big)
        inc = IncrementalEncoder(model, gmap, IncrementalConfig(mode=mode))
        (_, w_full, c_full) = _timed(inc.update)
        if mode == "cached":
            cache_mb = inc.cache_bytes() / 2**20
            t_enc_full = c_full
        for name, k, res, w, c in _scenarios(gmap, inc, big, reps):
            if mode == "halo" and name not in ("local edit 0.1 %", "local edit 1 %", "new region at the edge 1 %"):
                continue
            how = " (full)" if res.full else ""
            lines.append(f"| {mode} | {name} | {k} | {res.updated_slots.numel()}{how} | {w:.3f} | {c:.3f} | "
                         f"**{t_fwd / c:.1f}x** |")
    lines.append("")
    lines.append(f"'cached' holds {cache_mb:.0f} MiB of activations for this map; its first (full) encode, "
                 f"which fills them, took {t_enc_full:.2f} s CPU. The cost of an update grows with the area "
                 "within the receptive field of the change (features rewritten), not with the number of "
                 "changed Gaussians.")
    lines += _switch_over(model, big, block)
    assert room is not None
    lines += _ensemble(model, room, block)
    return "\n".join(lines) + "\n"


def _ensemble(model: ChorusEncoder, room: GaussianArrays, block: float) -> list[str]:
    """Cost of the rotation ensemble (``incremental.rotations``, chorus_ros.core.encoder.ensemble):
    first (full) encode and a 1 % local edit, against the plain encoder's, on one room."""
    n = len(room)
    room = GaussianArrays(room.means, room.sh, room.opacities, room.log_scales, room.quats,
                          torch.arange(n, dtype=torch.int64))
    centre = (room.means.min(0).values + room.means.max(0).values) / 2
    k = max(1, n // 100)
    out = ["", f"### Rotation ensemble (`incremental.rotations`; one room, {n // 1000}K Gaussians)", "",
           "The encoder averaged over K copies of the map rotated about the vertical (docs/generalisation.md, "
           "\"A rotation ensemble at encode time\"); K > 1 runs the 'halo' path. Ratios are to the plain "
           "encoder's default ('cached', K = 1) in the same run.", "",
           "| rotations | mode | first encode CPU (s) | 1 % local edit CPU (s) | first encode / plain | edit / plain |",
           "|---|---|---|---|---|---|"]
    base = None
    for rot, mode in ((1, "cached"), (1, "halo"), (4, "halo"), (8, "halo")):
        gmap = GaussianMap(MapConfig(sh_degree=0, block_size=block, initial_capacity=n + 1024))
        gmap.add(room)
        inc = IncrementalEncoder(model, gmap, IncrementalConfig(mode=mode, rotations=rot))
        _, _, c_full = _timed(inc.update)
        _local_edit(gmap, centre, k, 1.0)
        res, _, c_edit = _timed(inc.update)
        if base is None:
            base = (c_full, c_edit)
        out.append(f"| {rot} | {mode} | {c_full:.2f} | {c_edit:.3f}{' (full)' if res.full else ''} | "
                   f"**{c_full / base[0]:.1f}x** | **{c_edit / base[1]:.1f}x** |")
    return out


SWITCH_FRACTIONS = (0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8)


def _switch_over(model: ChorusEncoder, big: GaussianArrays, block: float) -> list[str]:
    """Update time against the changed fraction: the cached path forced (``full_fraction = 1``,
    ``cost_factor = 1``), the default (switches to a full pass when its estimate says so) and a
    full pass, on one map; each change is a spatially local edit (the Gaussians nearest the
    middle), undone between measurements."""
    n = len(big)
    lo, hi = big.means.min(0).values, big.means.max(0).values
    centre = (lo + hi) / 2
    encs = {}
    for name, cfg in (("forced", IncrementalConfig(full_fraction=1.0, cost_factor=1.0)), ("auto", IncrementalConfig())):
        gmap = GaussianMap(MapConfig(sh_degree=0, block_size=block, initial_capacity=n + 1024))
        gmap.add(big)
        inc = IncrementalEncoder(model, gmap, cfg)
        _, _, c_full = _timed(inc.update)
        encs[name] = (gmap, inc)
    out = ["", f"### Bounded update cost: update time against the changed fraction ({n // 1000}K-Gaussian map)", "",
           f"A full pass of this map: **{c_full:.2f} s CPU**. 'forced' = the cached path whatever the change; "
           "'auto' = the default `IncrementalConfig` (full pass when the estimated cost, cost_factor x Gaussians "
           "within the receptive field of the change / map size, exceeds `full_fraction` = 0.7 of a full pass; "
           "cost_factor starts at 1.5 and is refined from measured times).", "",
           "| changed | Gaussians changed | affected (within R) | forced cached CPU (s) | auto CPU (s) | auto path "
           "| estimate | auto / full |", "|---|---|---|---|---|---|---|---|"]
    switch, ratios = None, []
    for frac in SWITCH_FRACTIONS:
        k = max(1, int(round(frac * n)))
        row = {}
        for name, (gmap, inc) in encs.items():
            _local_edit(gmap, centre, k, 1.0)
            res, _, c = _timed(inc.update)
            row[name] = (res, c)
            _local_edit(gmap, centre, k, -1.0)
            inc.update()
        (rf, cf), (ra, ca) = row["forced"], row["auto"]
        path = "full" if ra.full else "cached"
        if ra.full and switch is None:
            switch = frac
        ratios.append(ca / c_full)
        out.append(f"| {frac * 100:g} % | {k} | {int(ra.stats.get('affected', 0))} | {cf:.3f} | {ca:.3f} | {path} | "
                   f"{ra.stats.get('estimate', float('nan')):.2f} | {ca / c_full:.2f} |")
    learned = encs["auto"][1].cost_factor
    worst = max(r for r in ratios)
    where = f"from a {switch * 100:g} % local edit on" if switch is not None else "for none of these edits"
    out += ["", f"Switch-over: the default takes the full pass {where} (learned cost_factor {learned:.2f}); "
            f"the most expensive 'auto' update cost **{worst:.2f}x** a full pass."]
    return out


if __name__ == "__main__":
    print(main(quick="--quick" in sys.argv))

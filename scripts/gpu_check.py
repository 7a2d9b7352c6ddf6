#!/usr/bin/env python3
"""The prepared GPU check: one command, within a time budget, on a lent GPU machine.

    PYTHONUNBUFFERED=1 python3 scripts/gpu_check.py --out $OUT --budget 480     # on the GPU machine
    python scripts/gpu_check.py --device cpu --tiny --out /tmp/gpu_dry           # plumbing, here

Parts, in order (``--parts`` picks some), each in its own process with its own time cap (the
budget left caps it too), so one failing or hanging part does not stop the rest:

  env         versions (Python, torch, CUDA, gsplat, spconv, cumm), GPU, spconv on CUDA
  encode      default encoder on a 1M-Gaussian building map: full pass; one pass of the 8-rotation ensemble; incremental 0.1 % / 1 % edits
  build       gsplat's CUDA extension (compiled on first use, cached in --ext-dir)
  pytest      ``pytest -m gpu`` over the test files that hold GPU tests (junit XML)
  parity      gsplat against the reference rasteriser (chorus_ros.core.render.parity) at a few sizes
  render_fps  gsplat per-view time against map size (benchmarks/bench_render.py's timing)
  fusion      VDVI fusion decoder per view including its splat (issue 10: >= 100 FPS at 640x480)
  train       chorus-train steps/s on config/train/demo.yaml (sizes GPU training)

After every part ``gpu_results.json`` (schema: chorus_ros.tools.gpu_report), ``gpu_section.md``
(the docs/benchmarks.md section) and ``gpu_check.log`` are rewritten in ``--out``; ``pytest`` adds
``pytest_junit.xml``, ``build`` gsplat's compiled extension (``gsplat_cuda.so.xz`` + ``.json``),
which a later run loads instead of compiling (``--gsplat-so``, scripts/gpu_boot/sitecustomize.py). With ``--device cpu`` the CUDA-only parts (build, pytest, parity) report
``skipped: no CUDA``; the others run only with ``--tiny`` (toy sizes, on the CPU: a dry run of
the code, never reported as GPU numbers) and are skipped otherwise. ``--pack`` (default
``.gpu/site.tar.xz`` with ``--device cuda``, made by scripts/gpu_pack.sh) is unpacked into
``--site`` and put first on the parts' PYTHONPATH; ``.gpu/shared`` becomes CHORUS_SHARED_DIR.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tarfile
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from chorus_ros.tools import gpu_report  # noqa: E402  (no torch import)

CAPS_S = {"env": 60, "encode": 120, "build": 360, "pytest": 150, "parity": 90, "render_fps": 90,
          "fusion": 60, "train": 120}
"""Time cap per part (seconds); the budget left, less the reserves of the parts after it, caps it too."""
RESERVE_S = {"env": 0, "encode": 0, "build": 0, "pytest": 40, "parity": 30, "render_fps": 30, "fusion": 25,
             "train": 0}
"""Seconds kept back for each later part, so that a long gsplat build or a slow part still leaves
the later parts time to measure something (train, the optional part, reserves nothing)."""
CUDA_ONLY = ("build", "pytest", "parity")
"""Parts that cannot run without CUDA (gsplat); the others have a CPU dry run with --tiny."""
assert tuple(CAPS_S) == gpu_report.PART_NAMES
MIN_PART_S = 10.0
"""A part that would get less time than this is skipped ('time budget spent')."""
OVERLAP_WITH_BUILD = ("encode",)
"""Parts that run while gsplat compiles (they do not use gsplat): the build starts with the first of
them, on all cores but the first MEASURE_CORES, and the part is pinned to those (so the encoder's
time does not add to the build's; neither has been timed on a GPU yet)."""
MEASURE_CORES = 4


class Skipped(Exception):
    """A part that cannot run here (the message says why)."""


class Ctx:
    """What a part gets: device ('cuda' | 'cpu'), tiny sizes, output and scratch folders, the time
    (``time.time()``) at which it will be stopped, and :meth:`partial` to leave what it measured
    so far where the orchestrator finds it if the part is stopped."""

    def __init__(self, device: str, tiny: bool, out: Path, tmp: Path, deadline: float,
                 partial_file: Path | None = None) -> None:
        self.device, self.tiny, self.out, self.tmp, self.deadline = device, tiny, out, tmp, deadline
        self.partial_file = partial_file
        self.last_partial: dict = {}

    def partial(self, data: dict) -> None:
        """Save the data measured so far (reported with the status 'timeout' or 'failed' if the part
        is stopped or fails later)."""
        self.last_partial = data
        if self.partial_file is not None:
            tmp = self.partial_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, default=str))
            tmp.replace(self.partial_file)

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def left(self) -> float:
        return self.deadline - time.time()


# ============================================================================ helpers for parts
def _need_cuda(ctx: Ctx) -> None:
    import torch
    if ctx.cuda and not torch.cuda.is_available():
        raise Skipped("no CUDA (torch.cuda.is_available() is False)")


BUILD_ENV = "CHORUS_GSPLAT_BUILD"
"""Set by the orchestrator for the parts after ``build``: 'ok', or why gsplat is not built (then
those parts do not touch gsplat: importing its backend would start the long compile again)."""


def _gsplat_build_failed() -> str | None:
    state = os.environ.get(BUILD_ENV, "ok")
    return None if state == "ok" else state


def _need_gsplat(ctx: Ctx) -> None:
    _need_cuda(ctx)
    failed = _gsplat_build_failed()
    if failed:
        raise Skipped(f"gsplat's CUDA extension is not built ({failed})")
    from chorus_ros.core.render import available_backends
    if "gsplat" not in available_backends():
        raise Skipped("gsplat does not import here")
    from gsplat.cuda._backend import _C
    if _C is None:
        raise Skipped("gsplat's CUDA extension is not built (see the build part)")


def _sync(ctx: Ctx):
    import torch
    return torch.cuda.synchronize if ctx.cuda else (lambda: None)


def _timed(fn, sync, reps: int) -> list[float]:
    """Wall seconds of ``reps`` calls of ``fn``, synchronised (benchmarks/bench_render.py's timing)."""
    return _bench_module("bench_render")._time(fn, reps, sync)[0]


def _peak_mib(ctx: Ctx, reset: bool = False) -> float | None:
    import torch
    if not ctx.cuda:
        return None
    if reset:
        torch.cuda.reset_peak_memory_stats()
        return None
    return torch.cuda.max_memory_allocated() / 2**20


def _bench_module(name: str):
    bench_dir = str(REPO / "benchmarks")
    if bench_dir not in sys.path:
        sys.path.insert(0, bench_dir)
    return __import__(name)


def _render_backend(ctx: Ctx) -> str:
    return "gsplat" if ctx.cuda else "reference"


def gpu_test_files(test_dir: Path = REPO / "test") -> list[str]:
    """Test files (relative to the repo) that hold a ``gpu`` marker, sorted."""
    marker = re.compile(r"pytest\.mark\.gpu\b")
    found = [p for p in sorted(test_dir.rglob("test_*.py"))
             if marker.search(p.read_text(encoding="utf-8", errors="replace"))]
    return [str(p.relative_to(test_dir.parent)) for p in found]


def parse_junit(path: Path) -> dict:
    """Counts and per-test outcomes of a pytest junit XML file."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    cases = []
    for suite in suites:
        for case in suite.iter("testcase"):
            outcome, message = "passed", ""
            for tag in ("failure", "error", "skipped"):
                el = case.find(tag)
                if el is not None:
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                    message = el.get("message") or (el.text or "")
                    break
            out = case.find("system-out")
            if outcome == "passed" and out is not None and out.text:
                message = out.text.strip()  # the parity tests print their measured differences
            name = case.get("name", "?")
            cls = case.get("classname", "")
            cases.append({"name": f"{cls.rsplit('.', 1)[-1]}::{name}" if cls else name, "outcome": outcome,
                          "seconds": float(case.get("time", 0.0)), "message": message[:600]})
    count = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
    return {"tests": len(cases), "passed": count["passed"], "failed": count["failed"], "errors": count["error"],
            "skipped": count["skipped"], "cases": cases}


# ============================================================================ parts
def part_env(ctx: Ctx) -> dict:
    """Versions and the machine: python, torch, torch_cuda, cuda_available, gpu_name,
    gpu_capability, gpu_memory_gib, driver, nvcc, cpu, cpu_count, packages{...}, spconv_cuda."""
    import importlib.metadata as md
    import torch
    from chorus_ros.tools.bench import machine_info
    info = machine_info()
    out = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "cuda_available": torch.cuda.is_available(), "cpu": info.get("CPU"), "cpu_count": os.cpu_count(),
           "ram": info.get("RAM"), "os": info.get("OS")}
    packages = {}
    for key, names in (("gsplat", ["gsplat"]), ("spconv", ["spconv-cu126", "spconv"]),
                       ("cumm", ["cumm-cu126", "cumm"]), ("open_clip", ["open_clip_torch"]), ("numpy", ["numpy"])):
        for n in names:
            try:
                packages[key] = f"{n} {md.version(n)}"
                break
            except md.PackageNotFoundError:
                continue
        else:
            packages[key] = "not installed"
    out["packages"] = packages
    try:
        r = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, timeout=20)
        out["nvcc"] = r.stdout.strip().splitlines()[-1] if r.returncode == 0 else "not working"
    except (OSError, subprocess.TimeoutExpired, IndexError):
        out["nvcc"] = "not found"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out.update(gpu_name=p.name, gpu_capability=f"{p.major}.{p.minor}", gpu_memory_gib=p.total_memory / 2**30,
                   gpu_sm_count=p.multi_processor_count)
        try:
            r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=20)
            out["driver"] = r.stdout.strip() or "?"
        except (OSError, subprocess.TimeoutExpired):
            out["driver"] = "nvidia-smi not found"
        try:  # the encoder's sparse convolutions: does spconv run on this GPU?
            from chorus_ros.core.encoder._spconv_compat import import_spconv
            sp = import_spconv()
            conv = sp.SubMConv3d(4, 8, 3, indice_key="s").cuda()
            idx = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 2], [0, 5, 5, 5]], dtype=torch.int32, device="cuda")
            x = sp.SparseConvTensor(torch.randn(3, 4, device="cuda"), idx, [8, 8, 8], 1)
            y = conv(x).features
            y.sum().backward()
            torch.cuda.synchronize()
            out["spconv_cuda"] = f"ok (SubMConv3d forward+backward, output {tuple(y.shape)})"
        except Exception as e:  # noqa: BLE001 - reported, the other parts still run
            out["spconv_cuda"] = f"failed: {type(e).__name__}: {e}"[:300]
    else:
        out["spconv_cuda"] = "not tried (no CUDA)"
    return out


def part_build(ctx: Ctx) -> dict:
    """gsplat's JIT CUDA extension: build_s (compile or load), cached (a build was there),
    max_jobs, arch_list, smoke (a 100-Gaussian render)."""
    _need_cuda(ctx)
    ext = Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions"))
    cached = any(ext.rglob("gsplat_cuda*.so")) if ext.is_dir() else False
    t = time.perf_counter()
    from gsplat.cuda._backend import _C
    build_s = time.perf_counter() - t
    if _C is None:
        raise RuntimeError("gsplat's CUDA extension did not build (see the log above)")
    prebuilt = os.environ.get("CHORUS_GSPLAT_SO") if "gsplat.csrc" in sys.modules else None
    source = f"prebuilt {prebuilt}" if prebuilt else ("an earlier build in " + str(ext) if cached else "compiled")
    import numpy as np
    import torch
    from chorus_ros.core.geometry import Camera
    from chorus_ros.core.render import RenderSettings, render
    from chorus_ros.core.render.parity import random_gaussians
    cam = Camera.from_c2w(np.eye(4), Camera.intrinsics_from_fov(32, 24, 60.0), 32, 24)
    o = render(random_gaussians(100, seed=0).to("cuda"), cam, RenderSettings(backend="gsplat"))
    torch.cuda.synchronize()
    out = {"build_s": build_s, "cached": cached or bool(prebuilt), "source": source,
           "max_jobs": os.environ.get("MAX_JOBS"), "arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST"),
           "ext_dir": str(ext), "smoke": f"gsplat render ok, alpha mean {float(o.alpha.mean()):.3f}"}
    if not prebuilt:
        out["returned"] = _return_extension(ctx, ext)
    return out


def _return_extension(ctx: Ctx, ext: Path) -> str:
    """Put the built extension into --out as gsplat_cuda.so.xz + gsplat_cuda.json (torch, Python,
    arch), for later calls to load instead of compiling (scripts/gpu_boot/sitecustomize.py)."""
    import hashlib
    import importlib.metadata as md
    import lzma
    import torch
    built = sorted(ext.rglob("gsplat_cuda.so"), key=lambda q: q.stat().st_mtime)
    if not built:
        return "no gsplat_cuda.so found under " + str(ext)
    so = built[-1]
    data = lzma.compress(so.read_bytes(), preset=6)
    if len(data) > 15 * 2**20:  # the device tool returns files of at most 16 MiB
        return f"not returned: {so} is {len(data) / 2**20:.1f} MiB compressed"
    (ctx.out / "gsplat_cuda.so.xz").write_bytes(data)
    meta = {"torch": torch.__version__, "python": platform.python_version(), "gsplat": md.version("gsplat"),
            "arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST"), "sha256": hashlib.sha256(so.read_bytes()).hexdigest(),
            "bytes": so.stat().st_size}
    (ctx.out / "gsplat_cuda.json").write_text(json.dumps(meta, indent=1))
    return f"gsplat_cuda.so.xz ({len(data) / 2**20:.1f} MiB) + gsplat_cuda.json"


def part_pytest(ctx: Ctx) -> dict:
    """``pytest -m gpu``: files, returncode, tests, passed, failed, errors, skipped, cases[]."""
    _need_cuda(ctx)
    files = gpu_test_files()
    if not files:
        raise Skipped("no test file holds a gpu marker")
    junit = ctx.out / "pytest_junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rfEs", "-p", "no:cacheprovider",
           "-o", "junit_logging=system-out", f"--junitxml={junit}", *files]
    note = ""
    if _gsplat_build_failed():  # the GPU tests of gsplat would compile it again, inside the cap
        cmd[5:5] = ["-k", "not gsplat"]
        note = f"tests with 'gsplat' in their name deselected: the extension is not built ({_gsplat_build_failed()})"
    print("$", " ".join(cmd), flush=True)
    try:
        proc = subprocess.run(cmd, cwd=REPO, timeout=max(5.0, ctx.left() - 5.0))
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    if not junit.is_file():
        raise RuntimeError(f"pytest wrote no junit XML (return code {rc})")
    res = parse_junit(junit)
    if rc not in (0, 1):
        raise RuntimeError(f"pytest ended with {rc}: {res['passed']} passed, {res['failed']} failed, "
                           f"{res['errors']} errors")
    return {"files": files, "returncode": rc, **res, **({"reason": note} if note else {})}


def _guitar():
    from chorus_ros.core.gaussians import GaussianArrays
    from chorus_ros.core.ply import read_ply
    path = Path(os.environ.get("CHORUS_SHARED_DIR") or REPO.parent / "shared") / "data" / "3dgs" / "guitar.ply"
    if not path.is_file():
        return None
    g, _ = read_ply(path)
    return GaussianArrays(g.means, g.sh, g.opacities, g.log_scales, g.quats)


def part_parity(ctx: Ctx) -> dict:
    """gsplat vs reference. limits; renders[]: case, gaussians, width, height, channels, outputs
    {name: {max, p999}}, radii_equal, top_index_equal, ref_alpha_mean, pass; gradients[]: case,
    relative {input: rel L2}, pass."""
    _need_gsplat(ctx)
    import numpy as np
    import torch
    from chorus_ros.core.geometry import Camera, look_at_pose
    from chorus_ros.core.render import RenderSettings
    from chorus_ros.core.render.parity import (PARITY_LIMITS, compare_backends, gradient_differences,
                                               parity_passes, random_gaussians)

    def cam(w, h, c2w=None):
        return Camera.from_c2w(np.eye(4) if c2w is None else c2w, Camera.intrinsics_from_fov(w, h, 60.0), w, h)

    lim = PARITY_LIMITS
    cases = [("random 20K, 320x240, 16 features", random_gaussians(20_000, 11), cam(320, 240), 16),
             ("random 100K, 640x480, 40 features (2 passes)", random_gaussians(100_000, 12), cam(640, 480), 40)]
    guitar = _guitar()
    if guitar is not None:
        centre = guitar.means.median(dim=0).values.double().numpy()
        c2w = look_at_pose(centre + np.array([0.0, 2.0, 0.5]), centre, up=(0, 0, 1))
        cases.append((f"guitar.ply (all {len(guitar):,}), 320x240, 8 features", guitar, cam(320, 240, c2w), 8))
    renders = []
    for label, g, c, ch in cases:
        feats = torch.randn(len(g), ch, generator=torch.Generator().manual_seed(ch))
        d, _, _ = compare_backends(g, c, RenderSettings(background=(0.1, 0.5, 0.9)), feats)
        ok = parity_passes(d)
        renders.append({"case": label, "gaussians": len(g), "width": c.width, "height": c.height, "channels": ch,
                        **d, "pass": bool(ok)})
        print("parity", json.dumps(renders[-1]), flush=True)
        ctx.partial({"limits": lim, "renders": renders})
    gradients = []
    for label, n, w, h, ch in (("random 300, 64x48, 4 features", 300, 64, 48, 4),
                               ("random 5K, 160x120, 8 features", 5000, 160, 120, 8)):
        g = random_gaussians(n, seed=n, degree=1)
        feats = torch.randn(n, ch, generator=torch.Generator().manual_seed(n + 1))
        rel = gradient_differences(g, cam(w, h), feats, seed=6)
        gradients.append({"case": label, "relative": rel, "pass": max(rel.values()) < lim["grad_rel"]})
        print("gradients", json.dumps(gradients[-1]), flush=True)
        ctx.partial({"limits": lim, "renders": renders, "gradients": gradients})
    return {"limits": lim, "renders": renders, "gradients": gradients}


def part_render_fps(ctx: Ctx) -> dict:
    """Per-view render time against map size. rows[]: gaussians, width, height, views, runs,
    ms_median, ms_min, fps, peak_mib; what (how it was measured)."""
    import torch
    from chorus_ros.core.synthetic import SceneConfig, generate_scene
    br = _bench_module("bench_render")
    if ctx.cuda:
        _need_gsplat(ctx)
    sizes = [2_000] if ctx.tiny else [10_000, 100_000, 300_000, 1_000_000]
    resolutions = [(64, 48)] if ctx.tiny else [(320, 240), (640, 480)]
    views, reps = (1, 2) if ctx.tiny else (4, 10)
    what = (f"Synthetic rooms (seed 7), {views} views of the generator's camera loop x {reps} repetitions, "
            f"RGB + depth + alpha, no gradients, backend {_render_backend(ctx)} "
            f"(`benchmarks/bench_render.py` timing, synchronised per call).")
    rows = []
    for n in sizes:
        scene = generate_scene(SceneConfig(target_gaussians=n, seed=7))
        for w, h in resolutions:
            cams = br._cameras(scene, w, h, views)
            _peak_mib(ctx, reset=True)
            if ctx.cuda:
                wall = br._bench_gsplat(scene, cams, reps)
            else:
                wall, _ = br._bench_reference(scene, cams, torch.get_num_threads(), reps, grad=False)
            med = statistics.median(wall)
            rows.append({"gaussians": len(scene.gaussians), "width": w, "height": h, "views": len(cams),
                         "runs": len(wall), "ms_median": med * 1e3, "ms_min": min(wall) * 1e3, "fps": 1.0 / med,
                         "peak_mib": _peak_mib(ctx)})
            print("render_fps", json.dumps(rows[-1]), flush=True)
            ctx.partial({"rows": rows, "what": what})
        del scene
        if ctx.cuda:
            torch.cuda.empty_cache()
    return {"rows": rows, "what": what}


def part_encode(ctx: Ctx) -> dict:
    """Encoder cost. full: gaussians, voxels, ms_median, runs, peak_mib, rotations8_ms; first_update_ms,
    cache_mib; incremental[]: change, changed, rewritten, full, ms_median, full_over_update."""
    import torch
    from chorus_ros.core.encoder import ChorusEncoder, EncoderConfig
    from chorus_ros.core.encoder.features import voxelize
    from chorus_ros.core.encoder.incremental import IncrementalEncoder
    from chorus_ros.core.map import GaussianMap, MapConfig
    _need_cuda(ctx)
    be = _bench_module("bench_encoder")
    n, per_room = (4_000, 2_000) if ctx.tiny else (1_000_000, 25_000)
    reps = 1 if ctx.tiny else 3
    sync = _sync(ctx)
    t = time.perf_counter()
    workers = 1 if ctx.tiny else max(1, min(8, len(os.sched_getaffinity(0))))
    big = be.building(n, per_room, workers=workers)
    print(f"encode: building map of {len(big):,} Gaussians in {time.perf_counter() - t:.1f} s", flush=True)
    torch.manual_seed(0)
    cfg = EncoderConfig()
    model = ChorusEncoder(cfg).eval().to(ctx.device)
    g = big.to(ctx.device)
    nv = len(voxelize(g.means, cfg.voxel_size))
    with torch.no_grad():
        model(g)  # warm-up (cuDNN/spconv algorithm choice, allocator)
        _peak_mib(ctx, reset=True)
        wall = _timed(lambda: model(g), sync, reps)
    full_ms = statistics.median(wall) * 1e3
    full = {"gaussians": len(g), "voxels": nv, "ms_median": full_ms, "runs": reps, "peak_mib": _peak_mib(ctx)}
    print("encode full", json.dumps(full), flush=True)
    ctx.partial({"full": full})
    from chorus_ros.core.encoder.ensemble import RotationEnsemble
    ens = RotationEnsemble(model, 8).eval()    # the rotation ensemble (incremental.rotations 8): one timed pass
    with torch.no_grad():
        full["rotations8_ms"] = _timed(lambda: ens(g), sync, 1)[0] * 1e3
    print("encode rotation ensemble (8)", json.dumps({"ms": full["rotations8_ms"]}), flush=True)
    ctx.partial({"full": full})
    del g, ens
    gmap = GaussianMap(MapConfig(sh_degree=0, block_size=0.25, initial_capacity=n + 1024, device=ctx.device))
    gmap.add(big)
    inc = IncrementalEncoder(model, gmap)
    (first,) = _timed(inc.update, sync, 1)
    centre = (big.means.min(0).values + big.means.max(0).values) / 2
    rows = []
    for frac in (0.001, 0.01):
        k = max(1, round(frac * n))
        res, wall = None, []
        for rep in range(max(reps, 2)):
            be._local_edit(gmap, centre, k, 1.0 if rep % 2 == 0 else -1.0)
            sync()
            t = time.perf_counter()
            res = inc.update()
            sync()
            wall.append(time.perf_counter() - t)
        ms = statistics.median(wall) * 1e3
        rows.append({"change": f"local edit {frac * 100:g} %", "changed": k, "rewritten": int(res.updated_slots.numel()),
                     "full": bool(res.full), "ms_median": ms, "runs": len(wall), "full_over_update": full_ms / ms})
        print("encode incremental", json.dumps(rows[-1]), flush=True)
        ctx.partial({"full": full, "first_update_ms": first * 1e3, "incremental": rows})
    what = (f"Default `EncoderConfig` (random weights: the cost does not depend on them), "
            f"{'CUDA' if ctx.cuda else 'CPU'}, a building of synthetic rooms "
            f"(`benchmarks/bench_encoder.py`'s `building`); full pass = `ChorusEncoder(g)` without gradients, "
            f"median of {reps} after a warm-up; updates: the Gaussians nearest the map's centre moved 3 cm "
            f"and recoloured, then `IncrementalEncoder.update()`.")
    return {"full": full, "first_update_ms": first * 1e3, "cache_mib": inc.cache_bytes() / 2**20,
            "incremental": rows, "what": what}


def part_fusion(ctx: Ctx) -> dict:
    """Fusion decoder per view (as PerceptionPipeline.render_view with per_view.fusion='rendered').
    rows[]: gaussians, width, height, channels, passes, splat_top_ms, splat_ms, decoder_ms,
    decoder_bf16_ms, view_ms, view_fps, goal_met; what."""
    import torch
    from chorus_ros.core.decode.fusion import FusionConfig, FusionDecoder, fusion_logits
    from chorus_ros.core.render import RenderSettings, render
    from chorus_ros.core.synthetic import SceneConfig, generate_scene
    from chorus_ros.core.synthetic.classes import CLASSES
    br = _bench_module("bench_render")
    if ctx.cuda:
        _need_gsplat(ctx)
    dev, sync = ctx.device, _sync(ctx)
    sizes = [2_000] if ctx.tiny else [100_000, 1_000_000]
    resolutions = [(64, 48)] if ctx.tiny else [(320, 240), (640, 480)]
    views, reps = (1, 2) if ctx.tiny else (4, 5)
    k, step = len(CLASSES), 32  # class scores + the decoder's projected features, 32 channels a pass
    gen = torch.Generator().manual_seed(0)
    fd = FusionDecoder(FusionConfig()).eval().to(dev)
    text = torch.randn(k, fd.config.embed_dim, generator=gen).to(dev)
    settings = RenderSettings(backend=_render_backend(ctx))
    what = (f"Per view on {'the GPU' if ctx.cuda else 'the CPU'} ({_render_backend(ctx)} backend), random weights "
            f"(the cost does not depend on them): splat of the {k} class scores + the decoder's "
            f"{fd.config.feat_channels} projected language features ({step} channels a pass, as the pipeline), "
            "the top-index image the pipeline uses for instance ids (the reference rasteriser's, also on CUDA), then "
            "`FusionDecoder` + cosine logits + softmax + arg-max. 'per view' = all of it end to end; medians over up "
            f"to {views} views x {reps} (fewer where a view is slow: 'runs'). The pipeline's CPU post-processing "
            "(instance snapping, colouring, message conversion) is not included.")
    rows = []
    for n in sizes:
        scene = generate_scene(SceneConfig(target_gaussians=n, seed=7))
        g = scene.gaussians.to(dev)
        probs = torch.softmax(torch.randn(len(g), k, generator=gen), 1).to(dev)
        lang = torch.randn(len(g), fd.config.language_dim, generator=gen).to(dev)

        @torch.no_grad()
        def splat(cam, top: bool):
            chans = torch.cat([probs, fd.project_gaussians(lang)], 1)
            out = render(g, cam, settings, features=chans[:, :step].contiguous(), return_top_index=top)
            parts = [out.features] + [render(g, cam, settings, features=chans[:, i:i + step].contiguous()).features
                                      for i in range(step, chans.shape[1], step)]
            return out, torch.cat(parts, -1)

        @torch.no_grad()
        def decode(out, feat_img, bf16: bool = False):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and ctx.cuda):
                emb = fd(out.rgb.permute(2, 0, 1)[None], feat_img[..., k:].permute(2, 0, 1)[None],
                         out.alpha[None, None], out.depth[None, None])
                p = torch.softmax(fusion_logits(emb, text, 0.05), dim=1)[0]
            return p.max(0)

        for w, h in resolutions:
            cams = br._cameras(scene, w, h, views)
            t = {"splat_top": [], "splat": [], "decoder": [], "decoder_bf16": [], "view": []}
            # warm-up, and the time of one round of all measurements, to fit the runs into the cap
            # (the top-index image comes from the pure-torch rasteriser and can be slow)
            t0 = time.perf_counter()
            out, feat_img = splat(cams[0], True)
            splat(cams[0], False)
            decode(out, feat_img)
            decode(out, feat_img, True)
            decode(*splat(cams[0], True))
            sync()
            one_round = 1.5 * (time.perf_counter() - t0)
            configs_left = len(resolutions) * (len(sizes) - sizes.index(n)) - resolutions.index((w, h))
            alloc = max(0.0, ctx.left() - 15.0) / configs_left
            n_cams = max(1, min(len(cams), int(alloc / one_round)))
            n_reps = max(1, min(reps, int(alloc / (one_round * n_cams))))
            for cam in cams[:n_cams]:
                out, feat_img = splat(cam, True)
                t["splat_top"] += _timed(lambda: splat(cam, True), sync, n_reps)
                t["splat"] += _timed(lambda: splat(cam, False), sync, n_reps)
                t["decoder"] += _timed(lambda: decode(out, feat_img), sync, n_reps)
                if ctx.cuda:
                    t["decoder_bf16"] += _timed(lambda: decode(out, feat_img, True), sync, n_reps)
                t["view"] += _timed(lambda: decode(*splat(cam, True)), sync, n_reps)
            med = {key: statistics.median(v) * 1e3 if v else None for key, v in t.items()}
            rows.append({"gaussians": len(g), "width": w, "height": h, "channels": k + fd.config.feat_channels,
                         "passes": -(-(k + fd.config.feat_channels) // step),
                         **{f"{key}_ms": v for key, v in med.items()}, "view_fps": 1e3 / med["view"],
                         "goal_met": bool(1e3 / med["view"] >= 100.0) if (w, h) == (640, 480) else None,
                         "views": n_cams, "runs": len(t["view"])})
            print("fusion", json.dumps(rows[-1]), flush=True)
            ctx.partial({"rows": rows, "what": what})
        del g, scene, probs, lang
        if ctx.cuda:
            torch.cuda.empty_cache()
    return {"rows": rows, "what": what}


def part_train(ctx: Ctx) -> dict:
    """chorus-train on config/train/demo.yaml: setup_s (scene lifting), steps_timed,
    step_ms_median, steps_per_s, peak_mib, loss_first, loss_last, overrides, what."""
    import torch
    from chorus_ros.core.train import Trainer, load_train_config
    _need_cuda(ctx)
    tmp = ctx.tmp / "train"
    seeds = [0] if ctx.tiny else [0, 1]
    overrides = [f"device={ctx.device}", f"threads={min(8, os.cpu_count() or 1)}", f"data.train_seeds={seeds}",
                 f"data.cache_dir={tmp / 'lift'}", f"log.dir={tmp / 'log'}", f"checkpoint.dir={tmp / 'ckpt'}",
                 "log.tensorboard=false", "log.progress=false", "checkpoint.resume=false",
                 "checkpoint.every=1000000", "optim.steps=1000000"]
    if ctx.tiny:
        overrides += ["data.density_range=[1500, 2500]", "data.views.loop_views=2", "data.views.random_views=0",
                      "data.views.width=48", "data.views.height=36"]
    sync = _sync(ctx)
    t = time.perf_counter()
    trainer = Trainer(load_train_config(REPO / "config" / "train" / "demo.yaml", overrides))
    setup_s = time.perf_counter() - t
    print(f"train: setup (lifting {len(seeds)} scenes) {setup_s:.1f} s", flush=True)
    ctx.partial({"setup_s": setup_s, "overrides": overrides})
    losses = [trainer.train_step()["loss"] for _ in range(2)]  # warm-up
    _peak_mib(ctx, reset=True)
    wall = []
    target = 3 if ctx.tiny else 40
    while len(wall) < target and (ctx.left() > 15 or len(wall) < 3):
        sync()
        t = time.perf_counter()
        losses.append(trainer.train_step()["loss"])
        sync()
        wall.append(time.perf_counter() - t)
        med = statistics.median(wall)
        ctx.partial({"setup_s": setup_s, "steps_timed": len(wall), "step_ms_median": med * 1e3,
                     "steps_per_s": 1.0 / med, "overrides": overrides})
    med = statistics.median(wall)
    what = (f"`chorus-train --config config/train/demo.yaml` (stage align, default encoder, oracle teachers) with "
            f"{len(seeds)} training scenes; setup = building the trainer, incl. lifting the scenes' teacher targets; "
            f"then 2 warm-up steps and {len(wall)} timed steps (synchronised), one scene per step.")
    return {"setup_s": setup_s, "steps_timed": len(wall), "step_ms_median": med * 1e3, "steps_per_s": 1.0 / med,
            "peak_mib": _peak_mib(ctx), "loss_first": losses[0], "loss_last": losses[-1],
            "overrides": overrides, "what": what}


PARTS = {"env": part_env, "encode": part_encode, "build": part_build, "pytest": part_pytest,
         "parity": part_parity, "render_fps": part_render_fps, "fusion": part_fusion, "train": part_train}
assert tuple(PARTS) == gpu_report.PART_NAMES


def run_part(name: str, ctx: Ctx) -> dict:
    """Run one part here; its dict with status ok / skipped / failed and its wall seconds."""
    t = time.perf_counter()
    try:
        res = {"status": "ok", **PARTS[name](ctx)}
    except Skipped as e:
        res = {"status": "skipped", "reason": str(e)}
    except Exception as e:  # noqa: BLE001 - reported in the results, the other parts still run
        traceback.print_exc()
        res = {**ctx.last_partial, "status": "failed", "error": f"{type(e).__name__}: {e}"[:2000],
               "traceback": traceback.format_exc(limit=6)[-3000:]}
    res["seconds"] = time.perf_counter() - t
    return res


# ============================================================================ orchestration
def _unpack(pack: Path, site: Path) -> str:
    stamp = site / ".chorus-pack-stamp"
    key = f"{pack.resolve()} {pack.stat().st_size} {pack.stat().st_mtime_ns}"
    if stamp.is_file() and stamp.read_text() == key:
        return f"{pack} already unpacked in {site}"
    t = time.perf_counter()
    site.mkdir(parents=True, exist_ok=True)
    with tarfile.open(pack, "r:xz") as tf:
        tf.extractall(site, filter="tar") if sys.version_info >= (3, 12) else tf.extractall(site)
    stamp.write_text(key)
    return f"unpacked {pack} into {site} in {time.perf_counter() - t:.1f} s"


def _prebuilt_gsplat(xz: Path, site: Path) -> tuple[dict, str]:
    """Environment that makes every part load ``xz`` (gsplat_cuda.so.xz + its .json beside it)
    instead of compiling gsplat (scripts/gpu_boot/sitecustomize.py), and a line for the log."""
    import lzma
    meta_file = xz.with_name("gsplat_cuda.json")
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    so = site.parent / "chorus_gsplat_cuda.so"
    so.parent.mkdir(parents=True, exist_ok=True)
    so.write_bytes(lzma.decompress(xz.read_bytes()))
    env = {"CHORUS_GSPLAT_SO": str(so), "CHORUS_GSPLAT_SO_TORCH": str(meta.get("torch", "")),
           "CHORUS_BOOT": str(REPO / "scripts" / "gpu_boot")}
    return env, f"prebuilt gsplat extension {xz} (torch {meta.get('torch', '?')}, arch {meta.get('arch_list', '?')})"


def _child_env(site: Path | None, ext_dir: Path, extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.update(extra or {})
    boot = [env.pop("CHORUS_BOOT")] if env.get("CHORUS_BOOT") else []
    paths = boot + ([str(site)] if site else []) + [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    # torch's extension build runs `ninja` from PATH: the interpreter's own bin folder holds it
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ext_dir))
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
    shared = REPO / ".gpu" / "shared"
    if shared.is_dir():
        env.setdefault("CHORUS_SHARED_DIR", str(shared))
    try:  # build gsplat for this GPU only (its JIT build otherwise targets every visible arch)
        r = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
        cap = r.stdout.strip().splitlines()[0].strip() if r.returncode == 0 and r.stdout.strip() else ""
        if cap:
            env.setdefault("TORCH_CUDA_ARCH_LIST", cap)
    except (OSError, subprocess.TimeoutExpired):
        pass
    return env


class _Child:
    """One part running in a child process (own session, output pumped into the log)."""

    def __init__(self, name: str, args, cap: float, env: dict, tmp: Path, log, cores: list[int] | None = None):
        self.name, self.cap, self.t0 = name, cap, time.perf_counter()
        self.result_file = tmp / f"{name}.json"
        self.result_file.unlink(missing_ok=True)
        self.result_file.with_suffix(".partial.json").unlink(missing_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--result", str(self.result_file),
               "--device", args.device, "--out", str(args.out), "--tmp", str(tmp),
               "--deadline", str(time.time() + cap)]
        if args.tiny:
            cmd.append("--tiny")
        pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True, text=True, errors="replace", preexec_fn=pin)

        def pump():
            for line in self.proc.stdout:
                sys.stdout.write(line)
                log.write(line)
            sys.stdout.flush()
            log.flush()

        self.reader = threading.Thread(target=pump, daemon=True)
        self.reader.start()

    def finish(self) -> dict:
        """Wait until the part ends or its cap (from its start) is reached; its result."""
        try:
            self.proc.wait(timeout=max(0.0, self.cap - (time.perf_counter() - self.t0)))
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.reader.join(timeout=10)
        secs = time.perf_counter() - self.t0
        if timed_out:
            partial = self.result_file.with_suffix(".partial.json")
            data = json.loads(partial.read_text()) if partial.is_file() else {}
            return {**data, "status": "timeout", "reason": f"stopped at its {self.cap:.0f} s cap"
                    + (" (what it measured before is kept)" if data else ""), "seconds": secs}
        if self.result_file.is_file():
            res = json.loads(self.result_file.read_text())
            res["seconds"] = secs  # the child's own time plus its start-up
            return res
        return {"status": "failed", "error": f"the part's process ended with {self.proc.returncode} and wrote no "
                "result", "seconds": secs}


def _commit() -> str:
    try:
        r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                           text=True, timeout=10)
        if r.returncode == 0 and r.stdout.strip():
            d = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=20)
            return r.stdout.strip() + (" (with uncommitted changes)" if d.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    f = REPO / ".gpu" / "COMMIT"  # written by scripts/gpu_pack.sh (the GPU machine gets no .git)
    return f.read_text().strip() + " (from .gpu/COMMIT)" if f.is_file() else "unknown"


def _write(args, results: dict) -> None:
    results["finished"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    (args.out / gpu_report.RESULTS_FILE).write_text(json.dumps(results, indent=1, default=str))
    (args.out / gpu_report.SECTION_FILE).write_text(gpu_report.render_gpu_section(results))


def orchestrate(args) -> int:
    t0 = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.tmp or Path(os.environ.get("TMPDIR", "/tmp")) / f"chorus_gpu_check_{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    names = args.parts.split(",") if args.parts else list(PARTS)
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        raise SystemExit(f"gpu_check: unknown parts {unknown}; known: {list(PARTS)}")
    results = {"schema": gpu_report.SCHEMA, "tool": "scripts/gpu_check.py",
               "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "finished": "", "wall_s": 0.0, "budget_s": float(args.budget), "device": args.device,
               "tiny": bool(args.tiny), "gpu_measured": False, "commit": _commit(), "setup": "", "parts": {}}
    log = open(args.out / "gpu_check.log", "a", buffering=1)
    say = lambda s: (print(s, flush=True), log.write(s + "\n"))  # noqa: E731
    site = None
    pack = args.pack if args.pack is not None else (REPO / ".gpu" / "site.tar.xz" if args.device == "cuda" else None)
    if pack and str(pack) != "none":
        if not Path(pack).is_file():
            results["setup"] = f"no package pack at {pack} (make gpu-pack): using the installed packages"
        elif sys.version_info[:2] != (3, 12):
            results["setup"] = f"pack {pack} holds cp312 builds, this is Python {platform.python_version()}: not used"
        else:
            site = args.site
            try:
                results["setup"] = _unpack(Path(pack), site)
            except (OSError, tarfile.TarError) as e:
                results["setup"] = f"unpacking {pack} failed: {e}"
                site = None
    extra = {}
    so = args.gsplat_so if args.gsplat_so is not None else (REPO / ".gpu" / "gsplat_cuda.so.xz"
                                                            if args.device == "cuda" else None)
    if so and str(so) != "none" and Path(so).is_file() and not args.in_process:
        try:
            extra, line = _prebuilt_gsplat(Path(so), args.site)
            results["setup"] += f"; {line}"
        except Exception as e:  # noqa: BLE001 - unreadable file, bad xz, bad json: compile instead
            results["setup"] += f"; prebuilt gsplat extension {so} not used: {type(e).__name__}: {e}"
    env = _child_env(site, args.ext_dir, extra)
    say(f"gpu_check: {results['setup'] or 'no pack'}; parts {names}; budget {args.budget:.0f} s; device {args.device}"
        f"{' (tiny)' if args.tiny else ''}")
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    overlap = (args.device == "cuda" and not args.in_process and not args.no_overlap and "build" in names
               and ncpu >= 2 * MEASURE_CORES)
    cores = sorted(os.sched_getaffinity(0)) if overlap else []
    build = None  # the background build, while it runs
    for name in names:
        left = args.budget - (time.time() - t0)
        later = names[names.index(name) + 1:]
        cap = min(CAPS_S[name] * (0.5 if args.tiny else 1.0), left - 5.0 - sum(RESERVE_S[n] for n in later))
        pinned = None
        if overlap and build is None and name in OVERLAP_WITH_BUILD and "build" not in results["parts"]:
            after = names[names.index("build") + 1:]
            bcap = min(CAPS_S["build"], left - 5.0 - sum(RESERVE_S[n] for n in after))
            benv = dict(env, MAX_JOBS=str(len(cores) - MEASURE_CORES))
            say(f"\n===== build starts in the background (cap {bcap:.0f} s, cores {cores[MEASURE_CORES]}-{cores[-1]}); "
                f"{name} runs meanwhile on cores {cores[:MEASURE_CORES]} =====")
            build = _Child("build", args, bcap, benv, tmp, log, cores[MEASURE_CORES:])
        if build is not None and name in OVERLAP_WITH_BUILD:
            pinned = cores[:MEASURE_CORES]
        if name == "build" and build is not None:
            say(f"\n===== build: waiting for the background build (cap {build.cap:.0f} s from its start) =====")
        else:
            say(f"\n===== {name} (cap {max(cap, 0):.0f} s, {left:.0f} s of the budget left) =====")
        if name == "build" and build is not None:
            res = build.finish()
            res["overlapped_with"] = [n for n in OVERLAP_WITH_BUILD if n in results["parts"]]
            cap, build = build.cap, None
        elif args.device == "cpu" and name in CUDA_ONLY:
            res = {"status": "skipped", "reason": "no CUDA (--device cpu)", "seconds": 0.0}
        elif args.device == "cpu" and not args.tiny and name != "env":
            res = {"status": "skipped", "reason": "no CUDA (--device cpu; the CPU dry run needs --tiny, CPU "
                   "numbers come from make bench)", "seconds": 0.0}
        elif cap < MIN_PART_S:
            res = {"status": "skipped", "reason": f"time budget spent (cap {cap:.0f} s < {MIN_PART_S:.0f} s; "
                   f"{left:.0f} s of the budget left)", "seconds": 0.0}
        elif args.in_process:
            res = run_part(name, Ctx(args.device, args.tiny, args.out, tmp, time.time() + cap))
        else:
            res = _Child(name, args, cap, env, tmp, log, pinned).finish()
            if pinned and res["status"] == "ok":
                res["what"] = (res.get("what", "") + f" Ran pinned to {len(pinned)} CPU cores while gsplat's "
                               "extension compiled on the others (the GPU was otherwise idle).").strip()
        res["cap_s"] = max(cap, 0.0)
        results["parts"][name] = res
        if name == "build":
            env[BUILD_ENV] = "ok" if res["status"] == "ok" else f"build part: {res['status']}"
        say(f"===== {name}: {res['status']} in {res['seconds']:.1f} s"
            + (f" -- {res.get('reason') or res.get('error')}" if res["status"] != "ok" else ""))
        env_part = results["parts"].get("env", {})
        results["gpu_measured"] = bool(args.device == "cuda" and env_part.get("cuda_available") and not args.tiny)
        results["wall_s"] = time.time() - t0
        _write(args, results)
    say(f"\ngpu_check: done in {time.time() - t0:.0f} s; " + ", ".join(
        f"{n} {r['status']}" for n, r in results["parts"].items()) + f"; results in {args.out}")
    log.close()
    return 0 if all(r["status"] in ("ok", "skipped") for r in results["parts"].values()) else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for gpu_results.json, gpu_section.md, logs")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for all parts together (default 480)")
    ap.add_argument("--parts", default="", help=f"comma-separated subset of {','.join(PARTS)} (default all, in order)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--tiny", action="store_true", help="toy sizes (a dry run of the code, not a measurement)")
    ap.add_argument("--pack", type=Path, default=None,
                    help="site-packages tarball (scripts/gpu_pack.sh); default .gpu/site.tar.xz with --device cuda; 'none'")
    ap.add_argument("--site", type=Path, default=Path("/tmp/chorus_gpu_site"), help="where --pack is unpacked")
    ap.add_argument("--ext-dir", type=Path, default=REPO / ".cache" / "torch_extensions",
                    help="TORCH_EXTENSIONS_DIR for gsplat's build (kept on a warm machine between calls)")
    ap.add_argument("--gsplat-so", type=Path, default=None,
                    help="prebuilt gsplat extension (gsplat_cuda.so.xz returned by an earlier run's build part, "
                         "gsplat_cuda.json beside it); default .gpu/gsplat_cuda.so.xz if there; 'none'")
    ap.add_argument("--in-process", action="store_true", help="run the parts in this process (no caps; tests)")
    ap.add_argument("--no-overlap", action="store_true",
                    help=f"do not run {', '.join(OVERLAP_WITH_BUILD)} while gsplat compiles (one part at a time)")
    ap.add_argument("--tmp", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:  # one part, in a child process started by orchestrate()
        ctx = Ctx(args.device, args.tiny, args.out, args.tmp, args.deadline or time.time() + CAPS_S[args.worker],
                  partial_file=args.result.with_suffix(".partial.json"))
        res = run_part(args.worker, ctx)
        args.result.write_text(json.dumps(res, default=str))
        return 0
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())

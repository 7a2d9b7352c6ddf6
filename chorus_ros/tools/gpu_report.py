"""The "GPU" section of docs/benchmarks.md, rendered from ``scripts/gpu_check.py``'s JSON.

``scripts/gpu_check.py`` runs on a lent GPU machine and writes ``gpu_results.json`` (schema
below) and this module's rendering of it (``gpu_section.md``); back here,
``chorus-bench --gpu-results DIR`` puts the section into docs/benchmarks.md between two marker
comments, and a plain ``chorus-bench`` run keeps the section that is there. Without a GPU run
the section says that no GPU number has been measured. No torch import: this runs anywhere.

Results schema (``SCHEMA``): ``{"schema", "tool", "started", "finished", "wall_s", "budget_s",
"device", "tiny", "gpu_measured", "commit", "parts": {name: {"status": "ok" | "skipped" |
"failed" | "timeout", "seconds", "cap_s", "reason" | "error", ...part data}}}``; a part's data
is documented in the part's function in scripts/gpu_check.py.
"""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["SCHEMA", "PART_NAMES", "START", "END", "RESULTS_FILE", "SECTION_FILE", "load_results",
           "validate_results", "render_gpu_section", "merge_gpu_section", "extract_gpu_section"]

SCHEMA = 1
"""Version of the results JSON; bumped when a field changes meaning."""
PART_NAMES = ("env", "encode", "build", "pytest", "parity", "render_fps", "fusion", "train")
"""The check's parts, in the order they run."""
STATUSES = ("ok", "skipped", "failed", "timeout")
START = "<!-- gpu-check:start (generated from scripts/gpu_check.py results; do not edit) -->"
END = "<!-- gpu-check:end -->"
RESULTS_FILE = "gpu_results.json"
SECTION_FILE = "gpu_section.md"

PROCEDURE = """\
How it is run: by a session whose task is lent a GPU machine (the device tool's `status` says
`can_start_another: true`), in one call of about 11 of its 15 device minutes.

1. Here: `make gpu-pack` (`bash scripts/gpu_pack.sh`; ~10 minutes of xz the first time, seconds
   later). It writes the git-ignored `.gpu/`: `site.tar.xz` (~43 MB: the pinned cp312 wheels the
   GPU machine lacks -- gsplat 1.5.3, spconv-cu126 2.3.8 + cumm-cu126 0.7.11, open_clip_torch
   3.3.0 and small dependencies -- unpacked and re-compressed, since the spconv wheel alone is
   70 MB and the tree that travels is capped at 64 MiB), `shared/data/3dgs/guitar.ply` (a real
   scene for a parity case) and `COMMIT` (run it again right before the call: it then only
   refreshes COMMIT and guitar.ply). The rest of the tree is ~10 MB: check the sum.
2. One call of the device tool's `run` with `carry: [".gpu"]`, `timeout_s: 560` and the command
   `PYTHONUNBUFFERED=1 python3 scripts/gpu_check.py --out $OUT --budget 480`
   (or `make gpu-check GPU_OUT=$OUT`). The machine has no network; its own `python3` (3.12,
   torch + CUDA, nvcc) runs the check with the pack unpacked into /tmp first on PYTHONPATH.
   gsplat compiles its CUDA extension (minutes; for this GPU's architecture only) in the
   background while the encoder part runs pinned to 4 cores; the other parts follow one at a
   time, each in its own process under its own time cap. After every part the check rewrites
   `gpu_results.json`, `gpu_section.md` and `gpu_check.log` in `$OUT` (`pytest` adds
   `pytest_junit.xml`), so a call stopped at its limit still returns what was measured. Plan for
   no second call: the machine stays warm 30 s, and none starts with under 4 minutes left.
3. Here: `python -m chorus_ros.tools.bench --gpu-results <files_at>` rewrites this section from
   the returned `gpu_results.json`; commit docs/benchmarks.md. If `gsplat_cuda.so.xz` and
   `gsplat_cuda.json` came back too (the build part returns gsplat's compiled extension when
   it is under 15 MiB compressed), copy both into `.gpu/`: later runs load it instead of
   compiling (`scripts/gpu_boot/sitecustomize.py`; a machine with another torch compiles again).
   Keep the travelling tree under 64 MiB (`.gpu/shared` can go if it does not fit).

Parts: env (versions, GPU, spconv on CUDA); encode (the default encoder on a 1M-Gaussian
building map: full pass, incremental 0.1 % / 1 % local edits); build (gsplat's extension);
pytest (`pytest -m gpu` on the test files holding GPU tests); parity (gsplat against the
reference: colour, alpha, depth, features, weights, gradients, at several sizes); render_fps
(gsplat per view against map size, `benchmarks/bench_render.py`'s timing); fusion (the VDVI
fusion decoder per view including its splat: issue 10's >= 100 FPS goal at 640x480); train
(`chorus-train` steps/s on `config/train/demo.yaml`, to size GPU training). The CPU dry run
`make gpu-check GPU_ARGS="--device cpu --tiny"` runs the same code at toy sizes (the CUDA-only
parts report `skipped: no CUDA`); its numbers are never written here."""


# ----------------------------------------------------------------------------- I/O
def load_results(path: str | Path) -> dict:
    """Read ``gpu_results.json`` (``path`` is the file or the folder holding it) and validate it."""
    p = Path(path)
    if p.is_dir():
        p = p / RESULTS_FILE
    if not p.is_file():
        raise FileNotFoundError(f"no GPU check results at {p} (expected {RESULTS_FILE} written by scripts/gpu_check.py)")
    results = json.loads(p.read_text())
    validate_results(results)
    return results


def validate_results(results: dict) -> None:
    """Raise ValueError naming the first field that does not follow the schema."""
    if not isinstance(results, dict):
        raise ValueError(f"GPU results must be a JSON object, got {type(results).__name__}")
    if results.get("schema") != SCHEMA:
        raise ValueError(f"GPU results schema {results.get('schema')!r}, expected {SCHEMA}")
    for key, typ in (("device", str), ("tiny", bool), ("gpu_measured", bool), ("parts", dict),
                     ("started", str), ("wall_s", (int, float)), ("budget_s", (int, float))):
        if not isinstance(results.get(key), typ):
            raise ValueError(f"GPU results field {key!r} missing or not {typ}: {results.get(key)!r}")
    unknown = sorted(set(results["parts"]) - set(PART_NAMES))
    if unknown:
        raise ValueError(f"GPU results have unknown parts {unknown}; known: {list(PART_NAMES)}")
    for name, part in results["parts"].items():
        if not isinstance(part, dict) or part.get("status") not in STATUSES:
            raise ValueError(f"GPU results part {name!r}: status must be one of {STATUSES}, got "
                             f"{part.get('status') if isinstance(part, dict) else part!r}")
        if not isinstance(part.get("seconds"), (int, float)):
            raise ValueError(f"GPU results part {name!r}: 'seconds' missing")
        if part["status"] != "ok" and not isinstance(part.get("reason", part.get("error")), str):
            raise ValueError(f"GPU results part {name!r} is {part['status']} without a reason or error")


# ----------------------------------------------------------------------------- markdown
def _f(v, fmt: str = ".2f", none: str = "-") -> str:
    if v is None:
        return none
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        return format(v, fmt)
    return str(v)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    def cell(c) -> str:  # a "|" inside a cell (test messages) would split it
        return str(c).replace("|", "\\|")
    return (["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(map(cell, r)) + " |" for r in rows])


def _note(part: dict) -> str:
    text = part.get("reason") or part.get("error") or ""
    text = " ".join(str(text).split())
    return (text[:160] + "...") if len(text) > 160 else text


def _env_lines(env: dict, results: dict) -> list[str]:
    rows = [["GPU", f"{env.get('gpu_name', '?')} ({_f(env.get('gpu_memory_gib'), '.0f')} GiB, "
                    f"compute {env.get('gpu_capability', '?')}, driver {env.get('driver', '?')})"],
            ["CPU", f"{env.get('cpu', '?')}, {env.get('cpu_count', '?')} cores"],
            ["Python / torch / CUDA", f"{env.get('python', '?')} / {env.get('torch', '?')} / {env.get('torch_cuda', '?')}"
                                      f" (nvcc {env.get('nvcc', '?')})"],
            ["gsplat / spconv / cumm", " / ".join(str((env.get("packages") or {}).get(k, "?"))
                                                  for k in ("gsplat", "spconv", "cumm"))],
            ["spconv on CUDA", str(env.get("spconv_cuda", "?"))],
            ["Date", results.get("started", "?")],
            ["Commit", str(results.get("commit", "?"))],
            ["Wall time", f"{_f(results.get('wall_s'), '.0f')} s of a {_f(results.get('budget_s'), '.0f')} s budget"]]
    return _table(["Machine", ""], rows)


def _parity_lines(p: dict) -> list[str]:
    out = []
    names = ["rgb", "alpha", "depth(alpha>0.5)", "features", "weights(rel)"]
    rows = []
    for r in p.get("renders", []):
        o = r.get("outputs", {})
        rows.append([r.get("case", "?")] + [f"{_f(o.get(k, {}).get('max'), '.1e')} / {_f(o.get(k, {}).get('p999'), '.1e')}"
                                            for k in names]
                    + [_f(r.get("radii_equal"), ".4f"), _f(r.get("top_index_equal"), ".4f"), _f(r.get("pass"))])
    if rows:
        lim = p.get("limits", {})
        out += ["", f"gsplat against the reference rasteriser, |difference| max / 99.9th percentile per output "
                f"(limits of the GPU tests: max < {lim.get('max')}, 99.9th < {lim.get('p999')}, radii and top "
                f"index equal on > {lim.get('equal_share')}):", ""]
        out += _table(["case"] + names + ["radii equal", "top index equal", "within limits"], rows)
    grows = [[g.get("case", "?")] + [_f(g.get("relative", {}).get(k), ".1e")
                                     for k in ("means", "quats", "log_scales", "opacities", "sh", "features")]
             + [_f(g.get("pass"))] for g in p.get("gradients", [])]
    if grows:
        out += ["", f"Gradients, relative L2 difference (limit {p.get('limits', {}).get('grad_rel')}):", ""]
        out += _table(["case", "means", "quats", "log_scales", "opacities", "sh", "features", "within limit"], grows)
    return out


def _part_lines(name: str, part: dict) -> list[str]:
    """The part's tables: for 'ok', and for a part stopped or failed after measuring some of it."""
    if part.get("status") in ("skipped",) or not (set(part) - {"status", "seconds", "cap_s", "reason", "error",
                                                                  "traceback", "overlapped_with"}):
        return []
    if name == "pytest":
        head = (f"`pytest -m gpu` ({', '.join(part.get('files', []))}): **{part.get('passed', 0)} passed, "
                f"{part.get('failed', 0)} failed, {part.get('errors', 0)} errors, {part.get('skipped', 0)} skipped**.")
        rows = [[c.get("name", "?"), c.get("outcome", "?"), _f(c.get("seconds"), ".1f"), _note({"reason": c.get("message", "")})]
                for c in part.get("cases", [])]
        return ["", "### pytest -m gpu", "", head, ""] + _table(["test", "outcome", "s", "message"], rows)
    if name == "parity":
        return ["", "### gsplat parity"] + _parity_lines(part)
    if name == "build":
        src = part.get("source") or ("an earlier build" if part.get("cached") else "compiled")
        return ["", "### gsplat build", "",
                f"gsplat's CUDA extension: {src}, {_f(part.get('build_s'), '.0f')} s (MAX_JOBS={part.get('max_jobs')}, "
                f"TORCH_CUDA_ARCH_LIST={part.get('arch_list')}); returned for later runs: {part.get('returned', 'no')}."]
    if name == "render_fps":
        rows = [[f"{r['gaussians']:,}", f"{r['width']}x{r['height']}", _f(r.get("ms_median"), ".2f"),
                 _f(r.get("ms_min"), ".2f"), _f(r.get("fps"), ".0f"), _f(r.get("peak_mib"), ".0f"), str(r.get("runs"))]
                for r in part.get("rows", [])]
        return ["", "### Render FPS against map size", "",
                f"{part.get('what', '')}", ""] + _table(
            ["Gaussians", "resolution", "ms median", "ms min", "FPS (median)", "peak GPU MiB", "runs"], rows)
    if name == "encode":
        f = part.get("full", {})
        lines = ["", "### Encoder at 1M Gaussians", "", part.get("what", ""), ""]
        lines += _table(["pass", "Gaussians", "voxels", "ms median", "runs", "peak GPU MiB"],
                        [["full pass", f"{f.get('gaussians', 0):,}", f"{f.get('voxels', 0):,}", _f(f.get("ms_median"), ".0f"),
                          str(f.get("runs")), _f(f.get("peak_mib"), ".0f")]]
                        + ([["8-rotation ensemble (`incremental.rotations` 8)", f"{f.get('gaussians', 0):,}",
                             f"{f.get('voxels', 0):,}", _f(f.get("rotations8_ms"), ".0f"), "1", ""]]
                           if f.get("rotations8_ms") is not None else []))
        rows = [[r.get("change", "?"), f"{r.get('changed', 0):,}", f"{r.get('rewritten', 0):,}",
                 "yes" if r.get("full") else "no", _f(r.get("ms_median"), ".0f"), _f(r.get("full_over_update"), ".1f")]
                for r in part.get("incremental", [])]
        if rows:
            lines += ["", f"Incremental (`IncrementalEncoder`, cached mode; first encode, which fills the caches: "
                      f"{_f(part.get('first_update_ms'), '.0f')} ms; caches {_f(part.get('cache_mib'), '.0f')} MiB):", ""]
            lines += _table(["change", "changed Gaussians", "features rewritten", "full re-encode", "update ms median",
                             "full pass / update"], rows)
        return lines
    if name == "fusion":
        rows = [[f"{r['gaussians']:,}", f"{r['width']}x{r['height']}", str(r.get("passes")),
                 _f(r.get("splat_top_ms"), ".2f"), _f(r.get("splat_ms"), ".2f"), _f(r.get("decoder_ms"), ".2f"),
                 _f(r.get("decoder_bf16_ms"), ".2f"), _f(r.get("view_ms"), ".2f"), _f(r.get("view_fps"), ".0f"),
                 _f(r.get("goal_met"))] for r in part.get("rows", [])]
        return ["", "### Fusion decoder per view", "", part.get("what", ""), ""] + _table(
            ["Gaussians", "resolution", "splat passes", "splat + top index ms", "splat ms", "decoder fp32 ms",
             "decoder bf16 ms", "per view ms", "per view FPS", ">= 100 FPS"], rows)
    if name == "train":
        return ["", "### Training steps", "", part.get("what", ""), ""] + _table(
            ["setup s (lift)", "steps timed", "step ms median", "steps/s", "peak GPU MiB", "2000 steps would take"],
            [[_f(part.get("setup_s"), ".0f"), str(part.get("steps_timed")), _f(part.get("step_ms_median"), ".0f"),
              _f(part.get("steps_per_s"), ".2f"), _f(part.get("peak_mib"), ".0f"),
              f"{_f(2000 / part['steps_per_s'] / 60 if part.get('steps_per_s') else None, '.0f')} min"]])
    return []


def render_gpu_section(results: dict | None) -> str:
    """The whole GPU section (markers included) for ``results`` (None: no run yet)."""
    lines = [START, "## GPU (`scripts/gpu_check.py`)", ""]
    if results is None or not results.get("gpu_measured"):
        what = ("" if results is None else
                f" (the results given come from a run on device '{results.get('device')}'"
                f"{', tiny sizes' if results.get('tiny') else ''}, started {results.get('started')}: not GPU numbers)")
        lines += ["**No GPU number has been measured yet.** Every table above was measured on the CPU; the "
                  f"gsplat backend, spconv on CUDA and the >= 100 FPS fusion goal are unmeasured{what}.", ""]
        lines += [PROCEDURE, END]
        return "\n".join(lines) + "\n"
    parts = results.get("parts", {})
    lines += [f"Measured by one run of `scripts/gpu_check.py` on a lent GPU machine; every number in this "
              f"section comes from that run{' (tiny sizes)' if results.get('tiny') else ''}.", ""]
    lines += _env_lines(parts.get("env", {}), results)
    lines += ["", *_table(["part", "status", "s", "cap s", "note"],
                          [[n, parts[n]["status"], _f(parts[n].get("seconds"), ".0f"), _f(parts[n].get("cap_s"), ".0f"),
                            _note(parts[n])] for n in PART_NAMES if n in parts])]
    for n in PART_NAMES:
        if n in parts:
            lines += _part_lines(n, parts[n])
    lines += ["", "<details><summary>How this section is produced</summary>", "", PROCEDURE, "", "</details>", END]
    return "\n".join(lines) + "\n"


def extract_gpu_section(doc: str) -> str | None:
    """The GPU section of ``doc`` (markers included), or None when it has none."""
    i, j = doc.find(START), doc.find(END)
    if i < 0 or j < i:
        return None
    return doc[i:j + len(END)] + "\n"


def merge_gpu_section(doc: str, section: str) -> str:
    """``doc`` with its GPU section replaced by ``section`` (appended when it has none)."""
    i, j = doc.find(START), doc.find(END)
    if i >= 0 and j > i:
        rest = doc[j + len(END):].lstrip("\n")
        return doc[:i] + section.rstrip("\n") + "\n" + ("\n" + rest if rest else "")
    return doc.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"

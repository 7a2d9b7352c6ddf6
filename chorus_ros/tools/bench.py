"""chorus-bench: run benchmarks/bench_*.py and collect their sections into docs/benchmarks.md.

Each benchmark module defines ``main(quick: bool = False) -> str`` returning a markdown section
(tables of medians and ratios measured in that run). Modules are imported by path, one after
another in one process; a failing benchmark gets its error in its section and the rest still run
(exit status 1 if any failed). The document starts with the machine of the latest run and a
table of every section: when it was measured, on which machine, quick or not.

Each section sits between ``<!-- bench:start NAME ... -->`` and ``<!-- bench:end NAME -->``
markers. Running some benchmarks replaces only their sections; the sections of the others are
kept as they were (with their own date and machine in the table), and sections of benchmarks that
no longer exist are dropped.

    chorus-bench                      # all benchmarks -> docs/benchmarks.md
    chorus-bench --quick render map   # bench_render.py and bench_map.py (reduced sizes); the rest kept
    chorus-bench --gpu-results DIR    # only put scripts/gpu_check.py's results (DIR/gpu_results.json)
                                      # into the document's GPU section

The GPU section (:mod:`chorus_ros.tools.gpu_report`) is kept as it is when the CPU benchmarks
are run again.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import os
import pathlib
import platform
import re
import sys
import time
import traceback

from chorus_ros.tools import gpu_report, isolate_ros_env

REPO = pathlib.Path(__file__).resolve().parents[2]


def discover(bench_dir: pathlib.Path, names: list[str]) -> list[pathlib.Path]:
    """``bench_<name>.py`` files in ``bench_dir``, all (sorted) or the given names in order.

    Raises ValueError naming unknown names and listing the known ones.
    """
    found = {p.stem[len("bench_"):]: p for p in sorted(bench_dir.glob("bench_*.py"))}
    if not names:
        return list(found.values())
    wanted = [n[len("bench_"):] if n.startswith("bench_") else n for n in names]
    wanted = [n[:-3] if n.endswith(".py") else n for n in wanted]
    unknown = [n for n in wanted if n not in found]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; known: {sorted(found)}")
    return [found[n] for n in wanted]


def machine_info() -> dict[str, str]:
    """CPU model, cores, RAM, GPU (if CUDA is usable), torch and Python versions, date."""
    info = {"Date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")}
    cpu = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info["CPU"] = cpu
    info["Cores"] = f"{os.cpu_count()} logical ({len(os.sched_getaffinity(0))} usable)" \
        if hasattr(os, "sched_getaffinity") else str(os.cpu_count())
    try:
        meminfo = pathlib.Path("/proc/meminfo").read_text().split("\n", 1)[0]  # MemTotal: N kB
        info["RAM"] = f"{int(meminfo.split()[1]) / 2**20:.1f} GiB"
    except (OSError, IndexError, ValueError):
        info["RAM"] = "unknown"
    try:
        import torch

        info["torch"] = torch.__version__
        info["GPU"] = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                       else "none (CUDA not available)")
    except ImportError:
        info["torch"] = info["GPU"] = "not installed"
    info["Python"] = platform.python_version()
    info["OS"] = platform.platform()
    return info


def run_one(path: pathlib.Path, quick: bool) -> tuple[str, float, bool]:
    """Import ``path`` and call its ``main(quick=...)``: (markdown, seconds, ok)."""
    t0 = time.perf_counter()
    try:
        spec = importlib.util.spec_from_file_location(f"chorus_bench_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        section = module.main(quick=quick)
        if not isinstance(section, str):
            raise TypeError(f"{path.name}: main() returned {type(section).__name__}, not str")
        return section.strip(), time.perf_counter() - t0, True
    except (Exception, SystemExit):  # report it in the document and keep going
        tb = traceback.format_exc(limit=8)
        print(tb, file=sys.stderr)
        return (f"## {path.stem}\n\n**FAILED** - the benchmark raised:\n\n```\n{tb.strip()}\n```",
                time.perf_counter() - t0, False)


SECTION_START = re.compile(r"<!-- bench:start (?P<name>[A-Za-z0-9_]+) (?P<meta>\{.*?\}) -->\n")
"""Opening marker of a section; ``meta`` is JSON: result, seconds, date, machine, quick."""


def section_end(name: str) -> str:
    """Closing marker of benchmark ``name``'s section."""
    return f"<!-- bench:end {name} -->"


@dataclasses.dataclass
class Section:
    """One benchmark's part of the document, as measured in one run."""

    name: str
    """The module's stem, e.g. ``bench_render``."""
    markdown: str
    """What ``main()`` returned (or the failure report)."""
    ok: bool
    seconds: float
    """Wall time of the benchmark, seconds."""
    date: str
    machine: str
    """Short machine summary (CPU, cores, GPU) of the run that measured it."""
    quick: bool

    def to_text(self) -> str:
        meta = {"ok": self.ok, "seconds": round(self.seconds, 1), "date": self.date,
                "machine": self.machine, "quick": self.quick}
        return (f"<!-- bench:start {self.name} {json.dumps(meta)} -->\n{self.markdown.strip()}\n"
                + section_end(self.name))


def short_machine(info: dict[str, str]) -> str:
    """``CPU, cores, GPU`` in one line (the table's machine column)."""
    cores = info.get("Cores", "?").split(" ", 1)[0]
    gpu = info.get("GPU", "?")
    return f"{info.get('CPU', '?')}, {cores} cores, GPU: {'none' if gpu.startswith('none') else gpu}"


def parse_sections(doc: str) -> dict[str, Section]:
    """The marked sections of an earlier document, by benchmark name (unmarked text is ignored)."""
    out: dict[str, Section] = {}
    for m in SECTION_START.finditer(doc):
        name = m.group("name")
        end = doc.find(section_end(name), m.end())
        if end < 0:
            continue
        try:
            meta = json.loads(m.group("meta"))
            out[name] = Section(name, doc[m.end():end].strip(), bool(meta["ok"]), float(meta["seconds"]),
                                str(meta["date"]), str(meta["machine"]), bool(meta["quick"]))
        except (ValueError, KeyError, TypeError):
            continue  # a damaged marker: the section is not kept
    return out


def render(info: dict[str, str], sections: list[Section]) -> str:
    """The whole markdown document: latest machine, the sections' table, the sections."""
    lines = ["# Benchmarks", "",
             "Generated by `make bench` (`python -m chorus_ros.tools.bench`; `chorus-bench NAME` reruns one "
             "benchmark and keeps the other sections). Every number in a section was measured in one run; "
             "the table says when and where. Do not edit by hand.", "",
             "| Machine of the latest run | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in info.items()]
    lines += ["", "| Benchmark | Result | Wall time (s) | Measured | Machine | Sizes |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {s.name} | {'ok' if s.ok else 'FAILED'} | {s.seconds:.1f} | {s.date} | {s.machine} | "
              f"{'quick' if s.quick else 'full'} |" for s in sections]
    for s in sections:
        lines += ["", s.to_text()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="chorus-bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="benchmarks to run (e.g. 'render' for "
                    "bench_render.py); default: all")
    ap.add_argument("--quick", action="store_true", help="reduced sizes (smoke run)")
    ap.add_argument("--bench-dir", type=pathlib.Path, default=REPO / "benchmarks",
                    help="folder holding bench_*.py")
    ap.add_argument("--output", type=pathlib.Path, default=REPO / "docs" / "benchmarks.md",
                    help="markdown file to write")
    ap.add_argument("--gpu-results", type=pathlib.Path, default=None, metavar="DIR",
                    help="write the GPU section from DIR/gpu_results.json (scripts/gpu_check.py) "
                         "into --output and exit; runs no benchmark")
    args = ap.parse_args(argv)
    old = args.output.read_text() if args.output.is_file() else ""
    if args.gpu_results is not None:
        try:
            results = gpu_report.load_results(args.gpu_results)
        except (OSError, ValueError) as e:
            ap.error(str(e))
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(gpu_report.merge_gpu_section(old, gpu_report.render_gpu_section(results)))
        print(f"chorus-bench: GPU section of {args.output} written from {args.gpu_results} "
              f"(GPU numbers: {'yes' if results['gpu_measured'] else 'none'})")
        return 0

    domain = isolate_ros_env()  # before any benchmark can start rclpy
    try:
        paths = discover(args.bench_dir, args.names)
    except ValueError as e:
        ap.error(str(e))
    if not paths:
        ap.error(f"no bench_*.py in {args.bench_dir}")
    # benchmarks may import helpers that sit next to them
    sys.path.insert(0, str(args.bench_dir.resolve()))
    print(f"chorus-bench: {len(paths)} benchmark(s), quick={args.quick}, ROS_DOMAIN_ID={domain}")

    info = machine_info()
    fresh: dict[str, Section] = {}
    for path in paths:
        print(f"--- {path.name}", flush=True)
        section, seconds, ok = run_one(path, args.quick)
        print(f"    {'ok' if ok else 'FAILED'} in {seconds:.1f} s", flush=True)
        fresh[path.stem] = Section(path.stem, section, ok, seconds, info["Date"], short_machine(info), args.quick)

    kept = parse_sections(old)
    sections = [fresh.get(p.stem) or kept[p.stem] for p in discover(args.bench_dir, [])
                if p.stem in fresh or p.stem in kept]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    doc = render(info, sections)
    gpu = gpu_report.extract_gpu_section(old) or gpu_report.render_gpu_section(None)
    args.output.write_text(gpu_report.merge_gpu_section(doc, gpu))
    failed = [name for name, s in fresh.items() if not s.ok]
    print(f"chorus-bench: wrote {args.output} ({len(fresh)} section(s) measured now, "
          f"{len(sections) - len(fresh)} kept)" + (f"; FAILED: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""scripts/gpu_check.py's plumbing on the CPU, and its results in docs/benchmarks.md.

The CPU dry run (``--device cpu --tiny``) runs the measuring code of some parts at toy sizes and
reports the CUDA-only parts as skipped; its results must validate against the schema and, merged
by ``chorus-bench --gpu-results``, still say that no GPU number has been measured. The
rendering of real GPU results is checked on a results object written out in this test.
"""
from __future__ import annotations

import importlib.util
import json
import os
import pathlib

import pytest

from chorus_ros.tools import bench, gpu_report

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("chorus_gpu_check", REPO / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_dry_run_schema_and_merge(gpu_check, tmp_path):
    out = tmp_path / "out"
    rc = gpu_check.main(["--device", "cpu", "--tiny", "--in-process", "--out", str(out),
                         "--parts", "env,build,pytest,parity,render_fps,fusion"])
    assert rc == 0
    assert {p.name for p in out.iterdir()} == {"gpu_results.json", "gpu_section.md", "gpu_check.log"}
    res = gpu_report.load_results(out)  # validates the schema
    parts = res["parts"]
    assert list(parts) == ["env", "build", "pytest", "parity", "render_fps", "fusion"]
    assert res["gpu_measured"] is False and res["device"] == "cpu" and res["tiny"] is True
    for name in ("build", "pytest", "parity"):
        assert parts[name]["status"] == "skipped" and "no CUDA" in parts[name]["reason"]
    assert parts["env"]["status"] == "ok" and parts["env"]["cuda_available"] is False
    assert parts["env"]["torch"] and parts["env"]["packages"]["gsplat"].startswith("gsplat")
    (row,) = parts["render_fps"]["rows"]
    assert (row["width"], row["height"], row["runs"]) == (64, 48, 2)
    assert 0 < row["ms_min"] <= row["ms_median"] and row["fps"] == pytest.approx(1e3 / row["ms_median"])
    (f,) = parts["fusion"]["rows"]
    assert f["channels"] == 18 + 8 and f["passes"] == 1 and f["decoder_bf16_ms"] is None
    assert f["view_ms"] > f["decoder_ms"] > 0
    assert "No GPU number has been measured yet" in (out / "gpu_section.md").read_text()

    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Renderer\n\n| a |\n|---|\n| 1 |\n")
    for _ in range(2):  # idempotent
        assert bench.main(["--gpu-results", str(out), "--output", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\n## Renderer\n\n| a |\n|---|\n| 1 |\n")
    assert text.count(gpu_report.START) == 1 and text.count(gpu_report.END) == 1
    assert "**No GPU number has been measured yet.**" in text and "tiny sizes" in text
    assert "| 64x48 |" not in text  # CPU dry-run numbers never reach the document


def test_cuda_requested_without_cuda_skips(gpu_check, tmp_path):
    rc = gpu_check.main(["--device", "cuda", "--in-process", "--pack", "none", "--out", str(tmp_path),
                         "--parts", "build,parity,render_fps"])
    assert rc == 0
    parts = json.loads((tmp_path / "gpu_results.json").read_text())["parts"]
    assert all(p["status"] == "skipped" and "no CUDA" in p["reason"] for p in parts.values()), parts


def test_gpu_test_files_and_junit(gpu_check, tmp_path):
    files = gpu_check.gpu_test_files()
    assert "test/core/test_render_gsplat.py" in files and "test/tools/test_gpu_check.py" not in files
    needle = "pytest.mark." + "gpu"  # spelt apart: this file must not count as a GPU test file
    assert all(needle in (REPO / f).read_text() for f in files)
    xml = tmp_path / "j.xml"
    xml.write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="3">'
        '<testcase classname="test.core.test_x" name="test_a" time="1.5"><system-out>rgb=(1e-3, 2e-6)</system-out></testcase>'
        '<testcase classname="test.core.test_x" name="test_b" time="0.2"><failure message="assert 0.02 &lt; 0.01">tb</failure></testcase>'
        '<testcase classname="test.core.test_y" name="test_c" time="0"><skipped message="needs CUDA"/></testcase>'
        '</testsuite></testsuites>')
    r = gpu_check.parse_junit(xml)
    assert (r["tests"], r["passed"], r["failed"], r["errors"], r["skipped"]) == (3, 1, 1, 0, 1)
    assert r["cases"][0] == {"name": "test_x::test_a", "outcome": "passed", "seconds": 1.5, "message": "rgb=(1e-3, 2e-6)"}
    assert r["cases"][1]["message"] == "assert 0.02 < 0.01"


def _measured() -> dict:
    """A results object shaped like a GPU run's (values made up for the renderer, not measured)."""
    ok = {"status": "ok", "seconds": 1.0, "cap_s": 60.0}
    return {
        "schema": gpu_report.SCHEMA, "tool": "scripts/gpu_check.py", "started": "2026-12-06 18:00 UTC",
        "finished": "2026-12-06 18:09 UTC", "wall_s": 470.0, "budget_s": 480.0, "device": "cuda", "tiny": False,
        "gpu_measured": True, "commit": "abc1234", "parts": {
            "env": {**ok, "gpu_name": "GPU-X", "gpu_capability": "9.0", "gpu_memory_gib": 79.2, "driver": "580",
                    "torch": "2.11.0", "torch_cuda": "13.0", "python": "3.12.3", "packages": {"gsplat": "gsplat 1.5.3"}},
            "encode": {**ok, "full": {"gaussians": 1_000_000, "voxels": 800_000, "ms_median": 123.4, "runs": 3,
                                      "peak_mib": 4000.0, "rotations8_ms": 990.0},
                       "first_update_ms": 200.0, "cache_mib": 900.0, "what": "w",
                       "incremental": [{"change": "local edit 1 %", "changed": 10_000, "rewritten": 40_000,
                                        "full": False, "ms_median": 20.0, "full_over_update": 6.17}]},
            "build": {"status": "timeout", "seconds": 330.0, "cap_s": 330.0, "reason": "stopped at its 330 s cap"},
            "pytest": {"status": "ok", "seconds": 50.0, "cap_s": 150.0, "files": ["test/core/test_x.py"], "passed": 1,
                       "failed": 0, "errors": 0, "skipped": 0,
                       "cases": [{"name": "test_x::test_a", "outcome": "passed", "seconds": 2.0,
                                  "message": "largest |gsplat - reference| rgb=1e-3"}]},
            "parity": {"status": "skipped", "seconds": 0.0, "cap_s": 0.0, "reason": "time budget spent (4 s left)"},
            "render_fps": {**ok, "what": "w", "rows": [{"gaussians": 1_000_123, "width": 640, "height": 480,
                                                         "ms_median": 2.5, "ms_min": 2.0, "fps": 400.0,
                                                         "peak_mib": 900.0, "runs": 40}]},
            "fusion": {**ok, "what": "w", "rows": [{"gaussians": 100_000, "width": 640, "height": 480, "passes": 1,
                                                     "splat_top_ms": 30.0, "splat_ms": 3.0, "decoder_ms": 4.0,
                                                     "decoder_bf16_ms": 2.0, "view_ms": 34.0, "view_fps": 29.4,
                                                     "goal_met": False}]},
            "train": {**ok, "what": "w", "setup_s": 20.0, "steps_timed": 40, "step_ms_median": 250.0,
                      "steps_per_s": 4.0, "peak_mib": 3000.0}}}


def test_measured_section_renders_and_replaces_the_old_one(tmp_path):
    res = _measured()
    gpu_report.validate_results(res)
    section = gpu_report.render_gpu_section(res)
    assert "No GPU number" not in section
    for expected in ("| GPU | GPU-X (79 GiB, compute 9.0, driver 580) |", "| build | timeout | 330 | 330 | stopped at",
                     "| full pass | 1,000,000 | 800,000 | 123 | 3 | 4000 |",
                     "| 8-rotation ensemble (`incremental.rotations` 8) | 1,000,000 | 800,000 | 990 | 1 |  |", "| local edit 1 % | 10,000 | 40,000 | no | 20 | 6.2 |",
                     "| 1,000,123 | 640x480 | 2.50 | 2.00 | 400 | 900 | 40 |",
                     "| 100,000 | 640x480 | 1 | 30.00 | 3.00 | 4.00 | 2.00 | 34.00 | 29 | no |",
                     "| 20 | 40 | 250 | 4.00 | 3000 | 8 min |",
                     "| test_x::test_a | passed | 2.0 | largest \\|gsplat - reference\\| rgb=1e-3 |"):
        assert expected in section, expected
    old = "# Benchmarks\n\nintro\n\n" + gpu_report.render_gpu_section(None) + "\n## After\n\ntail\n"
    merged = gpu_report.merge_gpu_section(old, section)
    assert merged.count(gpu_report.START) == 1 and "No GPU number" not in merged
    assert merged.startswith("# Benchmarks\n\nintro\n\n") and merged.endswith("\n## After\n\ntail\n")
    assert gpu_report.extract_gpu_section(merged) == section


@pytest.mark.parametrize("change, match", [
    (lambda r: r.pop("gpu_measured"), "gpu_measured"),
    (lambda r: r["parts"].update(warp={"status": "ok", "seconds": 1.0}), "unknown parts"),
    (lambda r: r["parts"]["train"].update(status="maybe"), "status must be one of"),
    (lambda r: r["parts"]["build"].pop("reason"), "without a reason"),
    (lambda r: r.update(schema=99), "schema"),
])
def test_validate_results_names_the_bad_field(change, match):
    res = _measured()
    change(res)
    with pytest.raises(ValueError, match=match):
        gpu_report.validate_results(res)


def test_bench_rerun_keeps_the_gpu_section(tmp_path):
    d = tmp_path / "benchmarks"
    d.mkdir()
    (d / "bench_one.py").write_text("def main(quick: bool = False) -> str:\n    return '## one\\n\\nx\\n'\n")
    out = tmp_path / "benchmarks.md"
    assert bench.main(["--bench-dir", str(d), "--output", str(out)]) == 0
    assert "**No GPU number has been measured yet.**" in out.read_text()  # placeholder on a first run
    section = gpu_report.render_gpu_section(_measured())
    out.write_text(gpu_report.merge_gpu_section(out.read_text(), section))
    assert bench.main(["--bench-dir", str(d), "--output", str(out)]) == 0
    text = out.read_text()
    assert "## one" in text and gpu_report.extract_gpu_section(text) == section


def test_docs_benchmarks_holds_the_gpu_section():
    doc = (REPO / "docs" / "benchmarks.md").read_text()
    section = gpu_report.extract_gpu_section(doc)
    assert section is not None and doc.count(gpu_report.START) == 1
    # either the placeholder of today's procedure (regenerate it when PROCEDURE changes) or a run's results
    assert section == gpu_report.render_gpu_section(None) or "Measured by one run" in section


def test_prebuilt_gsplat_hook_only_answers_when_asked_and_checks_torch(tmp_path):
    """scripts/gpu_boot/sitecustomize.py: without CHORUS_GSPLAT_SO, ``gsplat.csrc`` is not found
    (gsplat would compile as usual); with a file built for another torch, the import fails
    with a message naming both versions (gsplat then compiles too). Loading a real extension
    needs a GPU machine's build."""
    import subprocess
    import sys
    fake = tmp_path / "gsplat_cuda.so"
    fake.write_bytes(b"not an ELF file")
    code = ("import os, sys\n"
            "assert type(sys.meta_path[0]).__name__ == '_PrebuiltGsplat', sys.meta_path\n"
            "try:\n    import gsplat.csrc\nexcept ModuleNotFoundError as e:\n    print('not found:', e.name)\n"
            f"os.environ['CHORUS_GSPLAT_SO'] = {str(fake)!r}\n"
            "os.environ['CHORUS_GSPLAT_SO_TORCH'] = '0.0.0-other'\n"
            "try:\n    from gsplat import csrc\nexcept ImportError as e:\n    print('refused:', e)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHORUS_GSPLAT")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "scripts" / "gpu_boot"), str(REPO)])
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "not found: gsplat.csrc"
    assert lines[1].startswith(f"refused: prebuilt gsplat extension {fake} was built for torch 0.0.0-other, this is ")

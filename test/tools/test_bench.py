"""chorus-bench: discovery/selection, machine header, failure isolation, exit status."""
from __future__ import annotations

import os
import pathlib

import pytest

from chorus_ros.tools import bench


@pytest.fixture
def bench_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    d = tmp_path / "benchmarks"
    d.mkdir()
    (d / "_helper.py").write_text("FACTOR = 3\n")
    (d / "bench_alpha.py").write_text(
        "import os\nfrom _helper import FACTOR\n"
        "def main(quick: bool = False) -> str:\n"
        "    return f'## alpha\\n\\n| quick | x | domain |\\n|---|---|---|\\n'"
        " f'| {quick} | {FACTOR * 2} | {os.environ[\"ROS_DOMAIN_ID\"]} |\\n'\n")
    (d / "bench_beta.py").write_text(
        "def main(quick: bool = False) -> str:\n    raise RuntimeError('beta exploded 123')\n")
    (d / "bench_gamma.py").write_text(
        "def main(quick: bool = False) -> str:\n    return '## gamma\\n\\ndone\\n'\n")
    (d / "not_a_bench.py").write_text("raise SystemExit('must not be imported')\n")
    return d


def test_discover_all_sorted_and_selected(bench_dir):
    assert [p.stem for p in bench.discover(bench_dir, [])] == [
        "bench_alpha", "bench_beta", "bench_gamma"]
    assert [p.stem for p in bench.discover(bench_dir, ["gamma", "bench_alpha.py"])] == [
        "bench_gamma", "bench_alpha"]
    with pytest.raises(ValueError, match=r"\['delta'\].*known: \['alpha', 'beta', 'gamma'\]"):
        bench.discover(bench_dir, ["alpha", "delta"])


def test_failing_benchmark_is_reported_and_the_rest_run(bench_dir, tmp_path, capsys):
    out = tmp_path / "docs" / "benchmarks.md"
    rc = bench.main(["--quick", "--bench-dir", str(bench_dir), "--output", str(out)])
    assert rc == 1
    doc = out.read_text()
    assert doc.startswith("# Benchmarks\n")
    for key in ("| CPU |", "| Cores |", "| RAM |", "| GPU |", "| torch |", "| Date |"):
        assert key in doc
    assert "| bench_alpha | ok |" in doc and "| bench_beta | FAILED |" in doc
    assert "| bench_gamma | ok |" in doc
    # alpha ran with --quick, its helper import worked, and ROS was isolated before it ran
    assert f"| True | 6 | {os.environ['ROS_DOMAIN_ID']} |" in doc
    assert "RuntimeError: beta exploded 123" in doc
    assert doc.index("## alpha") < doc.index("## bench_beta") < doc.index("## gamma")
    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"


def test_all_ok_exit_zero_and_selection(bench_dir, tmp_path):
    out = tmp_path / "b.md"
    assert bench.main(["gamma", "--bench-dir", str(bench_dir), "--output", str(out)]) == 0
    doc = out.read_text()
    assert "## gamma" in doc and "## alpha" not in doc and "--quick" not in doc


def test_unknown_name_is_a_usage_error(bench_dir, tmp_path):
    with pytest.raises(SystemExit) as exc:
        bench.main(["nope", "--bench-dir", str(bench_dir), "--output", str(tmp_path / "x.md")])
    assert exc.value.code == 2
    assert not (tmp_path / "x.md").exists()


def test_rerunning_one_benchmark_keeps_the_other_sections(bench_dir, tmp_path):
    out = tmp_path / "b.md"
    assert bench.main(["alpha", "gamma", "--quick", "--bench-dir", str(bench_dir), "--output", str(out)]) == 0
    first = bench.parse_sections(out.read_text())
    assert sorted(first) == ["bench_alpha", "bench_gamma"] and first["bench_alpha"].quick
    # gamma measured again (full sizes, new text); alpha's section must come back byte for byte
    (bench_dir / "bench_gamma.py").write_text(
        "def main(quick: bool = False) -> str:\n    return '## gamma\\n\\nsecond run\\n'\n")
    assert bench.main(["gamma", "--bench-dir", str(bench_dir), "--output", str(out)]) == 0
    doc = out.read_text()
    second = bench.parse_sections(doc)
    assert second["bench_alpha"] == first["bench_alpha"]
    assert first["bench_alpha"].to_text() in doc
    assert "second run" in doc and "\ndone\n" not in doc
    assert not second["bench_gamma"].quick and first["bench_gamma"].quick
    rows = [line for line in doc.splitlines() if line.startswith("| bench_")]
    assert [r.split(" | ")[0] for r in rows] == ["| bench_alpha", "| bench_gamma"]
    assert rows[0].endswith("| quick |") and rows[1].endswith("| full |")
    assert doc.index("## alpha") < doc.index("## gamma")
    # a benchmark whose file is gone loses its section; one that failed now is reported, the rest kept
    (bench_dir / "bench_alpha.py").unlink()
    assert bench.main(["beta", "--bench-dir", str(bench_dir), "--output", str(out)]) == 1
    third = bench.parse_sections(out.read_text())
    assert sorted(third) == ["bench_beta", "bench_gamma"] and not third["bench_beta"].ok
    assert third["bench_gamma"] == second["bench_gamma"]


def test_damaged_or_unmarked_sections_are_not_kept():
    doc = ("## old unmarked section\n\n| a | b |\n"
           '<!-- bench:start bench_x {"ok": true} -->\nmissing fields\n<!-- bench:end bench_x -->\n'
           '<!-- bench:start bench_y {"ok": true, "seconds": 1, "date": "d", "machine": "m", "quick": false} -->\n'
           "no end marker\n")
    assert bench.parse_sections(doc) == {}


def test_gpu_section_survives_a_partial_run(bench_dir, tmp_path):
    from chorus_ros.tools import gpu_report
    out = tmp_path / "b.md"
    gpu = gpu_report.START + "\n## GPU\n\nmeasured on a lent H100\n" + gpu_report.END + "\n"
    out.write_text("# Benchmarks\n\n" + gpu)
    assert bench.main(["gamma", "--bench-dir", str(bench_dir), "--output", str(out)]) == 0
    assert "measured on a lent H100" in out.read_text()

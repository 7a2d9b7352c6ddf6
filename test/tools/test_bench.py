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

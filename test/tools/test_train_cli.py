"""chorus-train CLI: config + dotted overrides, errors, and a 1-step run writing a checkpoint."""
from __future__ import annotations

import json

import yaml

from chorus_ros.tools.train import main

DEMO = "config/train/demo.yaml"


def test_print_config_applies_overrides(capsys):
    assert main(["--config", DEMO, "--print-config", "optim.steps=3", "calibration.enabled=false",
                 "heads=[language, object]"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["optim"]["steps"] == 3 and cfg["calibration"]["enabled"] is False
    assert cfg["heads"] == ["language", "object"] and cfg["teachers"][0]["type"] == "oracle_language"


def test_errors_exit_2_with_a_message(capsys):
    assert main(["--config", DEMO, "optim.stepz=3"]) == 2
    assert "unknown config keys ['optim.stepz']" in capsys.readouterr().err
    assert main(["--config", "config/train/missing.yaml"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["--config", DEMO, "teachers.0.type=clip9000", "data.train_seeds=[0]",
                 "data.scene={target_gaussians: 2000}"]) == 2
    assert "unknown teacher type 'clip9000'" in capsys.readouterr().err


def _one_step(tmp_path, *extra):
    return main(["--config", DEMO, "data.train_seeds=[1]", "data.density_range=[]",
                 "data.scene={target_gaussians: 2000}", "data.views={loop_views: 2, random_views: 0, width: 32, height: 24}",
                 "optim.steps=1", "log.progress=false", f"log.dir={tmp_path / 'run'}",
                 f"checkpoint.dir={tmp_path / 'ckpt'}", f"data.cache_dir={tmp_path / 'cache'}", *extra])


def test_one_step_run_writes_a_checkpoint(tmp_path, capsys):
    rc = _one_step(tmp_path)
    out = capsys.readouterr().out.splitlines()
    assert rc == 0 and out[0].startswith("chorus-train: 1 steps")
    assert "loss" in json.loads(out[1])
    for f in ("model.safetensors", "config.yaml", "text_encoder.safetensors", "labels.yaml"):
        assert (tmp_path / "ckpt" / f).is_file()
    assert (tmp_path / "run" / "trainer_state.pt").is_file() and (tmp_path / "run" / "train_log.csv").is_file()

    # a fresh start in the same run folder keeps the old log aside instead of appending to it
    assert _one_step(tmp_path, "checkpoint.resume=false") == 0
    logs = sorted(p.name for p in (tmp_path / "run").glob("train_log*.csv"))
    assert len(logs) == 2 and "train_log.csv" in logs
    assert (tmp_path / "run" / "train_log.csv").read_text().count("\n") == 2    # header + step 1

"""The foundation demo and the dataset export CLI, run small."""
import cv2
import numpy as np

from chorus_ros.tools import demo, make_dataset


def test_demo_writes_views(tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--views", "2", "--width", "32", "--height", "24", "--no-live"]) == 0
    text = capsys.readouterr().out
    for i in range(2):
        for kind in ("rgb", "depth", "semantic", "instance"):
            img = cv2.imread(str(out / f"view{i}_{kind}.png"))
            assert img is not None and img.shape == (24, 32, 3), kind
            assert str(out / f"view{i}_{kind}.png") in text
        assert cv2.imread(str(out / f"view{i}_panel.png")).shape == (48, 64, 3)
    assert "scene seed 7" in text and "wrote 10 files" in text
    cfg = demo.demo_scene_config()
    assert cfg.seed == demo.DEMO_SEED and cfg.target_gaussians == demo.DEMO_GAUSSIANS


def test_colorize_depth_zero_is_black_and_near_is_not_far():
    d = np.array([[0.0, 1.0, 4.0]])
    rgb = demo.colorize_depth(d, 4.0)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 3, 3)
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[0, 1].tolist() != rgb[0, 2].tolist()


def test_make_dataset_cli(tmp_path, capsys):
    out = tmp_path / "ds"
    args = [str(out), "--gaussians", "4000", "--loop-views", "2", "--random-views", "1",
            "--width", "24", "--height", "18", "--seed", "3"]
    assert make_dataset.main(args) == 0
    assert "wrote" in capsys.readouterr().out
    from chorus_ros.core.synthetic.dataset import load_dataset
    ds = load_dataset(out)
    assert len(ds) == 3 and ds[2].semantic.shape == (18, 24) and ds.meta["seed"] == 3

"""The live demo end to end on a tiny scene with a random-initialised checkpoint: demo bag ->
nodes started from the checkpoint (bringup) -> lock-step replay -> PNGs, contact sheet, queries."""
import numpy as np
import pytest

pytest.importorskip("chorus_ros.msg", reason="interfaces not built (make install)")
pytestmark = pytest.mark.ros


def test_live_demo_writes_images_and_answers_queries(tmp_path, small_scene, random_checkpoint):
    import cv2

    from chorus_ros.tools.live_demo import LiveDemoConfig, run_live_demo
    lines = []
    cfg = LiveDemoConfig(steps=3, views_per_step=1, final_views=1, width=40, height=30, queries=2, top_k=2,
                         timeout_s=120)
    res = run_live_demo(tmp_path, small_scene, random_checkpoint, cfg, log=lines.append)
    views = 3 * 1 + 1
    pngs = sorted(p.name for p in (tmp_path / "live").glob("*.png"))
    assert len(pngs) == 3 * views and "view00_semantic.png" in pngs and "view03_overlay.png" in pngs
    sheet = cv2.imread(str(tmp_path / "contact_sheet.png"))
    assert sheet.shape[0] > views * 30 and sheet.shape[1] > 4 * 40
    inst = cv2.imread(str(tmp_path / "live" / "view03_instance.png"))
    assert inst.shape == (30, 40, 3) and len(np.unique(inst.reshape(-1, 3), axis=0)) > 1
    assert len(res.queries) == 2 and all(len(v) == 2 for v in res.queries.values())
    text = "\n".join(lines)
    assert "[replay] 4 views rendered" in text and "errors: 0" in text and "[query]" in text

"""Metrics against hand-computed values."""
import math

import numpy as np
import pytest

from chorus_ros.core.errors import InvalidInputError
from chorus_ros.core.metrics import ConfusionMatrix, IdConsistency, PanopticQuality

U = 65535


def test_semantic_metrics_exact():
    cm = ConfusionMatrix(4)
    cm.update(np.array([0, 1, 1, 1, U, 1, 2]), np.array([0, 0, 1, 1, 1, 2, U]))
    s = cm.compute(["wall", "chair", "table", "bed"])
    # wall: TP1 FN1 FP0 -> 1/2; chair: TP2, gt 3, pred 4 -> 2/5; table: 0/1; bed: never seen -> NaN
    np.testing.assert_allclose(s.iou[:3], [0.5, 0.4, 0.0])
    assert math.isnan(s.iou[3]) and math.isnan(s.acc[3])
    np.testing.assert_allclose(s.acc[:3], [0.5, 2 / 3, 0.0])
    assert s.miou == pytest.approx(0.3)
    assert s.macc == pytest.approx((0.5 + 2 / 3) / 3)
    assert s.oacc == pytest.approx(0.5)
    assert s.fg_miou == pytest.approx(0.2)
    assert s.fg_macc == pytest.approx(1 / 3)
    assert s.num_pixels == 6


def test_semantic_accumulates_and_background_configurable():
    a, b = ConfusionMatrix(2), ConfusionMatrix(2)
    a.update([0, 1], [0, 1])
    b.update([1, 1], [0, 1])
    a.merge(b)
    s = a.compute(["floor", "chair"], background=("chair",))
    np.testing.assert_allclose(s.iou, [0.5, 2 / 3])
    assert s.fg_miou == pytest.approx(0.5)  # only 'floor' is foreground here


def test_semantic_validation():
    cm = ConfusionMatrix(2)
    with pytest.raises(InvalidInputError, match="ground-truth"):
        cm.update([0], [5])
    with pytest.raises(InvalidInputError, match="predicted"):
        cm.update([7], [0])
    with pytest.raises(InvalidInputError):
        cm.update([0, 1], [0])


def test_panoptic_quality_exact():
    pq = PanopticQuality(3, thing=[False, True, True])
    pq.update(pred_semantic=[0, 0, 1, 1, 1, 1, 2, 2, 2, 2],
              pred_instance=[0, 5, 7, 7, 7, 8, 9, 9, 4, 4],
              gt_semantic=[0, 0, 1, 1, 1, 1, 2, 2, U, U],
              gt_instance=[1, 1, 2, 2, 2, 2, 3, 3, U, U])
    s = pq.compute()
    # chair: 7 matches gt 2 with IoU 3/4, 8 is a false positive; table: 9 matches with IoU 1;
    # 4 lies entirely in void (ignored); 5 is a floor (stuff) segment (not evaluated).
    assert s.tp.tolist() == [0, 1, 1] and s.fp.tolist() == [0, 1, 0] and s.fn.tolist() == [0, 0, 0]
    assert s.pq == pytest.approx((0.75 / 1.5 + 1.0) / 2)
    assert s.sq == pytest.approx((0.75 + 1.0) / 2)
    assert s.rq == pytest.approx((1 / 1.5 + 1.0) / 2)
    # a second view where the chair is missed entirely
    pq.update([1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 2])
    s = pq.compute()
    assert s.fn.tolist() == [0, 1, 0]
    assert s.per_class_pq[1] == pytest.approx(0.75 / 2)
    assert math.isnan(s.per_class_pq[0])


def test_panoptic_void_reduces_union():
    # prediction covers the 2-pixel gt object and 2 void pixels: IoU = 2 / (2 + 4 - 2 - 2) = 1
    pq = PanopticQuality(2, thing=[False, True])
    pq.update([1, 1, 1, 1], [3, 3, 3, 3], [1, 1, U, U], [1, 1, U, U])
    s = pq.compute()
    assert s.tp.tolist() == [0, 1] and s.pq == pytest.approx(1.0)


def test_id_consistency_exact():
    ic = IdConsistency()
    ic.update([1, 1, 1, 1, 2, 2], [5, 5, 5, 6, 7, 0])
    ic.update([1, 1, 2, 2, U, 1], [6, 6, 7, 7, 3, 6])
    ic.update([1, 1], [9, 9], scene="other")   # another scene's object 1: consistency 1
    s = ic.compute()
    assert s.num_objects == 3
    assert s.object_mean == pytest.approx((4 / 7 + 3 / 4 + 1.0) / 3)
    assert s.pixel_weighted == pytest.approx((4 + 3 + 2) / (7 + 4 + 2))


def test_id_consistency_things_only_and_min_pixels():
    ic = IdConsistency(thing=[False, True], min_pixels=2)
    ic.update(gt_instance=[1, 1, 2, 3], pred_instance=[4, 4, 5, 6], gt_semantic=[0, 0, 1, 1])
    s = ic.compute()
    assert s.num_objects == 0  # object 1 is stuff, objects 2 and 3 have 1 pixel each
    assert math.isnan(s.object_mean)


def test_evaluate_checkpoint_with_oracle_pipeline():
    """The evaluation loop end to end on one small synthetic scene with an oracle encoder:
    perfect features must give (near-)perfect scores, and the tables must show them."""
    import torch

    from chorus_ros.core.decode.instances import InstanceConfig
    from chorus_ros.core.map import MapConfig
    from chorus_ros.core.metrics.evaluation import (EvalConfig, ablation_markdown, evaluate_checkpoint,
                                                    evaluation_markdown)
    from chorus_ros.core.pipeline import PerceptionPipeline, PipelineConfig
    from chorus_ros.core.render import RenderSettings
    from chorus_ros.core.synthetic import SceneConfig, generate_scene
    from chorus_ros.core.text import TextEncoderSpec, build_text_encoder

    cfg = EvalConfig(seeds=[3], target_gaussians=3000, loop_views=2, random_views=1, width=40, height=30,
                     render_backend="reference")
    scene = generate_scene(SceneConfig(seed=3, target_gaussians=3000))
    gt_label = scene.gaussians.extras["label"]
    gt_inst = scene.gaussians.extras["instance"]
    text = build_text_encoder(TextEncoderSpec(tiny=True, prompt_template="{}"))
    protos = torch.nn.functional.normalize(torch.randn(int(gt_inst.max()) + 1, 16,
                                                       generator=torch.Generator().manual_seed(0)), dim=-1)

    class Oracle:  # features looked up by Gaussian id (synthetic ids are 0..N-1)
        def __init__(self, gmap):
            self.map = gmap

        def encode_full(self):
            self.map.take_dirty()
            ids = self.map.arrays().ids.long()
            self.map.set_attribute("feat.language", text.encode(scene.labels.names)[gt_label[ids]])
            self.map.set_attribute("feat.object", protos[gt_inst[ids]])
            return type("R", (), {"updated_slots": torch.arange(len(ids)), "n_encoded": len(ids), "full": True})()

        update = encode_full

    def make():
        pc = PipelineConfig(map=MapConfig(sh_degree=0), incremental=None, render=RenderSettings(backend="reference"),
                            instances=InstanceConfig(feature_threshold=0.8, min_gaussians=4))
        return PerceptionPipeline(pc, None, text, scene.labels, incremental_factory=Oracle)

    r = evaluate_checkpoint("oracle", make, cfg)
    assert r.num_views == 3 and r.num_scenes == 1 and r.has_language
    # the oracle's only errors: splatted class probabilities vs the top-weight Gaussian's class
    # at object boundaries of this sparse, low-resolution scene (about 95% oAcc; ~99% at 40K Gaussians)
    assert r.semantic.oacc > 0.94 and r.semantic.miou > 0.8
    assert r.consistency.object_mean > 0.95
    assert r.panoptic.pq > 0.7
    md = evaluation_markdown(r, cfg, "chorus-eval --test")
    assert "| **oracle (all scenes)** |" in md and "Per-class IoU" in md and "chorus-eval --test" in md
    assert "| variant |" in ablation_markdown([r, r], cfg)


def test_chorus_eval_cli_on_a_tiny_checkpoint(tmp_path):
    """chorus-eval end to end: a random-init checkpoint written by save_checkpoint (as the
    trainer does), one held-out scene, both the main table and the ablation table."""
    import torch

    enc = pytest.importorskip("chorus_ros.core.encoder")
    pytest.importorskip("chorus_ros.core.encoder.incremental")
    from chorus_ros.core.encoder.checkpoint import save_checkpoint
    from chorus_ros.core.synthetic import synthetic_label_set
    from chorus_ros.core.text import TextEncoderSpec, build_text_encoder
    from chorus_ros.tools.evaluate import main

    spec = TextEncoderSpec(tiny=True, prompt_template="{}")
    text = build_text_encoder(spec)
    for name, heads in (("full", [("language", 64), ("object", 8)]), ("no_object", [("language", 64)])):
        torch.manual_seed(0)
        cfg = enc.EncoderConfig(channels=(8, 16), encoder_blocks=(1, 1), decoder_blocks=(1,), point_hidden=8,
                                head_hidden=16, embed_dim=16, heads=[enc.HeadSpec(n, d) for n, d in heads])
        d = tmp_path / name
        te = spec.to_dict()
        te["weights"] = "text_encoder.safetensors"
        save_checkpoint(str(d), enc.ChorusEncoder(cfg), {"label_set": synthetic_label_set().to_dict(),
                                                        "text_encoder": te})
        text.save_weights(d / "text_encoder.safetensors")
    args = ["--seeds", "1000", "--views", "1", "--gaussians", "1200", "--size", "32", "24"]
    out = tmp_path / "eval.md"
    assert main(["--checkpoint", str(tmp_path / "full"), *args, "--out", str(out)]) == 0
    md = out.read_text()
    assert "| **demo (all scenes)** |" in md and "| chair |" in md and "seeds [1000]" in md
    abl = tmp_path / "abl.md"
    assert main(["--ablation", f"full={tmp_path / 'full'}", f"no_object={tmp_path / 'no_object'}", *args,
                 "--out", str(abl)]) == 0
    text_md = abl.read_text()
    assert "| full |" in text_md and "| no_object |" in text_md
    with pytest.raises(SystemExit):
        main(["--seeds", "1000"])


def test_miou_present_leaves_out_classes_absent_from_ground_truth():
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 1, 2, 2]), np.array([0, 0, 2, 2]))  # 'chair' predicted once, never true
    s = cm.compute(["wall", "chair", "table"])
    np.testing.assert_allclose(s.iou, [0.5, 0.0, 1.0])
    assert s.miou == pytest.approx(0.5) and s.miou_present == pytest.approx(0.75)
    assert s.present.tolist() == [True, False, True]


# --------------------------------------------------------------------------- evaluate_scenes


def _oracle_factory(scene, wrong: dict | None = None):
    """Pipelines whose encoder is an oracle: language feature = text embedding of the Gaussian's
    true class (or of ``wrong[class]``), object feature = a random prototype per true instance."""
    import torch

    from chorus_ros.core.decode.instances import InstanceConfig
    from chorus_ros.core.map import MapConfig
    from chorus_ros.core.pipeline import PerceptionPipeline, PipelineConfig
    from chorus_ros.core.render import RenderSettings
    from chorus_ros.core.text import TextEncoderSpec, build_text_encoder

    names = scene.labels.names
    text = build_text_encoder(TextEncoderSpec(tiny=True, prompt_template="{}"))
    said = [names.index((wrong or {}).get(n, n)) for n in names]
    gt_label = torch.as_tensor(said)[scene.gaussians.extras["label"]]
    gt_inst = scene.gaussians.extras["instance"]
    protos = torch.nn.functional.normalize(torch.randn(int(gt_inst.max()) + 1, 16,
                                                       generator=torch.Generator().manual_seed(0)), dim=-1)
    emb = text.encode(names)

    class Oracle:
        def __init__(self, gmap):
            self.map = gmap

        def encode_full(self):
            self.map.take_dirty()
            ids = self.map.arrays().ids.long()
            self.map.set_attribute("feat.language", emb[gt_label[ids]])
            self.map.set_attribute("feat.object", protos[gt_inst[ids]])
            return type("R", (), {"updated_slots": torch.arange(len(ids)), "n_encoded": len(ids), "full": True})()

        update = encode_full

    def make():
        pc = PipelineConfig(map=MapConfig(sh_degree=0), incremental=None, render=RenderSettings(backend="reference"),
                            instances=InstanceConfig(feature_threshold=0.8, min_gaussians=4))
        return PerceptionPipeline(pc, None, text, scene.labels, incremental_factory=Oracle)
    return make


@pytest.fixture(scope="module")
def tiny_scene():
    from chorus_ros.core.datasets import scene_from_synthetic
    from chorus_ros.core.render import RenderSettings
    from chorus_ros.core.synthetic import SceneConfig, generate_scene
    from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory

    scene = generate_scene(SceneConfig(seed=3, target_gaussians=3000))
    traj = make_trajectory(scene, TrajectoryConfig(loop_views=2, random_views=1, width=40, height=30))
    return scene, scene_from_synthetic(scene, traj, RenderSettings(backend="reference"))


def test_evaluate_scenes_folder_equals_in_memory_and_threshold_is_shared(tiny_scene, tmp_path):
    """The same scene read back from an exported folder scores exactly like the in-memory scene
    (reader + class mapping are lossless for labels); the shared alpha threshold removes pixels
    from prediction and ground truth alike."""
    from chorus_ros.core.datasets import open_scene
    from chorus_ros.core.metrics.scenes import JSON_KEYS, SceneEvalConfig, evaluate_scenes, results_json
    from chorus_ros.core.synthetic.dataset import export_dataset
    from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory

    scene, mem = tiny_scene
    make = _oracle_factory(scene)
    traj = make_trajectory(scene, TrajectoryConfig(loop_views=2, random_views=1, width=40, height=30))
    from chorus_ros.core.render import RenderSettings
    export_dataset(scene, traj, tmp_path / "ex", settings=RenderSettings(backend="reference"), min_alpha=0.0)
    a = evaluate_scenes(make, [mem], SceneEvalConfig(), progress=False)
    b = evaluate_scenes(make, [open_scene(tmp_path / "ex")], SceneEvalConfig(), progress=False)
    np.testing.assert_array_equal(a.total.confusion, b.total.confusion)
    assert a.total.panoptic.pq == pytest.approx(b.total.panoptic.pq)
    assert a.total.min_alpha == 0.5  # the pipeline's own default
    s = a.total
    assert s.semantic.oacc > 0.9 and s.semantic_3d.miou > 0.99 and s.query_top1 == 1.0
    assert s.n_gt_instances > 10 and s.n_views == 3
    hi = evaluate_scenes(make, [mem], SceneEvalConfig(min_alpha=0.99), progress=False).total
    assert 0 < hi.semantic.num_pixels < s.semantic.num_pixels and hi.min_alpha == 0.99
    j = results_json(a)
    assert list(j)[: len(JSON_KEYS)] == list(JSON_KEYS)
    assert j["mIoU"] == pytest.approx(100 * s.semantic.miou, abs=0.01)
    assert set(j["scenes"]) == {mem.name} and j["scenes"][mem.name]["n_views"] == 3
    assert j["per_class_iou"]["chair"] == pytest.approx(100 * s.semantic.iou[scene.labels.index_of("chair")], abs=0.01)


def test_query_top1_fails_when_the_top_object_is_elsewhere(tiny_scene):
    """A model that calls chairs 'table': the query 'chair' must not pass (the old demo check
    compared class names only), and pixel-based scoring agrees with Gaussian-based scoring."""
    from chorus_ros.core.datasets import SceneFolder
    from chorus_ros.core.metrics.scenes import SceneEvalConfig, evaluate_scenes

    scene, mem = tiny_scene
    bad = evaluate_scenes(_oracle_factory(scene, {"chair": "table"}), [mem], SceneEvalConfig(), progress=False).total
    assert bad.query_details[f"{mem.name}/chair"]["pass"] is False
    assert bad.query_details[f"{mem.name}/sofa"]["pass"] is True
    assert 0 < bad.query_top1 < 1
    # without per-Gaussian ground truth the same check runs on pixels
    frames = [mem.frame(k) for k in range(len(mem))]
    px = SceneFolder.in_memory(mem.name, mem.gaussians, mem.classes, frames, instance_none_id=65535)
    assert px.gt_gaussian_labels is None
    r = evaluate_scenes(_oracle_factory(scene, {"chair": "table"}), [px], SceneEvalConfig(), progress=False).total
    assert r.semantic_3d is None and r.query_details[f"{mem.name}/chair"]["by"] == "pixels"
    assert r.query_details[f"{mem.name}/chair"]["pass"] is False


def test_evaluate_scenes_in_slabs_and_errors(tiny_scene):
    from chorus_ros.core.datasets import SceneFolder
    from chorus_ros.core.errors import DatasetError
    from chorus_ros.core.metrics.scenes import SceneEvalConfig, evaluate_scenes

    scene, mem = tiny_scene
    r = evaluate_scenes(_oracle_factory(scene), [mem], SceneEvalConfig(chunks=2), progress=False).total
    assert r.n_views == 3 and r.consistency.num_objects > 0 and r.semantic.oacc > 0.9
    px = SceneFolder.in_memory(mem.name, mem.gaussians, mem.classes, [mem.frame(0)])
    with pytest.raises(DatasetError, match="chunks"):
        evaluate_scenes(_oracle_factory(scene), [px], SceneEvalConfig(chunks=2), progress=False)
    with pytest.raises(DatasetError, match="no scenes"):
        evaluate_scenes(_oracle_factory(scene), [], progress=False)


def test_evaluate_scenes_exact_on_a_hand_built_view():
    """Two rows of three pixels, a stub pipeline with fixed outputs: the shared threshold voids
    low-alpha pixels on both sides, folder ids map by name, unmapped classes are void."""
    import torch
    from types import SimpleNamespace

    from chorus_ros.core.datasets import Intrinsics, SceneFolder, SceneFrame
    from chorus_ros.core.gaussians import GaussianArrays
    from chorus_ros.core.labels import LabelSet
    from chorus_ros.core.metrics.scenes import SceneEvalConfig, evaluate_scenes

    labels = LabelSet(["wall", "chair"], np.array([[1, 1, 1], [2, 2, 2]]))
    intr = Intrinsics(2.0, 2.0, 1.5, 1.0, 3, 2)
    c2w = np.eye(4)
    # folder ids: 7 = chair, 9 = wall, 3 = lamp (no model class -> void), 0 = unlabeled
    sem = np.array([[7, 7, 9], [3, 0, 9]], np.uint16)
    ins = np.array([[1, 1, 2], [3, 0, 2]], np.uint16)
    frame = SceneFrame(0, c2w, np.zeros((2, 3, 3), np.uint8), None, sem, ins, intr.camera(c2w))
    g = GaussianArrays(torch.zeros(1, 3), torch.zeros(1, 1, 3), torch.zeros(1), torch.zeros(1, 3),
                       torch.tensor([[1.0, 0, 0, 0]]))
    scene = SceneFolder.in_memory("hand", g, {7: "chair", 9: "wall", 3: "lamp"}, [frame], intrinsics=intr,
                                  unlabeled_id=0, instance_none_id=0)
    pred = np.array([[1, 0, 0], [1, 1, 0]], np.uint16)
    alpha = np.array([[0.9, 0.9, 0.2], [0.9, 0.9, 0.9]], np.float32)  # (0, 2) has no surface
    view = SimpleNamespace(labels=pred, instances=np.array([[5, 6, 0], [5, 5, 6]], np.int32), alpha=alpha,
                           rgb=np.zeros((2, 3, 3), np.uint8), color=np.zeros((2, 3, 3), np.uint8))

    class Stub:
        config = SimpleNamespace(semantic=SimpleNamespace(min_alpha=0.5), render=SimpleNamespace(backend="x"))
        map = SimpleNamespace(attribute_names=lambda: [])

        def __init__(self):
            self.labels = labels

        def apply_update(self, *a, **k):
            return 1

        def encode(self):
            return None

        def _heads(self):
            return ["language"]

        def render_view(self, camera):
            return view

        def objects(self):
            return []

        def query(self, text, top_k=1):
            return []

    r = evaluate_scenes(Stub, [scene], SceneEvalConfig(), progress=False).total
    # counted pixels (gt model id, pred): (0,0): chair->chair, (0,1): chair->wall; (0,2) void by
    # alpha; (1,0) lamp void; (1,1) unlabeled; (1,2): wall->wall
    np.testing.assert_array_equal(r.confusion, [[1, 0, 0], [1, 1, 0]])
    assert r.semantic.num_pixels == 3 and r.semantic.oacc == pytest.approx(2 / 3)
    np.testing.assert_allclose(r.semantic.iou, [0.5, 0.5])
    assert r.min_alpha == 0.5 and r.n_views == 1
    # no object answers a query: every present class fails
    assert r.query_top1 == 0.0 and set(r.query_details) == {"hand/wall", "hand/chair"}
    lower = evaluate_scenes(Stub, [scene], SceneEvalConfig(min_alpha=0.1), progress=False).total
    assert lower.semantic.num_pixels == 4 and lower.confusion[0, 0] == 2  # (0, 2) wall->wall counts now


def test_per_gaussian_panoptic_quality(tiny_scene):
    """PQ_3d scores the map's Gaussians against per-Gaussian ground truth (3D-only folders have no
    views): an oracle is near perfect, calling chairs 'table' zeroes the chair class, and a scene
    without per-Gaussian ground truth has none."""
    from chorus_ros.core.datasets import SceneFolder
    from chorus_ros.core.metrics.scenes import SceneEvalConfig, evaluate_scenes, results_json

    scene, mem = tiny_scene
    cfg = SceneEvalConfig(query=False)
    good = evaluate_scenes(_oracle_factory(scene), [mem], cfg, progress=False)
    assert good.total.panoptic_3d.pq > 0.9 and results_json(good)["PQ_3d"] == pytest.approx(
        100 * good.total.panoptic_3d.pq, abs=0.01)
    assert good.scenes[0].panoptic_3d.pq == pytest.approx(good.total.panoptic_3d.pq)
    bad = evaluate_scenes(_oracle_factory(scene, {"chair": "table"}), [mem], cfg, progress=False).total
    chair = scene.labels.index_of("chair")
    assert bad.panoptic_3d.fn[chair] > 0 and bad.panoptic_3d.tp[chair] == 0 and bad.panoptic_3d.pq < good.total.panoptic_3d.pq
    px = SceneFolder.in_memory(mem.name, mem.gaussians, mem.classes, [mem.frame(0)], instance_none_id=65535)
    assert evaluate_scenes(_oracle_factory(scene), [px], cfg, progress=False).total.panoptic_3d is None

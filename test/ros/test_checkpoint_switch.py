"""chorus_node switches checkpoint at run time through its ``checkpoint`` parameter, over DDS:
a bad checkpoint is refused with the reason and the old one keeps serving; a good one is
loaded, the kept map is re-encoded with it, ~/status reports it, the label table is republished,
and the features equal those of a pipeline built from the new checkpoint directly."""
import copy
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("chorus_ros.msg", reason="interfaces not built (make install)")
pytestmark = pytest.mark.ros

NS = "switch"


def _write_checkpoint(out, names, seed):
    from chorus_ros.core.decode.semantic import default_colors
    from chorus_ros.core.encoder.checkpoint import save_checkpoint
    from chorus_ros.core.encoder.config import EncoderConfig, HeadSpec
    from chorus_ros.core.encoder.model import ChorusEncoder
    from chorus_ros.core.labels import LabelSet
    from chorus_ros.core.text import TextEncoderSpec, build_text_encoder
    torch.manual_seed(seed)
    cfg = EncoderConfig(channels=(16, 32), encoder_blocks=(1, 1), decoder_blocks=(1,), point_hidden=16,
                        head_hidden=32, embed_dim=32, heads=[HeadSpec("language", 64), HeadSpec("object", 16)])
    spec = TextEncoderSpec(tiny=True, seed=0)
    out.mkdir(parents=True, exist_ok=True)
    build_text_encoder(spec).save_weights(out / "text_encoder.safetensors")
    te = spec.to_dict()
    te["weights"] = "text_encoder.safetensors"
    labels = LabelSet(names, default_colors(len(names)))
    save_checkpoint(out, ChorusEncoder(cfg), {"labels": labels.to_dict(), "text_encoder": te,
                                              "adaptation": {"scene": "test"}})
    return out


@pytest.fixture(scope="module")
def node_with_map(harness, random_checkpoint, small_scene, wait_until):
    from chorus_ros.msg import GaussianMapUpdate
    from chorus_ros.ros import qos
    from chorus_ros.ros.bringup import Bringup
    from chorus_ros.ros.map_updates import map_update_to_msg
    with Bringup(checkpoint=str(random_checkpoint), namespace=NS, nodes=["chorus_node"]) as b:
        node = b.nodes["chorus_node"]
        pub = harness.publisher(GaussianMapUpdate, f"/{NS}/map_updates", qos.latched(16))
        pub.publish(map_update_to_msg(small_scene.gaussians, map_id="m", sequence=0, full=True))
        wait_until(lambda: node._tracker.last_sequence == 0 and node.wait_idle(0.1)
                   and node.encoded_version == node.pipeline.map.version, 120, "the map to be encoded")
        yield node


def _set_checkpoint(harness, path):
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters
    req = SetParameters.Request(parameters=[Parameter(
        name="checkpoint", value=ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=str(path)))])
    return harness.call(SetParameters, f"/{NS}/chorus_node/set_parameters", req).results[0]


def test_bad_checkpoints_are_refused_and_the_old_one_keeps_running(harness, node_with_map, random_checkpoint,
                                                                   small_scene, tmp_path, wait_until):
    from chorus_ros.msg import Status
    from chorus_ros.ros import qos
    node = node_with_map
    status = harness.collect(Status, f"/{NS}/chorus_node/status", qos.status())
    before = node.pipeline.map.attribute("sem.probs").clone()

    r = _set_checkpoint(harness, tmp_path / "nowhere")
    assert not r.successful and "not found" in r.reason and str(random_checkpoint) in r.reason

    # weights of another architecture under this config: strict loading names the keys
    bad = tmp_path / "bad"
    shutil.copytree(random_checkpoint, bad)
    other = _write_checkpoint(tmp_path / "other", ["a", "b"], seed=3)
    from safetensors.torch import load_file, save_file
    w = load_file(str(other / "model.safetensors"))
    w.pop(next(iter(w)))
    save_file(w, str(bad / "model.safetensors"))
    r = _set_checkpoint(harness, bad)
    assert not r.successful and "missing keys" in r.reason

    wait_until(lambda: status and status[-1].checkpoint == str(random_checkpoint)
               and "refused" in status[-1].last_error, 20, "a status naming the refusal")
    assert node.config.checkpoint == str(random_checkpoint)
    assert torch.equal(node.pipeline.map.attribute("sem.probs"), before)
    assert len(node.pipeline.map) == len(small_scene.gaussians)


def test_switch_reencodes_the_kept_map_and_reports_it(harness, node_with_map, small_scene, tmp_path, wait_until):
    from chorus_ros.core.pipeline import PerceptionPipeline
    from chorus_ros.msg import LabelInfo, Status
    from chorus_ros.ros import qos
    node = node_with_map
    names = ["floor", "wall", "chair", "table", "lamp"]
    new = _write_checkpoint(tmp_path / "site", names, seed=7)
    status = harness.collect(Status, f"/{NS}/chorus_node/status", qos.status())
    infos = harness.collect(LabelInfo, f"/{NS}/semantic/label_info", qos.latched())
    ids = node.pipeline.map.arrays().ids.clone()
    inst = node.pipeline.map.attribute("inst.id").clone()

    r = _set_checkpoint(harness, new)
    assert r.successful, r.reason
    wait_until(lambda: status and status[-1].checkpoint == str(new) and status[-1].state == "running", 120,
               "~/status to report the new checkpoint")
    assert node.pipeline.labels.names == names
    wait_until(lambda: infos and [e.name for e in infos[-1].labels] == names, 20, "the new label table")
    # the map was kept (same Gaussians) and re-encoded with the new weights
    assert torch.equal(node.pipeline.map.arrays().ids, ids)
    assert node.encoded_version == node.pipeline.map.version
    ref = PerceptionPipeline.from_checkpoint(new, copy.deepcopy(node.pipeline.config))
    g = small_scene.gaussians
    ref.apply_update(type(g)(g.means, g.sh, g.opacities, g.log_scales, g.quats, g.ids), None, full=True)
    ref.encode()
    order = torch.argsort(node.pipeline.map.arrays().ids)
    ref_order = torch.argsort(ref.map.arrays().ids)
    np.testing.assert_allclose(node.pipeline.map.attribute("feat.language")[order].numpy(),
                               ref.map.attribute("feat.language")[ref_order].numpy(), atol=1e-5)
    assert node.pipeline.map.attribute("sem.probs").shape[1] == len(names)
    assert inst.numel() == node.pipeline.map.attribute("inst.id").numel()

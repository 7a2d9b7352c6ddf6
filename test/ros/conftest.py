"""Fixtures for the ROS node tests: a private rclpy context per module, an executor spinning in
a background thread, and a probe node to publish, subscribe and call services over DDS.

DDS isolation (loopback only, a private ROS_DOMAIN_ID) is set by test/conftest.py before rclpy
is imported."""
from __future__ import annotations

import importlib.util
import os
import threading
import time

import pytest


def _require_interfaces() -> None:
    """A broken interface build must fail the run, not turn every ROS test into a skip.

    With rclpy importable, ``chorus_ros.msg``/``.srv`` must import too (else this conftest fails
    to load and pytest stops with the reason). Without rclpy (a machine with no ROS) the ROS tests
    are skipped, except under CI (``CI`` set to true/1/yes), where that is an error too."""
    if importlib.util.find_spec("rclpy") is None:
        if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
            raise RuntimeError("CI: rclpy cannot be imported, so the ROS tests cannot run (make install)")
        return
    try:
        import chorus_ros.msg  # noqa: F401
        import chorus_ros.srv  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"rclpy is installed but the chorus_ros interfaces do not import ({e}): the "
                           f"interface build is missing or broken; run `make install`") from e


_require_interfaces()


class Harness:
    """Nodes spun by a MultiThreadedExecutor in a background thread, plus a probe node."""

    def __init__(self, context):
        import rclpy
        from rclpy.executors import MultiThreadedExecutor
        self.context = context
        self.executor = MultiThreadedExecutor(num_threads=4, context=context)
        self.probe = rclpy.create_node("probe", context=context)
        self.executor.add_node(self.probe)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        try:
            self.executor.spin()
        except Exception:
            pass

    def add(self, node):
        self.executor.add_node(node)
        return node

    def remove(self, node):
        self.executor.remove_node(node)
        node.destroy_node()

    def collect(self, msg_type, topic, qos=None):
        """Subscribe on the probe node; returns the list that receives the messages."""
        from chorus_ros.ros import qos as q
        got = []
        self.probe.create_subscription(msg_type, topic, got.append, qos or q.images(50))
        return got

    def publisher(self, msg_type, topic, qos=None, wait_for=1, timeout=10.0):
        from chorus_ros.ros import qos as q
        pub = self.probe.create_publisher(msg_type, topic, qos or q.images(10))
        until(lambda: pub.get_subscription_count() >= wait_for, timeout, f"a subscriber of {topic}")
        return pub

    def call(self, srv_type, name, request, timeout=30.0):
        client = self.probe.create_client(srv_type, name)
        assert client.wait_for_service(timeout_sec=timeout), f"service {name} not available"
        fut = client.call_async(request)
        until(fut.done, timeout, f"a response from {name}")
        self.probe.destroy_client(client)
        return fut.result()

    def shutdown(self):
        self.executor.shutdown(timeout_sec=5.0)
        self.probe.destroy_node()


def until(cond, timeout=20.0, what="the condition", period=0.01):
    """Poll ``cond()`` until true; fail naming ``what`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(period)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def ros_context():
    """A private rclpy Context shared by one test module."""
    import rclpy
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    ctx.try_shutdown()


@pytest.fixture(scope="module")
def harness(ros_context):
    h = Harness(ros_context)
    yield h
    h.shutdown()


@pytest.fixture(scope="session")
def wait_until():
    return until


# ----------------------------------------------------------------------- perception pipeline
class OracleFeatures:
    """Test stand-in for the incremental encoder (until a checkpoint is used): the language head
    of a Gaussian is the text embedding of its ground-truth class (``label`` extra carried by the
    map update) plus a fixed per-id perturbation; the object head is a fixed random vector per
    ground-truth instance. Deterministic in the Gaussian ids, so two pipelines fed the same map
    (in any order) get identical features."""

    def __init__(self, gmap, text_encoder, class_names, obj_dim=16, noise=0.02):
        import torch
        self.map = gmap
        self.text = text_encoder.encode(list(class_names)).float()
        g = torch.Generator().manual_seed(1234)
        self.obj_table = torch.nn.functional.normalize(torch.randn(4096, obj_dim, generator=g), dim=-1)
        self.noise_table = torch.randn(65521, self.text.shape[1], generator=g) * noise

    def update(self):
        return self.encode_full()

    def encode_full(self):
        from types import SimpleNamespace

        import torch
        n = len(self.map)
        if n:
            lab = self.map.attribute("label").long().clamp(0, len(self.text) - 1)
            inst = self.map.attribute("instance").long()
            ids = self.map.arrays().ids.long()
            lang = self.text[lab] + self.noise_table[ids % self.noise_table.shape[0]]
            self.map.set_attribute("feat.language", torch.nn.functional.normalize(lang, dim=-1))
            self.map.set_attribute("feat.object", self.obj_table[inst % self.obj_table.shape[0]])
        self.map.take_dirty()
        return SimpleNamespace(full=True, updated_slots=torch.arange(n), n_encoded=n)


def make_oracle_pipeline(text_encoder, labels):
    """A real PerceptionPipeline whose encoder is :class:`OracleFeatures`."""
    from chorus_ros.core.map import GaussianMap
    from chorus_ros.core.pipeline import PerceptionPipeline, PipelineConfig
    cfg = PipelineConfig(incremental=None)
    cfg.instances.voxel_size = 0.2        # the small test scenes are sampled ~0.2 m apart
    return PerceptionPipeline(cfg, None, text_encoder, labels, gmap=GaussianMap(cfg.map),
                              incremental_factory=lambda m: OracleFeatures(m, text_encoder, labels.names))


@pytest.fixture(scope="session")
def tiny_text_encoder():
    from chorus_ros.core.text import TextEncoderSpec, build_text_encoder
    return build_text_encoder(TextEncoderSpec(tiny=True, seed=0))


@pytest.fixture(scope="session")
def small_scene():
    from chorus_ros.core.synthetic import SceneConfig, generate_scene
    return generate_scene(SceneConfig(seed=1, target_gaussians=2500))


@pytest.fixture(scope="session")
def pipeline_factory(tiny_text_encoder, small_scene):
    """``factory()`` -> a fresh pipeline configured like the node's (same encoder and labels)."""
    return lambda: make_oracle_pipeline(tiny_text_encoder, small_scene.labels)


def write_random_checkpoint(out, labels, seed=0):
    """A small random-initialised encoder checkpoint (+ the tiny text tower's weights) in ``out``,
    loadable by PerceptionPipeline.from_checkpoint: the real loading and encoding path."""
    import torch

    from chorus_ros.core.encoder.checkpoint import save_checkpoint
    from chorus_ros.core.encoder.config import EncoderConfig, HeadSpec
    from chorus_ros.core.encoder.model import ChorusEncoder
    from chorus_ros.core.text import TextEncoderSpec, build_text_encoder
    torch.manual_seed(seed)
    cfg = EncoderConfig(channels=(16, 32), encoder_blocks=(1, 1), decoder_blocks=(1,), point_hidden=16,
                        head_hidden=32, embed_dim=32, heads=[HeadSpec("language", 64), HeadSpec("object", 16)])
    spec = TextEncoderSpec(tiny=True, seed=seed)
    text = build_text_encoder(spec)
    out.mkdir(parents=True, exist_ok=True)
    text.save_weights(out / "text_encoder.safetensors")
    meta_spec = spec.to_dict()
    meta_spec["weights"] = "text_encoder.safetensors"
    save_checkpoint(out, ChorusEncoder(cfg), {"labels": labels.to_dict(), "text_encoder": meta_spec})
    return out


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory, small_scene):
    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "random", small_scene.labels)


@pytest.fixture(scope="session")
def tiny_scene_folder(tmp_path_factory, small_scene):
    """A Replica-layout scene folder of ``small_scene``: 4 views at 32x24 with ground-truth images
    and a PLY carrying ground-truth ``label`` / ``instance`` properties (bag and CLI tests)."""
    from chorus_ros.core.datasets import scene_from_synthetic, write_scene_folder
    from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory
    traj = make_trajectory(small_scene, TrajectoryConfig(loop_views=3, random_views=1, width=32, height=24))
    mem = scene_from_synthetic(small_scene, traj)
    root = tmp_path_factory.mktemp("scenes") / "room"
    return write_scene_folder(root, gaussians=small_scene.gaussians, classes=mem.classes, intrinsics=mem.camera,
                              frames=list(mem), unlabeled_id=65535, instance_none_id=65535)

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
    """Nodes spun by the nodes' executor (chorus_ros.ros.executor.NodeExecutor, as in
    ``chorus-ros up``) in a background thread, plus a probe node."""

    def __init__(self, context):
        import rclpy

        from chorus_ros.ros.executor import NodeExecutor
        self.context = context
        self.executor = NodeExecutor(num_threads=4, context=context)
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
        self._thread.join(timeout=5.0)


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


@pytest.fixture(scope="module")
def rosout(harness):
    """Every /rosout record of the module's nodes (reliable, transient local, depth 1000)."""
    from rcl_interfaces.msg import Log
    from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy
    return harness.collect(Log, "/rosout", QoSProfile(depth=1000, reliability=QoSReliabilityPolicy.RELIABLE,
                                                      durability=QoSDurabilityPolicy.TRANSIENT_LOCAL))


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


# ------------------------------------------------------------------ plain coloured point clouds
def make_plain_cloud(n=40, *, packed="rgb", big=False, seed=0, colour_fields=None, ids=False, extra_nan=False,
                     xyz=None, c8=None, labels=None, instances=None):
    """A hand-built plain cloud: PCL PointXYZRGB layout (x y z, 4 bytes padding, packed rgb at 16,
    point_step 32) or separate colour fields (``colour_fields=(('r', 'g', 'b'), 'u1')`` etc.), optional
    UINT32 ``id`` = 100.. and a NaN ``y`` in point 3. ``xyz`` [N, 3] / ``c8`` [N, 3] uint8 replace the
    random points / colours; ``labels`` / ``instances`` [N] add UINT32 ``label`` / ``instance`` fields
    (extras)."""
    import array

    import numpy as np
    import torch
    from sensor_msgs.msg import PointCloud2, PointField
    U32, F32 = PointField.UINT32, PointField.FLOAT32
    g = torch.Generator().manual_seed(seed)
    if xyz is None:
        xyz = (torch.rand(n, 3, generator=g) * torch.tensor([2.0, 2.0, 0.2])).numpy()
    if c8 is None:
        c8 = torch.randint(0, 256, (len(xyz), 3), generator=g).numpy().astype(np.uint8)
    xyz, c8 = np.asarray(xyz, np.float32), np.asarray(c8, np.uint8)
    n = len(xyz)
    o = ">" if big else "<"
    layout = [("x", 0, "f4"), ("y", 4, "f4"), ("z", 8, "f4")]
    if colour_fields is None:
        layout.append((packed, 16, "f4"))
    else:
        names, code = colour_fields
        size = np.dtype(code).itemsize
        layout += [(nm, 12 + j * size, code) for j, nm in enumerate(names)]
    if ids:
        layout.append(("id", 24, "u4"))
    if labels is not None:
        layout.append(("label", 28, "u4"))
    if instances is not None:
        layout.append(("instance", 32, "u4"))
    step = 36 if instances is not None else 32
    dt = np.dtype({"names": [nm for nm, _, _ in layout], "formats": [o + c for _, _, c in layout],
                   "offsets": [off for _, off, _ in layout], "itemsize": step})
    rows = np.zeros(n, dtype=dt)
    for j, nm in enumerate("xyz"):
        rows[nm] = xyz[:, j]
    if colour_fields is None:   # PCL: 0x00RRGGBB as a uint32, stored in a FLOAT32 field
        v = (c8[:, 0].astype(np.uint32) << 16) | (c8[:, 1].astype(np.uint32) << 8) | c8[:, 2].astype(np.uint32)
        rows[packed] = v.astype(o + "u4").view(o + "f4")
    else:
        for j, nm in enumerate(colour_fields[0]):
            rows[nm] = c8[:, j] if colour_fields[1] == "u1" else c8[:, j] / 255.0
    if ids:
        rows["id"] = np.arange(n) + 100
    if labels is not None:
        rows["label"] = np.asarray(labels)
    if instances is not None:
        rows["instance"] = np.asarray(instances)
    if extra_nan:
        rows["y"][3] = np.nan
    code = {"u4": U32, "f4": F32, "u1": PointField.UINT8}
    msg = PointCloud2(height=1, width=n, is_bigendian=big, point_step=step, row_step=n * step, is_dense=True)
    msg.fields = [PointField(name=nm, offset=off, datatype=code[c], count=1) for nm, off, c in layout]
    msg.data = array.array("B", rows.tobytes())
    return msg, torch.from_numpy(xyz.astype(np.float32)), torch.from_numpy(c8)


@pytest.fixture(scope="session")
def plain_cloud():
    """``plain_cloud(...)`` -> ``(PointCloud2, xyz [N, 3] float32, colours [N, 3] uint8)``:
    :func:`make_plain_cloud` (a plain coloured cloud, packed PCL rgb or separate colour fields)."""
    return make_plain_cloud

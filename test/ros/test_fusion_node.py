"""chorus_node with per_view.fusion = 'camera' over real DDS: a view with a camera image paired by
stamp is fused with that image; a view without one falls back to the rendered RGB. Both equal the
core pipeline's output for the same inputs."""
import numpy as np
import pytest
import torch

pytest.importorskip("chorus_ros.msg", reason="interfaces not built (make install)")
pytestmark = pytest.mark.ros

W, H = 48, 36


@pytest.fixture(scope="module")
def fusion_pipeline_factory(pipeline_factory, tiny_text_encoder):
    from chorus_ros.core.decode.fusion import FusionConfig, FusionDecoder, PerViewConfig

    def make():
        pipe = pipeline_factory()
        torch.manual_seed(0)
        d = tiny_text_encoder.dim
        pipe.fusion = FusionDecoder(FusionConfig(language_dim=d, embed_dim=d, feat_channels=4, channels=(8, 12),
                                                 decoder_channels=8)).eval()
        pipe.config.per_view = PerViewConfig(fusion="camera")
        return pipe
    return make


def test_camera_mode_uses_the_paired_image_and_falls_back_without_one(harness, fusion_pipeline_factory, small_scene,
                                                                      wait_until):
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import CameraInfo, Image

    from chorus_ros.core.geometry import Camera
    from chorus_ros.core.synthetic.trajectory import TrajectoryConfig, make_trajectory
    from chorus_ros.msg import GaussianMapUpdate
    from chorus_ros.ros import conversions as cv
    from chorus_ros.ros import qos
    from chorus_ros.ros.chorus_node import ChorusNode
    from chorus_ros.ros.map_updates import map_update_from_msg, map_update_to_msg

    node = harness.add(ChorusNode("chorus_node", namespace="fusion", pipeline=fusion_pipeline_factory(),
                                  context=harness.context, cli_args=["--ros-args", "-p", "cameras:=[cam]"]))
    try:
        full = map_update_to_msg(small_scene.gaussians, map_id="m", sequence=0, full=True, stamp=10, include_extras=True)
        harness.publisher(GaussianMapUpdate, "fusion/map_updates", qos.latched(16)).publish(full)
        wait_until(lambda: node.encoded_version > 0 and node.wait_idle(0.1), 60, "the map to be encoded")
        tr = make_trajectory(small_scene, TrajectoryConfig(loop_views=2, random_views=0, width=W, height=H, seed=3))
        cams = [Camera(c.viewmat, c.K, W, H, "cam_optical") for c in tr.cameras]
        got = harness.collect(Image, "fusion/cam/semantic/image_raw")
        conf = harness.collect(Image, "fusion/cam/confidence/image_raw")
        ref = fusion_pipeline_factory()
        ref.apply_update(map_update_from_msg(full).gaussians, None, full=True)
        ref.encode()
        black = np.zeros((H, W, 3), np.uint8)
        for i, (cam, with_image) in enumerate([(cams[0], True), (cams[1], False)]):
            stamp = 2_000_000_000 + i
            pose, info = cv.camera_to_msgs(cam, stamp, "map")
            if with_image:
                harness.publisher(Image, "fusion/cam/image_raw").publish(
                    cv.numpy_to_image(black, "rgb8", cv.header(stamp, "cam_optical")))
                wait_until(lambda: stamp in node._camera_images.get("cam", {}), 30, "the camera image")
            harness.publisher(PoseStamped, "fusion/cam/pose").publish(pose)
            harness.publisher(CameraInfo, "fusion/cam/camera_info").publish(info)
            wait_until(lambda: any(cv.stamp_to_ns(m.header.stamp) == stamp for m in got) and
                       any(cv.stamp_to_ns(m.header.stamp) == stamp for m in conf), 60, f"view {i}")
            msg = [m for m in got if cv.stamp_to_ns(m.header.stamp) == stamp][-1]
            cam_used = cv.camera_from_msgs(pose, info)
            expect = ref.render_view(cam_used, image=black if with_image else None)
            assert expect.fused == ("camera" if with_image else "rendered")
            np.testing.assert_array_equal(cv.image_to_numpy(msg), expect.labels)
            cmsg = [m for m in conf if cv.stamp_to_ns(m.header.stamp) == stamp][-1]
            np.testing.assert_allclose(cv.image_to_numpy(cmsg), expect.confidence, rtol=1e-5, atol=1e-6)
            if with_image:  # the black image changed the output compared with the rendered RGB
                assert not np.allclose(expect.confidence, ref.render_view(cam_used).confidence)
    finally:
        harness.remove(node)

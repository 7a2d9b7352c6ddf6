"""Map input limits (issue 12, finding 2): one Gaussian 100 km away must not reach the encoder.

* the map refuses means beyond ``MapConfig.max_abs_coordinate`` and scales outside
  ``[min_scale, max_scale]``, naming the ids, and changes nothing;
* a pipeline refuses a map limit its encoder's voxel keys cannot cover;
* the encoder itself refuses (EncodeError naming the ids) Gaussians past its key range instead
  of corrupting its caches ("candidate cell missing")."""
import math

import pytest
import torch

from chorus_ros.core.encoder.config import EncoderConfig, HeadSpec
from chorus_ros.core.encoder.features import COORD_LIMIT
from chorus_ros.core.encoder.incremental import IncrementalEncoder, max_supported_coordinate
from chorus_ros.core.encoder.model import ChorusEncoder
from chorus_ros.core.errors import EncodeError, InvalidInputError
from chorus_ros.core.gaussians import GaussianArrays
from chorus_ros.core.map import GaussianMap, MapConfig


def gaussians(n, seed=0, ids=None):
    g = torch.Generator().manual_seed(seed)
    return GaussianArrays(torch.rand(n, 3, generator=g) * 2, torch.randn(n, 1, 3, generator=g) * 0.3,
                          torch.randn(n, generator=g), torch.full((n, 3), math.log(0.05)),
                          torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
                          torch.arange(n, dtype=torch.int64) if ids is None else ids)


def tiny_model():
    torch.manual_seed(0)
    cfg = EncoderConfig(channels=(8, 16), encoder_blocks=(1, 1), decoder_blocks=(1,), point_hidden=8,
                        head_hidden=16, embed_dim=8, heads=[HeadSpec("language", 8)])
    return ChorusEncoder(cfg).eval()


def test_one_gaussian_100_km_away_is_refused_by_the_map_and_nothing_changes():
    m = GaussianMap(MapConfig(sh_degree=0))
    m.add(gaussians(50))
    v = m.version
    far = gaussians(1, ids=torch.tensor([777]))
    far.means[0] = torch.tensor([100_000.0, 0.0, 1.0])
    with pytest.raises(InvalidInputError, match=r"1 Gaussians with means outside \+-5000 m.*777"):
        m.apply_delta(far, None)
    with pytest.raises(InvalidInputError, match="max_abs_coordinate"):
        m.replace_all(far)
    assert len(m) == 50 and m.version == v and not bool(m.contains(torch.tensor([777])).any())
    near = gaussians(1, ids=torch.tensor([778]))
    near.means[0] = torch.tensor([4999.0, -4999.0, 0.0])      # inside the limit: accepted
    m.apply_delta(near, None)
    assert len(m) == 51


def test_scale_limits_are_enforced_and_configurable():
    m = GaussianMap(MapConfig(sh_degree=0, min_scale=1e-6, max_scale=100.0))
    big = gaussians(3)
    big.log_scales[1, 2] = math.log(1000.0)
    with pytest.raises(InvalidInputError, match=r"scales outside \[1e-06, 100\] m.*\{1: "):
        m.add(big)
    small = gaussians(3)
    small.log_scales[2, 0] = math.log(1e-8)
    with pytest.raises(InvalidInputError, match="min_scale"):
        m.add(small)
    assert len(m) == 0
    m.add(gaussians(3))
    assert len(m) == 3


@pytest.mark.parametrize("kw", [dict(max_abs_coordinate=0.0), dict(max_abs_coordinate=float("nan")),
                                dict(min_scale=2.0, max_scale=1.0), dict(max_scale=float("inf")),
                                dict(min_scale=-1.0)])
def test_invalid_limit_config_is_refused(kw):
    with pytest.raises(InvalidInputError, match="MapConfig"):
        GaussianMap(MapConfig(**kw))


def test_supported_coordinate_bound_is_derived_from_the_key_range():
    model = tiny_model()
    lim = max_supported_coordinate(model, 1.0)
    vs = model.config.voxel_size
    assert lim < COORD_LIMIT * vs                            # inside the key range ...
    assert lim > COORD_LIMIT * vs - 2 * model.receptive_field_m - 2.0 - 9 * vs   # ... by the stated margin
    assert MapConfig().max_abs_coordinate < lim              # the default limit fits the default voxel


def test_pipeline_refuses_a_map_limit_beyond_the_encoder_key_range():
    from chorus_ros.core.pipeline import PerceptionPipeline, PipelineConfig
    cfg = PipelineConfig()
    cfg.map.max_abs_coordinate = 1e6     # checked before the text encoder or labels are used
    with pytest.raises(InvalidInputError, match="beyond what the encoder's voxel keys cover"):
        PerceptionPipeline(cfg, tiny_model(), None, None)


@pytest.mark.parametrize("mode", ["cached", "halo"])
def test_encoder_names_gaussians_past_its_key_range(mode):
    """A map configured to accept them (not the default): the incremental encoder refuses the
    update with EncodeError listing the offending ids, both on an update and a full encode."""
    from chorus_ros.core.encoder.incremental import IncrementalConfig
    model = tiny_model()
    m = GaussianMap(MapConfig(sh_degree=0, max_abs_coordinate=1e6))
    m.add(gaussians(40))
    inc = IncrementalEncoder(model, m, IncrementalConfig(mode=mode))
    inc.update()
    far = gaussians(1, ids=torch.tensor([4242]))
    far.means[0] = torch.tensor([0.0, 100_000.0, 0.0])
    m.apply_delta(far, None)
    with pytest.raises(EncodeError, match=r"ids \[4242\]") as e:
        inc.update()
    assert e.value.ids == [4242]
    with pytest.raises(EncodeError):
        inc.encode_full()
    m.remove(torch.tensor([4242]))       # removing it recovers: features equal a fresh full encode
    inc.update()
    got = m.attribute("feat.language").clone()
    IncrementalEncoder(model, m, IncrementalConfig(mode=mode)).encode_full()
    torch.testing.assert_close(got, m.attribute("feat.language"), atol=1e-5, rtol=0)

"""Config dataclasses mirrored into ROS parameters (descriptors from field docstrings)."""
from dataclasses import dataclass, field

import pytest
from rcl_interfaces.msg import ParameterType

from chorus_ros.ros.params import build_config, field_docstrings, flatten_config, param_specs


@dataclass
class Inner:
    near: float = 0.01
    """Near plane, metres."""
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Background colour."""
    sh_degree: int | None = None
    """SH degree; None = the Gaussians' own."""

    def validate(self):
        if self.near <= 0:
            raise ValueError(f"near must be positive, got {self.near}")


@dataclass
class Outer:
    rate_hz: float = 2.0
    """Max output rate,
    Hz (0 = unlimited)."""
    cameras: list[str] = field(default_factory=lambda: ["camera_0"])
    """Camera namespaces."""
    depth: int = field(default=2, metadata={"range": (1, 100), "read_only": True})
    """Queue depth."""
    inner: Inner = field(default_factory=Inner)
    """Nested."""
    table: dict = field(default_factory=dict)
    """Not representable."""
    loose: object = field(default_factory=Inner)
    """Annotated loosely, holds a dataclass: flattened by its value."""


def test_field_docstrings_are_parsed_including_multiline():
    d = field_docstrings(Outer)
    assert d["rate_hz"] == "Max output rate,\nHz (0 = unlimited)."
    assert d["cameras"] == "Camera namespaces." and d["depth"] == "Queue depth."
    assert field_docstrings(Inner)["sh_degree"] == "SH degree; None = the Gaussians' own."


def test_param_specs_flatten_types_ranges_read_only():
    skipped = []
    specs = {s.name: s for s in param_specs(Outer(), "node", read_only=["node.inner.near"],
                                            ranges={"node.rate_hz": (0.0, 50.0)}, skipped=skipped)}
    assert skipped == ["node.table"]
    assert sorted(specs) == ["node.cameras", "node.depth", "node.inner.background", "node.inner.near",
                             "node.inner.sh_degree", "node.loose.background", "node.loose.near",
                             "node.loose.sh_degree", "node.rate_hz"]
    assert specs["node.rate_hz"].ptype == ParameterType.PARAMETER_DOUBLE
    assert specs["node.cameras"].ptype == ParameterType.PARAMETER_STRING_ARRAY
    assert specs["node.inner.background"].ptype == ParameterType.PARAMETER_DOUBLE_ARRAY
    assert specs["node.inner.background"].default == [0.0, 0.0, 0.0]
    d = specs["node.depth"].descriptor()
    assert d.read_only and d.integer_range[0].from_value == 1 and d.integer_range[0].to_value == 100
    assert d.description == "Queue depth."
    assert specs["node.inner.near"].read_only and not specs["node.rate_hz"].read_only
    r = specs["node.rate_hz"].descriptor().floating_point_range[0]
    assert (r.from_value, r.to_value) == (0.0, 50.0)
    opt = specs["node.inner.sh_degree"].descriptor()
    assert opt.dynamic_typing and specs["node.inner.sh_degree"].default is None


def test_build_config_roundtrip_and_validation():
    cfg = build_config(Outer(), {"rate_hz": 3, "inner.background": [1, 0, 0.5], "inner.sh_degree": 2,
                                 "cameras": ["a", "b"]})
    assert cfg.rate_hz == 3.0 and isinstance(cfg.rate_hz, float)
    assert cfg.inner.background == (1.0, 0.0, 0.5) and cfg.inner.sh_degree == 2
    assert cfg.cameras == ["a", "b"] and Outer().cameras == ["camera_0"]
    assert build_config(Outer(), {"loose.near": 2.0}).loose.near == 2.0
    assert flatten_config(cfg)["inner.background"] == [1.0, 0.0, 0.5]
    with pytest.raises(ValueError, match="unknown parameters"):
        build_config(Outer(), {"nope": 1})
    with pytest.raises(ValueError, match="must be int"):
        build_config(Outer(), {"inner.sh_degree": "x"})
    with pytest.raises(ValueError, match="outside"):
        build_config(Outer(), {"depth": 0})
    with pytest.raises(ValueError, match="near must be positive"):   # the dataclass's own validate()
        build_config(Outer(), {"inner.near": -1.0})

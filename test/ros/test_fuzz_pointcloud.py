"""Fast property-based fuzzing (hypothesis) of PointCloud2 decoding (pure, no rclpy.init): a
few hundred generated layouts and mutated clouds; the long run is benchmarks/bench_fuzz.py."""
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402

from test import fuzz_cases as fc  # noqa: E402


@settings(max_examples=200, deadline=None, database=None, derandomize=True,
                phases=[Phase.explicit, Phase.generate],  # no shrinking: the failing case is printed
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(fc.pointcloud_cases())
def test_pointcloud_decoding_never_fails_unexpectedly(case):
    fc.check_pointcloud(case)

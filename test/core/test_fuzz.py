"""Fast property-based fuzzing (hypothesis) of PLY reading and the save format: a few hundred
generated cases; the long run (>= 10K cases) is benchmarks/bench_fuzz.py. Properties: see
test/fuzz_cases.py (decoders return valid data or raise a package exception with a message,
nothing else; valid inputs round-trip)."""
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402

from test import fuzz_cases as fc  # noqa: E402

FAST = settings(max_examples=100, deadline=None, database=None, derandomize=True,
                phases=[Phase.explicit, Phase.generate],  # no shrinking: the failing case is printed
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FAST
@given(fc.ply_cases())
def test_ply_reading_never_fails_unexpectedly(case):
    fc.check_ply(case)


@pytest.fixture(scope="module")
def save_fixture():
    from chorus_ros.core.text import TextEncoderSpec, build_text_encoder
    from test.core.test_persist import _pipeline, _scene
    text = build_text_encoder(TextEncoderSpec(tiny=True, seed=0))
    fx = fc.SaveFixture(lambda: _pipeline(text), _scene(60))
    yield fx
    fx.close()


def test_save_format_fuzz(save_fixture):
    seen = []

    @settings(max_examples=60, deadline=None, database=None, derandomize=True,
                phases=[Phase.explicit, Phase.generate],  # no shrinking: the failing case is printed
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture])
    @given(fc.save_cases())
    def run(case):
        seen.append(fc.check_save(case, save_fixture))
    run()
    assert "accepted" in seen and "CheckpointError" in seen     # both outcomes were exercised

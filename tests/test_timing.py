import time

import pytest

from moe_course.timing import interleaved_medians


def test_interleaved_medians_time_each_function_and_its_spread():
    calls = {"fast": 0, "slow": 0}

    def fast():
        calls["fast"] += 1

    def slow():
        calls["slow"] += 1
        time.sleep(0.004)

    result = interleaved_medians({"fast": fast, "slow": slow}, repeats=3, min_seconds=0.002)
    assert set(result) == {"fast", "slow"}
    assert 4 <= result["slow"][0] < 40 and result["fast"][0] < 1  # ms per call
    assert all(spread >= 0 for _, spread in result.values())
    assert calls["fast"] > calls["slow"] >= 2 + 3  # warm-up and calibration, then at least one call per repeat


@pytest.mark.parametrize("repeats", [1, 0, 2.0])
def test_interleaved_medians_need_two_repeats(repeats):
    with pytest.raises(ValueError, match="^repeats"):
        interleaved_medians({"f": lambda: None}, repeats)

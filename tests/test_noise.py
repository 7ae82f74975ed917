"""The noise interval of a difference in accuracy, against hand-computed Agresti–Caffo values."""
import math

import pytest

from distillery.eval.noise import accuracy_difference


def test_equal_accuracies_give_a_symmetric_interval_computed_by_hand():
    # 49 of 98 each: (49 + 1) / (98 + 2) = 0.5; spread 1.959964 · sqrt(2 · 0.25 / 100) = 0.138590.
    difference = accuracy_difference(0.5, 0.5, 98)
    assert difference.low == pytest.approx(-0.138590, abs=1e-6) and difference.high == pytest.approx(0.138590, abs=1e-6)
    assert difference.within_noise and difference.images == 0


def test_a_clear_difference_on_a_large_test_set_is_beyond_noise():
    difference = accuracy_difference(0.90, 0.88, 10000)
    first, second = 9001 / 10002, 8801 / 10002
    spread = 1.959964 * math.sqrt(first * (1 - first) / 10002 + second * (1 - second) / 10002)
    assert difference.low == pytest.approx(first - second - spread) and difference.high == pytest.approx(first - second + spread)
    assert not difference.within_noise and difference.images == 200
    assert difference.describe() == ("+2.00 points (+200 of 10,000 test images; 95% interval +1.1 to +2.9): "
                                     "better beyond noise")


def test_eight_images_of_360_are_within_noise_as_the_old_demo_was():
    difference = accuracy_difference(0.85, 0.85 + 8 / 360, 360)
    assert difference.within_noise and difference.images == -8
    assert "-8 of 360 test images" in difference.describe() and difference.describe().endswith("within noise")
    with pytest.raises(ValueError):
        accuracy_difference(0.5, 0.5, 0)

"""`dac_tf.protocol`: the evaluation radius, the model-selection attacks (the AT and
MART references' rules) and the pixel units of every program's radii and steps."""

import pytest

from dac_tf import protocol


def test_evaluation_radius_is_the_benchmark_radius_on_benchmark_data():
    for dataset in protocol.BENCHMARK_DATASETS:
        assert protocol.evaluation_epsilon(dataset, "linf", 0.031) == (8 / 255, "benchmark")
    assert protocol.evaluation_epsilon("digits", "linf", 32 / 255) == (32 / 255, "training")
    assert protocol.evaluation_epsilon("npz:/x.npz", "linf", 0.1) == (0.1, "training")
    assert protocol.evaluation_epsilon("cifar10", "l2", 0.5) == (0.5, "training")
    assert protocol.evaluation_epsilon(None, "linf", None) == (8 / 255, "default")


def test_selection_protocols():
    common = dict(dataset="cifar10", norm="linf", epsilon=0.031, step_size=0.0078,
                  num_steps=10, attack_start="normal")
    assert protocol.selection_attack("at", **common) == dict(
        epsilon=8 / 255, step_size=2 / 255, num_steps=10, start="uniform")
    assert protocol.selection_attack("mart", **common) == dict(
        epsilon=0.031, step_size=0.003, num_steps=20, start="uniform")
    assert protocol.selection_attack("training", **common) == dict(
        epsilon=0.031, step_size=0.0078, num_steps=10, start="normal")
    assert protocol.selection_attack("at", **common, overrides=dict(
        num_steps=7, epsilon=None)) == dict(epsilon=8 / 255, step_size=2 / 255,
                                            num_steps=7, start="uniform")
    digits = dict(common, dataset="digits", epsilon=32 / 255)
    assert protocol.selection_attack("at", **digits)["step_size"] == pytest.approx(8 / 255)


@pytest.mark.parametrize("value, ok", [(8, True), (0, True), (255, True), (0.031, False),
                                       (-1, False), (256, False), (float("nan"), False)])
def test_radii_are_pixel_units_never_guessed(value, ok):
    if ok:
        assert protocol.from_pixels("epsilon", value) == value / 255
    else:
        with pytest.raises(protocol.UnitError, match="--epsilon"):
            protocol.from_pixels("epsilon", value)
    # Step sizes may be below one level: MART's 0.003 is 0.765/255.
    assert protocol.from_pixels("step_size", 0.765, radius=False) == pytest.approx(0.003)

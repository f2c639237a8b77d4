"""dac_tf.benchmark.config: a setting that cannot run is refused before anything runs."""

import pytest

from dac_tf.benchmark import BenchConfig
from dac_tf.benchmark import BenchError

TINY = dict(arch=("small_cnn",), method=("at",), batch_size=(8,), steps=2, runs=2,
            warmup=1, modes=("fp32",))


@pytest.mark.parametrize("changes, message", [
    (dict(modes=("fp16",)), "--modes: fp16 not valid"),
    (dict(reference_bn_updates="true"), "--reference_bn_updates='true' not valid"),
    (dict(arch=("resnet50",)), "--arch: resnet50 not valid"),
    (dict(arch=()), "--arch is empty"),
    (dict(warmup=0), "--warmup must be >= 1"),
    (dict(steps=3, steps_per_execution=2), "multiple of --steps_per_execution"),
    (dict(batch_size=(8, 0)), "--batch_size must be positive"),
    (dict(pipeline=("tfds_like",), pipeline_examples=4), "smaller than the batch size"),
    (dict(time_budget_s=-1.0), "--time_budget_s must be >= 0"),
])
def test_bad_settings_fail_before_running(changes, message):
    with pytest.raises(BenchError, match=message):
        BenchConfig(**dict(TINY, **changes)).validate()
    BenchConfig(**TINY).validate()   # the tiny setting itself is fine


def test_no_device_rate_is_assumed_and_no_json_is_written_by_default():
    fields = BenchConfig.__dataclass_fields__
    assert "peak_tflops" not in fields
    assert BenchConfig().output == ""

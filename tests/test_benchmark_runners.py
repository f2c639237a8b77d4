"""dac_tf.benchmark.runners: an evaluation row computes what `evaluate` computes."""

import keras
import numpy as np
import pytest

from dac_tf.benchmark import BenchConfig
from dac_tf.benchmark import runners
from dac_tf.evaluation import loading
from dac_tf.evaluation import runner

TINY = dict(arch=("small_cnn",), method=("at",), batch_size=(8,), steps=2, runs=2,
            warmup=1, modes=("fp32",))


@pytest.mark.slow
def test_eval_rows_time_the_cleverhans_pgd_that_evaluate_runs(monkeypatch):
    """The eval row used to time the training PGD (`dac_tf.attacks`); `evaluate` runs
    CleverHans' (`dac_tf.evaluation.attacks`). One timed batch must compute exactly
    what `evaluate` computes on that batch."""
    config = BenchConfig(**TINY, eval_pgd_steps=2)
    keras.utils.set_random_seed(0)
    model = runners.build_base("small_cnn", "trades", config)
    images = runners.random_images(12, 0).astype(np.float32) / 255.0
    labels = runners.random_labels(12, 10, 0)
    run = runners.pgd_eval_runner(model, images, labels, num_steps=2, seed=3)
    record = runner.evaluate_model(loading.keras_logits_fn(model), images, labels,
                                   attacks="clean,pgd2", epsilon=8 / 255, batch_size=12,
                                   seed=3, show_progress=False, sanity_checks=False)
    assert run(1) == round(record["accuracy"]["pgd2"] * 12)
    assert record["attack_settings"]["pgd2"]["step_size"] == pytest.approx(2 / 255)
    # The benchmark's eval rows are built on it, with their own steps and seed.
    calls = []
    monkeypatch.setattr(runners, "pgd_eval_runner",
                        lambda *args, **kwargs: calls.append(kwargs) or (lambda n: 0))
    runners.make_eval_runner(dict(kind="eval", arch="small_cnn", batch_size=8, mode="xla"),
                             config)
    assert calls == [dict(num_steps=2, seed=0, jit_compile=True)]

"""Bad input: fuzzed flags, npz files and fit() inputs end in a clear error, never
something else, and a failing command leaves an existing run untouched."""


import numpy as np
import pytest
import keras
import tensorflow as tf
from hypothesis import HealthCheck, given, settings, strategies as st

import clitools
import dac_tf
from dac_tf import config as config_lib
from dac_tf import data

from test_train import run_cli, tiny_flags

NON_FINITE = st.sampled_from([float("nan"), float("inf"), float("-inf")])
FLAG_VALUES = {
    "method": st.sampled_from(["at", "trades", "mart", "pgd", "", "AT"]),
    "epsilon": st.one_of(st.none(), st.floats(-10, 400, allow_nan=False), NON_FINITE),
    "step_size": st.one_of(st.none(), st.floats(-10, 400, allow_nan=False), NON_FINITE),
    "num_steps": st.one_of(st.none(), st.integers(-5, 50)),
    "batch_size": st.one_of(st.none(), st.integers(-5, 1024)),
    "epochs": st.one_of(st.none(), st.integers(-3, 300)),
    "lr": st.one_of(st.none(), st.floats(-1, 10, allow_nan=False), NON_FINITE),
    "beta": st.one_of(st.none(), st.floats(-5, 20, allow_nan=False), NON_FINITE),
    "momentum": st.one_of(st.none(), st.floats(-1, 2, allow_nan=False), NON_FINITE),
    "val_size": st.one_of(st.none(), st.integers(-10, 100)),
    "dataset": st.sampled_from(["cifar10", "digits", "npz:/x.npz", "mnist", "npz"]),
    "norm": st.sampled_from(["linf", "l2"]),
    "use_dac": st.booleans(),
    "ac_step": st.one_of(st.none(), st.floats(-1, 2, allow_nan=False)),
    "arch": st.sampled_from(["preact_resnet18", "wide_resnet", "small_cnn"]),
    "depth": st.one_of(st.none(), st.integers(0, 40)),
}


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional=FLAG_VALUES))
def test_fuzzed_flags_resolve_or_raise_config_error(values):
    try:
        config = config_lib.resolve(values)
    except config_lib.ConfigError as e:
        message = str(e)
        assert "\n" not in message and message.startswith("--")
        return
    assert config.epochs >= 1 and config.batch_size >= 1 and config.num_steps >= 0
    assert 0 <= config.epsilon <= 1 and 0 < config.lr < float("inf")
    floats = [getattr(config, f) for f in ("epsilon", "step_size", "lr", "momentum",
                                           "weight_decay", "ac_step", "select_epsilon")]
    assert all(np.isfinite(v) for v in floats) and (config.beta is None or np.isfinite(
        config.beta))
    assert (config.beta is None) == (config.method == "at")


arrays = st.sampled_from(["uint8", "float32", "float64", "int64", "bool"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dtype=arrays, rank=st.integers(1, 5), n=st.integers(0, 4),
       scale=st.sampled_from([1.0, 255.0, -1.0, np.nan]),
       label_offset=st.sampled_from([0, -1, 10, 0.5]), drop_key=st.sampled_from(
           [None, "x_train", "y_test"]))
def test_fuzzed_npz_files_load_or_raise_dataset_error(tmp_path_factory, dtype, rank, n, scale,
                                                      label_offset, drop_key):
    rng = np.random.default_rng(0)
    shape = (n, 4, 4, 1, 1)[:rank]
    x = (rng.uniform(0, 1, shape) * scale).astype(dtype) if scale == scale else np.full(
        shape, np.nan)
    y = (rng.integers(0, 3, n) + label_offset)
    arrays_ = {"x_train": x, "y_train": y, "x_test": x, "y_test": y}
    if drop_key:
        arrays_.pop(drop_key)
    path = tmp_path_factory.mktemp("npz") / "d.npz"
    np.savez(path, **arrays_)
    try:
        splits = data.load(f"npz:{path}")
    except data.DatasetError as e:
        assert "\n" not in str(e).strip()
        return
    # Anything accepted is valid: float images in [0, 1] or uint8, labels in range.
    for images in (splits.x_train, splits.x_test):
        f = data.to_float32(images)
        assert f.ndim == 4 and np.all((f >= 0) & (f <= 1))
    assert splits.y_train.min() >= 0 and splits.y_train.max() < splits.num_classes


def small_dac():
    inputs = keras.Input((4, 4, 1))
    h = keras.layers.Flatten()(inputs)
    model = dac_tf.DACModel(keras.Model(inputs, keras.layers.Dense(3)(h)), num_steps=1)
    model.compile(optimizer="sgd")
    return model


@pytest.mark.parametrize("images, labels, error, match", [
    (np.zeros((4, 4, 4, 1), "uint8"), np.zeros(4, "int32"), ValueError, "divide by 255"),
    (np.full((4, 4, 4, 1), 2.0, "float32"), np.zeros(4, "int32"),
     tf.errors.InvalidArgumentError, r"images must be in \[0, 1\]"),
    (np.zeros((4, 4, 4, 1), "float32"), np.full(4, 3, "int32"),
     tf.errors.InvalidArgumentError, r"labels must be in \[0, num_classes\)"),
    (np.zeros((4, 4, 4, 1), "float32"), np.full(4, -1, "int32"),
     tf.errors.InvalidArgumentError, r"labels must be in \[0, num_classes\)"),
    (np.zeros((4, 4, 4, 1), "float32"), np.zeros((4, 3), "float32"), ValueError,
     "integer class labels"),
    (np.zeros((4, 5, 5, 1), "float32"), np.zeros(4, "int32"), ValueError, "shape"),
])
def test_fit_rejects_bad_batches_clearly(images, labels, error, match):
    with pytest.raises(error, match=match):
        small_dac().fit(images, labels, batch_size=4, verbose=0)


@pytest.mark.slow
def test_failing_commands_leave_an_existing_run_untouched(tmp_path):
    model_dir = tmp_path / "run"
    assert run_cli(tiny_flags(model_dir, epochs=1, eval_examples=32)).returncode == 0
    before = clitools.tree_hashes(model_dir)
    for extra in (["--lr=0.5"], ["--method=trades"], ["--epochs=0"], ["--num_steps=-2"],
                  ["--dataset=npz:/does/not/exist.npz"]):
        result = run_cli(tiny_flags(model_dir, epochs=1, eval_examples=32) + extra,
                         timeout=120)
        assert result.returncode != 0 and "Traceback" not in result.stderr, extra
    assert clitools.tree_hashes(model_dir) == before


EVAL_FLAG_VALUES = {
    "attacks": st.sampled_from(["clean", "pgd20", "pgd0", "pgd-3", "pgd", "cw", "cw7",
                                "fgsm,pgd100,autoattack", "bogus", "", "clean,clean",
                                "PGD20"]),
    "epsilon": st.one_of(st.floats(-5, 300), st.just(float("nan")), st.just(float("inf"))),
    "pgd_step_size": st.floats(-1, 300, allow_nan=False),
    "cw_step_size": st.floats(-1, 300, allow_nan=False),
    "cw_confidence": st.floats(-10, 100, allow_nan=False),
    "checkpoint": st.sampled_from(["best", "last", "last,best", "final", "", "best,"]),
    "split": st.sampled_from(["test", "train", "val", ""]),
    "norm": st.sampled_from(["linf", "l2", "l1"]),
    "batch_size": st.integers(-3, 500),
    "num_examples": st.integers(-3, 500),
    "pgd_restarts": st.integers(-2, 5),
    "autoattack_attacks": st.sampled_from(["apgd-ce,apgd-t,fab-t,square", "apgd-ce",
                                           "fab", "apgd-ce,apgd-ce", ""]),
    "autoattack_impl": st.sampled_from(["native", "official", "pyautoattack", "torch"]),
    "autoattack_targets": st.integers(-1, 12),
}


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({}, optional=EVAL_FLAG_VALUES))
def test_fuzzed_evaluate_flags_resolve_or_raise_one_line_errors(values):
    from absl import flags as absl_flags
    from dac_tf import evaluate
    from dac_tf.evaluation import attacks

    flag_values = absl_flags.FlagValues()
    evaluate.define_flags(flag_values)
    flag_values(["evaluate", "--model=/no/such/run", "--output=/tmp/never_written.json"]
                + [f"--{k}={v}" for k, v in values.items()])
    try:
        config = evaluate.config_from_flags(flag_values)
    except (evaluate.EvaluationError, attacks.AttackError) as e:
        message = str(e)
        assert "\n" not in message and message.startswith("--"), message
        return
    # Anything accepted is a valid evaluation setting.
    assert config.epsilon is None or 0 <= config.epsilon <= 1
    assert config.batch_size >= 1 and config.split in evaluate.SPLITS
    assert all(c in ("best", "last") for c in config.checkpoint)
    assert attacks.parse_attacks(config.attacks)


def _net(outputs=3, activation=None, two_outputs=False):
    inputs = keras.Input((4, 4, 1))
    logits = keras.layers.Dense(outputs, activation=activation)(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, [logits, logits] if two_outputs else logits)


@pytest.mark.parametrize("base, kwargs, match", [
    (lambda: _net(), dict(epsilon=float("nan")), "epsilon=nan"),
    (lambda: _net(), dict(step_size=float("inf")), "step_size=inf"),
    (lambda: _net(), dict(method="trades", beta=float("nan")), "beta=nan"),
    (lambda: _net(1), {}, "1 logit"),
    (lambda: _net(activation="softmax"), {}, "ends in softmax"),
    (lambda: keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                               keras.layers.Dense(3), keras.layers.Softmax()]), {},
     "Softmax layer"),
    (lambda: _net(two_outputs=True), {}, "has 2 outputs"),
])
def test_dac_model_refuses_what_it_cannot_train(base, kwargs, match):
    with pytest.raises(ValueError, match=match):
        dac_tf.DACModel(base(), **kwargs)


def test_dac_model_refuses_unusable_batches_and_a_missing_compile():
    model = dac_tf.DACModel(_net(), num_steps=1)
    x, y = np.random.rand(4, 4, 4, 1).astype("float32"), np.arange(4) % 3
    with pytest.raises(ValueError, match="call model.compile"):
        model.train_step((tf.constant(x), tf.constant(y)))
    model.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="got a dict"):
        model.fit({"images": x}, y, verbose=0)
    ragged = tf.RaggedTensor.from_row_lengths(tf.zeros([8]), [2, 2, 2, 2])
    with pytest.raises(ValueError, match="dense images; got a RaggedTensor"):
        model.train_step((ragged, tf.constant(y)))


@pytest.mark.parametrize("labels, extra, match", [
    (np.r_[np.arange(29) % 10, 100000], {}, r"y_train\[29\] = 100000 would make 100001 "
                                            r"classes, but 99990 classes, from 10 on"),
    (np.r_[np.arange(29) % 10, 10**9], {}, r"y_train\[29\] = 1000000000"),
    (np.where(np.arange(30) % 10 == 5, 4, np.arange(30) % 10), {},
     r"class 5 never occurs in y_train"),
    (np.r_[np.arange(29) % 10, 12], dict(num_classes=np.array(10)),
     r"y_train\[29\] = 12 is outside the 10 classes that num_classes declares"),
    (np.r_[np.arange(29) % 10, 12], dict(class_names=np.array(list("abcdefghij"))),
     r"outside the 10 classes that class_names declares"),
    (np.arange(30) % 10, dict(num_classes=np.array(10), class_names=np.array(list("abc"))),
     "they must agree"),
])
def test_npz_class_count_comes_from_the_file_not_a_stray_label(tmp_path, labels, extra,
                                                               match):
    path = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.random((30, 8, 8, 1), np.float32), y_train=labels,
             x_test=rng.random((10, 8, 8, 1), np.float32), y_test=np.arange(10), **extra)
    with pytest.raises(data.DatasetError, match=match) as info:
        data.load(f"npz:{path}")
    assert "\n" not in str(info.value)


def test_npz_declared_classes_may_exceed_the_labels_seen(tmp_path):
    path = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.random((30, 8, 8, 1), np.float32), y_train=np.arange(30) % 10,
             x_test=rng.random((10, 8, 8, 1), np.float32), y_test=np.arange(10),
             num_classes=np.array(12))
    splits = data.load(f"npz:{path}")
    assert splits.num_classes == 12 and len(splits.class_names) == 12

"""The Keras user's path (issue 18): DACModel in your own `fit`, the best model out.

Each test is a mistake a user can make or a promise the README makes, checked against an
independent computation: units refused with the value to pass, validation data refused
at construction, callback order made irrelevant (the keys reach every Keras callback that
reads them), the best epoch's weights out of `ModelCheckpoint` into a fresh base model in
a new process, and `evaluate` / `predict` under MirroredStrategy equal to one device.
"""

import csv
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import dac_tf
from dac_tf import attacks
from dac_tf import callbacks
from dac_tf import protocol
from dac_tf import serving
from dac_tf.autoattack import runner as autoattack_runner
from dac_tf.evaluation import attacks as evaluation_attacks
from dac_tf.evaluation import runner as evaluation_runner

from test_distribute import cpu_strategy
from test_distribute import make_base

SHAPE = (8, 8, 1)
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")


def small_model(seed=0):
    keras.utils.set_random_seed(seed)
    return dac_tf.models.build("small_cnn", num_classes=10, input_shape=SHAPE)


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits
    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., None]
    y = data.target.astype("int64")
    return x[:256], y[:256], x[256:320], y[256:320]


# ----------------------------------------------------------------- one unit rule
ENTRIES = {
    "DACModel epsilon": lambda m, x, y: dac_tf.DACModel(m, epsilon=8, step_size=2 / 255),
    "DACModel step_size": lambda m, x, y: dac_tf.DACModel(m, epsilon=8 / 255, step_size=2),
    "RobustValidation epsilon": lambda m, x, y: callbacks.RobustValidation(x, y, epsilon=8),
    "RobustValidation step_size": lambda m, x, y: callbacks.RobustValidation(
        x, y, epsilon=8 / 255, step_size=2),
    "attacks.pgd": lambda m, x, y: attacks.pgd(m, x, y, epsilon=8, step_size=2 / 255,
                                               num_steps=1),
    "attacks.fgsm": lambda m, x, y: attacks.fgsm(m, x, y, epsilon=8),
    "evaluate_model": lambda m, x, y: evaluation_runner.evaluate_model(
        m, x, y, attacks="pgd1", epsilon=8, show_progress=False),
    "evaluate_model step": lambda m, x, y: evaluation_runner.evaluate_model(
        m, x, y, attacks="pgd1", epsilon=8 / 255, pgd_step_size=2, show_progress=False),
    "evaluation pgd": lambda m, x, y: evaluation_attacks.pgd(
        m, x, y, epsilon=8, step_size=2 / 255, num_steps=1),
    "evaluation fgsm": lambda m, x, y: evaluation_attacks.fgsm(m, x, y, epsilon=8),
    "attack_settings": lambda m, x, y: evaluation_attacks.attack_settings(
        evaluation_attacks.parse_attacks("pgd20")[0], epsilon=8),
    "autoattack": lambda m, x, y: autoattack_runner.run_standard_autoattack(
        m, x, y, epsilon=8),
    "export metadata": lambda m, x, y: serving.export_saved_model(
        m, "/nonexistent/never-written", metadata={"epsilon": 8}),
}


@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_every_api_entry_refuses_a_radius_out_of_255_with_the_value_to_pass(entry, digits):
    x, y = digits[0][:4], digits[1][:4]
    model = small_model()
    with pytest.raises(protocol.UnitError, match=r"=[82] looks like x/255.*pass \S+=[82]/255"):
        ENTRIES[entry](model, x, y)


def test_the_unit_rule_accepts_unit_values_and_leaves_tensors_to_the_graph(digits):
    assert protocol.unit_value("epsilon", 8 / 255) == pytest.approx(8 / 255)
    assert protocol.unit_value("epsilon", np.float32(1.0)) == 1.0
    assert protocol.unit_value("epsilon", np.array(0.5)) == 0.5
    for bad in (-0.1, float("nan"), float("inf"), "8/255", True, None):
        with pytest.raises(protocol.UnitError):
            protocol.unit_value("epsilon", bad)
    with pytest.raises(protocol.UnitError, match="give it in \\[0, 1\\] units"):
        protocol.unit_value("epsilon", 1000)
    model = small_model()
    x, y = digits[0][:4], digits[1][:4]

    @tf.function
    def attack(epsilon):   # a traced radius is a tensor: not read back to the host
        return attacks.pgd(lambda t: model(t, training=False), x, y, epsilon=epsilon,
                           step_size=epsilon / 4, num_steps=2, start="none")

    adv = attack(tf.constant(8 / 255)).numpy()
    assert 0 < np.abs(adv - x).max() <= 8 / 255 + 1e-6


# ------------------------------------------- RobustValidation checks at construction
def test_robust_validation_refuses_bad_data_at_construction(digits):
    x, y = digits[2], digits[3]
    cases = [
        (dict(x=x * 255), "looks like 0..255 pixels; pass x / 255"),
        (dict(x=x - 0.5), r"images must be in \[0, 1\]"),
        (dict(x=np.where(x > 0.5, np.nan, x)), "NaN"),
        (dict(x=(x * 255).astype("int32")), "dtype int32"),
        (dict(y=y + 0.7), "class labels cannot have fractions"),
        (dict(y=y.astype("float32")), r"pass y.astype\('int64'\)"),
        (dict(y=keras.utils.to_categorical(y, 10)), "one-hot labels"),
        (dict(y=y[:-1]), "64 images but y has 63 labels"),
        (dict(y=-y - 1), "must be >= 0"),
        (dict(num_examples=65), "num_examples=65 but only 64"),
        (dict(num_examples=0), "num_examples=0 must be an integer >= 1"),
        (dict(batch_size=0), "batch_size=0"),
        (dict(num_steps=-1), "num_steps=-1"),
        (dict(norm="l1"), "norm='l1'"),
        (dict(start="random"), "start='random'"),
    ]
    for change, message in cases:
        args = dict(x=x, y=y, epsilon=8 / 255)
        args.update(change)
        with pytest.raises(callbacks.RobustValidationError, match=message):
            callbacks.RobustValidation(args.pop("x"), args.pop("y"), **args)


def test_column_labels_and_uint8_images_give_the_values_of_their_plain_forms(digits):
    x, y = digits[2], digits[3]
    model = small_model()
    pixels = np.round(x * 255).astype(np.uint8)
    values = []
    for images, labels in [(pixels / np.float32(255), y), (pixels, y[:, None])]:
        cb = callbacks.RobustValidation(images, labels, epsilon=8 / 255, num_steps=2,
                                        batch_size=16)
        cb.set_model(model)
        values.append(cb.evaluate())
    assert values[0] == values[1]
    # The clean accuracy against an independent count.
    clean = np.mean(np.argmax(model.predict(pixels / np.float32(255), verbose=0), -1) == y)
    assert values[0]["clean_accuracy"] == pytest.approx(clean)


def test_labels_outside_the_models_classes_are_refused_before_the_first_batch(digits):
    x, y = digits[0][:32], digits[1][:32]
    model = dac_tf.DACModel(small_model(), epsilon=8 / 255, step_size=2 / 255, num_steps=1)
    model.compile(optimizer=dac_tf.optimizers.TorchSGD(0.01))
    batches = []
    with pytest.raises(callbacks.RobustValidationError, match=r"y\[3\] = 12 .* 10 classes"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[
            keras.callbacks.LambdaCallback(on_train_batch_begin=lambda batch, logs=None: batches.append(batch)),
            callbacks.RobustValidation(x[:8], np.array([0, 1, 2, 12, 4, 5, 6, 7]),
                                       epsilon=8 / 255)])
    assert batches == []


# ------------------------------------------------------------ callback order
def _tensorboard_tags(log_dir):
    tags = set()
    for root, _, names in os.walk(log_dir):
        for name in names:
            for record in tf.data.TFRecordDataset(os.path.join(root, name)):
                event = tf.compat.v1.Event.FromString(record.numpy())
                tags.update(v.tag for v in event.summary.value)
    return tags


@pytest.mark.slow
def test_keras_callbacks_before_robust_validation_see_its_keys(digits, tmp_path):
    x, y, x_val, y_val = digits
    model = dac_tf.DACModel(small_model(), epsilon=8 / 255, step_size=4 / 255, num_steps=2)
    model.compile(optimizer=dac_tf.optimizers.TorchSGD(0.05, momentum=0.9))
    key = "val_robust_accuracy"
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(tmp_path / "best.weights.h5"), monitor=key, mode="max", save_best_only=True,
        save_weights_only=True)
    stopping = keras.callbacks.EarlyStopping(monitor=key, mode="max", patience=10)
    plateau = keras.callbacks.ReduceLROnPlateau(monitor=key, mode="max", patience=10)
    logger = keras.callbacks.CSVLogger(str(tmp_path / "metrics.csv"))
    board = keras.callbacks.TensorBoard(str(tmp_path / "tb"), write_graph=False,
                                        profile_batch=0)
    validation = callbacks.RobustValidation(x_val, y_val, epsilon=8 / 255, num_steps=2)
    with _no_keras_warning():
        history = model.fit(x, y, batch_size=64, epochs=3, verbose=0, callbacks=[
            checkpoint, stopping, plateau, logger, board, validation])
    values = history.history[key]
    assert len(values) == 3
    assert checkpoint.best == pytest.approx(max(values))
    assert stopping.best == pytest.approx(max(values))
    assert plateau.best == pytest.approx(max(values))
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r[key]) for r in rows] == pytest.approx(values)
    # TensorBoard writes `val_` keys to its validation run, without the prefix.
    assert "epoch_robust_accuracy" in _tensorboard_tags(str(tmp_path / "tb" / "validation"))
    assert os.path.exists(tmp_path / "best.weights.h5")


class _no_keras_warning:
    """Fails on Keras' "Can save best model only with ... available" (or the early
    stopping / plateau equivalents): the symptom of a key that arrived too late."""

    def __enter__(self):
        import warnings
        self._catcher = warnings.catch_warnings(record=True)
        self._seen = self._catcher.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._catcher.__exit__(*exc)
        bad = [str(w.message) for w in self._seen if "val_robust_accuracy" in str(w.message)]
        assert not bad, bad
        return False


def test_a_plain_keras_model_takes_an_ordered_list_or_is_refused_at_the_start(digits,
                                                                              tmp_path):
    x, y, x_val, y_val = digits
    model = small_model()
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    batches = []
    counter = keras.callbacks.LambdaCallback(on_train_batch_begin=lambda batch, logs=None: batches.append(batch))
    validation = callbacks.RobustValidation(x_val, y_val, epsilon=8 / 255, num_steps=1)
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(tmp_path / "best.weights.h5"), monitor="val_robust_accuracy", mode="max",
        save_best_only=True, save_weights_only=True)
    with pytest.raises(callbacks.RobustValidationError, match="callbacks.ordered"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[counter, checkpoint, validation])
    assert batches == []
    history = model.fit(x, y, epochs=2, verbose=0,
                        callbacks=callbacks.ordered([counter, checkpoint, validation]))
    assert checkpoint.best == pytest.approx(max(history.history["val_robust_accuracy"]))
    # The list order is kept apart from the validations moving to the front.
    assert callbacks.ordered([counter, checkpoint, validation]) == [
        validation, counter, checkpoint]


# ----------------------------------------------------- the best model out of fit
class _WeightsPerEpoch(keras.callbacks.Callback):
    def __init__(self, base):
        super().__init__()
        self.base, self.weights = base, []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append([w.copy() for w in self.base.get_weights()])


@pytest.mark.slow   # a second process (TensorFlow import), 3 epochs and an export: ~25 s
def test_the_best_epoch_leaves_fit_as_weights_keras_file_and_saved_model(digits, tmp_path):
    x, y, x_val, y_val = digits
    base = small_model()
    model = dac_tf.DACModel(base, epsilon=8 / 255, step_size=4 / 255, num_steps=2)
    model.compile(optimizer=dac_tf.optimizers.TorchSGD(0.05, momentum=0.9))
    recorder = _WeightsPerEpoch(base)
    # The last epoch at a destructive learning rate: the best epoch is an earlier one.
    wreck = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 30.0 if epoch == 2 else lr)
    path = str(tmp_path / "best.weights.h5")
    history = model.fit(x, y, batch_size=64, epochs=3, verbose=0, callbacks=[
        keras.callbacks.ModelCheckpoint(path, monitor="val_robust_accuracy", mode="max",
                                        save_best_only=True, save_weights_only=True),
        recorder, wreck,
        callbacks.RobustValidation(x_val, y_val, epsilon=8 / 255, num_steps=2)])
    robust = history.history["val_robust_accuracy"]
    best_epoch = int(np.argmax(robust))
    assert best_epoch < 2, robust
    expected = small_model(seed=5)          # other initial weights, set to the best epoch's
    expected.set_weights(recorder.weights[best_epoch])
    logits = expected.predict(x_val, verbose=0)
    assert not np.allclose(logits, base.predict(x_val, verbose=0), atol=1e-3)  # not the last
    np.save(tmp_path / "x.npy", x_val)
    model.save(str(tmp_path / "dac.keras"))
    with open(tmp_path / "base.json", "w") as f:
        f.write(expected.to_json())

    # (a) A new process, with dac_tf unimportable: the weights file loads into a freshly
    # built copy of the base model (built from its JSON: plain Keras layers), and the
    # whole DACModel's .keras file fails with a message that says to import dac_tf.
    code = textwrap.dedent(f"""
        import sys
        class NoDacTf:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "dac_tf":
                    raise ImportError("no dac_tf here")
        sys.meta_path.insert(0, NoDacTf())
        import keras, numpy as np
        keras.utils.set_random_seed(9)
        fresh = keras.models.model_from_json(open({str(tmp_path / "base.json")!r}).read())
        fresh.load_weights({path!r})
        np.save({str(tmp_path / "fresh.npy")!r},
                fresh.predict(np.load({str(tmp_path / "x.npy")!r}), verbose=0))
        try:
            keras.saving.load_model({str(tmp_path / "dac.keras")!r})
        except Exception as e:
            print(e)
    """)
    run = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "fresh.npy"), logits, rtol=1e-5, atol=1e-5)
    assert "run `import dac_tf` before keras.saving.load_model" in run.stdout

    # (b) saved as .keras and (c) exported as a SavedModel, from that model.
    best = small_model(seed=7)
    best.load_weights(path)
    best.save(str(tmp_path / "robust.keras"))
    reloaded = keras.saving.load_model(str(tmp_path / "robust.keras"))
    np.testing.assert_allclose(reloaded.predict(x_val, verbose=0), logits, rtol=1e-5,
                               atol=1e-5)
    version = serving.export_saved_model(best, str(tmp_path / "export"),
                                         metadata={"epsilon": 8 / 255})
    served = tf.saved_model.load(version).signatures["serving_default"]
    np.testing.assert_allclose(served(images=tf.constant(x_val))["logits"].numpy(), logits,
                               rtol=1e-4, atol=1e-4)
    assert serving.read_metadata(version)["epsilon_255"] == pytest.approx(8.0)
    # With dac_tf the whole DACModel loads, compiled, with its optimizer state.
    loaded = keras.saving.load_model(str(tmp_path / "dac.keras"))
    assert int(loaded.optimizer.iterations.numpy()) == int(model.optimizer.iterations.numpy())


def test_dac_save_weights_also_restores_the_optimizer_like_keras(digits, tmp_path):
    # Keras' save_weights of a compiled model keeps the optimizer's state (what
    # BackupAndRestore relies on); the base-model layout must not lose that.
    x, y = digits[0][:64], digits[1][:64]

    def dac(seed):
        model = dac_tf.DACModel(small_model(seed), epsilon=8 / 255, step_size=2 / 255,
                                num_steps=1)
        model.compile(optimizer=dac_tf.optimizers.TorchSGD(0.05, momentum=0.9))
        return model

    trained = dac(0)
    trained.fit(x, y, batch_size=32, epochs=1, verbose=0)
    path = str(tmp_path / "dac.weights.h5")
    trained.save_weights(path)
    restored = dac(1)
    restored.load_weights(path)
    assert int(restored.optimizer.iterations.numpy()) == 4      # 2 batches x 2 updates
    for a, b in zip(trained.optimizer.variables, restored.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(trained.get_weights(), restored.get_weights()):
        np.testing.assert_array_equal(a, b)
    # The file (what ModelCheckpoint(save_weights_only=True) writes) loads into a freshly
    # built base model, and a base model's own weights file into a DACModel.
    fresh = small_model(3)
    fresh.load_weights(path)
    for a, b in zip(trained.base_model.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(a, b)
    trained.base_model.save_weights(str(tmp_path / "base.weights.h5"))
    other = dac(2)
    other.load_weights(str(tmp_path / "base.weights.h5"))
    for a, b in zip(trained.base_model.get_weights(), other.base_model.get_weights()):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------- evaluate and predict over replicas
# (examples, batch size) per replica count: uneven last batches (3 on 2 replicas: 2 + 1)
# and tiny ones that leave replicas without an example (1 on 2; 1 and 2 on 3). Keras
# itself refuses a first batch that does not split evenly over the replicas (its
# symbolic build averages the first batch over them), so the first batches are full.
SPLITS = {2: [(7, 4), (5, 4)], 3: [(7, 6), (8, 6), (10, 3)]}


@pytest.mark.parametrize("replicas", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_evaluate_and_predict_over_replicas_equal_one_device(replicas):
    keras.utils.set_random_seed(0)
    single = make_base(batchnorm=True)      # BatchNorm in inference mode: replica-free
    single_dac = dac_tf.DACModel(single, epsilon=8 / 255, step_size=2 / 255, num_steps=1)
    single_dac.compile(optimizer=dac_tf.optimizers.TorchSGD(0.1))
    strategy = cpu_strategy(replicas)
    with strategy.scope():
        base = make_base(batchnorm=True)
        base.set_weights(single.get_weights())
        mirrored = dac_tf.DACModel(base, epsilon=8 / 255, step_size=2 / 255, num_steps=1)
        mirrored.compile(optimizer=dac_tf.optimizers.TorchSGD(0.1))
    for n, batch_size in SPLITS[replicas]:
        rng = np.random.default_rng(n)
        x = rng.uniform(0, 1, (n, 5, 5, 2)).astype("float32")
        y = rng.integers(0, 4, n)
        logits = single.predict(x, batch_size=n, verbose=0)
        loss = keras.ops.convert_to_numpy(
            keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
        expected = {"accuracy": np.mean(np.argmax(logits, -1) == y),
                    "loss": float(np.mean(loss))}
        for model in (single_dac, mirrored):
            got = model.evaluate(x, y, batch_size=batch_size, verbose=0, return_dict=True)
            assert got["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-7), (n, model)
            assert got["loss"] == pytest.approx(expected["loss"], rel=1e-5), (n, model)
            np.testing.assert_allclose(model.predict(x, batch_size=batch_size, verbose=0),
                                       logits, rtol=1e-5, atol=1e-6)

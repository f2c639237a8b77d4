"""Robustness evaluation: CleverHans attacks, batching, aggregation, resume, CLI.

A small CNN trained for a few seconds on sklearn's 8x8 digits (cached per module) makes
the attack-strength order non-trivial; the invariants (ball, box, eps = 0, padding) are
checked against independent computations, and the CLI runs end to end in a subprocess
on a fabricated training run directory.
"""

import copy
import json
import os
import subprocess
import sys

from absl import flags
import keras
import numpy as np
import pytest
import tensorflow as tf
from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

from dac_tf import batching
from dac_tf import checkpoints
from dac_tf import data
from dac_tf import evaluate
from dac_tf import fileio
from dac_tf import models
from dac_tf.evaluation import EvaluationError
from dac_tf.evaluation import attacks
from dac_tf.evaluation import checks
from dac_tf.evaluation import loading
from dac_tf.evaluation import results
from dac_tf.evaluation import runner
from dac_tf.evaluation import suite
from dac_tf.evaluation import table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPS = 0.1   # digits are 8x8 in [0, 1]; at 0.1 the trained CNN keeps ~45-65% under attack
SMALL_AA = dict(apgd_n_iter=5, fab_n_iter=5, square_n_queries=20, n_target_classes=2)
WIDTHS = (16, 32, 32)


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


@pytest.fixture(scope="module")
def trained(digits):
    """small_cnn trained with plain Keras on digits (about 3 s; ~98% test accuracy)."""
    keras.utils.set_random_seed(0)
    model = models.build("small_cnn", num_classes=10, input_shape=(8, 8, 1),
                         normalization=None, widths=WIDTHS)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(digits.x_train, digits.y_train, epochs=10, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="module")
def logits_fn(trained):
    return loading.keras_logits_fn(trained)


@pytest.fixture(scope="module")
def run_dir(trained, tmp_path_factory):
    """A training run directory as dac_tf.train lays it out (config.json, best/, last)."""
    model_dir = str(tmp_path_factory.mktemp("run") / "digits_run")
    os.makedirs(model_dir)
    fileio.write_json_atomic(checkpoints.config_path(model_dir), dict(
        arch="small_cnn", num_classes=10, input_shape=[8, 8, 1], normalization="none",
        dataset="digits", epsilon=EPS, norm="linf", arch_kwargs=dict(widths=list(WIDTHS))))
    ckpt = tf.train.Checkpoint(model=trained)
    for sub in (checkpoints.BEST_DIR, checkpoints.LAST_DIR):
        tf.train.CheckpointManager(ckpt, os.path.join(model_dir, sub), max_to_keep=1).save()
    return model_dir


def linear_fn(seed=0, shape=(8, 8, 1), classes=10):
    rng = np.random.default_rng(seed)
    w = tf.constant(rng.normal(size=(int(np.prod(shape)), classes)).astype(np.float32))
    return lambda x: tf.reshape(x, [tf.shape(x)[0], -1]) @ w


def _attack(kind, fn, x, y, eps, norm, seed=(1, 2)):
    if kind == "fgsm":
        return attacks.fgsm(fn, x, y, epsilon=eps, norm=norm)
    loss_fn = attacks.make_cw_loss_fn() if kind == "cw" else None
    return attacks.pgd(fn, x, y, epsilon=eps, step_size=eps / 4, num_steps=5, norm=norm,
                       loss_fn=loss_fn, seed=tf.constant(seed, tf.int64))


# ------------------------------------------------------------------- attack invariants
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("kind", ["fgsm", "pgd", "cw"])
def test_attack_stays_in_ball_and_box(kind, norm, digits, logits_fn):
    x, y = digits.x_test[:32], digits.y_test[:32]
    eps = EPS if norm == "linf" else 1.0
    x_adv = _attack(kind, logits_fn, x, y, eps, norm).numpy()
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    delta = (x_adv - x).reshape(len(x), -1)
    dist = np.abs(delta).max(axis=1) if norm == "linf" else np.linalg.norm(delta, axis=1)
    assert dist.max() <= eps + 1e-5
    assert dist.max() > eps / 2   # the attack did move


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_is_in_ball_and_seeded(norm):
    x = tf.constant(np.random.default_rng(0).uniform(0, 1, (64, 8, 8, 1)), tf.float32)
    eps = 0.1 if norm == "linf" else 1.0
    seed = tf.constant([3, 4], tf.int64)
    a = attacks.random_start(x, norm, eps, seed).numpy()
    b = attacks.random_start(x, norm, eps, seed).numpy()
    c = attacks.random_start(x, norm, eps, tf.constant([3, 5], tf.int64)).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    delta = (a - x.numpy()).reshape(64, -1)
    dist = np.abs(delta).max(1) if norm == "linf" else np.linalg.norm(delta, axis=1)
    assert dist.max() <= eps + 1e-6 and a.min() >= 0 and a.max() <= 1


def test_linf_start_is_the_documented_stateless_draw():
    """The start's stream is pinned (a resumed or repeated evaluation draws the same
    points): x + eps * U(-1, 1) from stateless Philox, clipped to the box."""
    x = np.random.default_rng(0).uniform(0, 1, (16, 8, 8, 1)).astype(np.float32)
    seed = tf.constant([3, 4], tf.int64)
    noise = tf.random.stateless_uniform(x.shape, seed, -1.0, 1.0, alg="philox").numpy()
    expected = np.clip(x + noise * np.float32(0.1), 0.0, 1.0)
    np.testing.assert_array_equal(attacks.random_start(tf.constant(x), "linf", 0.1, seed),
                                  expected)


@pytest.mark.parametrize("norm,ch_norm", [("linf", np.inf), ("l2", 2)])
def test_pgd_iteration_is_cleverhans(norm, ch_norm, digits, logits_fn):
    """From the same (clean) start our while_loop PGD equals CleverHans's own PGD."""
    x, y = digits.x_test[:16], digits.y_test[:16]
    eps = EPS if norm == "linf" else 1.0
    ours = attacks.pgd(logits_fn, x, y, epsilon=eps, step_size=eps / 4, num_steps=7, norm=norm)
    theirs = projected_gradient_descent(logits_fn, x, eps, eps / 4, 7, ch_norm, y=y,
                                        clip_min=0.0, clip_max=1.0, rand_init=False)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-6)


def test_eps_zero_gives_clean_accuracy_for_every_attack(digits, logits_fn):
    x, y = digits.x_test[:40], digits.y_test[:40]
    record = runner.evaluate_model(logits_fn, x, y, attacks="clean,fgsm,pgd5,cw5",
                                   epsilon=0.0, batch_size=16, show_progress=False)
    clean = np.mean(np.argmax(logits_fn(x).numpy(), -1) == y)
    assert clean > 0.5
    for name in ("clean", "fgsm", "pgd5", "cw5"):
        assert record["accuracy"][name] == pytest.approx(clean, abs=0)
    assert record["worst_case_accuracy"] == pytest.approx(clean, abs=0)


def test_more_steps_never_help_on_a_trained_cnn(digits, logits_fn):
    x, y = digits.x_test, digits.y_test
    record = runner.evaluate_model(logits_fn, x, y, attacks="clean,fgsm,pgd20,pgd100",
                                   epsilon=EPS, batch_size=128, show_progress=False)
    acc = record["accuracy"]
    assert acc["clean"] > 0.9
    assert acc["pgd100"] <= acc["pgd20"] <= acc["fgsm"] < acc["clean"]
    assert acc["pgd100"] > 0.1   # non-trivial: the attack does not win everywhere
    assert acc["fgsm"] - acc["pgd20"] > 0.05
    names = {c["name"]: c["passed"] for c in record["sanity_checks"]}
    assert names["pgd100_not_above_pgd20"] and names["fgsm_not_below_pgd100"]
    assert all(c["passed"] for c in record["sanity_checks"])


def test_cw_loss_matches_its_closed_form():
    logits = np.array([[2.0, 1.0, -1.0], [0.5, 3.0, 0.0], [1.0, 1.0, 4.0],
                       [-60.0, 0.0, 1.0]], np.float32)
    labels = np.array([0, 0, 2, 0])
    for kappa in (0.0, 1.5, 50.0):
        expected = []
        for z, t in zip(logits, labels):
            other = max(z[j] for j in range(3) if j != t)
            expected.append(-max(z[t] - other + kappa, 0.0))
        got = attacks.cw_loss(labels, logits, kappa).numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    # The last row trails by 61 > 50: clamped to zero, no gradient.
    assert attacks.cw_loss(labels, logits, 50.0).numpy()[3] == 0.0
    # CleverHans calls loss_fn(labels=, logits=) and ascends its mean: the keyword
    # wrapper must be the closed form above, per example.
    loss_fn = attacks.make_cw_loss_fn(1.5)
    expected = [-max(z[t] - max(z[j] for j in range(3) if j != t) + 1.5, 0.0)
                for z, t in zip(logits, labels)]
    np.testing.assert_allclose(loss_fn(labels=labels, logits=logits).numpy(), expected,
                               atol=1e-6)


# ------------------------------------------------------------ batching and aggregation
def test_padding_and_masking_count_every_example_once():
    """N=13 in batches of 5: 3 traced-once calls, the 2 padded rows never counted."""
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (13, 8, 8, 1)).astype(np.float32)
    fn = linear_fn(2)
    pred = np.argmax(fn(x).numpy(), -1)
    # Labels chosen so that 7 of 13 are right; the last example (copied into the
    # padding) is right, so counting the padding would give 9/15 or 9/13, not 7/13.
    y = pred.copy()
    wrong = [0, 2, 4, 6, 8, 10]
    y[wrong] = (pred[wrong] + 1) % 10
    settings = attacks.attack_settings(attacks.AttackSpec("clean", "clean"), epsilon=0.0)
    batch_fn = attacks.make_batch_fn(fn, settings)
    calls = []
    out = attacks.run_batched(batch_fn, x, y, batch_size=5,
                              progress=lambda d, t: calls.append((d, t)))
    assert len(out["correct"]) == 13
    np.testing.assert_array_equal(out["correct"], pred == y)
    assert out["correct"].sum() == 7
    assert calls == [(5, 13), (10, 13), (13, 13)]
    assert batch_fn.tracing_count() == 1

    # FGSM is deterministic: batched with padding == one unpadded pass over all 13.
    record = runner.evaluate_model(fn, x, y, attacks="clean,fgsm", epsilon=0.05,
                                   batch_size=5, show_progress=False)
    adv = attacks.fgsm(fn, x, y, epsilon=0.05)
    fgsm_correct = np.argmax(fn(adv).numpy(), -1) == y
    assert record["accuracy"]["clean"] == pytest.approx(7 / 13)
    assert record["accuracy"]["fgsm"] == pytest.approx(fgsm_correct.mean())
    flags_ = {k: np.array([c == "1" for c in v]) for k, v in record["robust_flags"].items()}
    assert all(len(v) == 13 for v in flags_.values())
    np.testing.assert_array_equal(flags_["fgsm"], fgsm_correct)
    worst = (pred == y) & fgsm_correct
    assert record["worst_case_accuracy"] == pytest.approx(worst.mean())
    np.testing.assert_array_equal(flags_["__worst_case__"], worst)


def test_padded_batches_repeat_the_last_row_and_are_cut_off():
    seen = []

    def fn(k, a, b):
        seen.append(a.copy())
        return dict(total=a.sum(axis=1) + b, batch=np.full(len(a), k))

    a = np.arange(14).reshape(7, 2)
    b = np.arange(7) * 10
    out = batching.map_padded(fn, [a, b], 3)
    np.testing.assert_array_equal(out["total"], a.sum(axis=1) + b)
    np.testing.assert_array_equal(out["batch"], [0, 0, 0, 1, 1, 1, 2])
    assert [len(batch) for batch in seen] == [3, 3, 3]
    np.testing.assert_array_equal(seen[2], a[[6, 6, 6]])
    # A batch larger than N shrinks to N (no needless padding); arrays come back too.
    np.testing.assert_array_equal(batching.map_padded(lambda k, t: t * 2, [a], 100), a * 2)
    with pytest.raises(ValueError):
        batching.map_padded(fn, [a, b[:3]], 3)


def test_restarts_keep_the_per_example_worst_case(digits, logits_fn):
    x, y = digits.x_test[:64], digits.y_test[:64]
    common = dict(epsilon=EPS, batch_size=64, show_progress=False, sanity_checks=False)
    one = runner.evaluate_model(logits_fn, x, y, attacks="pgd2", **common)
    three = runner.evaluate_model(logits_fn, x, y, attacks="pgd2", pgd_restarts=3, **common)
    f1 = np.array([c == "1" for c in one["robust_flags"]["pgd2"]])
    f3 = np.array([c == "1" for c in three["robust_flags"]["pgd2"]])
    # Restart 0 uses the same seed with and without restarts, so 3 restarts can only
    # remove robust points.
    assert np.all(f3 <= f1)
    assert three["accuracy"]["pgd2"] <= one["accuracy"]["pgd2"]


def test_autoattack_through_evaluate_reports_its_components(digits, logits_fn):
    x, y = digits.x_test[:24], digits.y_test[:24]
    record = runner.evaluate_model(
        logits_fn, x, y, attacks="clean,autoattack", epsilon=EPS, batch_size=12,
        autoattack_options=dict(SMALL_AA, attacks=("apgd-ce", "square")),
        show_progress=False)
    assert record["autoattack_components"] == ["apgd-ce", "square"]
    assert record["columns"]["autoattack"] == "AA(apgd-ce,square)"
    assert record["autoattack"]["standard"] is False
    aa = np.array([c == "1" for c in record["robust_flags"]["autoattack"]])
    assert record["accuracy"]["autoattack"] == pytest.approx(aa.mean())
    assert record["accuracy"]["autoattack"] <= record["accuracy"]["clean"]
    assert "black_box_not_beating_white_box" in {c["name"] for c in record["sanity_checks"]}
    assert "| AA(apgd-ce,square) |" in table.markdown_table([record])
    assert attacks.autoattack_label(attacks.AUTOATTACK_STANDARD,
                                    attacks.autoattack_settings(
                                         EPS, seed=0, batch_size=1)) == "AutoAttack"


class _Interrupt(Exception):
    pass


@pytest.mark.slow
def test_resume_from_a_partial_json_equals_a_full_run(digits, logits_fn):
    x, y = digits.x_test[:30], digits.y_test[:30]
    kwargs = dict(attacks="clean,pgd5,fgsm,autoattack", epsilon=EPS, batch_size=8, seed=3,
                  autoattack_options=SMALL_AA, show_progress=False)
    full = runner.evaluate_model(logits_fn, x, y, **kwargs)

    saved = {}

    def interrupt_in_autoattack(record):
        saved["record"] = json.loads(json.dumps(record))   # what was on disk
        state = record.get("autoattack_state")
        if state and state.get("current") and state["current"]["batches_done"] >= 1:
            raise _Interrupt()

    with pytest.raises(_Interrupt):
        runner.evaluate_model(logits_fn, x, y, on_update=interrupt_in_autoattack, **kwargs)
    partial = saved["record"]
    assert not partial["complete"] and "autoattack" not in partial["accuracy"]
    assert set(partial["accuracy"]) == {"clean", "pgd5", "fgsm"}

    resumed = runner.evaluate_model(logits_fn, x, y, previous=partial, **kwargs)
    assert resumed["seconds"]["pgd5"] == partial["seconds"]["pgd5"]   # reused, not rerun
    assert resumed["accuracy"] == full["accuracy"]
    assert resumed["robust_flags"] == full["robust_flags"]
    assert resumed["worst_case_accuracy"] == full["worst_case_accuracy"]
    assert resumed["autoattack_components"] == full["autoattack_components"]

    # Changed settings are not reused: another seed reruns pgd5.
    changed = copy.deepcopy(partial)
    changed["attack_settings"]["pgd5"]["seed"] = 99
    again = runner.evaluate_model(logits_fn, x, y, previous=changed,
                                  **dict(kwargs, attacks="clean,pgd5"))
    assert again["seconds"]["pgd5"] != partial["seconds"]["pgd5"]
    assert again["robust_flags"]["pgd5"] == full["robust_flags"]["pgd5"]


# --------------------------------------------------------------------- sanity checks
def test_sanity_checks_catch_broken_models(digits):
    x, y = digits.x_test[:16], digits.y_test[:16]
    fn = linear_fn(0)
    assert checks.check_logits(fn(x))["passed"]
    assert not checks.check_logits(tf.nn.softmax(fn(x)))["passed"]

    dropout = keras.layers.Dropout(0.5)
    assert checks.check_deterministic(fn, x)["passed"]
    assert not checks.check_deterministic(lambda t: dropout(fn(t), training=True),
                                          x)["passed"]

    assert checks.check_gradients(fn, x, y)["passed"]
    # A saturated model: the input gradient is exactly zero for the first 6 examples.
    keep = tf.constant([0.0] * 6 + [1.0] * 10)[:, None, None, None]
    masked = checks.check_gradients(lambda t: fn(t * keep), x, y)
    assert not masked["passed"] and "6 of 16" in masked["detail"]
    no_path = checks.check_gradients(lambda t: fn(tf.round(t)), x, y)
    assert not no_path["passed"] and "no gradient" in no_path["detail"]

    assert checks.check_eps_zero(fn, x, y)["passed"]

    spec = attacks.parse_attacks("fgsm,pgd20,pgd100")
    ok = checks.check_monotone(spec, dict(fgsm=0.6, pgd20=0.5, pgd100=0.49), 1000)
    assert all(c["passed"] for c in ok) and len(ok) == 3
    bad = checks.check_monotone(spec, dict(fgsm=0.4, pgd20=0.5, pgd100=0.55), 1000)
    assert not any(c["passed"] for c in bad)

    white = np.array([True] * 10 + [False] * 990)
    assert checks.check_black_box(white, white, 1000)["passed"]
    after = white.copy()
    after[:5] = False
    assert not checks.check_black_box(white, after, 1000)["passed"]


@pytest.mark.parametrize("bad_index", [3, 150])   # in the first batch of 100, or later
def test_a_model_with_non_finite_logits_is_refused_not_scored(digits, bad_index):
    """NaN logits still give accuracies (argmax of NaN is class 0), and the sanity
    checks then blame dropout; such a model must be refused, naming the example."""
    x, y = digits.x_test[:200].copy(), digits.y_test[:200]
    x[bad_index, 0, 0, 0] = 1.0
    assert np.sum(x[:, 0, 0, 0] == 1.0) == 1
    fn = linear_fn(0)
    poisoned = lambda t: tf.where(t[:, :1, 0, 0] == 1.0, np.nan, fn(t))   # noqa: E731
    counted = "the first 100" if bad_index < 100 else "200"
    with pytest.raises(EvaluationError, match=rf"non-finite logits .* on 1 of {counted} "
                                              rf".*example {bad_index}\)"):
        runner.evaluate_model(poisoned, x, y, attacks="clean,pgd2", epsilon=EPS,
                              batch_size=100, show_progress=False)
    assert runner.evaluate_model(fn, x, y, attacks="clean", epsilon=EPS, batch_size=100,
                                 show_progress=False)["complete"]


def test_cli_refuses_a_run_whose_weights_overflowed(trained, tmp_path, capsys):
    """`evaluate` on a run whose checkpoint gives Inf/NaN logits: exit 2, one line, and
    no result file (it used to report accuracies and exit 0)."""
    overflowed = keras.models.clone_model(trained)
    overflowed.set_weights([w * np.float32(1e38) if w.ndim > 1 else w
                            for w in trained.get_weights()])
    model_dir = str(tmp_path / "overflowed")
    os.makedirs(model_dir)
    fileio.write_json_atomic(checkpoints.config_path(model_dir), dict(
        arch="small_cnn", num_classes=10, input_shape=[8, 8, 1], normalization="none",
        dataset="digits", epsilon=EPS, norm="linf", arch_kwargs=dict(widths=list(WIDTHS))))
    tf.train.CheckpointManager(tf.train.Checkpoint(model=overflowed),
                               os.path.join(model_dir, checkpoints.LAST_DIR), 1).save()
    output = tmp_path / "r.json"
    code, err = _main([f"--model={model_dir}", "--checkpoint=last", "--attacks=clean,pgd2",
                       "--num_examples=40", "--noprogress", f"--output={output}"], capsys)
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: ") and "non-finite logits" in err[0]
    assert model_dir in err[0] and "last checkpoint" in err[0]
    assert not output.exists()


# ------------------------------------------------------------------- models, table
def test_saved_model_export_base_dir_takes_the_highest_version(trained, tmp_path, digits):
    class Serving(tf.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.float32)])
        def serve(self, images):
            return {"logits": self.model(images, training=False),
                    "probabilities": tf.nn.softmax(self.model(images, training=False))}

    base = tmp_path / "export"
    other = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(10)])
    for version, model in (("1", other), ("2", trained)):
        module = Serving(model)
        tf.saved_model.save(module, str(base / version),
                            signatures={"serving_default": module.serve})
    os.makedirs(base / "11")   # not a SavedModel: ignored
    (base / "2" / "assets.extra").mkdir()
    (base / "2" / "assets.extra" / "dac_tf_metadata.json").write_text(json.dumps(
        dict(dataset="digits", epsilon=EPS, input_shape=[8, 8, 1])))
    fn, meta = loading.load_logits_fn(str(base))
    assert meta["kind"] == "saved_model" and meta["path"].endswith(os.path.join("export", "2"))
    assert meta["dataset"] == "digits" and meta["epsilon"] == EPS
    x = tf.constant(digits.x_test[:4])
    np.testing.assert_allclose(fn(x).numpy(), trained(x, training=False).numpy(), atol=1e-5)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = tf.reduce_sum(fn(x))
    assert float(tf.reduce_max(tf.abs(tape.gradient(out, x)))) > 0
    with pytest.raises(EvaluationError, match="neither a training run"):
        loading.load_logits_fn(str(tmp_path))


def test_markdown_table_has_one_row_per_model():
    def record(label, clean, pgd, aa_components):
        settings = attacks.autoattack_settings(8 / 255, seed=0, batch_size=10)
        return dict(model_label=label, dataset="cifar10", split="test", num_examples=10000,
                    epsilon=8 / 255, epsilon_255=8.0, norm="linf",
                    attacks=["clean", "pgd20", "autoattack"], complete=True,
                    accuracy=dict(clean=clean, pgd20=pgd, autoattack=0.4512),
                    worst_case_accuracy=0.45, attack_settings=dict(autoattack=settings),
                    columns=dict(clean="Clean", pgd20="PGD-20",
                                 autoattack=attacks.autoattack_label(aa_components, settings)),
                    autoattack=dict(standard=True, components=list(aa_components)),
                    sanity_checks=[])
    text = table.markdown_table([
        record("AT (last)", 0.82884, 0.41512, attacks.AUTOATTACK_STANDARD),
        record("AT (best)", 0.82675, 0.49234, attacks.AUTOATTACK_STANDARD)])
    lines = text.splitlines()
    assert "cifar10 test, 10000 examples, L-inf eps = 8/255" in lines[0]
    assert lines[2] == "| Model | Clean | PGD-20 | AutoAttack | Worst case |"
    assert lines[4] == "| AT (last) | 82.88 | 41.51 | 45.12 | 45.00 |"
    assert lines[5] == "| AT (best) | 82.67 | 49.23 | 45.12 | 45.00 |"


# ----------------------------------------------------------------------------- CLI
def _cli(args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "-m", "dac_tf.evaluate", *args], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_cli_end_to_end_on_a_training_run(run_dir, tmp_path):
    out = tmp_path / "res" / "results.json"
    proc = _cli([f"--model={run_dir}", "--checkpoint=best", "--attacks=clean,fgsm,pgd5",
                 "--num_examples=50", "--batch_size=16", f"--output={out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for key in ("model", "dataset", "split", "epsilon", "epsilon_255", "num_examples",
                "accuracy", "worst_case_accuracy", "robust_flags", "seconds",
                "autoattack_components", "adversarial_certainty", "sanity_checks"):
        assert key in result, key
    assert result["dataset"] == "digits" and result["split"] == "test"
    assert result["epsilon"] == pytest.approx(EPS)          # the run's own epsilon
    assert result["epsilon_255"] == pytest.approx(EPS * 255)
    assert result["num_examples"] == 50 and result["complete"]
    assert list(result["accuracy"]) == ["clean", "fgsm", "pgd5"]
    assert all(len(result["robust_flags"][a]) == 50 for a in result["accuracy"])
    assert result["adversarial_certainty"]["attack"] == "pgd5"
    assert result["adversarial_certainty"]["measure"] == "std"
    assert all(c["passed"] for c in result["sanity_checks"])
    text = (tmp_path / "res" / "results.md").read_text()
    assert "| Model | Clean | FGSM | PGD-5 | Worst case |" in text
    row = next(line for line in text.splitlines() if line.startswith("| digits_run (best)"))
    assert f"| {100 * result['accuracy']['pgd5']:.2f} |" in row
    assert "| Model | Clean | FGSM | PGD-5 | Worst case |" in proc.stdout
    assert "Traceback" not in proc.stderr

    # Bad flags: one line on stderr, non-zero exit, no traceback.
    proc = _cli([f"--model={run_dir}", "--attacks=clean,pgd20,deepfool",
                 f"--output={tmp_path / 'x.json'}"])
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "deepfool" in errors[0] and "pgdK" in errors[0]


def _flag_values(argv):
    flag_values = flags.FlagValues()
    evaluate.define_flags(flag_values)
    flag_values(["evaluate", *argv])
    return flag_values


def _config(argv):
    return evaluate.config_from_flags(_flag_values(argv))


def _main(argv, capsys):
    flag_values = _flag_values(argv)
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["evaluate"], flag_values)
    err = capsys.readouterr().err.strip().splitlines()
    return exit_info.value.code, err


@pytest.mark.parametrize("argv,needle", [
    (["--epsilon=-1"], "--epsilon"),
    (["--epsilon=0.031"], "--epsilon=7.905"),
    (["--checkpoint=middle"], "best, last"),
    (["--split=val"], "test, train"),
    (["--norm=l1"], "linf, l2"),
    (["--attacks=pgd"], "pgdK"),
    (["--autoattack_attacks=apgd-ce,deepfool"], "apgd-ce, apgd-t, fab-t, square"),
    (["--batch_size=0"], "--batch_size"),
])
def test_cli_rejects_bad_flags_in_one_line(argv, needle, run_dir, tmp_path, capsys):
    code, err = _main([f"--model={run_dir}", f"--output={tmp_path / 'r.json'}", *argv], capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err


def test_cli_rejects_missing_paths_and_dataset_mismatch(run_dir, tmp_path, capsys):
    code, err = _main([f"--model={tmp_path / 'nope'}", f"--output={tmp_path / 'r.json'}"],
                      capsys)
    assert code == 2 and len(err) == 1 and "no such directory" in err[0]
    code, err = _main([f"--output={tmp_path / 'r.json'}"], capsys)
    assert code == 2 and len(err) == 1 and "--model" in err[0]
    code, err = _main([f"--model={run_dir}", f"--output={tmp_path / 'r.json'}",
                       "--dataset=npz:/does/not/exist.npz"], capsys)
    assert code == 2 and len(err) == 1


def test_cli_default_outputs(run_dir, tmp_path):
    config = _config([f"--model={run_dir}", "--checkpoint=last"])
    assert config.output == os.path.join(run_dir, "eval_last.json")
    # Several models, or a SavedModel: results/<names>.json in the current directory,
    # never inside an export.
    config = _config([f"--model={run_dir}", f"--model={run_dir}", "--checkpoint=last,best"])
    assert config.output == os.path.join("results", "digits_run_last-digits_run_best.json")
    config = _config([f"--model={tmp_path / 'export' / 'at_dac'}"])
    assert config.output == os.path.join("results", "at_dac.json")


@pytest.mark.parametrize("case", ["directory", "parent_is_file", "read_only"])
def test_unwritable_outputs_fail_in_one_line_before_any_attack(run_dir, tmp_path, capsys,
                                                               monkeypatch, case):
    if case == "directory":
        output, needle = tmp_path, "is a directory"
    elif case == "parent_is_file":
        (tmp_path / "file").write_text("x")
        output, needle = tmp_path / "file" / "r.json", "cannot be written"
    else:   # the default output inside a read-only run directory
        import errno
        output, needle = None, "Read-only file system"
        write_atomic = fileio.write_atomic

        def read_only(path, content):
            if str(path).startswith(str(run_dir)):
                raise OSError(errno.EROFS, "Read-only file system", str(path))
            return write_atomic(path, content)

        monkeypatch.setattr(fileio, "write_atomic", read_only)
    calls = []
    monkeypatch.setattr(loading, "load_logits_fn", lambda *a: calls.append(a))
    argv = [f"--model={run_dir}"] + ([f"--output={output}"] if output else [])
    code, err = _main(argv, capsys)
    assert code == 2 and len(err) == 1 and needle in err[0] and "--output" in err[0], err
    assert not calls          # refused before loading the model or running an attack


def test_hand_edited_resume_json_is_a_one_line_error(run_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = [f"--model={run_dir}", "--attacks=clean", "--num_examples=8", f"--output={out}",
            "--noprogress"]
    suite.evaluate_models(_config(argv))
    record = json.loads(out.read_text())
    for damage in ({"robust_flags": 5}, {"robust_flags": {"clean": "10x"}},
                   {"attack_settings": []}):
        out.write_text(json.dumps(dict(record, **damage)))
        code, err = _main([*argv, "--resume"], capsys)
        assert code == 2 and len(err) == 1 and "--resume cannot reuse it" in err[0], err
    out.write_text("{not json")
    code, err = _main([*argv, "--resume"], capsys)
    assert code == 2 and len(err) == 1 and str(out) in err[0]


def test_cli_two_models_one_table_and_resume(run_dir, tmp_path, capsys):
    out = tmp_path / "both.json"
    argv = [f"--model={run_dir}", f"--model={run_dir}", "--checkpoint=last,best",
            "--attacks=clean,pgd3", "--num_examples=20", "--batch_size=8", f"--output={out}",
            "--noprogress"]
    records, text = suite.evaluate_models(_config(argv))
    doc = json.loads(out.read_text())
    assert [r["model_label"] for r in doc["models"]] == ["digits_run (last)",
                                                         "digits_run (best)"]
    assert results.read_results(str(out)) == doc["models"]
    rows = [line for line in text.splitlines() if line.startswith("| digits_run")]
    assert len(rows) == 2 and (tmp_path / "both.md").read_text() == text

    # --resume with everything done reruns nothing and gives the same numbers.
    records2, _ = suite.evaluate_models(_config([*argv, "--resume"]))
    for a, b in zip(records, records2):
        assert a["accuracy"] == b["accuracy"] and a["seconds"] == b["seconds"]


def test_results_table_and_resume_on_a_url_output(run_dir):
    """`ram://` (TensorFlow's in-memory filesystem) stands in for gs://: the result file,
    its table and --resume all go through gfile."""
    out = "ram://evaluate_test/results/r.json"
    argv = [f"--model={run_dir}", "--attacks=clean,pgd2", "--num_examples=16",
            "--batch_size=8", f"--output={out}", "--noprogress"]
    first, text = suite.evaluate_models(_config(argv))
    stored = results.read_results(out)
    assert stored[0]["robust_flags"] == first[0]["robust_flags"]
    assert fileio.read_text(table.table_path(out)) == text
    again, _ = suite.evaluate_models(_config([*argv, "--resume"]))
    assert again[0]["seconds"] == first[0]["seconds"]   # every attack reused
    assert sorted(tf.io.gfile.listdir("ram://evaluate_test/results")) == ["r.json", "r.md"]


def test_resume_never_reuses_results_of_other_weights(run_dir, trained, tmp_path):
    """`last` moved on (ckpt-1 -> ckpt-2) with the same clean predictions: the stored
    attack results belong to the old weights and must be recomputed, not reused."""
    import shutil
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    out = tmp_path / "last.json"
    argv = [f"--model={run}", "--checkpoint=last", "--attacks=clean,pgd3",
            "--num_examples=40", "--batch_size=8", f"--output={out}", "--noprogress"]
    first, _ = suite.evaluate_models(_config(argv))

    # Same argmax everywhere (logits scaled by 3), other gradients: a new `last`.
    moved = keras.models.clone_model(trained)
    moved.set_weights([w * 3 if i >= len(trained.weights) - 2 else w
                       for i, w in enumerate(trained.get_weights())])
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=moved),
                                         str(run / checkpoints.LAST_DIR), max_to_keep=1)
    manager.save(checkpoint_number=2)
    resumed, _ = suite.evaluate_models(_config([*argv, "--resume"]))
    fresh, _ = suite.evaluate_models(_config([a for a in argv if not a.startswith("--output")]
                                    + [f"--output={tmp_path / 'fresh.json'}"]))
    assert resumed[0]["robust_flags"]["__clean__"] == first[0]["robust_flags"]["__clean__"]
    assert resumed[0]["checkpoint_path"].endswith("ckpt-2")
    assert resumed[0]["model_fingerprint"] != first[0]["model_fingerprint"]
    assert resumed[0]["seconds"]["pgd3"] != first[0]["seconds"]["pgd3"]   # recomputed
    assert resumed[0]["robust_flags"]["pgd3"] == fresh[0]["robust_flags"]["pgd3"]

    # Other examples under the same flags (the data file changed): not reused either.
    record = dict(first[0], data_fingerprint="0" * 64)
    info = dict(first[0])
    assert results.matching_previous([record], info) is None
    assert results.matching_previous([first[0]], info) is first[0]


def test_attacks_differing_only_in_numbers_share_one_graph():
    fn = linear_fn(3)
    x = np.random.default_rng(0).uniform(0, 1, (6, 8, 8, 1)).astype(np.float32)
    y = np.arange(6, dtype=np.int32)
    fns = [attacks.make_batch_fn(fn, attacks.attack_settings(spec, epsilon=eps))
           for spec, eps in zip(attacks.parse_attacks("pgd3,pgd7,pgd20"), (0.1, 0.2, 0.0))]
    outs = [f(tf.constant(x), tf.constant(y), tf.constant([0, 0], tf.int64)) for f in fns]
    assert fns[0].function is fns[1].function is fns[2].function
    assert fns[0].tracing_count() == 1
    assert np.abs(outs[0]["linf"].numpy()).max() <= 0.1 + 1e-6
    assert np.abs(outs[1]["linf"].numpy()).max() > 0.1
    assert np.abs(outs[2]["linf"].numpy()).max() == 0.0


# ------------------------------------------------------- torch bridge (optional torch)
def test_official_autoattack_without_torch_fails_early_in_one_line(run_dir, tmp_path, capsys):
    try:
        import torch  # noqa: F401
        import autoattack  # noqa: F401
        pytest.skip("torch and autoattack are installed")
    except ImportError:
        pass
    code, err = _main([f"--model={run_dir}", f"--output={tmp_path / 'r.json'}",
                       "--attacks=clean,autoattack", "--autoattack_impl=official"], capsys)
    assert code == 2 and len(err) == 1 and "autoattack" in err[0].lower()
    assert not (tmp_path / "r.json").exists()


def test_torch_module_forward_and_backward_are_the_tf_model():
    torch = pytest.importorskip("torch")
    from dac_tf import torch_bridge

    keras.utils.set_random_seed(1)
    model = models.build("small_cnn", num_classes=10, input_shape=(8, 8, 1), widths=(8, 8))
    fn = loading.keras_logits_fn(model)
    x = np.random.default_rng(0).uniform(0, 1, (5, 8, 8, 1)).astype(np.float32)
    weights = np.random.default_rng(1).normal(size=(5, 10)).astype(np.float32)
    module = torch_bridge.TFLogitsModule(fn)
    x_t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    out = module(x_t)
    (out * torch.from_numpy(weights)).sum().backward()
    x_tf = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x_tf)
        logits = fn(x_tf)
        objective = tf.reduce_sum(logits * weights)
    grad = tape.gradient(objective, x_tf).numpy()
    np.testing.assert_allclose(out.detach().numpy(), logits.numpy(), atol=1e-5)
    np.testing.assert_allclose(x_t.grad.numpy().transpose(0, 2, 3, 1), grad, atol=1e-5)


def test_official_autoattack_glue_on_a_stub_package(monkeypatch):
    """The official path, with a stand-in `autoattack` package running a torch FGSM."""
    torch = pytest.importorskip("torch")
    import types

    class StubAutoAttack:
        def __init__(self, model, norm, eps, seed, version, device, verbose):
            assert norm == "Linf" and version == "standard" and device == "cpu"
            self.model, self.eps = model, eps
            self.apgd, self.apgd_targeted, self.fab, self.square = (
                types.SimpleNamespace() for _ in range(4))

        def run_standard_evaluation(self, x, y, bs):
            x = x.clone().requires_grad_(True)
            torch.nn.functional.cross_entropy(self.model(x), y, reduction="sum").backward()
            # 1.5 eps overshoots the ball: the bridge projects it back to FGSM's point.
            return (x + 1.5 * self.eps * x.grad.sign()).clamp(0, 1).detach()

    monkeypatch.setitem(sys.modules, "autoattack",
                        types.SimpleNamespace(AutoAttack=StubAutoAttack))
    fn = linear_fn(4)
    x = np.random.default_rng(2).uniform(0.2, 0.8, (20, 8, 8, 1)).astype(np.float32)
    y = np.argmax(fn(x).numpy(), -1).astype(np.int32)
    y[:3] = (y[:3] + 1) % 10
    record = runner.evaluate_model(fn, x, y, attacks="autoattack", epsilon=0.02,
                                   batch_size=8, show_progress=False,
                                   autoattack_options=dict(impl="official"))
    adv = np.clip(attacks.fgsm(fn, x, y, epsilon=0.02).numpy(), 0, 1)
    expected = (np.argmax(fn(x).numpy(), -1) == y) & (np.argmax(fn(adv).numpy(), -1) == y)
    assert record["accuracy"]["autoattack"] == pytest.approx(expected.mean())
    assert record["autoattack"]["impl"] == "official"
    assert record["autoattack"]["max_linf"] <= 0.02 + 1e-6
    assert record["columns"]["autoattack"] == "AutoAttack"

"""dac_tf.plots: metrics and best epoch through the run-directory reader, valid PNGs, an
end-to-end run directory with heatmaps, one-line errors."""

import csv
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from dac_tf import checkpoints
from dac_tf import data
from dac_tf import fileio
from dac_tf import models
from dac_tf import plots
from dac_tf import rundir
from dac_tf.evaluation import EvaluationError
from dac_tf.evaluation import heatmaps

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLUMNS = rundir.METRIC_COLUMNS


def write_metrics(model_dir, num_epochs=12, with_val=True, use_dac=True, seed=0):
    """A metrics.csv as the training CLI writes it: empty cells where a value is absent.

    Returns:
      The rows as dicts of floats (None for an empty cell).
    """
    rng = np.random.default_rng(seed)
    os.makedirs(model_dir, exist_ok=True)
    rows = []
    for epoch in range(1, num_epochs + 1):
        train_adv = min(0.99, 0.2 + 0.06 * epoch)  # keeps climbing: robust overfitting
        test_robust = 0.2 + 0.3 * np.sin(np.pi * epoch / num_epochs) + 0.02 * rng.random()
        row = {"epoch": epoch, "lr": 0.1, "train_loss": 2.0 / epoch,
               "train_adv_accuracy": train_adv, "train_ac": 1.0 + 0.1 * epoch,
               "train_ac_loss": 0.3 if use_dac else None, "train_clean_accuracy": None,
               "val_clean_accuracy": None, "val_robust_accuracy": None, "val_ac": None,
               "test_clean_accuracy": min(1.0, test_robust + 0.3),
               "test_robust_accuracy": test_robust, "test_ac": 1.2 + 0.05 * epoch,
               "epoch_seconds": 3.0}
        if with_val:
            row.update(val_clean_accuracy=test_robust + 0.25,
                       val_robust_accuracy=0.2 + 0.3 * rng.random(), val_ac=1.1)
        rows.append(row)
    with open(os.path.join(model_dir, rundir.METRICS_FILE), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row[k] is None else f"{row[k]:.6g}" for k in COLUMNS})
    return rows


def assert_png(path):
    assert os.path.isfile(path), path
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE, path
    from PIL import Image  # pylint: disable=g-import-not-at-top
    with Image.open(path) as image:
        image.verify()
    import matplotlib.image  # pylint: disable=g-import-not-at-top
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.std() > 0  # not a blank canvas


# ------------------------------------------------------------------ metrics.csv
@pytest.mark.parametrize("with_val", [True, False])
def test_best_epoch_is_the_first_argmax_of_the_selection_column(tmp_path, with_val):
    rows = write_metrics(str(tmp_path), num_epochs=15, with_val=with_val, seed=3)
    run = plots.load_runs([str(tmp_path)])[0]
    metrics = run.metrics
    key = "val_robust_accuracy" if with_val else "test_robust_accuracy"
    # Independent: the training loop's strict-improvement rule, on the CSV's rounding.
    best, best_value = None, -1.0
    for row in rows:
        value = float(f"{row[key]:.6g}")
        if value > best_value:
            best, best_value = row["epoch"], value
    assert (run.best_epoch, run.selection_key) == (best, key)
    assert np.isnan(metrics["val_robust_accuracy"]).all() != with_val
    np.testing.assert_array_equal(metrics["epoch"], np.arange(1, 16))


def test_best_epoch_ties_go_to_the_earliest_epoch_and_rows_are_sorted(tmp_path):
    path = tmp_path / plots.METRICS_FILE
    path.write_text("epoch,test_robust_accuracy\n3,0.5\n1,0.2\n2,0.5\n4,0.4\n")
    run = plots.load_runs([str(tmp_path)])[0]
    metrics = run.metrics
    np.testing.assert_array_equal(metrics["epoch"], [1, 2, 3, 4])
    assert (run.best_epoch, run.selection_key) == (2, "test_robust_accuracy")
    assert np.isnan(metrics["train_ac"]).all()  # absent column: NaN, not an error


@pytest.mark.parametrize("content, message", [
    (None, "has no metrics.csv"),
    ("", "is empty"),
    (",".join(COLUMNS) + "\n", "no epochs"),
    ("epoch,test_robust_accuracy\n1,abc\n", "line 2: column 'test_robust_accuracy'"),
    ("lr,test_robust_accuracy\n0.1,0.5\n", "no 'epoch' column"),
])
def test_bad_metrics_raise_a_one_line_report_error(tmp_path, content, message):
    if content is not None:
        (tmp_path / plots.METRICS_FILE).write_text(content)
    with pytest.raises(plots.ReportError, match=message) as info:
        plots.make_report([str(tmp_path)], heatmaps=False)
    assert "\n" not in str(info.value)


def test_labels_come_from_the_config_and_collisions_get_the_dir_name(tmp_path):
    dirs = [str(tmp_path / n) for n in ("a", "b", "c")]
    for d, use_dac in zip(dirs, (False, True, True)):
        write_metrics(d, num_epochs=2)
        fileio.write_json_atomic(checkpoints.config_path(d),
                                      {"method": "at", "use_dac": use_dac})
    labels = [r.label for r in plots.load_runs(dirs)]
    assert labels == ["AT", "AT+DAC (b)", "AT+DAC (c)"]
    # Same directory names under different parents: distinct file names.
    twins = [str(tmp_path / p / "seed0") for p in ("x", "y")]
    for d in twins:
        write_metrics(d, num_epochs=2)
    assert [r.name for r in plots.load_runs(twins)] == ["seed0_1", "seed0_2"]
    with pytest.raises(plots.ReportError, match="2 labels for 3 runs"):
        plots.load_runs(dirs, labels=["x", "y"])


# ----------------------------------------------------------------------- figures
def test_metric_figures_are_valid_pngs_with_and_without_val(tmp_path):
    with_val, without_val = str(tmp_path / "at"), str(tmp_path / "at_dac")
    write_metrics(with_val, with_val=True, use_dac=False)
    write_metrics(without_val, with_val=False, seed=1)
    for dirs in ([with_val], [without_val], [with_val, without_val]):
        out = str(tmp_path / f"plots_{len(dirs)}_{os.path.basename(dirs[0])}")
        paths = plots.make_report(dirs, output_dir=out, heatmaps=False)
        assert [os.path.basename(p) for p in paths] == [
            plots.ROBUST_OVERFITTING_FILE, plots.ADVERSARIAL_CERTAINTY_FILE]
        for path in paths:
            assert os.path.dirname(path) == out
            assert_png(path)
    # Default output: the (first) run's plots/ folder; a single-epoch run still draws.
    single = str(tmp_path / "one_epoch")
    write_metrics(single, num_epochs=1)
    paths = plots.make_report(single, heatmaps=False)
    assert all(p.startswith(os.path.join(single, "plots")) for p in paths)
    for path in paths:
        assert_png(path)


def test_figures_go_through_gfile_to_a_url_output_dir(tmp_path):
    """`ram://` (TensorFlow's in-memory filesystem) stands in for gs://: the PNGs are
    rendered in memory and written with gfile, atomically (no temporary file left)."""
    model_dir = str(tmp_path / "run")
    write_metrics(model_dir, num_epochs=3)
    out = "ram://report_test/plots"
    paths = plots.make_report([model_dir], output_dir=out, heatmaps=False)
    assert paths == [f"{out}/{plots.ROBUST_OVERFITTING_FILE}",
                     f"{out}/{plots.ADVERSARIAL_CERTAINTY_FILE}"]
    assert sorted(tf.io.gfile.listdir(out)) == sorted(os.path.basename(p) for p in paths)
    for path in paths:
        with tf.io.gfile.GFile(path, "rb") as f:
            assert f.read(8) == PNG_SIGNATURE


# ------------------------------------------------------------------- end to end
def _fabricate_run(model_dir, num_epochs=3, best=2):
    """A run dir as the training CLI leaves it: config.json, metrics.csv, best/ and
    checkpoints/ with different weights. Returns (best model, last model)."""
    keras.utils.set_random_seed(1)
    model = models.build("small_cnn", num_classes=10, input_shape=(8, 8, 1))
    epoch = tf.Variable(0, dtype=tf.int64)
    best_manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=model, epoch=epoch),
        os.path.join(model_dir, checkpoints.BEST_DIR), max_to_keep=1)
    last_manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=model, epoch=epoch),
        os.path.join(model_dir, checkpoints.LAST_DIR), max_to_keep=2)
    best_weights = None
    for e in range(1, num_epochs + 1):
        # Each epoch's weights differ, so loading the wrong checkpoint shows.
        for v in model.trainable_variables:
            v.assign(v + 0.05 * tf.random.normal(v.shape, seed=e))
        epoch.assign(e)
        if e == best:
            best_manager.save(checkpoint_number=e)
            best_weights = model.get_weights()
        last_manager.save(checkpoint_number=e)
    config = {"dataset": "digits", "data_dir": None, "val_size": 100, "seed": 0,
              "arch": "small_cnn", "num_classes": 10, "input_shape": [8, 8, 1],
              "normalization": "none", "method": "at", "use_dac": True,
              "epsilon": 32 / 255, "step_size": 8 / 255, "num_steps": 2, "norm": "linf",
              "attack_start": "uniform", "class_names": [str(i) for i in range(10)]}
    fileio.write_json_atomic(checkpoints.config_path(model_dir), config)
    write_metrics(model_dir, num_epochs=num_epochs)
    best_model = models.build("small_cnn", num_classes=10, input_shape=(8, 8, 1))
    best_model.set_weights(best_weights)
    return best_model, model


@pytest.mark.slow
def test_end_to_end_report_of_a_run_directory(tmp_path):
    model_dir = str(tmp_path / "digits_at_dac")
    best_model, last_model = _fabricate_run(model_dir)
    paths = plots.make_report([model_dir], heatmap_examples=60)
    plots_dir = os.path.join(model_dir, "plots")
    assert paths == [os.path.join(plots_dir, name) for name in (
        plots.ROBUST_OVERFITTING_FILE, plots.ADVERSARIAL_CERTAINTY_FILE,
        "heatmaps_digits_at_dac.png")]
    for path in paths:
        assert_png(path)

    with open(os.path.join(plots_dir, "heatmaps_digits_at_dac.json")) as f:
        result = json.load(f)
    assert result["epochs"] == {"best": 2, "last": 3}
    assert result["examples"] == {"train": 60, "test": 60}
    assert result["class_names"] == [str(i) for i in range(10)]
    splits = data.load("digits", val_size=100, seed=0)
    for split, (x, y) in {"train": (splits.x_train, splits.y_train),
                          "test": (splits.x_test, splits.y_test)}.items():
        np.testing.assert_array_equal(result["counts"][split],
                                      np.bincount(y[:60], minlength=10))
        for which, model in (("best", best_model), ("last", last_model)):
            matrix = np.array(result["matrices"][split][which], dtype=float)
            assert matrix.shape == (10, 10)
            present = np.bincount(y[:60], minlength=10) > 0
            np.testing.assert_allclose(matrix[present].sum(axis=1), 1.0, rtol=1e-5)
            # The same attack (seed, batches) on the model we saved as that checkpoint.
            direct, _ = heatmaps.mean_softmax_matrix(
                model, x[:60], y[:60], num_classes=10, epsilon=32 / 255,
                step_size=8 / 255, num_steps=2, seed=0)
            np.testing.assert_allclose(matrix, direct, rtol=1e-4, atol=1e-6)
        assert not np.allclose(np.array(result["matrices"][split]["best"], float),
                               np.array(result["matrices"][split]["last"], float))


def test_runs_without_checkpoints_get_no_heatmaps(tmp_path):
    model_dir = str(tmp_path / "metrics_only")
    write_metrics(model_dir, num_epochs=3)
    paths = plots.make_report([model_dir], heatmap_examples=10)
    assert len(paths) == 2
    assert not any("heatmaps" in name for name in os.listdir(os.path.join(model_dir, "plots")))
    # The library says why, in one line, with the error type the report skips on.
    with pytest.raises(EvaluationError, match="config.json"):
        heatmaps.compute_heatmaps(model_dir, None, num_examples=10)


def _png_size(path):
    with open(path, "rb") as f:
        header = f.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def test_heatmaps_draw_best_once_when_it_is_the_last_checkpoint(tmp_path):
    """best == last used to draw two identical columns; it is drawn once ("best = last
    model"), so the figure holds one column of panels instead of two."""
    matrix = [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4]]
    other = [[0.5, 0.25, 0.25], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8]]

    def result(best_epoch, best):
        return {"class_names": ["a", "b", "c"], "label": "run",
                "attack": dict(epsilon=8 / 255, step_size=2 / 255, num_steps=10,
                               norm="linf"),
                "examples": {"train": 3, "test": 3},
                "epochs": {"best": best_epoch, "last": 3},
                "matrices": {s: {"best": best, "last": matrix} for s in ("train", "test")},
                "mean_true_class_probability": {s: {"best": 0.6, "last": 0.6}
                                                for s in ("train", "test")}}

    same = plots.plot_heatmaps(result(3, matrix), str(tmp_path / "same.png"))
    both = plots.plot_heatmaps(result(2, other), str(tmp_path / "both.png"))
    (same_w, same_h), (both_w, both_h) = _png_size(same), _png_size(both)
    assert same_h == both_h and same_w < 0.7 * both_w

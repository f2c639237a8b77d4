"""Figures of training runs, drawn from what a run leaves in its `model_dir`.

`make_report(model_dirs)` writes, for one run or several compared (layout:
`dac_tf/checkpoints.py`):

* `robust_overfitting.png`: train vs test (and validation) robust accuracy over epochs,
  clean test accuracy as a lighter line, the selected ("best") epoch marked; one panel
  per run. Reads `metrics.csv` only.
* `adversarial_certainty.png`: AC over epochs on training (solid) and test (dashed)
  adversarial inputs, all runs overlaid (AT vs AT+DAC: DAC keeps AC lower). Reads
  `metrics.csv` only.
* `heatmaps_<run>.png` (+ `heatmaps_<run>.json` with the numbers): the model's mean
  softmax output on PGD adversarial inputs per true class, for the train and test split
  and the best and last checkpoints, under the run's selection attack (the attack of
  its robust accuracy curve). Needs `config.json`, the checkpoints and the data; the
  numbers come from the evaluation library (`dac_tf.evaluation.heatmaps`), this module
  only draws them.

`metrics.csv` is read, and its best epoch chosen, by the run-directory module
(`dac_tf.rundir`: the schema and the training loop's rule). `python -m dac_tf.report`
is this call with flags; the training program calls it when a run finishes, so its
figures land in `model_dir/plots/`.

Figures are drawn on `matplotlib.figure.Figure` objects with the Agg canvas, never
through `pyplot`: importing this module does not change the caller's matplotlib backend
and works without a display. Every file goes through `tf.io.gfile` (PNGs are rendered in
memory and written atomically), so a run directory may live on `gs://`.
"""

import dataclasses
import io
import math
import os
import re

from absl import logging
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np
import tensorflow as tf

from dac_tf import checkpoints
from dac_tf import errors
from dac_tf import fileio
from dac_tf import protocol
from dac_tf import rundir
from dac_tf.evaluation import EvaluationError
from dac_tf.evaluation import heatmaps as heatmap_lib

METRICS_FILE = rundir.METRICS_FILE
PLOTS_DIR = "plots"
ROBUST_OVERFITTING_FILE = "robust_overfitting.png"
ADVERSARIAL_CERTAINTY_FILE = "adversarial_certainty.png"
HEATMAP_SPLITS = heatmap_lib.SPLITS


DPI = 120
# Beyond this many classes the per-cell numbers are unreadable; beyond the second limit
# the class-name ticks are too.
_ANNOTATE_MAX_CLASSES = 10
_TICK_LABEL_MAX_CLASSES = 20
# Markers make a curve of a handful of epochs (a smoke run) visible at all.
_MARKER_MAX_EPOCHS = 25


class ReportError(errors.UserError):
    """A model_dir that cannot be reported on (the message says why, in one line)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Run:
    """One training run as the report sees it.

    Attributes:
      model_dir: the run directory.
      name: file-name-safe short name (the directory's base name).
      label: legend / title label (e.g. "AT+DAC").
      config: the run's config.json as a dict, or None if it has none.
      metrics: column name -> float64 array over epochs (`rundir.metrics_arrays`: every
        column of `rundir.METRIC_COLUMNS`, NaN where the CSV is empty), sorted by epoch.
      selection_key: the column the best checkpoint is selected by
        (`rundir.selection_key`: validation when the run has a validation split).
      best_epoch: the epoch of the best selection accuracy (`rundir.best_epoch`, the
        training loop's rule), or None when that column is empty.
    """

    model_dir: str
    name: str
    label: str
    config: dict | None
    metrics: dict
    selection_key: str
    best_epoch: int | None


def _read_metrics_rows(model_dir):
    """`rundir.read_metrics`, refusing what cannot be plotted: no directory, no file, an
    empty file or one without epochs (ReportError, one line)."""
    path = rundir.metrics_path(model_dir)
    if not tf.io.gfile.isdir(model_dir):
        raise ReportError(f"--model_dir={model_dir!r} does not exist.")
    if not tf.io.gfile.exists(path):
        raise ReportError(
            f"{model_dir!r} has no {METRICS_FILE} (expected a --model_dir written by "
            "`python -m dac_tf.train` that finished at least one epoch).")
    try:
        if not fileio.read_text(path).strip():
            raise ReportError(f"{path} is empty (no header, no epochs).")
        rows = rundir.read_metrics(model_dir)
    except rundir.RunDirError as e:
        raise ReportError(str(e)) from None
    if not rows:
        raise ReportError(f"{path} has a header but no epochs yet.")
    return rows


# ------------------------------------------------------------------------- runs
def _safe_name(model_dir):
    name = os.path.basename(os.path.normpath(os.path.abspath(model_dir)))
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "run"


def method_label(config):
    """A short label from a run config: "AT", "AT+DAC", "TRADES+DAC", ... (None if the
    config does not say which method)."""
    if not config or not config.get("method"):
        return None
    label = str(config["method"]).upper()
    return label + "+DAC" if config.get("use_dac") else label


def load_runs(model_dirs, labels=None):
    """Reads the metrics and configs of several runs and gives each a distinct label.

    Args:
      model_dirs: run directories.
      labels: optional labels, one per run; default: the method from config.json
        ("AT", "AT+DAC"), or the directory name when there is no config; labels that
        would collide get the directory name appended.

    Returns:
      list of `Run`.

    Raises:
      ReportError: no runs, a bad model_dir, or a wrong number of labels.
    """
    model_dirs = list(model_dirs)
    if not model_dirs:
        raise ReportError("no --model_dir given.")
    if labels is not None and len(labels) != len(model_dirs):
        raise ReportError(f"got {len(labels)} labels for {len(model_dirs)} runs; give one "
                          "--label per --model_dir, or none.")
    base_names = [_safe_name(d) for d in model_dirs]
    # Runs named alike (runs/a/seed0, runs/b/seed0) would overwrite each other's heatmaps.
    names = [f"{name}_{base_names[:i].count(name) + 1}" if base_names.count(name) > 1
             else name for i, name in enumerate(base_names)]
    configs = []
    for model_dir in model_dirs:
        try:
            configs.append(checkpoints.load_run_config(model_dir)
                           if tf.io.gfile.exists(checkpoints.config_path(model_dir)) else None)
        except checkpoints.CheckpointError as e:
            raise ReportError(str(e)) from None
    all_rows = [_read_metrics_rows(d) for d in model_dirs]
    if labels is None:
        labels = [method_label(c) or name for c, name in zip(configs, names)]
        labels = [f"{label} ({name})" if labels.count(label) > 1 and label != name else label
                  for label, name in zip(labels, names)]
    runs = []
    for d, n, label, c, rows in zip(model_dirs, names, labels, configs, all_rows):
        metrics = rundir.metrics_arrays(rows)
        key = rundir.selection_key(bool(np.isfinite(metrics["val_robust_accuracy"]).any()))
        best, _ = rundir.best_epoch(rows, key)
        runs.append(Run(model_dir=d, name=n, label=str(label), config=c, metrics=metrics,
                        selection_key=key, best_epoch=best or None))
    return runs


# ---------------------------------------------------------------------- figures
def _new_figure(width, height, layout="tight"):
    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    # Rendered in memory and written with an atomic rename (any gfile filesystem), so a
    # reader never sees half a PNG.
    tf.io.gfile.makedirs(os.path.dirname(path) or ".")
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=DPI, format="png")
    fileio.write_atomic(path, buffer.getvalue())
    return path


def _style_epoch_axis(ax, num_epochs):
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.grid(True, alpha=0.3)
    if num_epochs == 1:
        ax.set_xlim(0.5, 1.5)


def _line(ax, epochs, values, **kwargs):
    finite = np.isfinite(values)
    if not finite.any():
        return None
    if finite.sum() <= _MARKER_MAX_EPOCHS:
        kwargs.setdefault("marker", "o")
        kwargs.setdefault("markersize", 3)
    (line,) = ax.plot(epochs[finite], values[finite], **kwargs)
    return line


def plot_robust_overfitting(runs, path):
    """Draws train vs test robust accuracy over epochs, one panel per run.

    Args:
      runs: list of `Run`.
      path: the PNG to write.

    Returns:
      `path`.
    """
    cols = min(len(runs), 3)
    rows = math.ceil(len(runs) / cols)
    fig = _new_figure(5.6 * cols, 4.2 * rows)
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    for ax, run in zip(axes.ravel(), runs):
        m = run.metrics
        epochs = m["epoch"]
        _line(ax, epochs, m["train_adv_accuracy"], color="tab:blue", lw=1.8,
              label="train robust")
        _line(ax, epochs, m["test_robust_accuracy"], color="tab:red", lw=1.8,
              label="test robust")
        _line(ax, epochs, m["val_robust_accuracy"], color="tab:orange", lw=1.5, ls="--",
              label="val robust")
        _line(ax, epochs, m["test_clean_accuracy"], color="tab:red", lw=1.2, alpha=0.35,
              label="test clean")
        best, key = run.best_epoch, run.selection_key
        if best is not None:
            i = int(np.flatnonzero(epochs == best)[0])
            split = key.split("_")[0]
            ax.axvline(best, color="0.4", ls=":", lw=1.2)
            ax.plot([best], [m[key][i]], marker="*", markersize=13, color="gold",
                    markeredgecolor="black", ls="none",
                    label=f"best epoch {best} ({split} robust {m[key][i]:.1%})")
            # In the title, not over the curves: they fill the whole plot in some runs.
            gap = _gap_text(m, i)
        else:
            gap = ""
        ax.set_title(f"{run.label}: robust overfitting" + (f"\n{gap}" if gap else ""),
                     fontsize=10)
        ax.set_ylabel("accuracy")
        ax.yaxis.set_major_formatter(ticker.PercentFormatter(1.0))
        _style_epoch_axis(ax, len(epochs))
        ax.legend(loc="best", fontsize=8, framealpha=0.85)
    for ax in axes.ravel()[len(runs):]:
        ax.set_visible(False)
    return _save(fig, path)


def _gap_text(m, best_index):
    """Test robust accuracy at the best and the last epoch: the paper's best-vs-last gap."""
    test = m["test_robust_accuracy"]
    finite = np.flatnonzero(np.isfinite(test))
    if not np.isfinite(test[best_index]) or not finite.size:
        return ""
    last = finite[-1]
    return (f"test robust: best {test[best_index]:.1%} (epoch {int(m['epoch'][best_index])}), "
            f"last {test[last]:.1%} (epoch {int(m['epoch'][last])})")


def _ac_axis_label(runs):
    measures = {(r.config or {}).get("ac_measure", "std") for r in runs}
    if measures == {"std"}:
        return "adversarial certainty (std of logits)"
    if measures == {"var"}:
        return "adversarial certainty (variance of logits)"
    return "adversarial certainty"


def plot_adversarial_certainty(runs, path):
    """Draws AC over epochs, train (solid) and test (dashed), all runs on one axes.

    Args:
      runs: list of `Run`.
      path: the PNG to write.

    Returns:
      `path`.
    """
    fig = _new_figure(7.0, 4.6)
    ax = fig.subplots()
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for run, color in zip(runs, colors):
        m = run.metrics
        _line(ax, m["epoch"], m["train_ac"], color=color, lw=1.8,
              label=f"{run.label}: train")
        _line(ax, m["epoch"], m["test_ac"], color=color, lw=1.5, ls="--",
              label=f"{run.label}: test")
    ax.set_title("Adversarial certainty on PGD adversarial inputs")
    ax.set_ylabel(_ac_axis_label(runs))
    _style_epoch_axis(ax, max(len(r.metrics["epoch"]) for r in runs))
    if ax.get_lines():
        ax.legend(fontsize=8, framealpha=0.85)
    else:
        ax.text(0.5, 0.5, "no AC values in metrics.csv", transform=ax.transAxes,
                ha="center", va="center", color="0.4")
    return _save(fig, path)


# --------------------------------------------------------------------- heatmaps
def plot_heatmaps(heatmaps, path, title=None):
    """Draws the 2x2 grid (train/test x best/last) of mean-softmax matrices.

    When the best checkpoint is the last one (the same epoch), its matrices are drawn
    once, in one column titled "best = last model", instead of two identical columns.

    Args:
      heatmaps: the output of `dac_tf.evaluation.heatmaps.compute_heatmaps`.
      path: the PNG to write.
      title: figure title; default from the label and the attack.

    Returns:
      `path`.
    """
    names = heatmaps["class_names"]
    num_classes = len(names)
    annotate = num_classes <= _ANNOTATE_MAX_CLASSES
    side = 4.3 if num_classes <= _ANNOTATE_MAX_CLASSES else 5.0
    epochs = heatmaps["epochs"]
    same = (epochs.get("best") is not None and epochs.get("best") == epochs.get("last")
            and all(heatmaps["matrices"][s]["best"] == heatmaps["matrices"][s]["last"]
                    for s in HEATMAP_SPLITS))
    columns = [("best", "best = last")] if same else [
        (which, which) for which in checkpoints.CHECKPOINTS]
    # Constrained layout: tight_layout cannot place one colorbar shared by four axes.
    fig = _new_figure(len(columns) * side + 1.3, 2 * side + 1.5, layout="constrained")
    fig.get_layout_engine().set(h_pad=0.12, w_pad=0.08)
    axes = fig.subplots(2, len(columns), squeeze=False)
    image = None
    for r, split in enumerate(HEATMAP_SPLITS):
        for c, (which, shown) in enumerate(columns):
            ax = axes[r, c]
            rows = heatmaps["matrices"][split][which]
            epoch = epochs.get(which)
            head = f"{split}, {shown} model" + (f" (epoch {epoch})" if epoch else "")
            if rows is None:
                ax.set_title(head, fontsize=10)
                ax.text(0.5, 0.5, f"no {which} checkpoint", ha="center", va="center",
                        transform=ax.transAxes, color="0.4")
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            matrix = np.array([[np.nan if v is None else v for v in row] for row in rows])
            image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis",
                              interpolation="nearest")
            p_true = heatmaps["mean_true_class_probability"][split][which]
            ax.set_title(head + (f"\nmean p(true class) = {p_true:.2f}"
                                 if p_true is not None else ""), fontsize=10)
            _label_matrix_axes(ax, names)
            if annotate:
                _annotate_cells(ax, matrix)
    if image is not None:
        colorbar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6)
        colorbar.set_label("mean softmax probability")
    if title is None:
        a = heatmaps["attack"]
        budget = (f"eps={protocol.to_pixels(a['epsilon']):.3g}/255, "
                  f"step={protocol.to_pixels(a['step_size']):.3g}/255"
                  if a["norm"] == "linf" else f"eps={a['epsilon']:.3g}, step={a['step_size']:.3g}")
        n = heatmaps["examples"]
        title = (f"{heatmaps['label']}: mean softmax on PGD-{a['num_steps']} ({a['norm']}, "
                 f"{budget}) adversarial inputs\nfirst {n.get('train', 0)} train / "
                 f"{n.get('test', 0)} test examples")
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def _label_matrix_axes(ax, names):
    num_classes = len(names)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    if num_classes <= _TICK_LABEL_MAX_CLASSES:
        ticks = np.arange(num_classes)
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
        long_names = max(len(n) for n in names) > 2
        ax.set_xticklabels(names, rotation=45 if long_names else 0,
                           ha="right" if long_names else "center", fontsize=8)
        ax.set_yticklabels(names, fontsize=8)
    else:
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(ticker.MaxNLocator(integer=True))


def _annotate_cells(ax, matrix):
    for (i, j), value in np.ndenumerate(matrix):
        if not np.isfinite(value):
            continue
        # viridis is dark below ~0.6: white text there, black on the light end.
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6.5,
                color="white" if value < 0.6 else "black")


# ------------------------------------------------------------------------ report
def make_report(model_dirs, output_dir=None, heatmaps=True, heatmap_examples=1000,
                labels=None):
    """Writes the report's figures for one or several runs.

    Args:
      model_dirs: run directories (each with a metrics.csv); a single string is taken as
        one run.
      output_dir: where the figures go; default `model_dirs[0]/plots`.
      heatmaps: also draw the per-run adversarial softmax heatmaps (needs config.json,
        the checkpoints and the dataset; a run without them is skipped with a warning).
      heatmap_examples: examples of each split attacked for the heatmaps.
      labels: optional run labels for legends and titles, one per run.

    Returns:
      list of the PNG paths written (the heatmap numbers go to a .json beside each
      heatmap PNG).

    Raises:
      ReportError: a model_dir without a readable, non-empty metrics.csv, bad labels or
        a non-positive heatmap_examples.
    """
    if isinstance(model_dirs, (str, os.PathLike)):
        model_dirs = [model_dirs]
    model_dirs = [os.fspath(d) for d in model_dirs]
    if heatmaps and (isinstance(heatmap_examples, bool) or int(heatmap_examples) <= 0):
        raise ReportError(f"--heatmap_examples must be a positive integer, got "
                          f"{heatmap_examples!r}.")
    runs = load_runs(model_dirs, labels)
    if output_dir is None:
        output_dir = os.path.join(model_dirs[0], PLOTS_DIR)
    if tf.io.gfile.exists(output_dir) and not tf.io.gfile.isdir(output_dir):
        raise ReportError(f"--output_dir={output_dir} is a file; give a folder for the "
                          "figures.")
    try:
        tf.io.gfile.makedirs(output_dir)
    except (OSError, tf.errors.OpError) as e:
        raise ReportError(f"--output_dir={output_dir} cannot be created: "
                          f"{fileio.first_line(e)}.") from None
    written = [
        plot_robust_overfitting(runs, os.path.join(output_dir, ROBUST_OVERFITTING_FILE)),
        plot_adversarial_certainty(runs, os.path.join(output_dir, ADVERSARIAL_CERTAINTY_FILE)),
    ]
    if heatmaps:
        for run in runs:
            try:
                result = heatmap_lib.compute_heatmaps(
                    run.model_dir, run.config, label=run.label,
                    num_examples=int(heatmap_examples))
            except EvaluationError as e:
                logging.warning("No heatmaps for %s: %s", run.model_dir, e)
                continue
            fileio.write_json_atomic(
                os.path.join(output_dir, f"heatmaps_{run.name}.json"), result)
            written.append(plot_heatmaps(
                result, os.path.join(output_dir, f"heatmaps_{run.name}.png")))
    return written

"""`metrics.csv`: one row per epoch, its one schema, writer and reader, the best epoch."""

import csv
import io
import os

import numpy as np
import tensorflow as tf

from dac_tf import fileio
from dac_tf.rundir import RunDirError

METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
METRIC_COLUMNS = (
    "epoch", "lr", "train_loss", "train_adv_accuracy", "train_ac", "train_ac_loss",
    "train_clean_accuracy",
    "val_clean_accuracy", "val_robust_accuracy", "val_ac",
    "test_clean_accuracy", "test_robust_accuracy", "test_ac", "epoch_seconds")


def metrics_path(model_dir):
    return os.path.join(model_dir, METRICS_FILE)


# metrics.csv column -> the key of the training loop's logs (Keras' train logs of
# `DACModel` plus what `dac_tf.callbacks` adds); the columns not listed have the log's name.
_COLUMN_LOG_KEYS = {
    "train_loss": "loss", "train_adv_accuracy": "adv_accuracy",
    "train_ac": "adv_certainty", "train_ac_loss": "ac_loss",
    "train_clean_accuracy": "clean_accuracy",
    "val_ac": "val_adv_certainty", "test_ac": "test_adv_certainty"}


def row_from_logs(epoch, logs):
    """A metrics.csv row (epochs counted from 1) from an epoch's Keras logs."""
    row = {column: logs.get(_COLUMN_LOG_KEYS.get(column, column))
           for column in METRIC_COLUMNS}
    row["epoch"] = int(epoch)
    return {k: (None if v is None else (v if k == "epoch" else float(v)))
            for k, v in row.items()}


def write_metrics(model_dir, rows):
    """Writes every row atomically: the METRIC_COLUMNS, then any other column the rows
    hold (a user's, read back by `read_metrics`) in the order first seen; None or a
    missing key is an empty cell."""
    extra = [k for k in dict.fromkeys(k for row in rows for k in row)
             if k not in METRIC_COLUMNS and isinstance(k, str)]
    columns = list(METRIC_COLUMNS) + extra
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _format_cell(row.get(k)) for k in columns})
    fileio.write_atomic(metrics_path(model_dir), buffer.getvalue())


def _format_cell(value):
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def read_metrics(model_dir):
    """Reads a run's metrics.csv.

    Returns:
      A list of rows sorted by epoch, each a dict column -> float (None for an empty
      cell); every column of METRIC_COLUMNS is present. A column dac_tf does not write
      (one a user added) is kept as text, so `write_metrics` writes it back unchanged.
      [] when there is no file.

    Raises:
      RunDirError: the file is unreadable, not a CSV with an epoch column, or holds a
        cell of a METRIC_COLUMNS column that is not a number (the message names the line
        and column).
    """
    path = metrics_path(model_dir)
    if not tf.io.gfile.exists(path):
        return []
    try:
        text = fileio.read_text(path)
    except (OSError, tf.errors.OpError, UnicodeDecodeError) as e:
        raise RunDirError(f"cannot read {path}: {fileio.first_line(e)}; restore it from a "
                          "backup, or move the run directory away to start afresh.") from None
    if "\x00" in text:
        raise RunDirError(f"{path} is not a text CSV file (it holds binary data); restore "
                          "it from a backup, or move the run directory away to start "
                          "afresh.")
    try:
        reader = csv.DictReader(io.StringIO(text))
        records = list(reader)
        header = reader.fieldnames
    except csv.Error as e:
        raise RunDirError(f"cannot parse {path}: {e}") from None
    if not header:
        return []
    if "epoch" not in header:
        raise RunDirError(f"{path} has no 'epoch' column (header: {','.join(header)}).")
    rows = []
    for i, record in enumerate(records):
        row = dict.fromkeys(METRIC_COLUMNS)
        for name, cell in record.items():
            if name is None or cell is None or cell.strip() == "":
                continue   # a short row, an overlong one, or an empty cell
            if name not in METRIC_COLUMNS:
                row[name] = cell   # a user's column: kept verbatim
                continue
            try:
                row[name] = float(cell)
            except ValueError:
                # Line i + 2: one for the header, one because lines count from 1.
                raise RunDirError(f"{path} line {i + 2}: column {name!r} holds {cell!r}, "
                                  "not a number.") from None
        if row["epoch"] is None or not float(row["epoch"]).is_integer():
            raise RunDirError(f"{path} line {i + 2}: every row needs an integer epoch.")
        row["epoch"] = int(row["epoch"])
        rows.append(row)
    return sorted(rows, key=lambda r: r["epoch"])


def metrics_arrays(rows):
    """Rows of `read_metrics` as dict column -> float64 array (NaN for empty cells), for
    the METRIC_COLUMNS (a user's text columns are left out)."""
    columns = {name: np.full(len(rows), np.nan) for name in METRIC_COLUMNS}
    for i, row in enumerate(rows):
        for name in METRIC_COLUMNS:
            if row.get(name) is not None:
                columns[name][i] = row[name]
    return columns


def selection_key(has_validation):
    """The metrics column that selects `best`: validation if there is a split, else test."""
    return "val_robust_accuracy" if has_validation else "test_robust_accuracy"


def best_epoch(rows, key):
    """The best epoch as the training loop keeps it: the first strict maximum of `key`.

    Returns:
      (epoch, value), or (0, -1.0) when no row has a value in `key`.
    """
    best, value = 0, -1.0
    for row in rows:
        v = row.get(key)
        if v is not None and np.isfinite(v) and v > value:
            best, value = int(row["epoch"]), float(v)
    return best, value



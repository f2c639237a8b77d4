"""A training run directory: its metrics, its lock, and whether it may be continued.

The layout (file names) is in `dac_tf.checkpoints`; this module holds what the training
loop, the report and the evaluation all read the same way:

- `metrics.csv`: the one schema (`METRIC_COLUMNS`), writer and reader, and the one rule
  for the best epoch (`best_epoch`: the first strict maximum of the selection column,
  as the training loop keeps a new best only when it is strictly better);
- `.lock`: one training process per run directory (`RunLock`);
- `inspect`: what a run directory holds, and what is missing for it to be resumed
  (a damaged directory is refused, never silently trained over).
"""

import contextlib
import csv
import dataclasses
import errno
import io
import json
import math
import os
import socket
import threading
import time
import uuid

try:
    import fcntl
except ImportError:   # not on POSIX: the lock's take-over is not serialized
    fcntl = None

import numpy as np
import tensorflow as tf

from dac_tf import checkpoints
from dac_tf import errors
from dac_tf import fileio

METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
LOCK_FILE = ".lock"
METRIC_COLUMNS = (
    "epoch", "lr", "train_loss", "train_adv_accuracy", "train_ac", "train_ac_loss",
    "train_clean_accuracy",
    "val_clean_accuracy", "val_robust_accuracy", "val_ac",
    "test_clean_accuracy", "test_robust_accuracy", "test_ac", "epoch_seconds")
# A lock whose holder runs on another host cannot be checked by pid; it is stale when it
# has not been refreshed for this long (the holder refreshes it every _HEARTBEAT_SECONDS).
STALE_LOCK_SECONDS = 600
_HEARTBEAT_SECONDS = 60


class RunDirError(errors.UserError):
    """A run directory that cannot be used as asked (the message says why and what to do)."""


# ----------------------------------------------------------------------- metrics
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


# ------------------------------------------------------------------------- lock
def _process_start(pid):
    """The start time of a process in clock ticks since boot (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid, start):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A recycled pid belongs to a process that started later than the holder.
    now_start = _process_start(pid)
    return start is None or now_start is None or now_start == start


def parse_lock_record(text):
    """The holder named by a lock file's content, or None when it is not a lock record.

    A record is a JSON object with `pid` (int > 0), `host` (non-empty str), `start`
    (int clock ticks since boot, or null) and `time` (finite seconds since the epoch);
    other keys are ignored. Empty, non-JSON or wrongly typed content is not a record.
    """
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    pid, host, start, when = (record.get(k) for k in ("pid", "host", "start", "time"))

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if not (is_int(pid) and pid > 0 and isinstance(host, str) and host
            and (start is None or is_int(start))
            and (is_int(when) or isinstance(when, float)) and math.isfinite(when)):
        return None
    return dict(pid=pid, host=host, start=start, time=float(when))


@contextlib.contextmanager
def _serialized(directory, timeout=30.0):
    """Holds an exclusive `flock` on `directory` (local disks), so that the processes
    (and threads) taking a run's lock check and replace a stale one one at a time.

    Without it two contenders that both judged a lock stale could each remove it, the
    second removing the fresh lock of the first. Elsewhere (object stores, file systems
    without flock) it does nothing.
    """
    fd = None
    if fcntl is not None and fileio.is_local(directory):
        try:
            fd = os.open(directory, os.O_RDONLY)
        except OSError:
            fd = None
    try:
        deadline = time.monotonic() + timeout
        while fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RunDirError(f"--model_dir={directory}: another process has been "
                                      f"taking its lock for {timeout:.0f} s; try again.")
                time.sleep(0.005)
            except OSError:
                break   # no flock on this file system: unserialized
        yield
    finally:
        if fd is not None:
            os.close(fd)   # releases the flock


class RunLock:
    """One training process per run directory.

    `acquire` creates `model_dir/.lock` holding the pid, host and start time of this
    process (a record, `parse_lock_record`) and refreshes it every minute. The file is
    created whole: written under a temporary name, then hard-linked to `.lock`, which
    fails if `.lock` exists (on object stores: written whole, then read back to see who
    won). So a lock is never seen empty or half-written, and any content other than a
    record was not written by a live dac_tf process.

    The rule for an existing lock: it is taken over only when it provably belongs to no
    running training: its host is this one and its pid is not running or was reused by
    a process started at another time, or its host is another one and it was not
    refreshed for STALE_LOCK_SECONDS. Anything else is refused with the lock's path and
    what to do: a live holder, and content that is not a record (empty, not JSON, a
    list, wrong types), which proves nothing about a holder.
    """

    def __init__(self, model_dir):
        self.path = os.path.join(model_dir, LOCK_FILE)
        self._stop = threading.Event()
        self._thread = None
        self._content = None
        self.held = False

    def _record(self):
        pid = os.getpid()
        return dict(pid=pid, host=socket.gethostname(), start=_process_start(pid),
                    time=time.time())

    def _read(self):
        """The lock file's text (undecodable bytes replaced), or None when it is absent."""
        try:
            with tf.io.gfile.GFile(self.path, "rb") as f:
                return f.read().decode("utf-8", errors="replace")
        except (OSError, tf.errors.OpError):
            return None

    def holder(self):
        """The holder named by the lock (`parse_lock_record`), or None (no lock, or
        content that is not a record)."""
        text = self._read()
        return None if text is None else parse_lock_record(text)

    def _stale(self, holder):
        if holder["host"] == socket.gethostname():
            return not _alive(holder["pid"], holder["start"])
        return time.time() - holder["time"] > STALE_LOCK_SECONDS

    def _create(self, content):
        """Creates the lock with `content` unless it exists; whether it did."""
        if fileio.is_local(self.path):
            tmp = f"{self.path}{fileio.TMP_MARKER}{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                with open(tmp, "w", encoding="utf-8") as f:
                    f.write(content)
                    f.flush()
                    os.fsync(f.fileno())
                os.link(tmp, self.path)   # atomic, and fails if the lock exists
                return True
            except FileExistsError:
                return False
            except FileNotFoundError:
                return False   # the holder's start-up cleaned up our temporary file
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                    raise
                # No hard links on this file system: create exclusively, then fill. A
                # contender may see it empty for an instant; empty is refused, never
                # taken over, so this stays safe.
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(content)
                return True
            finally:
                try:
                    os.remove(tmp)
                except OSError:
                    pass
        # Object stores have no exclusive create: write, then read back who won.
        if tf.io.gfile.exists(self.path):
            return False
        fileio.write_atomic(self.path, content)
        return self._read() == content

    def _remove_if_unchanged(self, text):
        """Removes the lock if it still holds `text` (the stale record judged)."""
        if self._read() == text:
            try:
                tf.io.gfile.remove(self.path)
            except (OSError, tf.errors.OpError):
                pass

    def acquire(self):
        """Takes the lock or raises RunDirError (a live holder, or a lock file that is
        not a record), naming the lock file and what to do."""
        model_dir = os.path.dirname(self.path)
        with _serialized(model_dir):
            for _ in range(3):
                content = json.dumps(self._record())
                if self._create(content):
                    self._content, self.held = content, True
                    self._thread = threading.Thread(target=self._heartbeat, daemon=True)
                    self._thread.start()
                    return self
                text = self._read()
                if text is None:
                    continue   # released in between
                holder = parse_lock_record(text)
                if holder is None:
                    shown = "is empty" if not text.strip() else (
                        f"holds {text[:40]!r}{'...' if len(text) > 40 else ''}, not a lock "
                        "record")
                    raise RunDirError(
                        f"--model_dir={model_dir}: its lock file {self.path} {shown}, so "
                        "whether a training process uses the run cannot be told; if none "
                        f"does, delete {self.path} and start again.")
                if self._stale(holder):
                    self._remove_if_unchanged(text)
                    continue
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["time"]))
                raise RunDirError(
                    f"--model_dir={model_dir} is in use by another training process "
                    f"(pid {holder['pid']} on host {holder['host']}, lock refreshed "
                    f"{since}); wait for it to finish or stop it, or choose another "
                    f"--model_dir. If that process is gone, delete {self.path}.")
        raise RunDirError(f"cannot take the lock {self.path}; another process keeps "
                          "creating it.")

    def _heartbeat(self):
        while not self._stop.wait(_HEARTBEAT_SECONDS):
            try:
                if self._read() != self._content:
                    return   # taken over (this process was judged gone): never clobber
                content = json.dumps(self._record())
                fileio.write_atomic(self.path, content)
                self._content = content
            except (OSError, tf.errors.OpError):
                pass   # a missed refresh only makes the lock look older

    def release(self):
        if not self.held:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            if self._read() == self._content:
                tf.io.gfile.remove(self.path)
        except (OSError, tf.errors.OpError):
            pass
        self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


# ---------------------------------------------------------------------- inspect
@dataclasses.dataclass(frozen=True)
class RunState:
    """What a run directory holds.

    Attributes:
      exists: the directory exists.
      config: config.json as a dict, or None.
      last_epochs: epochs of the `last` checkpoints listed in checkpoints/checkpoint.
      checkpoint_files: epochs of ckpt-N files in checkpoints/, listed or not.
      best_epochs: epochs of the checkpoints in best/.
      rows: metrics.csv rows (`read_metrics`).
    """

    exists: bool
    config: dict | None
    last_epochs: tuple
    checkpoint_files: tuple
    best_epochs: tuple
    rows: tuple

    @property
    def finished_epoch(self):
        """The newest epoch with a `last` checkpoint, 0 when none."""
        return max(self.last_epochs, default=0)

    @property
    def has_checkpoints(self):
        return bool(self.last_epochs or self.checkpoint_files or self.best_epochs)

    @property
    def killed_in_first_save(self):
        """The first `last` checkpoint is on disk but not yet listed in its index.

        TensorFlow's CheckpointManager writes ckpt-N's files, then rewrites the index
        (`checkpoint`); a kill in between leaves ckpt-1 unlisted, with no index at all.
        Later saves cannot end like this (the index still lists the earlier ones), and a
        lost index of several checkpoints is refused as damage.
        """
        return self.checkpoint_files == (1,) and not self.last_epochs


def _checkpoint_epochs(directory):
    """Epochs of the ckpt-N.index files in `directory` (listed or not)."""
    epochs = set()
    if tf.io.gfile.isdir(directory):
        for name in tf.io.gfile.listdir(directory):
            stem, ext = os.path.splitext(name.rstrip("/"))
            if ext == ".index" and stem.startswith("ckpt-") and stem[5:].isdigit():
                epochs.add(int(stem[5:]))
    return tuple(sorted(epochs))


def _listed_epochs(directory):
    state = tf.train.get_checkpoint_state(directory) if tf.io.gfile.isdir(directory) else None
    if state is None:
        return ()
    epochs = []
    for path in state.all_model_checkpoint_paths:
        stem = os.path.basename(path)
        if stem.startswith("ckpt-") and stem[5:].isdigit():
            epochs.append(int(stem[5:]))
    return tuple(sorted(epochs))


def inspect(model_dir):
    """Reads what `model_dir` holds (see `RunState`); never writes.

    Raises:
      RunDirError: config.json or metrics.csv exist but cannot be read.
    """
    if not tf.io.gfile.exists(model_dir):
        return RunState(False, None, (), (), (), ())
    if not tf.io.gfile.isdir(model_dir):
        raise RunDirError(f"--model_dir={model_dir} is a file, not a directory; choose "
                          "another --model_dir.")
    config_path = checkpoints.config_path(model_dir)
    config = None
    if tf.io.gfile.exists(config_path):
        config = fileio.read_json(config_path, RunDirError, "run config")
        if not isinstance(config, dict):
            raise RunDirError(f"{config_path} is not a JSON object; restore it from a "
                              "backup, or move the run directory away to start afresh.")
    last_dir = os.path.join(model_dir, checkpoints.LAST_DIR)
    return RunState(
        exists=True, config=config, last_epochs=_listed_epochs(last_dir),
        checkpoint_files=_checkpoint_epochs(last_dir),
        best_epochs=_checkpoint_epochs(os.path.join(model_dir, checkpoints.BEST_DIR)),
        rows=tuple(read_metrics(model_dir)))


def resume_problems(state):
    """What keeps a run directory with checkpoints from being resumed.

    Args:
      state: `inspect(model_dir)`.

    Returns:
      A list of one-line problems (empty: the directory is consistent). Each says what
      is missing; resuming over any of them would retrain or reselect over real results.
    """
    if not state.has_checkpoints:
        return []
    problems = []
    if state.config is None:
        problems.append(f"{checkpoints.CONFIG_FILE} is missing")
    if state.checkpoint_files and not state.last_epochs and not state.killed_in_first_save:
        problems.append(f"{checkpoints.LAST_DIR}/checkpoint (the index of the checkpoints "
                        f"ckpt-{', ckpt-'.join(map(str, state.checkpoint_files))}) is missing")
    finished = state.finished_epoch
    epochs = {r["epoch"] for r in state.rows}
    # The loop writes the metrics row of an epoch before its checkpoint, so every
    # checkpointed epoch has a row unless the file was damaged.
    missing_rows = [e for e in range(1, finished + 1) if e not in epochs]
    if missing_rows:
        what = "is missing" if not state.rows else (
            f"lacks the rows of epoch(s) {', '.join(map(str, missing_rows))}")
        problems.append(f"{METRICS_FILE} {what} (the checkpoints reach epoch {finished})")
    return problems


def best_checkpoint_status(rows, restored_epoch, best_epochs, select_key):
    """Whether best/ holds the best of the epochs up to `restored_epoch`.

    The loop saves an epoch's `last` checkpoint before its `best` one, so a kill between
    the two leaves best/ one epoch behind while the restored `last` holds exactly the
    weights best/ should hold.

    Returns:
      ("ok" | "resave" | "missing", best epoch): "resave" when the best epoch is the
      restored one (save best/ from it), "missing" when an earlier best epoch's
      checkpoint is gone (its weights cannot be recovered).
    """
    best, _ = best_epoch([r for r in rows if r["epoch"] <= restored_epoch], select_key)
    if not best or best in best_epochs:
        return "ok", best
    return ("resave" if best == restored_epoch else "missing"), best

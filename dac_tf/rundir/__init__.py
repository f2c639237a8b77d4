"""A training run directory: its metrics, its lock, and whether it may be continued.

The layout (file names) is in `dac_tf.checkpoints`; this package holds what the training
loop, the report and the evaluation all read the same way, one module each:

- `metrics`: `metrics.csv`, the one schema (`METRIC_COLUMNS`), writer and reader, and
  the one rule for the best epoch (`best_epoch`: the first strict maximum of the
  selection column, as the training loop keeps a new best only when it is strictly
  better);
- `lock`: `.lock`, one training process per run directory (`RunLock`);
- `state`: `inspect`, what a run directory holds, and what is missing for it to be
  resumed (a damaged directory is refused, never silently trained over).

Their public names are this package's: `dac_tf.rundir.read_metrics`, `.RunLock`, ...
"""

from dac_tf import errors


class RunDirError(errors.UserError):
    """A run directory that cannot be used as asked (the message says why and what to do)."""


# The modules below raise RunDirError, so they are imported after it.
from dac_tf.rundir.lock import LOCK_FILE  # noqa: E402
from dac_tf.rundir.lock import STALE_LOCK_SECONDS  # noqa: E402
from dac_tf.rundir.lock import RunLock  # noqa: E402
from dac_tf.rundir.lock import parse_lock_record  # noqa: E402
from dac_tf.rundir.metrics import METRIC_COLUMNS  # noqa: E402
from dac_tf.rundir.metrics import METRICS_FILE  # noqa: E402
from dac_tf.rundir.metrics import SUMMARY_FILE  # noqa: E402
from dac_tf.rundir.metrics import best_epoch  # noqa: E402
from dac_tf.rundir.metrics import metrics_arrays  # noqa: E402
from dac_tf.rundir.metrics import metrics_path  # noqa: E402
from dac_tf.rundir.metrics import read_metrics  # noqa: E402
from dac_tf.rundir.metrics import row_from_logs  # noqa: E402
from dac_tf.rundir.metrics import selection_key  # noqa: E402
from dac_tf.rundir.metrics import write_metrics  # noqa: E402
from dac_tf.rundir.state import RunState  # noqa: E402
from dac_tf.rundir.state import best_checkpoint_status  # noqa: E402
from dac_tf.rundir.state import inspect  # noqa: E402
from dac_tf.rundir.state import resume_problems  # noqa: E402

__all__ = [
    "LOCK_FILE", "METRICS_FILE", "METRIC_COLUMNS", "STALE_LOCK_SECONDS", "SUMMARY_FILE",
    "RunDirError", "RunLock", "RunState", "best_checkpoint_status", "best_epoch", "inspect",
    "metrics_arrays", "metrics_path", "parse_lock_record", "read_metrics", "resume_problems",
    "row_from_logs", "selection_key", "write_metrics",
]

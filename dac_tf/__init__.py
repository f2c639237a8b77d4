"""dac_tf: DAC (Decrease Adversarial Certainty) adversarial training for TensorFlow/Keras.

    import dac_tf
    base = dac_tf.models.build("preact_resnet18", num_classes=10)
    model = dac_tf.DACModel(base, method="at")
    schedule = dac_tf.schedules.build("piecewise_at", 0.1, epochs=200, steps_per_epoch=391)
    model.compile(optimizer=dac_tf.optimizers.TorchSGD(schedule, momentum=0.9))
    model.fit(train_ds, epochs=200, callbacks=[
        dac_tf.callbacks.RobustValidation(x_val, y_val, epsilon=8 / 255)])

`TorchSGD` keeps PyTorch's momentum convention, which the reference code trains with
(Keras' SGD differs from it after every learning-rate change); `DACModel.compile`
evaluates the schedule per batch although DAC makes two updates per batch.

Importing dac_tf has no side effects and stays light: `DACModel`, `models`, `attacks`,
`certainty`, `objectives`, `optimizers` and `schedules` load with it; the other public
modules (`callbacks`, `serving`, `evaluation`, `protocol`, `errors`, `data`, ...) load
on first use of `dac_tf.<name>`, so `import dac_tf` imports neither tensorflow_datasets
nor CleverHans nor matplotlib.
"""

import importlib as _importlib
import sys as _sys


def _program_module(argv):
    """The module of `python [options] -m MODULE ...` (`sys.orig_argv`), else None."""
    i = 1
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg.startswith("--"):
            if arg == "--check-hash-based-pycs":
                i += 1
            continue
        if not arg.startswith("-") or arg == "-":
            return None   # a script or stdin
        for j, letter in enumerate(arg[1:], 1):
            if letter == "c":
                return None   # -c COMMAND
            if letter in "mWX":
                value = arg[j + 1:] or (argv[i] if i < len(argv) else None)
                if letter == "m":
                    return value
                if not arg[j + 1:]:
                    i += 1   # -W / -X took the next argument
                break
    return None


if _sys.argv[:1] == ["-m"] and (
        (_program_module(getattr(_sys, "orig_argv", [])) or "").split(".")[0] == "dac_tf"):
    # `python -m dac_tf.X`, one of dac_tf's own programs: while Python imports the
    # package of the module it runs, sys.argv[0] is "-m". Filter TensorFlow's start-up
    # log lines out of the program's stderr before TensorFlow is imported
    # (dac_tf/_logfilter.py says what is kept). A user's `python -m their_pkg` that
    # imports dac_tf runs no dac_tf program, and its stderr is left alone.
    from dac_tf import _logfilter
    _logfilter.install()
    # TensorFlow turns its oneDNN kernels on by itself only on CPUs with AVX-512 VNNI
    # and newer; on AVX2 CPUs the default Eigen input-gradient convolution is ~3x
    # slower and DAC's attacks are mostly input gradients. oneDNN makes a DAC-AT step
    # ~1.8x faster there (docs/PERFORMANCE.md). A user's own setting is kept.
    import os as _os
    _os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from dac_tf import attacks  # noqa: E402
from dac_tf import certainty  # noqa: E402
from dac_tf import models  # noqa: E402
from dac_tf import objectives  # noqa: E402
from dac_tf import optimizers  # noqa: E402
from dac_tf import schedules  # noqa: E402
from dac_tf.certainty import adversarial_certainty  # noqa: E402
from dac_tf.model import DACModel  # noqa: E402

__version__ = "0.1.0"

# Public modules loaded on first use (PEP 562): what they import (Keras callbacks and
# tf.data for `callbacks`, CleverHans for `evaluation.attacks`, matplotlib for `plots`)
# is paid only by who uses them.
_LAZY_MODULES = ("autoattack", "batching", "benchmark", "callbacks", "checkpoints", "cli",
                 "cluster", "config", "data", "errors", "evaluation", "fileio", "plots",
                 "protocol", "rundir", "seeds", "serving", "torch_bridge", "training")


def __getattr__(name):
    if name in _LAZY_MODULES:
        return _importlib.import_module(f"dac_tf.{name}")
    raise AttributeError(f"module 'dac_tf' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_MODULES))


__all__ = ["DACModel", "adversarial_certainty", "attacks", "callbacks", "certainty",
           "errors", "evaluation", "models", "objectives", "optimizers", "protocol",
           "schedules", "serving"]

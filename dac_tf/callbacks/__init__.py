"""Keras callbacks for robust training: what the training CLI's loop is made of.

`RobustValidation` is what a user's own `fit` needs to see robust overfitting and to
keep the best robust model, exactly as `python -m dac_tf.train` does:

    model.fit(train_ds, epochs=200, callbacks=[
        dac_tf.callbacks.RobustValidation(x_val, y_val, epsilon=8 / 255),
        keras.callbacks.ModelCheckpoint("best.weights.h5", monitor="val_robust_accuracy",
                                        save_best_only=True, save_weights_only=True),
        keras.callbacks.CSVLogger("metrics.csv"),
    ])

It adds `{prefix}_clean_accuracy`, `{prefix}_robust_accuracy` and
`{prefix}_adv_certainty` to the epoch's logs (`validation`); `DACModel.fit` runs it
first whatever its place in the list, a plain `keras.Model` takes
`callbacks=ordered([...])`.

The other callbacks are the training CLI's own pieces (`epochs`: the non-finite loss
and epoch stops, checkpoints, progress, TensorBoard with a run per split); they are
public so that a custom loop can drive the same list (the multi-worker path does:
Keras' `fit` does not run under `MultiWorkerMirroredStrategy`).
"""

from dac_tf.callbacks.epochs import BestCheckpoint
from dac_tf.callbacks.epochs import EpochCheckpoint
from dac_tf.callbacks.epochs import EpochInfo
from dac_tf.callbacks.epochs import NonFiniteLossError
from dac_tf.callbacks.epochs import SplitTensorBoard
from dac_tf.callbacks.epochs import StopOnNonFiniteEpoch
from dac_tf.callbacks.epochs import StopOnNonFiniteLoss
from dac_tf.callbacks.epochs import TrainingProgress
from dac_tf.callbacks.validation import RobustValidation
from dac_tf.callbacks.validation import MONITOR_MODES
from dac_tf.callbacks.validation import RobustValidationError
from dac_tf.callbacks.validation import check_monitor_modes
from dac_tf.callbacks.validation import ordered

__all__ = ["BestCheckpoint", "EpochCheckpoint", "EpochInfo", "MONITOR_MODES",
           "NonFiniteLossError", "RobustValidation", "RobustValidationError",
           "SplitTensorBoard", "StopOnNonFiniteEpoch", "StopOnNonFiniteLoss",
           "TrainingProgress", "check_monitor_modes", "ordered"]

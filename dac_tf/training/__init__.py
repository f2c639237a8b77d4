"""The training library behind `python -m dac_tf.train`: one run, end to end.

    from dac_tf import config, training
    summary = training.train_and_evaluate(config.resolve({"method": "trades",
                                                          "dataset": "digits"}))

`train_and_evaluate(config)` takes a `dac_tf.config.TrainConfig` (`config.resolve`
builds one from flag values, with the reference's defaults) and trains, evaluates and
checkpoints the run in `config.model_dir`, continuing it when it holds finished epochs.
Its pieces, one responsibility each:

- `trainer`: `train_and_evaluate` and `build_training` (model, DACModel, optimizer).
- `strategies`: the distribution strategy of `--strategy` and its checks.
- `loop`: the epoch loop (Keras' `fit`, or a custom loop under
  MultiWorkerMirroredStrategy) and the batches per epoch.
- `callback_chain`: the run's callbacks in their order (validation, checks, metrics,
  checkpoints, TensorBoard, the summary line).
- `resume`: whether a run directory may be continued, and restoring it.
- `run_files`: creating the run directory, its record (config.json, flags.cfg), and
  cleaning what killed writers left.

A Keras user's own `fit` gets the same epoch-level behaviour from `dac_tf.callbacks`.
"""

from dac_tf.training.trainer import build_training
from dac_tf.training.trainer import train_and_evaluate

__all__ = ["build_training", "train_and_evaluate"]

"""The epoch loop: Keras' `fit` on one machine, a custom loop across workers.

    fit_epochs(model, strategy, dataset, initial_epoch=0, epochs=10, steps=100,
               callbacks=[...], verbose=0)

Both run the same `DACModel.train_step` and drive the same Keras callbacks, so a run's
metrics, checkpoints and logs do not depend on where it trains.
"""

import keras
import tensorflow as tf

from dac_tf import cluster
from dac_tf import data

# What a collective raises when another task of a multi-worker cluster is gone or hung.
PEER_FAILURES = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                 tf.errors.AbortedError, tf.errors.CancelledError)


def steps_per_epoch(train_size, batch_size, max_steps_per_epoch):
    """Batches per epoch: every example once, capped by `max_steps_per_epoch` (0: no cap)."""
    steps = data.steps_per_epoch(train_size, batch_size)
    return min(steps, max_steps_per_epoch) if max_steps_per_epoch else steps


def train_log_names(model):
    """The keys a `DACModel`'s training step logs (its metrics' names)."""
    names = ["loss", "adv_accuracy", "adv_certainty"] + (["ac_loss"] if model.use_dac else [])
    if model.reference_bn_updates and model.method == "at":
        names.append("clean_accuracy")   # the reference's clean train-mode forward
    return names


def fit_epochs(model, strategy, dataset, *, initial_epoch, epochs, steps, callbacks,
               verbose):
    """Trains epochs `initial_epoch` .. `epochs - 1` with `callbacks`.

    One machine (one or several local devices): Keras' `fit`. Under
    `MultiWorkerMirroredStrategy` Keras' `fit` fails (keras-team/keras#20585), so a custom
    loop runs the same `DACModel.train_step` through `strategy.run` and drives the same
    callbacks through a `keras.callbacks.CallbackList`.

    Args:
      model: a compiled `DACModel`.
      strategy: the strategy the model was built under.
      dataset: the batches of every epoch to run, in order (`data.train_dataset`).
      initial_epoch, epochs: the epochs to run, counted from 0.
      steps: batches per epoch.
      callbacks: Keras callbacks.
      verbose: Keras' progress verbosity.

    Raises:
      cluster.PeerLostError: another task of the cluster died or hung (exit code 138:
        restart every task).
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        model.fit(dataset, initial_epoch=initial_epoch, epochs=epochs,
                  steps_per_epoch=steps, callbacks=callbacks, verbose=verbose,
                  shuffle=False)
        return

    @tf.function
    def step(iterator):
        strategy.run(model.train_step, args=(next(iterator),))

    names = train_log_names(model)
    by_name = {m.name: m for m in model.metrics}

    def logs():
        return {n: float(by_name[n].result()) for n in names}

    callback_list = keras.callbacks.CallbackList(
        callbacks, add_history=True, add_progbar=verbose != 0, model=model,
        verbose=verbose, epochs=epochs, steps=steps)
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    where = "the start of training"
    try:
        callback_list.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            for metric in model.metrics:
                metric.reset_state()
            callback_list.on_epoch_begin(epoch)
            for batch in range(steps):
                where = f"epoch {epoch + 1}, batch {batch + 1}"
                callback_list.on_train_batch_begin(batch)
                step(iterator)
                callback_list.on_train_batch_end(batch, logs())
            where = f"the end of epoch {epoch + 1} (evaluation, checkpoint)"
            callback_list.on_epoch_end(epoch, logs())
            if model.stop_training:
                break
        callback_list.on_train_end()
    except PEER_FAILURES as e:
        # A dead or hung task fails the collectives of all the others (gRPC
        # unavailable after the coordination service's heartbeat, or the collective
        # timeout): one line naming it, and the exit code that asks for a retry.
        raise cluster.peer_lost_error(cluster.current_task(), e, where) from None

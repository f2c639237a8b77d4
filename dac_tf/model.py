"""`DACModel`: wraps any Keras classifier and trains it with DAC + AT / TRADES / MART.

Per batch (the paper's DAC update, as the authors' reference code TrustMLRG/AdvCertainty
runs it):
  A. attack at theta_t with the method's own attack; loss = ac_step * AC(logits(x_adv));
     one optimizer update (theta_{t+1/2});
  B. a fresh attack at theta_{t+1/2}; the method's robust loss; one optimizer update.
Both updates use the same optimizer (same momentum slots) and PyTorch-style coupled L2
weight decay on every trainable weight. `use_dac=False` skips phase A: the plain method
through the same code path. `reference_bn_updates=True` adds the reference code's
train-mode forwards whose only lasting effect is on the BatchNorm moving statistics.

The wrapper owns no variables: exporting and `predict` go through the base model, and
`save_weights` (`ModelCheckpoint(save_weights_only=True)`) writes the base model's
layout, which loads into a freshly built base model. A DACModel saved whole
(`model.save("x.keras")`, `ModelCheckpoint`) also keeps its optimizer, so a loaded one
continues training where it stopped (`compile_from_config`). `fit` runs every
`dac_tf.callbacks.RobustValidation` before the other callbacks, so their order in the
list does not matter; `evaluate` is exact over replicas, as `fit` is.
"""

import math

import keras
import numpy as np
import tensorflow as tf
# Keras has no public way to declare a metric's direction; see _MetricDirections.
from keras.src.trainers import compile_utils

from dac_tf import attacks
from dac_tf import certainty
from dac_tf import objectives
from dac_tf import protocol
from dac_tf import schedules
from dac_tf import seeds


def _num_replicas():
    context = tf.distribute.get_replica_context()
    return context.num_replicas_in_sync if context is not None else 1


def check_base_model(model):
    """Refuses base models DAC cannot train correctly, with what to change.

    Checked where Keras knows the model's outputs (functional and Sequential models,
    built subclassed ones have no symbolic outputs and are checked at the first batch
    by `_unpack`'s shape checks):
    - one output tensor of logits [batch, classes];
    - at least 2 classes: AC is a spread over the classes, NaN or 0 for one logit;
    - no softmax at the end: AC of probabilities is nearly 0 and the losses would apply a
      second softmax, so training is silently poor (val accuracy 0.76 vs 0.92 with
      logits on the digits).

    Raises:
      ValueError: naming the problem.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"base_model must be a keras.Model, got {type(model).__name__}.")
    outputs = getattr(model, "outputs", None)
    try:
        outputs = list(outputs) if outputs is not None else None
    except TypeError:
        outputs = None
    if outputs is None:
        return
    if len(outputs) != 1:
        raise ValueError(f"base_model {model.name!r} has {len(outputs)} outputs; DACModel "
                         "needs one logits output [batch, classes] (wrap the model so it "
                         "returns the classifier's logits only).")
    shape = tuple(outputs[0].shape)
    if len(shape) != 2:
        raise ValueError(f"base_model {model.name!r} returns shape {shape}; DACModel needs "
                         "logits of shape [batch, classes].")
    if shape[-1] is not None and shape[-1] < 2:
        raise ValueError(f"base_model {model.name!r} returns {shape[-1]} logit; DAC needs "
                         ">= 2 classes (adversarial certainty is the spread of the logits "
                         "over the classes). For a binary task return 2 logits.")
    last = model.layers[-1] if getattr(model, "layers", None) else None
    activation = getattr(last, "activation", None)
    name = getattr(activation, "__name__", "")
    if isinstance(last, keras.layers.Softmax) or name in ("softmax", "log_softmax", "sigmoid"):
        raise ValueError(
            f"base_model {model.name!r} ends in {name or 'a Softmax layer'}; DACModel "
            "needs logits (attacks, losses and adversarial certainty are defined on "
            "logits). Remove the final activation (e.g. Dense(classes) instead of "
            "Dense(classes, activation='softmax')).")


def _replica_context():
    """The replica context when several replicas run this step, else None."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def global_batch_mean(per_example, weights=None):
    """This replica's share of the global batch mean of `per_example`.

    The local (weighted) sum divided by the number of examples over all replicas: summed
    over replicas, as gradients are, it is the mean over the global batch however the
    batch was split, an uneven split or a replica with no real example (which adds 0)
    included. Dividing each replica's own mean by the replica count would weight uneven
    splits wrongly and turn an empty replica batch into NaN.

    Args:
      per_example: float tensor [local batch].
      weights: None, or 1 for real examples and 0 for padding (`pad_empty_replica`).

    Returns:
      float32 scalar.
    """
    per_example = tf.cast(per_example, tf.float32)
    if weights is None:
        total = tf.reduce_sum(per_example)
        count = tf.cast(tf.shape(per_example)[0], tf.float32)
    else:
        total = tf.reduce_sum(per_example * weights)
        count = tf.reduce_sum(weights)
    context = _replica_context()
    if context is not None:
        count = context.all_reduce(tf.distribute.ReduceOp.SUM, count)
    return total / tf.maximum(count, 1.0)


def global_results(metrics):
    """{name: result} of `metrics` over every replica's examples.

    Inside a replica, `metric.result()` reads the replica's own totals, and Keras
    averages the logs of the replicas, which weights an uneven split wrongly (53/52) and
    a padded replica as much as a full one. The metrics' variables are summed over the
    replicas first (one all-reduce), so every replica returns the global value.
    """
    context = _replica_context()
    if context is None:
        return {m.name: m.result() for m in metrics}
    variables = [v for m in metrics for v in m.variables]
    flat = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.concat(
        [tf.reshape(tf.cast(v, tf.float32), [-1]) for v in variables], 0))
    results, offset = {}, 0
    for metric in metrics:
        summed = []
        for v in metric.variables:
            size = int(np.prod(v.shape))
            summed.append(tf.cast(tf.reshape(flat[offset:offset + size], v.shape), v.dtype))
            offset += size
        results[metric.name] = metric.stateless_result(summed)
    return results


def pad_empty_replica(images, labels):
    """Gives a replica with an empty share of the batch one zero-weight example.

    With several replicas, a last batch smaller than the replica count leaves some
    replicas without examples. TensorFlow's gradients of zero-size batches fail
    (ReluGrad "must have the same size and shape" in TF 2.21) and BatchNorm's batch
    statistics of nothing are NaN, so such a replica trains on one black image of class
    0 with weight 0: every loss and metric is weighted, so it changes nothing (its
    BatchNorm statistics are replaced by replica 0's, `_sync_replica_statistics`).

    Returns:
      (images, labels, weights): weights None on a single replica (nothing padded).
    """
    if _replica_context() is None:
        return images, labels, None
    count = tf.shape(images)[0]
    pad = tf.maximum(1 - count, 0)
    images = tf.concat([images, tf.zeros(tf.concat([[pad], tf.shape(images)[1:]], 0),
                                         images.dtype)], 0)
    labels = tf.concat([labels, tf.zeros([pad], labels.dtype)], 0)
    weights = tf.concat([tf.ones([count]), tf.zeros([pad])], 0)
    return images, labels, weights


def _replica_id():
    context = tf.distribute.get_replica_context()
    if context is None:
        return tf.constant(0, tf.int64)
    return tf.cast(context.replica_id_in_sync_group, tf.int64)


def derive_seed(seed, iteration, replica_id=0):
    """The stateless seed of one attack: fold_in(fold_in([seed, 0], iteration), replica_id)."""
    return seeds.fold(tf.constant([int(seed), 0], tf.int64), iteration, replica_id)


# Which way each value DACModel logs improves, for Keras' `mode="auto"` (EarlyStopping,
# ModelCheckpoint, ReduceLROnPlateau; a `val_` key is looked up without its prefix), and
# the same for the keys `dac_tf.callbacks.RobustValidation` adds (`val_robust_accuracy`,
# `val_clean_accuracy`, `val_adv_certainty`). Adversarial certainty and the AC loss are
# "down" because lowering AC is what DAC trains for; a lower AC is not a more robust model
# in general, so monitor `val_robust_accuracy` to keep the most robust one.
METRIC_DIRECTIONS = {
    "loss": "down", "accuracy": "up", "adv_accuracy": "up", "adv_certainty": "down",
    "ac_loss": "down", "clean_accuracy": "up", "robust_accuracy": "up",
}


class _Direction(keras.metrics.Metric):
    """A stateless stand-in that carries only a metric name and its direction."""

    def __init__(self, name, direction):
        super().__init__(name=name)
        self._direction = direction   # the attribute Keras' monitor callbacks read

    def update_state(self, *args, **kwargs):
        raise NotImplementedError(f"{self.name!r} only declares a direction.")

    def result(self):
        raise NotImplementedError(f"{self.name!r} only declares a direction.")


class _MetricDirections(compile_utils.MetricsList):
    """Tells Keras' monitor callbacks the direction of each key in `METRIC_DIRECTIONS`.

    Keras 3 resolves `mode="auto"` (`MonitorCallback._set_monitor_op`) from the
    `_direction` of the metrics it finds inside a `CompileMetrics` or `MetricsList` in
    `model.metrics` and ignores metrics listed there directly, as a custom `train_step`'s
    trackers are: without this container only "loss" resolves, and "val_accuracy" fails
    although its tracker is a SparseCategoricalAccuracy (direction "up"). It also names
    keys DACModel itself does not compute (`robust_accuracy`). Its entries hold no state
    and it reports no values (`result` is empty): the trackers report them.
    """

    def __init__(self):
        super().__init__([_Direction(name, direction)
                          for name, direction in METRIC_DIRECTIONS.items()],
                         name="metric_directions")

    def result(self):
        return {}


_OPTIMIZER_GROUP = "optimizer/vars"
_REQUIRES = ("a dac_tf.DACModel: run `import dac_tf` before keras.saving.load_model; "
             "its base model saved alone (model.base_model.save) loads with Keras only")


def _local_h5(filepath):
    path = str(filepath)
    return path.endswith(".weights.h5") and "://" not in path


def _h5_layout(filepath):
    """"nested" (Keras' own DACModel layout), "with_optimizer", "base", or None when
    the file is not a local `.weights.h5`."""
    if not _local_h5(filepath):
        return None
    import h5py  # noqa: PLC0415
    try:
        with h5py.File(str(filepath), "r") as f:
            if "base_model" in f:
                return "nested"
            return "with_optimizer" if _OPTIMIZER_GROUP in f else "base"
    except OSError:
        return None   # let Keras report a missing or unreadable file


def _keras_archive_is_dac(filepath):
    """Whether a `.keras` archive holds a DACModel (its config names the class)."""
    import json  # noqa: PLC0415
    import zipfile  # noqa: PLC0415
    try:
        with zipfile.ZipFile(str(filepath)) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return False
    return config.get("class_name") == "DACModel"


@keras.saving.register_keras_serializable(package="dac_tf")
class DACModel(keras.Model):
    """Adversarial training with the DAC step, for use with `compile` / `fit`.

    Args:
      base_model: a Keras model mapping float images in [0, 1] to logits.
      method: "at" (PGD-AT), "trades" or "mart".
      use_dac: run the AC step before each robust step (False: the plain method).
      ac_step: weight of the AC loss (reference: 0.3 for AT and MART, 0.1 for TRADES).
      ac_measure: "std" (reference code: unbiased std of the logits over classes) or
        "var" (the paper's Definition 1: population variance).
      epsilon, step_size, num_steps: the training attack, in [0, 1] pixel units
        (8/255, not 8: a value above 1 is refused, `dac_tf.protocol.unit_value`).
        Defaults: the method's reference L-inf values; required for norm="l2".
      norm: "linf" or "l2".
      beta: TRADES / MART regulariser weight (reference 6 / 5); not used by AT.
      random_start: False makes the attack deterministic (no uniform init, no 0.001
        noise start).
      attack_training: BatchNorm mode during the attack; default per method (AT: True,
        as the reference runs its attack with the model in train mode; TRADES, MART:
        False).
      weight_decay: coupled L2 coefficient added to the gradients of both updates
        (PyTorch SGD semantics); default the method's reference value. Keras' own
        optimizer `weight_decay` is decoupled and a different regulariser.
      seed: integer seed of the attacks' stateless random starts. The per-batch seed is
        derived from it and `optimizer.iterations`, so resumed runs draw the same noise.
      reference_bn_updates: also make the train-mode forwards of the reference code that
        feed no update, only the BatchNorm moving statistics used at test time, in the
        reference's order. AT: after each attack, the forward on its result that the
        reference uses to pick among restarts (when `attack_training`), and a clean
        forward after the robust update, whose accuracy is logged as `clean_accuracy`.
        TRADES: the natural, adversarial, natural forwards of the `trades_loss` the
        reference calls and discards before the AC update, and the first natural forward
        of the robust `trades_loss`. MART: none. Train-mode forwards normalise with the
        batch's own statistics, so AT's updates are unchanged; TRADES' attack runs in
        inference mode and reads the moving statistics, so its later attacks (from the
        same batch's robust step on, with DAC) change too. False (default): only the
        forwards the updates need.

    Raises:
      ValueError: a base model or setting DAC cannot train with, naming what to change;
        `dac_tf.protocol.UnitError` (a ValueError) for an `epsilon` or `step_size`
        that is not in [0, 1] ("epsilon=8 looks like x/255: ... pass epsilon=8/255").
    """

    def __init__(self, base_model, method="at", *, use_dac=True, ac_step=None,
                 ac_measure="std", epsilon=None, step_size=None, num_steps=None,
                 norm="linf", beta=None, random_start=True, attack_training=None,
                 weight_decay=None, seed=0, reference_bn_updates=False, **kwargs):
        super().__init__(**kwargs)
        objectives.validate_method(method)
        certainty.validate_measure(ac_measure)
        if norm not in attacks.NORMS:
            raise ValueError(f"norm={norm!r} is not valid; use one of {', '.join(attacks.NORMS)}.")
        ref = objectives.defaults(method)
        if norm == "l2" and (epsilon is None or step_size is None):
            raise ValueError("norm='l2' needs explicit epsilon and step_size: the "
                             "reference defaults are L-inf budgets.")
        if method == "at" and beta is not None:
            raise ValueError("beta is a TRADES/MART parameter; method='at' does not use it.")
        self.base_model = base_model
        self.method = method
        self.use_dac = bool(use_dac)
        self.ac_step = float(ref.ac_step if ac_step is None else ac_step)
        self.ac_measure = ac_measure
        # [0, 1] units; a value above 1 can only be one out of 255 (`protocol.unit_value`).
        self.epsilon = protocol.unit_value(
            "epsilon", ref.epsilon if epsilon is None else epsilon)
        self.step_size = protocol.unit_value(
            "step_size", ref.step_size if step_size is None else step_size)
        self.num_steps = int(ref.num_steps if num_steps is None else num_steps)
        self.norm = norm
        self.beta = None if method == "at" else float(ref.beta if beta is None else beta)
        self.random_start = bool(random_start)
        self.attack_training = bool(
            ref.attack_training if attack_training is None else attack_training)
        self.weight_decay = float(ref.weight_decay if weight_decay is None else weight_decay)
        self.seed = int(seed)
        self.reference_bn_updates = bool(reference_bn_updates)
        for name, value in (("epsilon", self.epsilon), ("step_size", self.step_size),
                            ("num_steps", self.num_steps), ("weight_decay", self.weight_decay),
                            ("ac_step", self.ac_step), ("beta", self.beta)):
            if value is not None and (not math.isfinite(value) or value < 0):
                raise ValueError(f"{name}={value} is not valid; it must be a finite number "
                                 ">= 0.")
        check_base_model(base_model)
        self._attack_start = ref.attack_start if self.random_start else "none"
        self._attack_loss = ref.attack_loss

        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.adv_accuracy = keras.metrics.SparseCategoricalAccuracy(name="adv_accuracy")
        self.adv_certainty = keras.metrics.Mean(name="adv_certainty")
        self.ac_loss_tracker = keras.metrics.Mean(name="ac_loss")
        self.clean_accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        # Training-time clean accuracy (AT with reference_bn_updates): a tracker of its own,
        # so evaluate's "accuracy" and this log key never share a state.
        self.train_clean_accuracy = keras.metrics.SparseCategoricalAccuracy(
            name="clean_accuracy")
        self._metric_directions = _MetricDirections()
        if getattr(base_model, "built", False):
            self.built = True

    @property
    def updates_per_batch(self):
        return 2 if self.use_dac else 1

    @property
    def metrics(self):
        """The trackers (reset by Keras at each epoch), then the container that gives
        `mode="auto"` the direction of every logged key (`METRIC_DIRECTIONS`)."""
        return [self.loss_tracker, self.adv_accuracy, self.adv_certainty,
                self.ac_loss_tracker, self.clean_accuracy, self.train_clean_accuracy,
                self._metric_directions]

    def call(self, inputs, training=None):
        return self.base_model(inputs, training=training)

    def compile(self, optimizer="sgd", **kwargs):
        """Like `keras.Model.compile`; losses and metrics are DAC's own.

        A learning-rate schedule on the optimizer is replaced by
        `BatchSchedule(schedule, updates_per_batch)`, so it is evaluated at the batch
        index although each DAC batch makes two updates (a `BatchSchedule` already there,
        from an earlier compile or a loaded model, is re-wrapped, not nested).

        Raises:
          ValueError: for a loss or metrics argument, or a schedule Keras cannot
            serialize (see `schedules.from_optimizer`).
        """
        for key in ("loss", "metrics", "weighted_metrics", "loss_weights"):
            if kwargs.get(key) is not None:
                raise ValueError(
                    f"DACModel.compile got {key}=...; DACModel computes its own robust "
                    "loss and reports loss, adv_accuracy, adv_certainty, ac_loss (train) and "
                    "loss, accuracy (evaluate). Pass only the optimizer (and jit_compile, ...).")
        super().compile(optimizer=optimizer, **kwargs)
        # A LossScaleOptimizer (mixed_float16) delegates its rate to the wrapped one.
        inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        schedule = schedules.from_optimizer(inner)
        if isinstance(schedule, schedules.BatchSchedule):
            schedule = schedule.schedule
        if schedule is not None:
            inner.learning_rate = schedules.BatchSchedule(schedule, self.updates_per_batch)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Skips Keras' build from a data batch when the model is already built.

        Under a distribution strategy Keras' `fit` and `evaluate` first reduce their
        first batch over the replicas (a MEAN of the replicas' tensors) to build the
        model from its shapes. A global batch that does not split evenly (63 over 2
        replicas: 32 + 31 examples) makes that reduce fail (AddN of [32, ...] and
        [31, ...]) although the step itself is exact for any split (`global_batch_mean`).
        A DACModel whose base model is built has nothing to build from data, so only
        the optimizer is built, as Keras would. Keras has no public switch for this
        (`_maybe_symbolic_build` is its TensorFlow trainer's hook); the uneven-batch
        tests in tests/test_distribute.py fail if it stops applying.
        """
        if not getattr(self.base_model, "built", False):
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        if getattr(self, "optimizer", None) is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.base_model.trainable_variables)
        return None

    def compile_from_config(self, config):
        """Compiles from `get_compile_config()`: what `keras.saving.load_model` calls.

        Keras' own version skips models that override `compile` (with a warning), which
        left a loaded DACModel without an optimizer. This one calls `compile` with the
        saved optimizer (its class, hyperparameters and schedule) and creates the
        optimizer's variables, so that loading then restores their saved values
        (iterations, momentum buffers) and `fit` continues where the saved model stopped:
        same learning rates, same attack seeds (derived from `optimizer.iterations`).

        Args:
          config: the dict `get_compile_config()` returned when the model was saved
            (Keras' default, from the arguments of the last `compile`).
        """
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            # The variable list and order `train_step` applies gradients to, so the
            # saved slots land on the weights they belong to.
            self.optimizer.build(self.base_model.trainable_variables)

    # ----------------------------------------------------------------- pieces
    def _logits(self, images, training):
        return tf.cast(self.base_model(images, training=training), tf.float32)

    def attack_seed(self):
        """Seed of the next attack's random start: a function of `seed`, the update count
        and the replica, so every update and replica draws its own noise and a resumed
        run (optimizer restored) draws the same noise as an uninterrupted one.

        Returns:
          int64 [2]: fold_in(fold_in([seed, 0], optimizer.iterations), replica_id).
        """
        return derive_seed(self.seed, self.optimizer.iterations, _replica_id())

    def generate_adversarial(self, images, labels, seed=None):
        """The method's training attack against the current weights (stopped gradient)."""
        return attacks.pgd(
            lambda t: self._logits(t, self.attack_training), images, labels,
            epsilon=self.epsilon, step_size=self.step_size, num_steps=self.num_steps,
            norm=self.norm, loss=self._attack_loss, start=self._attack_start,
            seed=self.attack_seed() if seed is None else seed)

    def robust_loss(self, images, adv_images, labels):
        """The base method's per-example robust loss (train-mode BN) and the adversarial logits."""
        if self.method == "at":
            adv_logits = self._logits(adv_images, True)
            return objectives.at_loss(adv_logits, labels), adv_logits
        if self.method == "trades" and self.reference_bn_updates:
            # trades.py `trades_loss` takes the KL target softmax(model(x_natural)) from a
            # second natural forward, after the adversarial one; keep that order of BN
            # updates. Its first natural forward (the CE's) is the same function of the
            # batch in train mode, so it runs outside the tape, for its statistics only
            # (`_bn_passes_before_robust_update`), and this one feeds both terms.
            adv_logits = self._logits(adv_images, True)
            natural_logits = self._logits(images, True)
        else:
            natural_logits = self._logits(images, True)
            adv_logits = self._logits(adv_images, True)
        if self.method == "trades":
            return objectives.trades_loss(natural_logits, adv_logits, labels, self.beta), adv_logits
        return objectives.mart_loss(natural_logits, adv_logits, labels, self.beta), adv_logits

    def _l2_penalty(self, variables):
        # Gradient wd * w: PyTorch SGD's coupled weight decay. Added to the loss (not the
        # gradients) so a loss-scaling optimizer (mixed_float16) scales it like the rest.
        if self.weight_decay == 0.0:
            return 0.0
        return 0.5 * self.weight_decay * tf.add_n(
            [tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in variables])

    def ac_update(self, adv_images, weights=None):
        """Phase A's update: one optimizer step on ac_step * AC(logits(adv_images)).

        Args:
          adv_images: adversarial examples (already generated; no gradient flows to them).
          weights: None, or per-example weights (`pad_empty_replica`).

        Returns:
          The AC loss of each example (ac_step * its AC) before the update, float32
          [local batch]; their global batch mean is what the update descends.
        """
        variables = self.base_model.trainable_variables
        with tf.GradientTape() as tape:
            per_example = self.ac_step * certainty.per_example_certainty(
                self._logits(adv_images, True), self.ac_measure)
            scaled = self._scaled(global_batch_mean(per_example, weights), variables)
        self._update(scaled, tape, variables)
        return per_example

    def _update(self, loss, tape, variables):
        grads = tape.gradient(loss, variables)
        self.optimizer.apply(grads, variables)

    def _scaled(self, loss_share, variables):
        """This replica's share of loss + L2 (gradients are summed over replicas).

        Args:
          loss_share: `global_batch_mean` of the per-example loss.
          variables: the weights the L2 penalty covers.
        """
        total = loss_share + self._l2_penalty(variables) / tf.cast(_num_replicas(), tf.float32)
        return self.optimizer.scale_loss(total) if hasattr(self.optimizer, "scale_loss") else total

    def _sync_replica_statistics(self):
        """Gives every replica replica 0's non-trainable float state (BatchNorm moving
        statistics).

        Under MirroredStrategy, Keras BatchNorm updates each replica's copy of its moving
        statistics with that replica's batch only, and the copies drift apart; a
        checkpoint saves replica 0's. The reference's `nn.DataParallel` keeps device 0's
        statistics and broadcasts them to every device at each forward. Syncing from
        replica 0 gives the same statistics, makes every inference-mode forward
        (TRADES/MART attacks, evaluation) use the statistics a checkpoint saves, and
        replaces the NaN statistics of a replica whose share of a tiny last batch was
        empty (replica 0 always has examples: remainders go to the first replicas).
        """
        context = _replica_context()
        if context is None:
            return
        variables = [v for v in self.base_model.non_trainable_variables
                     if tf.as_dtype(v.dtype).is_floating]
        if not variables:
            return
        flat = tf.concat([tf.reshape(tf.cast(v, tf.float32), [-1]) for v in variables], 0)
        first = tf.equal(context.replica_id_in_sync_group, 0)
        # tf.where, not a product: another replica's NaN times 0 would still be NaN.
        flat = context.all_reduce(tf.distribute.ReduceOp.SUM,
                                  tf.where(first, flat, tf.zeros_like(flat)))
        offset = 0
        for v in variables:
            size = int(np.prod(v.shape))
            v.assign(tf.cast(tf.reshape(flat[offset:offset + size], v.shape), v.dtype))
            offset += size

    # ---------------------------------------- reference BatchNorm-only passes
    # Every train-mode forward moves the BatchNorm moving statistics (momentum 0.1 in
    # PyTorch), so the forwards the reference makes without using their result still
    # shape the statistics used at test time. With `reference_bn_updates` these helpers
    # replay them, per method and in the reference's order, outside any gradient tape.
    # The reference is TrustMLRG/AdvCertainty: dac_at_cifar10.py, dac_trades_cifar10.py
    # with trades.py, dac_mart_cifar10.py with mart.py.
    def _bn_pass(self, images):
        """A train-mode forward kept only for its BN updates (and, for AT, its logits)."""
        return tf.stop_gradient(self._logits(images, True))

    def _bn_pass_after_attack(self, adv_images):
        # dac_at_cifar10.py `attack_pgd` ends each restart with
        # `all_loss = F.cross_entropy(model(normalize(X + delta)), y, reduction='none')`
        # on the final point, in the attack's BN mode (train mode in the reference).
        if self.method == "at" and self.attack_training:
            self._bn_pass(adv_images)

    def _bn_passes_before_ac_update(self, images, adv_images):
        """The reference's stats-only forwards between phase A's attack and its update."""
        if not self.reference_bn_updates:
            return
        self._bn_pass_after_attack(adv_images)
        if self.method == "trades":
            # dac_trades_cifar10.py gets the AC step's x_adv from trades.py `trades_loss`
            # and discards its loss, but its train-mode forwards run: `model(x_natural)`,
            # then, inside the KL term (arguments evaluated left to right), `model(x_adv)`
            # and `model(x_natural)`.
            for inputs in (images, adv_images, images):
                self._bn_pass(inputs)

    def _bn_passes_before_robust_update(self, images, adv_images):
        """The reference's stats-only forwards between phase B's attack and its update."""
        if not self.reference_bn_updates:
            return
        self._bn_pass_after_attack(adv_images)
        if self.method == "trades":
            # trades.py `trades_loss`: `logits = model(x_natural)` comes first; see
            # `robust_loss` for why it only needs to move the statistics.
            self._bn_pass(images)

    def _bn_pass_after_robust_update(self, images):
        """AT: the reference's clean forward after the update; its logits, else None."""
        if self.reference_bn_updates and self.method == "at":
            # dac_at_cifar10.py's train loop: `output = model(normalize(X))` after
            # `opt.step()`, in train mode; it feeds the logged Train Acc.
            return self._bn_pass(images)
        return None

    # ------------------------------------------------------------------- steps
    def _unpack(self, data):
        images, labels, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if sample_weight is not None:
            raise ValueError("DACModel does not support sample weights.")
        if labels is None:
            raise ValueError("DACModel needs (images, labels) batches; got images only.")
        for what, value in (("images", images), ("labels", labels)):
            if isinstance(value, (dict, list, tuple)):
                raise ValueError(f"DACModel takes {what} as one tensor; got a "
                                 f"{type(value).__name__} (the attacks perturb a single "
                                 "image tensor: pass (images, labels) batches).")
            if isinstance(value, (tf.RaggedTensor, tf.SparseTensor)):
                raise ValueError(f"DACModel takes dense {what}; got a "
                                 f"{type(value).__name__} (images of one size: resize or "
                                 "pad them, then .to_tensor()).")
        images = tf.convert_to_tensor(images)
        labels = tf.convert_to_tensor(labels)
        if not images.dtype.is_floating:
            raise ValueError(
                f"DACModel expects float images in [0, 1]; got dtype {images.dtype.name} "
                "(for uint8 images divide by 255 first).")
        if not labels.dtype.is_integer:
            raise ValueError(f"DACModel expects integer class labels; got dtype "
                             f"{labels.dtype.name} (one-hot labels: take argmax first).")
        images = tf.cast(images, tf.float32)
        labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
        # Graph-side checks (no host sync): attacks clip to [0, 1] and a label out of
        # range gives NaN on GPU instead of an error, so both would fail silently.
        checks = [
            tf.debugging.assert_greater_equal(
                tf.reduce_min(images), 0.0, message="DACModel: images must be in [0, 1]"),
            tf.debugging.assert_less_equal(
                tf.reduce_max(images), 1.0, message="DACModel: images must be in [0, 1]"),
            tf.debugging.assert_equal(
                tf.shape(labels)[0], tf.shape(images)[0],
                message="DACModel: one label per image expected"),
            tf.debugging.assert_non_negative(
                labels, message="DACModel: labels must be in [0, num_classes)"),
        ]
        num_classes = self._num_classes()
        if num_classes is not None:
            checks.append(tf.debugging.assert_less(
                labels, num_classes, message="DACModel: labels must be in [0, num_classes)"))
        with tf.control_dependencies(checks):
            return tf.identity(images), tf.identity(labels)

    def _num_classes(self):
        try:
            return int(self.base_model.outputs[0].shape[-1])
        except (AttributeError, IndexError, TypeError, ValueError):
            return None   # a subclassed model without symbolic outputs

    def train_step(self, data):
        if getattr(self, "optimizer", None) is None:
            raise ValueError("DACModel.train_step needs an optimizer: call "
                             "model.compile(optimizer=dac_tf.optimizers.TorchSGD(...)) "
                             "first.")
        images, labels = self._unpack(data)
        images, labels, weights = pad_empty_replica(images, labels)
        variables = self.base_model.trainable_variables

        if self.use_dac:
            adv_images = self.generate_adversarial(images, labels)
            self._bn_passes_before_ac_update(images, adv_images)
            ac_losses = self.ac_update(adv_images, weights)
            self.ac_loss_tracker.update_state(ac_losses, sample_weight=weights)
            if not self.attack_training:   # the next attack reads the moving statistics
                self._sync_replica_statistics()

        adv_images = self.generate_adversarial(images, labels)
        self._bn_passes_before_robust_update(images, adv_images)
        with tf.GradientTape() as tape:
            per_example, adv_logits = self.robust_loss(images, adv_images, labels)
            scaled = self._scaled(global_batch_mean(per_example, weights), variables)
        self._update(scaled, tape, variables)
        clean_logits = self._bn_pass_after_robust_update(images)
        self._sync_replica_statistics()

        # Per example, so an epoch's mean weights every example once whatever the split.
        self.loss_tracker.update_state(per_example, sample_weight=weights)
        self.adv_accuracy.update_state(labels, adv_logits, sample_weight=weights)
        self.adv_certainty.update_state(
            certainty.per_example_certainty(adv_logits, self.ac_measure),
            sample_weight=weights)
        trackers = [self.loss_tracker, self.adv_accuracy, self.adv_certainty]
        if self.use_dac:
            trackers.append(self.ac_loss_tracker)
        if clean_logits is not None:
            self.train_clean_accuracy.update_state(labels, clean_logits, sample_weight=weights)
            trackers.append(self.train_clean_accuracy)
        return global_results(trackers)

    def test_step(self, data):
        """Clean cross-entropy and accuracy, BatchNorm in inference mode.

        Exact over replicas, as `train_step`: every example is weighted once however
        the batch is split (a replica with no example gets one of weight 0), and the
        metrics' totals are summed over the replicas before the division
        (`global_results`).
        """
        images, labels = self._unpack(data)
        images, labels, weights = pad_empty_replica(images, labels)
        logits = self._logits(images, False)
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        self.loss_tracker.update_state(loss, sample_weight=weights)
        self.clean_accuracy.update_state(labels, logits, sample_weight=weights)
        return global_results([self.loss_tracker, self.clean_accuracy])

    # ------------------------------------------------------- fit and weights
    def fit(self, *args, **kwargs):
        """`keras.Model.fit`, with every `RobustValidation` first in `callbacks`.

        Keras calls callbacks in list order; `dac_tf.callbacks.RobustValidation` adds
        `val_robust_accuracy` and the other robust keys at each epoch's end, so it runs
        before the callbacks that read them wherever it stands in the list
        (`dac_tf.callbacks.ordered`: the validations first, everything else in its
        order). Arguments and return value are `keras.Model.fit`'s.
        """
        from dac_tf import callbacks as callbacks_lib  # noqa: PLC0415 (imports this module)
        if len(args) > 5:   # fit(x, y, batch_size, epochs, verbose, callbacks, ...)
            args = args[:5] + (callbacks_lib.ordered(args[5]),) + args[6:]
        elif kwargs.get("callbacks") is not None:
            kwargs["callbacks"] = callbacks_lib.ordered(kwargs["callbacks"])
        return super().fit(*args, **kwargs)

    def save_weights(self, filepath, overwrite=True, max_shard_size=None):
        """Saves the base model's weights, and the optimizer's state beside them.

        What `ModelCheckpoint(save_weights_only=True)` and `BackupAndRestore` call. The
        file has the layout of `base_model.save_weights`, so it loads into a freshly
        built base model (`base.load_weights(path)`, in this process or another; the
        extra `optimizer` group is ignored there). `DACModel.load_weights` also restores
        the optimizer (iterations, momentum), as Keras' own `save_weights` of a compiled
        model does, so a restored DACModel continues with the same learning rates and
        attack seeds. `model.save("x.keras")` still saves the whole DACModel.

        Args:
          filepath: a `.weights.h5` path (`.weights.json` with `max_shard_size`:
            the base weights only).
          overwrite, max_shard_size: as `keras.Model.save_weights`.
        """
        sharding = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
        self.base_model.save_weights(filepath, overwrite=overwrite, **sharding)
        optimizer = getattr(self, "optimizer", None)
        if (optimizer is None or not optimizer.variables or max_shard_size is not None
                or not _local_h5(filepath)):
            return
        state = {}
        optimizer.save_own_variables(state)
        import h5py  # noqa: PLC0415 (Keras' own weights format)
        with h5py.File(str(filepath), "a") as f:
            # The group Keras writes for a compiled model's optimizer: `optimizer/vars/<i>`.
            group = f.require_group(_OPTIMIZER_GROUP)
            for key, value in state.items():
                group.create_dataset(key, data=value)

    def load_weights(self, filepath, skip_mismatch=False, **kwargs):
        """Loads a `save_weights` file into the base model (and the optimizer).

        Accepts a file of `DACModel.save_weights` (base weights and optimizer state), of
        `base_model.save_weights` (weights only), a `.keras` file of a DACModel or of its
        base model, and the nested layout Keras wrote for a DACModel before dac_tf
        saved the base layout.

        Args:
          filepath, skip_mismatch, **kwargs: as `keras.Model.load_weights`.
        """
        layout = _h5_layout(filepath)
        if layout == "nested" or (layout is None and str(filepath).endswith(".keras")
                                  and _keras_archive_is_dac(filepath)):
            return super().load_weights(filepath, skip_mismatch=skip_mismatch, **kwargs)
        self.base_model.load_weights(filepath, skip_mismatch=skip_mismatch, **kwargs)
        optimizer = getattr(self, "optimizer", None)
        if layout != "with_optimizer" or optimizer is None:
            return
        import h5py  # noqa: PLC0415
        with h5py.File(str(filepath), "r") as f:
            state = {key: value[()] for key, value in f[_OPTIMIZER_GROUP].items()}
        if not optimizer.built:
            optimizer.build(self.base_model.trainable_variables)
        optimizer.load_own_variables(state)

    # ----------------------------------------------------------- serialization
    def get_config(self):
        return {
            # Keras names no module to import when a class is missing: its error quotes
            # the config, so the config says it (`from_config` drops the key).
            "requires": _REQUIRES,
            "base_model": keras.saving.serialize_keras_object(self.base_model),
            "method": self.method, "use_dac": self.use_dac, "ac_step": self.ac_step,
            "ac_measure": self.ac_measure, "epsilon": self.epsilon,
            "step_size": self.step_size, "num_steps": self.num_steps, "norm": self.norm,
            "beta": self.beta, "random_start": self.random_start,
            "attack_training": self.attack_training, "weight_decay": self.weight_decay,
            "seed": self.seed, "reference_bn_updates": self.reference_bn_updates,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("requires", None)
        config["base_model"] = keras.saving.deserialize_keras_object(config["base_model"])
        return cls(**config)

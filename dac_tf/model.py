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

The pieces live beside it: `dac_tf.replicas` (the replica arithmetic that makes N
replicas equal one device), `dac_tf.model_inputs` (what DACModel accepts),
`dac_tf.reference_passes` (the reference's BatchNorm-only forwards) and
`dac_tf.weight_files` (its weight-file layout).
"""

import math

import keras
import tensorflow as tf

from dac_tf import attacks
from dac_tf import certainty
from dac_tf import model_inputs
from dac_tf import objectives
from dac_tf import protocol
from dac_tf import reference_passes
from dac_tf import replicas
from dac_tf import schedules
from dac_tf import weight_files
from dac_tf.replicas import global_batch_mean
from dac_tf.replicas import global_results
from dac_tf.replicas import pad_empty_replica


_REQUIRES = ("a dac_tf.DACModel: run `import dac_tf` before keras.saving.load_model; "
             "its base model saved alone (model.base_model.save) loads with Keras only")


# The direction of each value `DACModel` logs, for Keras' monitor callbacks: Keras 3
# infers `mode="auto"` only for "loss", so `fit` refuses "auto" on the others.
MONITOR_MODES = {"loss": "min", "ac_loss": "min", "adv_certainty": "min",
                 "adv_accuracy": "max", "accuracy": "max", "clean_accuracy": "max"}


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

    `fit` logs `loss`, `adv_accuracy`, `adv_certainty`, `ac_loss` (with DAC) and, with
    `reference_bn_updates` for AT, `clean_accuracy`; `evaluate` and validation `loss`
    and `accuracy`. Keras' `EarlyStopping`, `ModelCheckpoint` and `ReduceLROnPlateau`
    infer `mode="auto"` only for `loss` and `val_loss` here (Keras 3 reads other
    directions from metrics passed to `compile`, which a DACModel computes itself), so
    pass `mode="max"` for accuracies (`val_robust_accuracy` of
    `dac_tf.callbacks.RobustValidation` included) and `mode="min"` for `adv_certainty`
    and `ac_loss`; for any other key Keras raises a `ValueError` asking for `mode` at
    the end of the first epoch.

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
        model_inputs.check_base_model(base_model)
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
        if getattr(base_model, "built", False):
            self.built = True

    @property
    def updates_per_batch(self):
        return 2 if self.use_dac else 1

    @property
    def metrics(self):
        """The trackers, which Keras resets at each epoch."""
        return [self.loss_tracker, self.adv_accuracy, self.adv_certainty,
                self.ac_loss_tracker, self.clean_accuracy, self.train_clean_accuracy]

    def call(self, inputs, training=None):
        return self.base_model(inputs, training=training)

    def predict_step(self, data):
        """Logits, BatchNorm in inference mode; empty for an empty share of a batch."""
        images, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return replicas.call_on_nonempty(lambda x: self(x, training=False), images)

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

        The one private Keras API dac_tf overrides, on purpose. Under a distribution
        strategy Keras 3's TensorFlow trainer (`fit`, `evaluate`) takes the first batch
        and reduces it over the replicas (`strategy.reduce("MEAN", ...)`) before it
        looks at whether anything needs building. A global batch that does not split
        evenly (63 over 2 replicas: 32 + 31 examples) makes that reduce fail (AddN of
        [32, ...] and [31, ...]) although the step is exact for any split
        (`replicas.global_batch_mean`). No public route avoids it: the reduce runs
        whenever a strategy is set and the batch arrives distributed, which is every
        `fit` under a strategy, built model or not. A DACModel whose base model is built
        has nothing to build from data, so only the optimizer is built, as Keras would.
        tests/test_distribute.py's uneven-batch tests fail if this stops applying.
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
        return replicas.derive_seed(self.seed, self.optimizer.iterations,
                                    replicas.replica_id())

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
            # (`reference_passes.before_robust_update`), and this one feeds both terms.
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
        num_replicas = tf.cast(replicas.num_replicas(), tf.float32)
        total = loss_share + self._l2_penalty(variables) / num_replicas
        return self.optimizer.scale_loss(total) if hasattr(self.optimizer, "scale_loss") else total

    def _sync_replica_statistics(self):
        """Gives every replica replica 0's BatchNorm moving statistics
        (`replicas.sync_from_first_replica`: the reference's `nn.DataParallel` keeps
        device 0's and broadcasts them at each forward)."""
        replicas.sync_from_first_replica(
            [v for v in self.base_model.non_trainable_variables
             if tf.as_dtype(v.dtype).is_floating])

    # ------------------------------------------------------------------- steps
    def _unpack(self, data):
        return model_inputs.unpack_batch(data, model_inputs.num_classes(self.base_model))

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
            reference_passes.before_ac_update(self, images, adv_images)
            ac_losses = self.ac_update(adv_images, weights)
            self.ac_loss_tracker.update_state(ac_losses, sample_weight=weights)
            if not self.attack_training:   # the next attack reads the moving statistics
                self._sync_replica_statistics()

        adv_images = self.generate_adversarial(images, labels)
        reference_passes.before_robust_update(self, images, adv_images)
        with tf.GradientTape() as tape:
            per_example, adv_logits = self.robust_loss(images, adv_images, labels)
            scaled = self._scaled(global_batch_mean(per_example, weights), variables)
        self._update(scaled, tape, variables)
        clean_logits = reference_passes.after_robust_update(self, images)
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
        order), and a monitor callback in `mode="auto"` on one of `MONITOR_MODES` but
        the loss is refused before the first step. Arguments and return value are
        `keras.Model.fit`'s.
        """
        from dac_tf import callbacks as callbacks_lib  # noqa: PLC0415 (imports this module)
        if len(args) > 5:   # fit(x, y, batch_size, epochs, verbose, callbacks, ...)
            args = args[:5] + (callbacks_lib.ordered(args[5]),) + args[6:]
        elif kwargs.get("callbacks") is not None:
            kwargs["callbacks"] = callbacks_lib.ordered(kwargs["callbacks"])
        callbacks = args[5] if len(args) > 5 else kwargs.get("callbacks")
        if callbacks is not None:
            callbacks_lib.check_monitor_modes(getattr(callbacks, "callbacks", callbacks), {
                f"{prefix}{key}": mode for key, mode in MONITOR_MODES.items()
                for prefix in ("", "val_") if key != "loss"})
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
        if (optimizer is not None and optimizer.variables and max_shard_size is None
                and weight_files.is_local_h5(filepath)):
            weight_files.write_optimizer_state(filepath, optimizer)

    def load_weights(self, filepath, skip_mismatch=False, **kwargs):
        """Loads a `save_weights` file into the base model (and the optimizer).

        Accepts a file of `DACModel.save_weights` (base weights and optimizer state), of
        `base_model.save_weights` (weights only), a `.keras` file of a DACModel or of its
        base model, and the nested layout Keras wrote for a DACModel before dac_tf
        saved the base layout.

        Args:
          filepath, skip_mismatch, **kwargs: as `keras.Model.load_weights`.
        """
        layout = weight_files.layout(filepath)
        if layout == "nested" or (layout is None and str(filepath).endswith(".keras")
                                  and weight_files.keras_archive_is_dac(filepath)):
            return super().load_weights(filepath, skip_mismatch=skip_mismatch, **kwargs)
        self.base_model.load_weights(filepath, skip_mismatch=skip_mismatch, **kwargs)
        optimizer = getattr(self, "optimizer", None)
        if layout != "with_optimizer" or optimizer is None:
            return
        state = weight_files.read_optimizer_state(filepath)
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

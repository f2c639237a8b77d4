"""`DACModel`: wraps any Keras classifier and trains it with DAC + AT / TRADES / MART.

Per batch (REFERENCE.md, "The DAC update"):
  A. attack at theta_t with the method's own attack; loss = ac_step * AC(logits(x_adv));
     one optimizer update (theta_{t+1/2});
  B. a fresh attack at theta_{t+1/2}; the method's robust loss; one optimizer update.
Both updates use the same optimizer (same momentum slots) and PyTorch-style coupled L2
weight decay on every trainable weight. `use_dac=False` skips phase A: the plain method
through the same code path.

The wrapper owns no variables: saving, exporting and `predict` go through the base model.
"""

import keras
import tensorflow as tf

from dac_tf import attacks
from dac_tf import certainty
from dac_tf import objectives
from dac_tf import schedules


def _num_replicas():
    context = tf.distribute.get_replica_context()
    return context.num_replicas_in_sync if context is not None else 1


def _replica_id():
    context = tf.distribute.get_replica_context()
    if context is None:
        return tf.constant(0, tf.int64)
    return tf.cast(context.replica_id_in_sync_group, tf.int64)


def derive_seed(seed, iteration, replica_id=0):
    """The stateless seed of one attack: fold_in(fold_in([seed, 0], iteration), replica_id)."""
    fold_in = tf.random.experimental.stateless_fold_in
    base = tf.constant([int(seed), 0], tf.int64)
    return fold_in(fold_in(base, tf.cast(iteration, tf.int64), alg="philox"),
                   tf.cast(replica_id, tf.int64), alg="philox")


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
      epsilon, step_size, num_steps: the training attack, in [0, 1] pixel units.
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
    """

    def __init__(self, base_model, method="at", *, use_dac=True, ac_step=None,
                 ac_measure="std", epsilon=None, step_size=None, num_steps=None,
                 norm="linf", beta=None, random_start=True, attack_training=None,
                 weight_decay=None, seed=0, **kwargs):
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
        self.epsilon = float(ref.epsilon if epsilon is None else epsilon)
        self.step_size = float(ref.step_size if step_size is None else step_size)
        self.num_steps = int(ref.num_steps if num_steps is None else num_steps)
        self.norm = norm
        self.beta = None if method == "at" else float(ref.beta if beta is None else beta)
        self.random_start = bool(random_start)
        self.attack_training = bool(
            ref.attack_training if attack_training is None else attack_training)
        self.weight_decay = float(ref.weight_decay if weight_decay is None else weight_decay)
        self.seed = int(seed)
        for name, value in (("epsilon", self.epsilon), ("step_size", self.step_size),
                            ("num_steps", self.num_steps), ("weight_decay", self.weight_decay),
                            ("ac_step", self.ac_step)):
            if value < 0:
                raise ValueError(f"{name}={value} is not valid; it must be >= 0.")
        self._attack_start = ref.attack_start if self.random_start else "none"
        self._attack_loss = ref.attack_loss

        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.adv_accuracy = keras.metrics.SparseCategoricalAccuracy(name="adv_accuracy")
        self.adv_certainty = keras.metrics.Mean(name="adv_certainty")
        self.ac_loss_tracker = keras.metrics.Mean(name="ac_loss")
        self.clean_accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        if getattr(base_model, "built", False):
            self.built = True

    @property
    def updates_per_batch(self):
        return 2 if self.use_dac else 1

    @property
    def metrics(self):
        return [self.loss_tracker, self.adv_accuracy, self.adv_certainty,
                self.ac_loss_tracker, self.clean_accuracy]

    def call(self, inputs, training=None):
        return self.base_model(inputs, training=training)

    def compile(self, optimizer="sgd", **kwargs):
        """Like `keras.Model.compile`; losses and metrics are DAC's own.

        A learning-rate schedule on the optimizer is wrapped in `BatchSchedule`, so it is
        evaluated at the batch index although each DAC batch makes two updates.
        """
        for key in ("loss", "metrics", "weighted_metrics", "loss_weights"):
            if kwargs.get(key) is not None:
                raise ValueError(
                    f"DACModel.compile got {key}=...; DACModel computes its own robust "
                    "loss and reports loss, adv_accuracy, adv_certainty, ac_loss (train) and "
                    "loss, accuracy (evaluate). Pass only the optimizer (and jit_compile, ...).")
        super().compile(optimizer=optimizer, **kwargs)
        inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        lr = getattr(inner, "_learning_rate", None)
        if isinstance(lr, schedules.BatchSchedule):
            lr = lr.schedule
        if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
            inner.learning_rate = schedules.BatchSchedule(lr, self.updates_per_batch)

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

    def ac_update(self, adv_images):
        """Phase A's update: one optimizer step on ac_step * AC(logits(adv_images)).

        Args:
          adv_images: adversarial examples (already generated; no gradient flows to them).

        Returns:
          The AC loss (ac_step * AC) before the update, float32 scalar.
        """
        variables = self.base_model.trainable_variables
        with tf.GradientTape() as tape:
            ac = certainty.adversarial_certainty(self._logits(adv_images, True), self.ac_measure)
            ac_loss = self.ac_step * ac
            scaled = self._scaled(ac_loss, variables)
        self._update(scaled, tape, variables)
        return ac_loss

    def _update(self, loss, tape, variables):
        grads = tape.gradient(loss, variables)
        self.optimizer.apply(grads, variables)

    def _scaled(self, mean_loss, variables):
        """Mean loss + L2, divided by the replica count (gradients are summed over replicas)."""
        total = mean_loss + self._l2_penalty(variables)
        total = total / tf.cast(_num_replicas(), tf.float32)
        return self.optimizer.scale_loss(total) if hasattr(self.optimizer, "scale_loss") else total

    # ------------------------------------------------------------------- steps
    def _unpack(self, data):
        images, labels, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if sample_weight is not None:
            raise ValueError("DACModel does not support sample weights.")
        if labels is None:
            raise ValueError("DACModel needs (images, labels) batches; got images only.")
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
        images, labels = self._unpack(data)
        variables = self.base_model.trainable_variables

        if self.use_dac:
            ac_loss = self.ac_update(self.generate_adversarial(images, labels))
            self.ac_loss_tracker.update_state(ac_loss)

        adv_images = self.generate_adversarial(images, labels)
        with tf.GradientTape() as tape:
            per_example, adv_logits = self.robust_loss(images, adv_images, labels)
            loss = tf.reduce_mean(per_example)
            scaled = self._scaled(loss, variables)
        self._update(scaled, tape, variables)

        self.loss_tracker.update_state(loss)
        self.adv_accuracy.update_state(labels, adv_logits)
        self.adv_certainty.update_state(
            certainty.per_example_certainty(adv_logits, self.ac_measure))
        logs = {"loss": self.loss_tracker.result(),
                "adv_accuracy": self.adv_accuracy.result(),
                "adv_certainty": self.adv_certainty.result()}
        if self.use_dac:
            logs["ac_loss"] = self.ac_loss_tracker.result()
        return logs

    def test_step(self, data):
        images, labels = self._unpack(data)
        logits = self._logits(images, False)
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        self.loss_tracker.update_state(loss)
        self.clean_accuracy.update_state(labels, logits)
        return {"loss": self.loss_tracker.result(), "accuracy": self.clean_accuracy.result()}

    # ----------------------------------------------------------- serialization
    def get_config(self):
        return {
            "base_model": keras.saving.serialize_keras_object(self.base_model),
            "method": self.method, "use_dac": self.use_dac, "ac_step": self.ac_step,
            "ac_measure": self.ac_measure, "epsilon": self.epsilon,
            "step_size": self.step_size, "num_steps": self.num_steps, "norm": self.norm,
            "beta": self.beta, "random_start": self.random_start,
            "attack_training": self.attack_training, "weight_decay": self.weight_decay,
            "seed": self.seed, "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["base_model"] = keras.saving.deserialize_keras_object(config["base_model"])
        return cls(**config)

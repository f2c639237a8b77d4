"""A Keras user's script: DAC training in your own `fit`, the best model out, served.

    python examples/digits_keras.py --output_dir=/tmp/digits_dac     # < 1 minute, 2 CPU cores

Everything a user's own code needs, on scikit-learn's 8x8 digits (no download): a Keras
model of your own (float images in [0, 1] -> logits), `dac_tf.DACModel` with AT+DAC,
`dac_tf.callbacks.RobustValidation` adding `val_robust_accuracy` for Keras'
`ModelCheckpoint`, the best epoch's weights loaded into a fresh copy of your model,
saved as `.keras` (loads with Keras alone) and exported for TF Serving.

The CIFAR-10 settings of the paper's AT+DAC row are in the comments: swap the data and
the model, and change the numbers marked "CIFAR-10".
"""

import argparse
import json
import os

import keras
import numpy as np
from sklearn.datasets import load_digits

import dac_tf

# Radii and steps are in [0, 1] pixel units, like Keras and CleverHans (8/255, not 8).
EPSILON = 32 / 255       # CIFAR-10: 8 / 255
STEP_SIZE = 8 / 255      # CIFAR-10: 2 / 255
NUM_STEPS = 5            # CIFAR-10: 10


def my_model(num_classes=10, input_shape=(8, 8, 1)):
    """Your own Keras model: float images in [0, 1] -> logits (no final softmax)."""
    inputs = keras.Input(input_shape)
    h = keras.layers.Conv2D(32, 3, padding="same")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Conv2D(64, 3, strides=2, padding="same", activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(h), name="my_model")


def load_data(seed=0):
    """Digits as float32 images in [0, 1] [N, 8, 8, 1] and int labels, split 80/20."""
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int64")
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    split = int(0.8 * len(x))
    return (x[:split], y[:split]), (x[split:], y[split:])


def main(output_dir, epochs=8, seed=0, verbose=2):
    """Trains, keeps the best epoch, saves and exports; returns what was written.

    Args:
      output_dir: where best.weights.h5, metrics.csv, robust.keras and export/ go.
      epochs: training epochs (CIFAR-10: 200, with dac_tf.schedules.build("piecewise_at",
        ...) as the learning rate).
      seed: seed of the data split, the weights and the attacks.
      verbose: Keras' verbosity.

    Returns:
      dict: the paths written and the best epoch (counted from 1) with its values.
    """
    os.makedirs(output_dir, exist_ok=True)
    (x_train, y_train), (x_val, y_val) = load_data(seed)
    keras.utils.set_random_seed(seed)

    base = my_model()   # CIFAR-10: dac_tf.models.build("preact_resnet18", normalization="cifar10")
    model = dac_tf.DACModel(base, method="at", epsilon=EPSILON, step_size=STEP_SIZE,
                            num_steps=NUM_STEPS, seed=seed)
    model.compile(optimizer=dac_tf.optimizers.TorchSGD(0.1, momentum=0.9))  # CIFAR-10: 0.1 too

    best_weights = os.path.join(output_dir, "best.weights.h5")
    history = model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=verbose,
                        callbacks=[
        # Reads val_robust_accuracy, although RobustValidation comes later in the list:
        # DACModel.fit runs RobustValidation first.
        keras.callbacks.ModelCheckpoint(best_weights, monitor="val_robust_accuracy",
                                        mode="max", save_best_only=True,
                                        save_weights_only=True),
        keras.callbacks.CSVLogger(os.path.join(output_dir, "metrics.csv")),
        # PGD-10, step epsilon/4 (the AT reference's per-epoch attack). CIFAR-10: 1,000
        # held-out training images, epsilon=8/255.
        dac_tf.callbacks.RobustValidation(x_val, y_val, epsilon=EPSILON, num_steps=10),
    ])

    # The best epoch's weights into a fresh copy of the model (the model `fit` trained
    # holds the last epoch's).
    best = my_model()
    best.load_weights(best_weights)
    keras_path = os.path.join(output_dir, "robust.keras")
    best.save(keras_path)
    export_path = dac_tf.serving.export_saved_model(
        best, os.path.join(output_dir, "export"),
        metadata={"dataset": "digits", "epsilon": EPSILON, "method": "at", "use_dac": True})

    robust = history.history["val_robust_accuracy"]
    best_epoch = int(np.argmax(robust)) + 1   # Keras keeps the first of equal values
    summary = dict(best_epoch=best_epoch, epochs=len(robust),
                   best_val_robust_accuracy=float(robust[best_epoch - 1]),
                   best_val_clean_accuracy=float(
                       history.history["val_clean_accuracy"][best_epoch - 1]),
                   best_weights=best_weights, keras=keras_path, export=export_path)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="digits_dac")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.output_dir, epochs=args.epochs, seed=args.seed)

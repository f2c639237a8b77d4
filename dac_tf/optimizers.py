"""SGD with PyTorch's momentum convention.

Keras' SGD keeps the learning rate inside its velocity (v = mu * v - lr * g; w += v);
PyTorch's keeps raw gradients (b = mu * b + g; w -= lr * b). The two agree while the
learning rate is constant and differ after every change of it: at a schedule's drop
PyTorch's whole buffer is applied at the new rate at once. The reference code is PyTorch,
so the CLI trains with this optimizer; `keras.optimizers.SGD` is fine for constant rates.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="dac_tf")
class TorchSGD(keras.optimizers.SGD):
    """`keras.optimizers.SGD` with PyTorch's momentum update (dampening 0).

    Args are those of `keras.optimizers.SGD`. Weight decay coupled to the gradient
    (PyTorch's `weight_decay`) is applied by `DACModel`, not here; Keras' own
    `weight_decay` argument stays the decoupled variant.
    """

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.momentum == 0:
            self.assign_sub(variable, ops.multiply(gradient, learning_rate))
            return
        buf = self.momentums[self._get_variable_index(variable)]
        momentum = ops.cast(self.momentum, variable.dtype)
        self.assign(buf, ops.add(ops.multiply(buf, momentum), gradient))
        step = ops.add(gradient, ops.multiply(buf, momentum)) if self.nesterov else buf
        self.assign_sub(variable, ops.multiply(step, learning_rate))

"""dac_tf: DAC (Decrease Adversarial Certainty) adversarial training for TensorFlow/Keras.

    import dac_tf
    base = dac_tf.models.build("preact_resnet18", num_classes=10)
    model = dac_tf.DACModel(base, method="at")
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    model.fit(train_ds, epochs=...)

`tensorflow_datasets` is imported only where a tfds dataset is loaded.
"""

from dac_tf import attacks
from dac_tf import certainty
from dac_tf import models
from dac_tf import objectives
from dac_tf import optimizers
from dac_tf import schedules
from dac_tf.certainty import adversarial_certainty
from dac_tf.model import DACModel

__version__ = "0.1.0"

__all__ = ["DACModel", "adversarial_certainty", "attacks", "certainty", "models",
           "objectives", "optimizers", "schedules"]

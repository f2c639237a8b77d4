"""dac_tf: DAC (Decrease Adversarial Certainty) adversarial training for TensorFlow/Keras.

    import dac_tf
    base = dac_tf.models.build("preact_resnet18", num_classes=10)
    model = dac_tf.DACModel(base, method="at")
    schedule = dac_tf.schedules.build("piecewise_at", 0.1, epochs=200, steps_per_epoch=391)
    model.compile(optimizer=dac_tf.optimizers.TorchSGD(schedule, momentum=0.9))
    model.fit(train_ds, epochs=200)

`TorchSGD` keeps PyTorch's momentum convention, which the reference code trains with
(Keras' SGD differs from it after every learning-rate change); `DACModel.compile`
evaluates the schedule per batch although DAC makes two updates per batch.

`tensorflow_datasets` is imported only where a tfds dataset is loaded.
"""

import sys as _sys

if _sys.argv[:1] == ["-m"]:
    # `python -m dac_tf.X`: while Python imports the package of the module it runs,
    # sys.argv[0] is "-m". Filter TensorFlow's start-up log lines out of the program's
    # stderr before TensorFlow is imported (dac_tf/_logfilter.py says what is kept).
    from dac_tf import _logfilter
    _logfilter.install()

from dac_tf import attacks  # noqa: E402
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

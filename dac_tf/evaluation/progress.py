"""The evaluation's progress bars: `keras.utils.Progbar`, written to stderr.

Keras' bar writes to stdout, where `python -m dac_tf.evaluate` prints its table, so
each update is redirected to stderr. A bar is made at its first update (when the total
is known), after a line naming what runs.
"""

import contextlib
import sys

import keras


class ProgressBar:
    """A callable `progress(done, total)` that draws a `keras.utils.Progbar` on stderr.

    Args:
      title: what runs ("pgd20", "autoattack:apgd-ce"), printed above the bar.
      unit_name: what `done` and `total` count ("example", "batch").
    """

    def __init__(self, title, unit_name="example"):
        self.title = title
        self.unit_name = unit_name
        self._bar = None

    def __call__(self, done, total):
        with contextlib.redirect_stdout(sys.stderr):
            if self._bar is None:
                print(self.title, flush=True)
                self._bar = keras.utils.Progbar(total, unit_name=self.unit_name)
            self._bar.update(done)

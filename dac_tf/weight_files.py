"""The weight files of a `DACModel`: the base model's layout, plus the optimizer's state.

`DACModel.save_weights` writes what `base_model.save_weights` writes, so the file loads
into a freshly built base model, and adds the optimizer's variables in the group Keras
uses for a compiled model (`optimizer/vars/<i>`), which a base model ignores.
`DACModel.load_weights` tells the layouts apart (`layout`) and restores the optimizer
too. Only a local `.weights.h5` carries the optimizer (h5py writes local files).
"""

import json
import zipfile

OPTIMIZER_GROUP = "optimizer/vars"


def is_local_h5(filepath):
    """Whether `filepath` is a local `.weights.h5` file (h5py can open it)."""
    path = str(filepath)
    return path.endswith(".weights.h5") and "://" not in path


def layout(filepath):
    """"nested" (Keras' own DACModel layout), "with_optimizer", "base", or None when
    the file is not a local `.weights.h5` (or cannot be read: Keras then says why)."""
    if not is_local_h5(filepath):
        return None
    import h5py  # noqa: PLC0415 (Keras' own weights format)
    try:
        with h5py.File(str(filepath), "r") as f:
            if "base_model" in f:
                return "nested"
            return "with_optimizer" if OPTIMIZER_GROUP in f else "base"
    except OSError:
        return None   # let Keras report a missing or unreadable file


def keras_archive_is_dac(filepath):
    """Whether a `.keras` archive holds a DACModel (its config names the class)."""
    try:
        with zipfile.ZipFile(str(filepath)) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return False
    return config.get("class_name") == "DACModel"


def write_optimizer_state(filepath, optimizer):
    """Adds `optimizer`'s variables to the weights file `filepath` (a local .weights.h5)."""
    state = {}
    optimizer.save_own_variables(state)
    import h5py  # noqa: PLC0415
    with h5py.File(str(filepath), "a") as f:
        group = f.require_group(OPTIMIZER_GROUP)
        for key, value in state.items():
            group.create_dataset(key, data=value)


def read_optimizer_state(filepath):
    """The optimizer variables `write_optimizer_state` stored, {index: array}."""
    import h5py  # noqa: PLC0415
    with h5py.File(str(filepath), "r") as f:
        return {key: value[()] for key, value in f[OPTIMIZER_GROUP].items()}

"""dac_tf.config and the programs' flags: every default stated once, on its field.

For each program (train, evaluate, export) the flags defined are exactly its config
dataclass's flag fields, each with its field's default (`flagdefs.check_defaults`), and
the help of a flag that resolves to the method's reference value states the values of
`objectives.DEFAULTS`, formatted here independently of the help generator.
"""

import dataclasses

from absl import flags
import keras
import pytest

from dac_tf import config as config_lib
from dac_tf import evaluate
from dac_tf import export
from dac_tf import flagdefs
from dac_tf import models
from dac_tf import objectives
from dac_tf import train
from dac_tf.evaluation import suite

# (program module, its config dataclass)
PROGRAMS = {
    "train": (train, config_lib.TrainConfig),
    "evaluate": (evaluate, suite.EvalConfig),
    "export": (export, export.ExportConfig),
}
_FOREIGN = ("absl", "tensorflow", "keras", "tf_", "tensorboard")


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_every_flag_is_a_field_with_the_fields_default(name):
    module, config_cls = PROGRAMS[name]
    flag_values = flags.FlagValues()
    module.define_flags(flag_values)
    defined = {f.name for module_name, items in flag_values.flags_by_module_dict().items()
               if not module_name.startswith(_FOREIGN) for f in items}
    assert defined == set(flagdefs.flag_names(config_cls))
    assert flagdefs.check_defaults(config_cls, flag_values) == []


def _reference_text(field_name, value):
    """How the help writes a reference value: pixel levels /255 for radii and steps."""
    if field_name in ("epsilon", "step_size"):
        return f"{value * 255:.4g}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def test_method_dependent_help_states_the_reference_values():
    flag_values = flags.FlagValues()
    train.define_flags(flag_values)
    dependent = [f for f in flagdefs.flag_fields(config_lib.TrainConfig)
                 if f.metadata.get(config_lib.METHOD_DEFAULT)]
    assert {f.name for f in dependent} == {
        "augment", "ac_step", "epsilon", "step_size", "num_steps", "beta", "epochs",
        "batch_size", "lr", "lr_schedule", "weight_decay", "momentum"}
    for field in dependent:
        assert field.default is None, field.name   # unset until the method is known
        text = " ".join(flag_values[field.name].help.split())
        for method in objectives.METHODS:
            value = getattr(objectives.DEFAULTS[method],
                            field.metadata[config_lib.METHOD_DEFAULT])
            if value is not None:
                expected = f"{method.upper()} {_reference_text(field.name, value)}"
                assert expected in text, (field.name, expected, text)


@pytest.mark.parametrize("method", objectives.METHODS)
def test_unset_method_flags_resolve_to_the_reference_values(method):
    config = config_lib.resolve({"method": method})
    for field in flagdefs.flag_fields(config_lib.TrainConfig):
        attribute = field.metadata.get(config_lib.METHOD_DEFAULT)
        if attribute:
            assert getattr(config, field.name) == getattr(objectives.DEFAULTS[method],
                                                          attribute), field.name


def test_fixed_defaults_come_from_the_fields():
    config = config_lib.resolve({})
    for field in flagdefs.flag_fields(config_lib.TrainConfig):
        if field.default is not None:
            assert getattr(config, field.name) == field.default, field.name


def test_normalization_names_mean_the_same_in_the_config_and_the_zoo():
    """"auto" meant "none" to `models.build` and "the reference's" to the flag; now
    neither takes it: the flag's unset value is the reference's, and both take the
    same names."""
    choices = flagdefs.spec_of(next(f for f in flagdefs.flag_fields(config_lib.TrainConfig)
                                    if f.name == "normalization")).choices
    assert set(choices) == set(models.NORMALIZATIONS) == {"none", "cifar10"}
    for name, layers in (("none", 0), ("cifar10", 1)):
        model = models.build("small_cnn", input_shape=(8, 8, 3), normalization=name)
        assert sum(isinstance(l, keras.layers.Normalization) for l in model.layers) == layers
    with pytest.raises(ValueError, match="normalization='auto'"):
        models.build("small_cnn", input_shape=(8, 8, 3), normalization="auto")
    assert config_lib.resolve({"method": "at"}).normalization == "cifar10"
    assert config_lib.resolve({"method": "at", "dataset": "svhn"}).normalization == "none"
    assert config_lib.resolve({"method": "mart"}).normalization == "none"


def test_a_resolved_config_has_no_unset_value_but_the_optional_ones():
    config = config_lib.resolve({"method": "trades"})
    unset = {f.name for f in dataclasses.fields(config) if getattr(config, f.name) is None}
    assert unset == {"data_dir", "depth", "widen_factor"}

"""dac_tf.config and the programs' flags: every default stated once, on its field.

The training config's resolution (the reference's values per method, pixel units, the
errors naming the flag, the paper configs against the reference scripts' values) and,
for each program (train, evaluate, export), that the flags defined are exactly its
config dataclass's flag fields, each with its field's default
(`flagdefs.check_defaults`), and that the help of a flag resolving to the method's
reference value states the values of `objectives.DEFAULTS`, formatted here
independently of the help generator.
"""

import dataclasses
import json
import os
import re

from absl import flags
import keras
import pytest

import clitools
from dac_tf import config as config_lib
from dac_tf import evaluate
from dac_tf import export
from dac_tf import bench
from dac_tf import benchmark
from dac_tf import flagdefs
from dac_tf import models
from dac_tf import objectives
from dac_tf import report
from dac_tf import train
from dac_tf.evaluation import suite

# (program module, its config dataclass)
PROGRAMS = {
    "train": (train, config_lib.TrainConfig),
    "evaluate": (evaluate, suite.EvalConfig),
    "export": (export, export.ExportConfig),
    "bench": (bench, benchmark.BenchConfig),
    "report": (report, report.ReportConfig),
}
_FOREIGN = ("absl", "tensorflow", "keras", "tf_", "tensorboard")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The reference scripts' settings (REFERENCE.md, "Base methods as the reference runs
# them"; TrustMLRG/AdvCertainty dac_at_cifar10.py, dac_trades_cifar10.py,
# dac_mart_cifar10.py), typed here independently of `objectives.DEFAULTS`.
REFERENCE_SCRIPTS = {
    "at": dict(epochs=200, batch_size=128, lr=0.1, lr_schedule="piecewise_at",
               weight_decay=5e-4, momentum=0.9, epsilon=8 / 255, step_size=2 / 255,
               num_steps=10, attack_start="uniform", augment="reflect",
               normalization="cifar10", ac_step=0.3, beta=None),
    "trades": dict(epochs=76, batch_size=128, lr=0.1, lr_schedule="piecewise_trades",
                   weight_decay=2e-4, momentum=0.9, epsilon=0.031, step_size=0.0078,
                   num_steps=10, attack_start="normal", augment="zero",
                   normalization="none", ac_step=0.1, beta=6.0),
    "mart": dict(epochs=120, batch_size=512, lr=0.01, lr_schedule="piecewise_trades",
                 weight_decay=3.5e-3, momentum=0.9, epsilon=0.031, step_size=0.007,
                 num_steps=10, attack_start="normal", augment="zero",
                 normalization="none", ac_step=0.3, beta=5.0),
}
ARCHS = {"prn18": "preact_resnet18", "wrn34": "wide_resnet34_10"}



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


# ------------------------------------------------------------- resolution
def test_defaults_reproduce_the_reference_per_method():
    at = config_lib.resolve({"method": "at"})
    assert (at.epsilon, at.step_size, at.num_steps, at.epochs, at.batch_size, at.lr,
            at.lr_schedule, at.weight_decay, at.augment, at.normalization, at.ac_step,
            at.attack_start) == (8 / 255, 2 / 255, 10, 200, 128, 0.1, "piecewise_at", 5e-4,
                                 "reflect", "cifar10", 0.3, "uniform")
    trades = config_lib.resolve({"method": "trades"})
    assert (trades.epsilon, trades.step_size, trades.epochs, trades.lr_schedule,
            trades.weight_decay, trades.augment, trades.normalization, trades.beta,
            trades.ac_step, trades.attack_start) == (
        0.031, 0.0078, 76, "piecewise_trades", 2e-4, "zero", "none", 6.0, 0.1, "normal")
    mart = config_lib.resolve({"method": "mart"})
    assert (mart.batch_size, mart.lr, mart.weight_decay, mart.epochs, mart.beta) == (
        512, 0.01, 3.5e-3, 120, 5.0)


def test_epsilon_flags_are_in_pixel_units():
    config = config_lib.resolve({"method": "at", "epsilon": 16, "step_size": 4})
    assert config.epsilon == pytest.approx(16 / 255)
    assert config.step_size == pytest.approx(4 / 255)


@pytest.mark.parametrize("values, flag", [
    ({"method": "at", "beta": 6.0}, "--beta"),
    ({"method": "at", "epochs": 0}, "--epochs"),
    ({"method": "at", "batch_size": -4}, "--batch_size"),
    ({"method": "at", "norm": "l2"}, "--norm=l2"),
    ({"method": "at", "depth": 28}, "--depth"),
    ({"method": "at", "epsilon": 300}, "--epsilon"),
    ({"method": "at", "dataset": "imagenet"}, "--dataset"),
    ({"method": "at", "use_dac": False, "ac_step": 0.3}, "--ac_step"),
    ({"method": "at", "momentum": 1.5}, "--momentum"),
])
def test_bad_values_name_the_flag(values, flag):
    with pytest.raises(config_lib.ConfigError, match=flag):
        config_lib.resolve(values)


def test_help_marks_the_flags_resume_may_change():
    """`--resume`'s help refers to "the flags marked [resumable]": exactly the flags
    `--resume` accepts a change of carry that mark in `--help`."""
    result = clitools.run_main(train, ["--help"])
    assert result.code == 0
    text = " ".join(result.stdout.split())
    assert f"marked {config_lib.RESUMABLE_MARK} to change" in text
    marked = set()
    for block in re.split(r"\s(?=--(?:\[no\])?[a-z_]+: )", text):
        match = re.match(r"--(?:\[no\])?([a-z_]+): ", block)
        if match and block.rstrip().count(config_lib.RESUMABLE_MARK) and \
                match.group(1) != "resume":
            marked.add(match.group(1))
    assert marked == set(config_lib.RESUME_MAY_CHANGE) == {
        "epochs", "eval_examples", "max_steps_per_epoch", "jit_compile"}


def parse_flagfile(path):
    values = {}
    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, eq, value = line[2:].partition("=")
        if not eq:
            values[key[2:] if key.startswith("no") else key] = not key.startswith("no")
            continue
        try:
            values[key] = int(value)
        except ValueError:
            try:
                values[key] = float(value)
            except ValueError:
                values[key] = value
    return values


@pytest.mark.parametrize("name", sorted(
    f for f in os.listdir(os.path.join(REPO, "configs")) if f.endswith(".cfg")))
def test_config_files_resolve_and_paper_rows_equal_the_reference(name):
    path = os.path.join(REPO, "configs", name)
    header = open(path, encoding="utf-8").readline()
    assert header.startswith("#") and ("Paper row" in header or "Quickstart" in header)
    assert f"--flagfile=configs/{name}" in open(path, encoding="utf-8").read()
    values = parse_flagfile(path)
    config = config_lib.resolve(values)
    if name == "quickstart.cfg":
        assert config.dataset == "digits" and config.use_dac
        return
    # The reference's values, plus its BatchNorm-only passes (off in the library).
    reference = config_lib.resolve({"method": values["method"], "use_dac": values["use_dac"],
                                    "arch": values["arch"], "dataset": "cifar10",
                                    "reference_bn_updates": True})
    differing = config_lib.differing_keys(
        json.loads(json.dumps(reference.to_json_dict())), config)
    assert differing == []
    assert config.use_dac == (not name.endswith("_baseline.cfg"))
    # ... and those values are the reference scripts' (typed from REFERENCE.md, not
    # read from the library's own defaults).
    method, arch = name[:-len(".cfg")].split("_")[:2]
    assert (config.method, config.dataset, config.arch) == (method, "cifar10", ARCHS[arch])
    for key, value in REFERENCE_SCRIPTS[method].items():
        assert getattr(config, key) == (value if value is None or isinstance(value, str)
                                        else pytest.approx(value)), (name, key)


def _results_rows():
    """(arch, method, config file, cells) of each row of docs/RESULTS.md's table."""
    text = open(os.path.join(REPO, "docs", "RESULTS.md"), encoding="utf-8").read()
    return [(m.group(1), m.group(2), m.group(3), m.group(4).split(" | "))
            for m in re.finditer(r"^\| (PRN18|WRN34) \| ([A-Z+]+) \| \[`([\w.]+)`\]"
                                 r"\(\.\./configs/\3\) \| (.*) \|$", text, re.M)]


def test_results_md_has_all_twelve_paper_rows_in_the_published_format():
    rows = _results_rows()
    assert sorted((arch, method) for arch, method, _, _ in rows) == sorted(
        (arch, method + dac) for arch in ("PRN18", "WRN34")
        for method in ("AT", "TRADES", "MART") for dac in ("", "+DAC"))
    for _, _, _, cells in rows:   # Clean, PGD-20, PGD-100, CW-inf, AutoAttack: last (best)
        assert len(cells) == 5 and all(re.fullmatch(r"\d\d\.\d\d \(\d\d\.\d\d\)", c)
                                       for c in cells), cells


@pytest.mark.parametrize("arch, method, name", [r[:3] for r in _results_rows()])
def test_each_results_row_names_a_config_that_trains_that_row(arch, method, name):
    # The row's label, read independently of the file name: PRN18/WRN34, AT/TRADES/MART,
    # "+DAC" or not; the flagfile must parse to exactly that training setting.
    path = os.path.join(REPO, "configs", name)
    assert os.path.isfile(path), f"docs/RESULTS.md names {name}, which configs/ lacks"
    config = config_lib.resolve(parse_flagfile(path))
    expected_arch = {"PRN18": "preact_resnet18", "WRN34": "wide_resnet34_10"}[arch]
    assert (config.arch, config.method, config.use_dac, config.dataset) == (
        expected_arch, method.split("+")[0].lower(), method.endswith("+DAC"), "cifar10")
    assert config.epsilon == pytest.approx(REFERENCE_SCRIPTS[config.method]["epsilon"])

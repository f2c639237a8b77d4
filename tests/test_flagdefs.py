"""dac_tf.flagdefs: flags generated from a config dataclass, read back into its fields."""

import dataclasses
import importlib
import os
import re

from absl import flags
import pytest

from dac_tf import flagdefs


@dataclasses.dataclass(frozen=True)
class _Toy:
    name: str = flagdefs.flag("toy", "A string.", group="a")
    count: int = flagdefs.flag(3, "An integer.", group="a", resume=flagdefs.MAY_CHANGE)
    rate: float = flagdefs.flag(0.5, "A float.", group="b")
    on: bool = flagdefs.flag(True, "A boolean.", group="b")
    mode: str = flagdefs.flag("x", "An enum.", choices=("x", "y"))
    radius: float | None = flagdefs.flag(None, "A radius; unset: the method's.",
                                        unit=flagdefs.PIXEL_RADIUS)
    step: float = flagdefs.flag(2 / 255, "A step.", unit=flagdefs.PIXEL_STEP)
    sizes: tuple[int, ...] = flagdefs.flag((128, 512), "Batch sizes.")
    archs: tuple[str, ...] = flagdefs.flag(("a",), "Names.", choices=("a", "b"))
    models: tuple[str, ...] | None = flagdefs.flag(None, "Repeatable.", repeat=True)
    derived: int = 7   # not a flag


def _parsed(*args):
    flag_values = flags.FlagValues()
    flagdefs.define_flags(_Toy, flag_values, program="toy")
    flag_values(["toy", *args])
    return flag_values


def test_defaults_round_trip_to_the_fields_defaults():
    values = flagdefs.read_flags(_Toy, _parsed())
    expected = {f.name: f.default for f in dataclasses.fields(_Toy) if f.name != "derived"}
    assert values.keys() == expected.keys()
    for name, value in expected.items():
        if isinstance(value, float):
            assert values[name] == pytest.approx(value, rel=1e-12), name
        else:
            assert values[name] == value, name
    assert _Toy(**values).derived == 7


def test_values_are_converted_to_the_fields_types_and_units():
    values = flagdefs.read_flags(_Toy, _parsed(
        "--name=n", "--count=5", "--rate=0.25", "--noon", "--mode=y", "--radius=8",
        "--step=0.765", "--sizes=16,64", "--archs=b,a", "--models=r1", "--models=r2"))
    assert values == dict(name="n", count=5, rate=0.25, on=False, mode="y",
                          radius=pytest.approx(8 / 255), step=pytest.approx(0.003),
                          sizes=(16, 64), archs=("b", "a"), models=("r1", "r2"))


@pytest.mark.parametrize("args, text", [
    (["--radius=0.031"], "--radius=7.905"),          # a [0, 1]-unit radius: the fix
    (["--sizes=16,big"], "--sizes=16,big is not valid"),
    (["--archs=a,c"], "--archs: c not valid"),
])
def test_a_bad_value_names_the_flag_and_the_fix(args, text):
    with pytest.raises(flagdefs.FlagError, match=text.replace("+", r"\+")):
        flagdefs.read_flags(_Toy, _parsed(*args))


def test_help_states_group_unit_and_resume_rule():
    flag_values = _parsed()
    by_module = flag_values.flags_by_module_dict()
    assert {f.name for f in by_module["toy (a)"]} == {"name", "count"}
    assert "Pixel levels out of 255" in flag_values["step"].help
    assert flag_values["count"].help.endswith(flagdefs.RESUMABLE_MARK)
    assert flagdefs.RESUMABLE_MARK not in flag_values["rate"].help


def test_check_defaults_finds_a_flag_defined_by_hand_with_another_default():
    flag_values = flags.FlagValues()
    flags.DEFINE_integer("count", 4, "typed twice", flag_values=flag_values)
    flagdefs.define_flags(_Toy, flag_values, program="toy")   # keeps the existing --count
    assert flagdefs.check_defaults(_Toy, flag_values) == ["count"]
    assert flagdefs.check_defaults(_Toy, _parsed()) == []


def test_docs_flags_md_is_the_generated_flag_reference():
    # docs/FLAGS.md is generated, never edited by hand: a flag whose default, help or
    # group changed makes this fail until the file is regenerated.
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    programs = [importlib.import_module(name) for name in flagdefs.PROGRAMS]
    generated = flagdefs.flag_reference_markdown(programs)
    with open(os.path.join(repo, "docs", "FLAGS.md"), encoding="utf-8") as f:
        committed = f.read()
    assert committed == generated, (
        "docs/FLAGS.md is out of date; regenerate it with "
        "`python -m dac_tf.flagdefs > docs/FLAGS.md`")


def test_the_flag_reference_lists_every_flag_of_every_program_once():
    # Independent of the renderer: each program's flags, read from absl directly, appear
    # as exactly one table row under that program's section, with no machine paths.
    sections = {}
    programs = [importlib.import_module(name) for name in flagdefs.PROGRAMS]
    text = flagdefs.flag_reference_markdown(programs)
    for program in programs:
        flag_values = flags.FlagValues()
        program.define_flags(flag_values)
        start = text.index(f"## `python -m {program.__name__}`")
        end = text.find("\n## ", start + 1)
        sections[program.__name__] = text[start:end if end > 0 else None]
        rows = re.findall(r"^\| `--(\w+)` \|", sections[program.__name__], re.M)
        defined = [f.name for fl in flag_values.flags_by_module_dict().values() for f in fl]
        assert sorted(rows) == sorted(defined) and len(rows) == len(set(rows))
    assert set(sections) == {"dac_tf.train", "dac_tf.evaluate", "dac_tf.export",
                             "dac_tf.report", "dac_tf.bench"}
    assert os.path.expanduser("~") not in text and os.getcwd() not in text

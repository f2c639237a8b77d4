"""A program's flags from its config dataclass: every flag stated once, on its field.

Each `python -m dac_tf.X` program reads its flags into one frozen dataclass. A field
declared with `flag(...)` is also a command-line flag of the same name; its default,
help text, `--help` group, choices, unit and `--resume` rule live on the field and
nowhere else:

    @dataclasses.dataclass(frozen=True)
    class ExportConfig:
        model_dir: str | None = flagdefs.flag(None, "Training run directory.")
        checkpoint: str = flagdefs.flag("best", "Which checkpoint.",
                                        choices=("best", "last"))

    flagdefs.define_flags(ExportConfig, flag_values, program="dac_tf.export")
    values = flagdefs.read_flags(ExportConfig, flag_values)   # {name: value}

The absl flag type follows the field's annotation: `bool`, `int`, `float`, `str` (an
enum when `choices` is given), `tuple[str, ...]` / `tuple[int, ...]` (a comma list, or a
repeatable flag with `repeat=True`). `Optional` types (`int | None`) take None as
"unset": the program resolves it (a method's reference value, a dataset's size, ...),
and the help text says to what.

Units: a field with `unit=PIXEL_RADIUS` or `PIXEL_STEP` holds a radius or step in [0, 1] units while its flag
is written in pixel levels out of 255, as the field writes radii (`--epsilon=8` is
8/255); `to_field` converts (and refuses a [0, 1]-unit value given by mistake, naming
the flag), and the flag's default is the field's default in pixel levels.
"""

import dataclasses
import types
import typing

from absl import flags

from dac_tf import errors
from dac_tf import protocol

# Radii and steps written in pixel levels out of 255 on the command line, held in [0, 1]
# units by the field. A radius below one level is refused (`protocol.from_pixels`): it is
# almost surely a [0, 1]-unit value given by mistake; a step may be (MART's 0.003).
PIXEL_RADIUS = "pixel radius"
PIXEL_STEP = "pixel step"
UNITS = (None, PIXEL_RADIUS, PIXEL_STEP)

# What `--resume` may do with a flag whose value differs from the run's record.
IGNORED = "ignored"          # never part of a run's identity (where or how it runs)
MAY_CHANGE = "may_change"    # may change on a resumed run (its length, its speed)
RESUME_RULES = (None, IGNORED, MAY_CHANGE)
# Appended to the `--help` text of every MAY_CHANGE flag.
RESUMABLE_MARK = "[resumable]"

_SPEC_KEY = "dac_tf.flag"


class FlagError(errors.UserError):
    """A flag value that does not convert to its field (names the flag)."""


@dataclasses.dataclass(frozen=True)
class FlagSpec:
    """What a config field says about its flag.

    Attributes:
      help: the help text (one or two sentences; unit and resume rule are appended).
      group: the section of `--help` the flag is listed in.
      choices: the valid values of an enum flag (or of each item of a list flag).
      unit: None, PIXEL_RADIUS or PIXEL_STEP (the flag is in pixel levels /255, the
        field in [0, 1] units).
      resume: None (part of a run's identity), IGNORED or MAY_CHANGE.
      repeat: a tuple field is a repeatable flag (`--model=a --model=b`) instead of a
        comma list (`--arch=a,b`).
    """

    help: str
    group: str = "flags"
    choices: tuple | None = None
    unit: str | None = None
    resume: str | None = None
    repeat: bool = False


def flag(default, help_text, *, group="flags", choices=None, unit=None, resume=None,
         repeat=False, metadata=None):
    """A dataclass field that is also a command-line flag (see the module docstring).

    Args:
      default: the field's default (in the field's units); None for "unset: resolved by
        the program", which `help_text` then explains.
      help_text: what the flag does and, for None defaults, what it resolves to.
      group: the `--help` section.
      choices: valid values (enum flags; each item of a tuple flag).
      unit: None, PIXEL_RADIUS or PIXEL_STEP.
      resume: None, IGNORED or MAY_CHANGE.
      repeat: tuple fields only: a repeatable flag instead of a comma list.
      metadata: more field metadata, for the program's own use (e.g. which reference
        value an unset flag resolves to).

    Returns:
      A `dataclasses.field`.
    """
    if unit not in UNITS:
        raise ValueError(f"unit={unit!r}; use one of {UNITS}.")
    if resume not in RESUME_RULES:
        raise ValueError(f"resume={resume!r}; use one of {RESUME_RULES}.")
    spec = FlagSpec(help=help_text, group=group,
                    choices=None if choices is None else tuple(choices), unit=unit,
                    resume=resume, repeat=repeat)
    return dataclasses.field(default=default, metadata={**(metadata or {}), _SPEC_KEY: spec})


def spec_of(field):
    """The `FlagSpec` of a dataclass field, or None for a field that is no flag."""
    return field.metadata.get(_SPEC_KEY)


def flag_fields(config_cls):
    """The fields of `config_cls` that are flags, in declaration order."""
    return tuple(f for f in dataclasses.fields(config_cls) if spec_of(f) is not None)


def flag_names(config_cls):
    return tuple(f.name for f in flag_fields(config_cls))


def flag_type(config_cls, field):
    """("bool" | "int" | "float" | "str", is_tuple) of a field's annotation."""
    annotation = typing.get_type_hints(config_cls)[field.name]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"{config_cls.__name__}.{field.name}: one type (or it | None) "
                            f"expected, got {annotation}.")
        annotation = args[0]
    if typing.get_origin(annotation) is tuple:
        item = typing.get_args(annotation)[0]
        return item.__name__, True
    if annotation in (bool, int, float, str):
        return annotation.__name__, False
    raise TypeError(f"{config_cls.__name__}.{field.name}: unsupported flag type "
                    f"{annotation}.")


def flag_default(config_cls, field):
    """The flag's default: the field's, in the flag's units (lists as absl holds them)."""
    kind, is_tuple = flag_type(config_cls, field)
    default = field.default
    if default is dataclasses.MISSING or default is None:
        return None
    if spec_of(field).unit is not None:
        return protocol.to_pixels(default)
    if is_tuple:
        return [str(v) if kind == "str" else v for v in default]
    return default


def help_text(field):
    """The flag's help: the field's text, then its unit and its `--resume` rule."""
    spec = spec_of(field)
    text = spec.help.rstrip()
    if spec.unit is not None:
        text += " Pixel levels out of 255 (8 means 8/255)."
    if spec.resume == MAY_CHANGE:
        text += f" {RESUMABLE_MARK}"
    return text


def define_flags(config_cls, flag_values=flags.FLAGS, *, program):
    """Defines a flag for every `flag(...)` field of `config_cls` (idempotent).

    Args:
      config_cls: the program's config dataclass.
      flag_values: the absl `FlagValues` (a test passes its own).
      program: the program's module name; flags are grouped in `--help` as
        "program (group)".
    """
    for field in flag_fields(config_cls):
        if field.name in flag_values:
            continue
        spec = spec_of(field)
        kind, is_tuple = flag_type(config_cls, field)
        default = flag_default(config_cls, field)
        kwargs = dict(flag_values=flag_values, module_name=f"{program} ({spec.group})")
        text = help_text(field)
        if is_tuple and spec.repeat:
            define = flags.DEFINE_multi_integer if kind == "int" else flags.DEFINE_multi_string
            define(field.name, default, text, **kwargs)
        elif is_tuple:
            flags.DEFINE_list(field.name, default, text, **kwargs)
        elif spec.choices is not None:
            flags.DEFINE_enum(field.name, default, [str(c) for c in spec.choices], text,
                              **kwargs)
        elif kind == "float" or spec.unit is not None:
            flags.DEFINE_float(field.name, default, text, **kwargs)
        else:
            define = {"bool": flags.DEFINE_boolean, "int": flags.DEFINE_integer,
                      "str": flags.DEFINE_string}[kind]
            define(field.name, default, text, **kwargs)


def to_field(config_cls, name, value):
    """Converts one flag value to its field's type and units.

    Raises:
      FlagError: a list item that is not an integer, a value outside `choices`, or a
        pixel-unit value that is not valid (`protocol.from_pixels`), naming the flag.
    """
    field = next(f for f in flag_fields(config_cls) if f.name == name)
    spec = spec_of(field)
    kind, is_tuple = flag_type(config_cls, field)
    if value is None:
        return None
    if spec.unit is not None:
        try:
            return protocol.from_pixels(name, value, radius=spec.unit == PIXEL_RADIUS)
        except protocol.UnitError as e:
            raise FlagError(str(e)) from None
    if is_tuple:
        items = [v.strip() if isinstance(v, str) else v for v in value]
        if kind == "int":
            try:
                items = [int(v) for v in items]
            except (TypeError, ValueError):
                raise FlagError(f"--{name}={','.join(map(str, value))} is not valid; give "
                                "a comma list of integers.") from None
        if spec.choices is not None:
            bad = [v for v in items if v not in spec.choices]
            if bad:
                raise FlagError(f"--{name}: {', '.join(map(str, bad))} not valid; use "
                                f"{', '.join(map(str, spec.choices))}.")
        return tuple(items)
    if spec.choices is not None and kind == "int":
        return int(value)   # absl's enum flags hold strings
    return value


def read_flags(config_cls, flag_values):
    """{name: value} of every flag of `config_cls`, converted to the fields' types and
    units (None for an unset flag whose field default is None).

    Raises:
      FlagError: see `to_field`.
    """
    return {name: to_field(config_cls, name, flag_values[name].value)
            for name in flag_names(config_cls) if name in flag_values}


def read_config(config_cls, flag_values):
    """`config_cls` built from its flags' values (`read_flags`); the fields that are no
    flags keep their defaults.

    Raises:
      FlagError: see `to_field`.
    """
    return config_cls(**read_flags(config_cls, flag_values))


def check_defaults(config_cls, flag_values):
    """Names of the flags whose defined default differs from their field's default.

    Empty when every flag of `config_cls` on `flag_values` was defined from its field
    (a program defining a flag by hand, or a default typed twice, shows up here).
    """
    differing = []
    for field in flag_fields(config_cls):
        if field.name not in flag_values:
            differing.append(field.name)
            continue
        defined = flag_values[field.name].default
        expected = flag_default(config_cls, field)
        if isinstance(expected, list) and defined is not None:
            defined = list(defined)
        if defined != expected:
            differing.append(field.name)
    return differing


# The `python -m dac_tf.X` programs, in the order docs/FLAGS.md lists them.
PROGRAMS = ("dac_tf.train", "dac_tf.evaluate", "dac_tf.export", "dac_tf.report",
            "dac_tf.bench")


def _flag_help(flag):
    text = " ".join(str(flag.help).split())
    if getattr(flag.parser, "enum_values", None) and text.startswith("<"):
        text = text.split(">: ", 1)[-1]   # absl's "<a|b|c>: " prefix: the type column
    text = text.replace("; repeat this option to specify a list of values", "")
    # A table cell: `|` would end it, `<name>` would be read as an HTML tag.
    return text.replace("|", "\\|").replace("<", "\\<")


def _flag_kind(flag):
    enum_values = getattr(flag.parser, "enum_values", None)
    if enum_values:
        return "one of " + ", ".join(f"`{v}`" for v in enum_values)
    kind = flag.flag_type()
    if kind.startswith("comma separated list"):
        return "comma list"
    if kind.startswith("multi"):
        return "repeatable"
    return kind


def _flag_default(flag):
    default = flag.default
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return "`true`" if default else "`false`"
    if isinstance(default, (list, tuple)):
        return f"`{','.join(str(v) for v in default)}`"
    return f"`{default}`" if default != "" else '`""`'


def flag_reference_markdown(programs):
    """The flag reference of `programs` as markdown (docs/FLAGS.md).

    Each program's flags are defined on a fresh `FlagValues` by its own
    `define_flags`, so the text is what its `--help` lists: per program a section, per
    `--help` group a table of flag, type, default and help. Nothing in it depends on the
    machine or the terminal (absl's `--help` wraps at the terminal's width).

    Args:
      programs: program modules (e.g. `dac_tf.train`), each with
        `define_flags(flag_values)` and a docstring whose first paragraph says what the
        program does.

    Returns:
      The markdown text, ending in a newline.
    """
    lines = ["# Flags of the programs", "",
             "Generated from each program's flag definitions (what `--help` lists) by",
             "`python -m dac_tf.flagdefs > docs/FLAGS.md`; `tests/test_flagdefs.py` checks",
             "that this file is up to date. `unset` means the program resolves the value",
             "(the help says to what). `--flagfile=FILE` reads flags from a file.", ""]
    for program in programs:
        flag_values = flags.FlagValues()
        program.define_flags(flag_values)
        summary = " ".join((program.__doc__ or "").strip().split("\n\n")[0].split())
        lines += [f"## `python -m {program.__name__}`", "", summary, ""]
        for module, module_flags in flag_values.flags_by_module_dict().items():
            group = module[module.index("(") + 1:-1] if module.endswith(")") else "flags"
            lines += [f"### {group}", "", "| flag | type | default | help |",
                      "|---|---|---|---|"]
            lines += [f"| `--{f.name}` | {_flag_kind(f)} | {_flag_default(f)} | "
                      f"{_flag_help(f)} |" for f in module_flags]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":   # python -m dac_tf.flagdefs > docs/FLAGS.md
    import importlib
    print(flag_reference_markdown([importlib.import_module(name) for name in PROGRAMS]),
          end="")

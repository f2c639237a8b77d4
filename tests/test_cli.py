"""dac_tf.cli.program: the one preamble of every program's `main`.

A toy program built with `cli.program` (as train, evaluate and export are): the config
is read once from the parsed flags, positional arguments and user errors are one line
with exit 2, Ctrl-C is exit 130 with the program's hint, absl's INFO logging is quieted
unless `--verbosity` is given. The real programs' errors: tests/test_cli_errors.py.
"""

import dataclasses

from absl import flags
from absl import logging
import pytest

from dac_tf import cli
from dac_tf import errors
from dac_tf import flagdefs


@dataclasses.dataclass(frozen=True)
class _Config:
    count: int = flagdefs.flag(2, "How many.")


def _program(body):
    seen = []

    @cli.program(lambda fv: flagdefs.read_config(_Config, fv),
                 lambda fv: f"rerun with --count={fv['count'].value}")
    def main(config):
        seen.append(config)
        return body(config)

    return main, seen


def _flags(*args):
    flag_values = flags.FlagValues()
    flags.DEFINE_integer("verbosity", 0, "absl's", flag_values=flag_values)
    flagdefs.define_flags(_Config, flag_values, program="toy")
    flag_values(["toy", *args])
    return flag_values


def test_main_gets_the_config_read_once_and_its_result_back():
    main, seen = _program(lambda config: config.count * 10)
    assert main(["toy"], _flags("--count=4")) == 40
    assert seen == [_Config(count=4)]


@pytest.mark.parametrize("raise_, code, needle", [
    (errors.UserError("bad --count\nsecond line"), 2, "error: bad --count second line"),
    (KeyboardInterrupt(), 130, "interrupted: rerun with --count=2"),
])
def test_failures_are_one_line_with_their_exit_code(capsys, raise_, code, needle):
    def body(config):
        raise raise_
    main, _ = _program(body)
    with pytest.raises(SystemExit) as stopped:
        main(["toy"], _flags())
    assert stopped.value.code == code
    assert capsys.readouterr().err.splitlines() == [needle]


def test_positional_arguments_are_refused_before_the_config_is_read(capsys):
    main, seen = _program(lambda config: None)
    with pytest.raises(SystemExit) as stopped:
        main(["toy", "stray"], _flags())
    assert stopped.value.code == 2 and seen == []
    assert capsys.readouterr().err.strip() == (
        "error: unexpected arguments: stray (flags are written --name=value).")


def test_absl_info_logging_is_quieted_unless_verbosity_is_given():
    before = logging.get_verbosity()
    try:
        logging.set_verbosity(logging.INFO)
        main, _ = _program(lambda config: None)
        main(["toy"], _flags())
        assert logging.get_verbosity() == logging.WARNING
        logging.set_verbosity(logging.INFO)
        main(["toy"], _flags("--verbosity=0"))
        assert logging.get_verbosity() == logging.INFO
    finally:
        logging.set_verbosity(before)

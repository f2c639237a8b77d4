"""Runs a dac_tf CLI's `main` in this process, as `python -m dac_tf.X ARGS` would.

Each call defines the program's flags on a fresh `FlagValues` (nothing leaks from one
call to the next), parses the arguments (flagfiles included), and captures stdout,
stderr and the exit code. In-process runs skip the TensorFlow import of a subprocess
(seconds each) and let a test wrap the command in `tfds.testing.mock_data`.
"""

import contextlib
import dataclasses
import hashlib
import io
import os
import sys

from absl import flags

from dac_tf import cli


@dataclasses.dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def run_main(module, args):
    """Runs `module.main` with `args` (a list of "--flag=value" strings).

    Args:
      module: a dac_tf CLI module with `define_flags(flag_values)` and
        `main(argv, flag_values)`.
      args: the command-line arguments after the program name.

    Returns:
      Result(code, stdout, stderr); code 0 when main returns normally.
    """
    flag_values = flags.FlagValues()
    module.define_flags(flag_values)
    argv = [module.__name__] + list(args)
    out, err = io.StringIO(), io.StringIO()
    saved_argv, code = sys.argv, 0
    sys.argv = argv
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rest = cli.parse_flags(argv, flag_values)
                module.main(rest, flag_values)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = saved_argv
    return Result(code, out.getvalue(), err.getvalue())


def tree_hashes(directory):
    """sha256 of every file under `directory`, by relative path: equal before and after
    a command means the command changed nothing there."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return out

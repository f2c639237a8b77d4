"""What every dac_tf command-line program shares: one `main` shape, one-line errors.

A `python -m dac_tf.X` program is flags -> a config object -> library calls -> output.
This module holds everything else, once:

    from absl import flags
    from dac_tf import cli, flagdefs

    def define_flags(flag_values=flags.FLAGS):
        flagdefs.define_flags(ExportConfig, flag_values, program="dac_tf.export")

    @cli.program(lambda flag_values: flagdefs.read_config(ExportConfig, flag_values),
                 interrupted_hint="nothing was written; run the same command again.")
    def main(config):
        print(serving.export_run(config))   # the library call, then the output

    if __name__ == "__main__":
        cli.run(main, define_flags)

`program(read_config, interrupted_hint)` turns `main(config)` into the
`main(argv, flag_values=None)` that `run` (and the in-process tests,
`tests/clitools.py`) call: it refuses positional arguments, quiets absl's INFO logging
(unless `--verbosity` is given), reads the config once with `read_config(flag_values)`
and reports what a user can get wrong as one line instead of a traceback:

- a flag that does not parse (`--seed=1e20`, a missing `--flagfile`): `error: ...`, exit 2;
- a `dac_tf.errors.UserError` from the config or the library: `error: ...`, exit 2;
- a file that cannot be written or read (full disk, read-only mount, permissions):
  `error: ...` naming the file, exit 2;
- Ctrl-C: one line saying how to continue, exit 130 (the shell's code for SIGINT).

`run(main, define_flags)` is the `__main__` entry: it defines the flags, parses argv
(flagfiles included) and prints the program's own `--help`: its docstring's first
paragraph, then its flags by group.
"""

import errno
import functools
import sys

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf

from dac_tf import errors

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
# OS errors that mean "the file system refused", which a user fixes (space, permissions,
# a path that is a file), as opposed to a bug.
_FILESYSTEM_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT,
                      errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EDQUOT, errno.EIO}
_FILESYSTEM_OP_ERRORS = (tf.errors.PermissionDeniedError, tf.errors.ResourceExhaustedError,
                         tf.errors.NotFoundError, tf.errors.AlreadyExistsError)
_FILESYSTEM_MESSAGES = ("No space left", "Read-only file system", "Permission denied",
                        "Disk quota exceeded", "Is a directory", "Not a directory")


class UsageError(errors.UserError):
    """A command line that is not flags (a positional argument)."""


def one_line(text):
    """`text` with its lines joined, so an error is one line on a terminal or in a log."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def fail(message, code=EXIT_USER_ERROR):
    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)
    sys.exit(code)


def _flag_error_text(error):
    text = one_line(error)
    text = text.replace("ERROR:: Unable to open flagfile: ", "cannot open the --flagfile: ")
    if text.startswith("flag --"):
        text = text[len("flag "):]
    return f"{text} (see --helpfull for the flags and their values)"


HELP_ARGS = ("--help", "-help", "-h", "-?", "--helpshort", "--helpfull")
# Flags of these packages are not the program's (absl's logging and help flags,
# TensorFlow's and Keras' own); `--help` leaves them out, `--helpfull` adds absl's.
_FOREIGN_MODULES = ("absl", "tensorflow", "keras", "tf_", "tensorboard")


def _summary(doc):
    """The first paragraph of a program's docstring: what it does, one example."""
    paragraphs = [p.strip() for p in (doc or "").strip().split("\n\n") if p.strip()]
    return "\n".join(line.strip() for line in paragraphs[0].splitlines()) if paragraphs else ""


def help_text(flag_values, doc=None, full=False):
    """The program's help: its summary, then its flags by group (absl's own last, with
    `full`)."""
    lines = [_summary(doc), ""] if doc else []
    by_module = flag_values.flags_by_module_dict()
    ours = [m for m in by_module if not m.startswith(_FOREIGN_MODULES)]
    for module in ours:
        group = module[module.index("(") + 1:-1] if module.endswith(")") else "flags"
        body = flag_values.module_help(module).strip().splitlines()[1:]
        lines += [f"{group}:", *body, ""]
    if full:
        for module in by_module:
            if module.startswith("absl.logging"):
                lines += ["absl logging:",
                          *flag_values.module_help(module).strip().splitlines()[1:], ""]
    else:
        lines.append("--helpfull also lists absl's logging flags.")
    return "\n".join(lines).rstrip() + "\n"


def parse_flags(argv, flag_values=flags.FLAGS, doc=None):
    """absl's flag parsing, with a one-line `error:` and exit 2 instead of its usage text.

    `--help` (and `-h`, `--helpshort`) prints the program's own flags by group,
    `--helpfull` adds absl's logging flags; both exit 0.
    """
    asked = [a for a in argv[1:] if a in HELP_ARGS]
    if asked:
        print(help_text(flag_values, doc, full="--helpfull" in asked), end="")
        sys.exit(0)
    try:
        return flag_values(argv)
    except flags.Error as e:
        fail(_flag_error_text(e))


def _is_filesystem_error(error):
    if isinstance(error, OSError):
        return error.errno in _FILESYSTEM_ERRNOS or error.errno is None
    if isinstance(error, _FILESYSTEM_OP_ERRORS):
        return True
    return isinstance(error, tf.errors.OpError) and any(
        m in str(error) for m in _FILESYSTEM_MESSAGES)


def guard(interrupted_hint):
    """Decorates a program's `main(argv, flag_values=None)`: the errors a user can cause
    become one line on stderr and exit status 2; Ctrl-C prints `interrupted_hint`
    and exits with 130.

    Args:
      interrupted_hint: what to tell the user after Ctrl-C (how to continue): a string,
        or a function of the parsed `FlagValues` returning one.
    """

    def decorate(main):
        @functools.wraps(main)
        def wrapped(argv, flag_values=None):
            try:
                return main(argv, flag_values or flags.FLAGS)
            except errors.UserError as e:
                fail(e, getattr(e, "exit_code", EXIT_USER_ERROR))
            except KeyboardInterrupt:
                hint = (interrupted_hint(flag_values or flags.FLAGS)
                        if callable(interrupted_hint) else interrupted_hint)
                print(f"interrupted: {hint}", file=sys.stderr, flush=True)
                sys.exit(EXIT_INTERRUPTED)
            except (OSError, tf.errors.OpError) as e:
                if not _is_filesystem_error(e):
                    raise
                filename = getattr(e, "filename", None)
                where = f" ({filename})" if filename else ""
                fail(f"a file could not be written or read{where}: "
                     f"{one_line(getattr(e, 'strerror', None) or e)}. Check the path, its "
                     "permissions and the free space.")
        return wrapped

    return decorate


def _quiet_absl_logging(flag_values):
    # TensorFlow's checkpoint and tf.data INFO lines drown a program's own output.
    if "verbosity" in flag_values and not flag_values["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def program(read_config, interrupted_hint):
    """Decorates a program's `main(config)`: the one preamble of every dac_tf program.

    The decorated function is `main(argv, flag_values=None)`, what `run` and the tests
    call with parsed flags: it refuses positional arguments (`UsageError`), sets absl's
    verbosity to WARNING unless `--verbosity` was given, reads the config once with
    `read_config(flag_values)` and calls `main(config)`, all under `guard`.

    Args:
      read_config: flag_values -> the program's config object (e.g.
        `lambda fv: flagdefs.read_config(MyConfig, fv)`); a `UserError` it raises is
        reported as one line.
      interrupted_hint: what to tell the user after Ctrl-C (how to continue): a string,
        or a function of the parsed `FlagValues` returning one.

    Returns:
      A decorator.
    """

    def decorate(main):
        @guard(interrupted_hint)
        @functools.wraps(main)
        def wrapped(argv, flag_values=None):
            flag_values = flag_values or flags.FLAGS
            if len(argv) > 1:
                raise UsageError(f"unexpected arguments: {' '.join(argv[1:])} (flags are "
                                 "written --name=value).")
            _quiet_absl_logging(flag_values)
            return main(read_config(flag_values))
        return wrapped

    return decorate


def run(main, define_flags):
    """`python -m dac_tf.X`: defines the program's flags on the global FlagValues,
    parses argv with one-line errors and its own `--help`, and runs `main`.

    Args:
      main: the program's `main(argv, flag_values=None)` (`program`).
      define_flags: defines the program's flags on absl's global `FlagValues`.
    """
    define_flags()
    doc = getattr(sys.modules.get(main.__module__), "__doc__", None)
    app.run(main, flags_parser=functools.partial(parse_flags, doc=doc))

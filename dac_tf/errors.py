"""The one error type a user can cause and fix.

Every error a user can cause with a flag, a file or a value is a `UserError` (each module
has its own subclass: `ConfigError`, `DatasetError`, `RunDirError`, ...), with a message
of one line that names the flag, file or value and says what is valid. The command-line
programs print it as `error: ...` and exit with status 2 (`dac_tf.cli`); library callers
catch it like any `ValueError`.
"""


class UserError(ValueError):
    """A bad flag, file or value: the message names it and what is valid, in one line.

    Attributes:
      exit_code: the command-line programs' exit status for it (2: fix the input; a
        subclass for a transient condition, such as a lost cluster peer, uses another).
    """

    exit_code = 2

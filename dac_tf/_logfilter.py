"""Keeps TensorFlow's start-up chatter out of the command-line programs' stderr.

TensorFlow's C++ runtime writes log lines to stderr (file descriptor 2) at import and at
the first op: oneDNN notices, "Could not find cuda drivers", CPU instruction hints,
"failed call to cuInit" on a machine without a GPU, tf.data rewrite notes. Python's
`TF_CPP_MIN_LOG_LEVEL` does not reach the lines written before TensorFlow initialises its
logging (TF 2.21), so a `python -m dac_tf.X` program filters its stderr instead: it is
piped through a small child process that drops

- C++ log lines below the level of `TF_CPP_MIN_LOG_LEVEL` (default 2 here: INFO and
  WARNING dropped, ERROR and FATAL kept);
- the ERROR "failed call to cuInit" on a machine with no NVIDIA driver (nothing to fix);
- absl's "All log messages before absl::InitializeLog()" banner and the continuation
  line of the CPU-instruction notice.

Everything else (Python tracebacks, warnings, `error:` lines, every ERROR/FATAL from a
real failure) passes through unchanged. The filter is a separate process so that it
still writes what is left in the pipe when the program dies of a signal or an abort.
`DAC_TF_TF_LOGS=all` turns it off. Only dac_tf's own programs, `python -m dac_tf.X`,
install it (`dac_tf/__init__.py` reads the `-m` module from `sys.orig_argv`, before
TensorFlow is imported); importing dac_tf as a library, also from a user's own
`python -m their_pkg`, never touches stderr.
"""

import atexit
import os
import subprocess
import sys

_FILTER = r'''
import os, re, sys
min_level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL") or 2)
levels = {"I": 0, "W": 1, "E": 2, "F": 3}
no_driver = not os.path.exists("/proc/driver/nvidia")
record = re.compile(rb"^([IWEF])\d{4} [\d:.]+\s+\d+ [^\]\s]+\] ")
noise = (b"WARNING: All log messages before absl::InitializeLog() is called",
         b"To enable the following instructions:")
out = sys.stdout.buffer
dropping = False   # the indented continuation lines of a dropped record go with it
for line in iter(sys.stdin.buffer.readline, b""):
    match = record.match(line)
    if match:
        level = levels[match.group(1).decode()]
        dropping = level < min_level or (
            no_driver and level < 3 and b"failed call to cuInit" in line)
        if dropping:
            continue
    elif line.startswith(noise) or (dropping and line[:1] in (b" ", b"\t")):
        continue
    else:
        dropping = False
    out.write(line)
    out.flush()
'''


def install():
    """Pipes this process's stderr through the filter (idempotent; no-op if disabled)."""
    if os.environ.get("DAC_TF_TF_LOGS") == "all" or getattr(install, "done", False):
        return
    install.done = True
    real_stderr = os.dup(2)
    try:
        child = subprocess.Popen([sys.executable, "-S", "-c", _FILTER],
                                 stdin=subprocess.PIPE, stdout=real_stderr, close_fds=True)
    except OSError:
        return   # no filter is better than no program
    finally:
        os.close(real_stderr)
    saved = os.dup(2)
    sys.stderr.flush()
    os.dup2(child.stdin.fileno(), 2)

    def restore():
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(saved, 2)          # our own last writes go straight out from here on
        child.stdin.close()        # EOF: the filter drains the pipe and exits
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.kill()

    atexit.register(restore)

"""Reading and writing run files: atomic replacement, JSON, and one-line error causes.

Every file dac_tf writes goes through `tf.io.gfile`, so a run directory may live on any
filesystem TensorFlow has a plugin for (local disk, `gs://`, `s3://`, `hdfs://`, the
in-memory `ram://`).

What "atomic" guarantees here: a reader sees the old content or the new content, never
a mix. On a local disk the new content is written to a temporary name in the same
directory, flushed to disk (fsync) and renamed over the old file (`os.replace` is atomic
on POSIX). On other filesystems it is written to a temporary object and renamed with
`tf.io.gfile.rename(overwrite=True)`: object stores make each object visible whole
when it is closed, but a rename there is copy-then-delete, so a crash between the two
leaves the old file in place plus a `*.tmp-*` object, which `remove_temporaries`
deletes at the next start. A temporary name records its writer (`dac_tf.scratch`), so
only the leftovers of writers that are gone are deleted, never a live writer's.
"""

import json
import os

import tensorflow as tf

from dac_tf import scratch

# Temporary names carry this marker, so leftovers of a killed writer can be found.
TMP_MARKER = ".tmp-"


def is_local(path):
    """Whether `path` is on the local filesystem (no URL scheme such as gs://)."""
    return "://" not in str(path)


def first_line(error):
    """The first non-empty line of an exception's message, or its type name."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def temporary_name(path):
    """A temporary name beside `path` that records this process as its writer:
    `path.tmp-PID-START-HOST-TIME-RANDOM` (`dac_tf.scratch.scratch_name`)."""
    return scratch.scratch_name(f"{path}{TMP_MARKER.rstrip('-')}")


def write_atomic(path, content):
    """Replaces the file at `path` with `content` (str or bytes) atomically.

    Raises:
      OSError or tf.errors.OpError: the directory is missing or not writable, the disk is
        full. The old file is then untouched and no temporary file is left.
    """
    mode = "wb" if isinstance(content, bytes) else "w"
    tmp = temporary_name(path)
    try:
        if is_local(path):
            with open(tmp, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
                f.write(content)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        else:
            with tf.io.gfile.GFile(tmp, mode) as f:
                f.write(content)
            tf.io.gfile.rename(tmp, path, overwrite=True)
    except BaseException:
        try:
            if tf.io.gfile.exists(tmp):
                tf.io.gfile.remove(tmp)
        except (OSError, tf.errors.OpError):
            pass
        raise


def write_json_atomic(path, data):
    """Writes `data` as indented, key-sorted JSON with `write_atomic`."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_text(path):
    """The content of a text file (any gfile filesystem)."""
    with tf.io.gfile.GFile(path, "r") as f:
        return f.read()


def read_json(path, error_type=ValueError, what="file"):
    """Reads a JSON file.

    Args:
      path: the file.
      error_type: the exception raised when it cannot be read or parsed.
      what: what the file is, for the message ("run config", "evaluation JSON").

    Returns:
      The parsed JSON.

    Raises:
      error_type: one line naming the file and the cause.
    """
    try:
        return json.loads(read_text(path))
    except (OSError, tf.errors.OpError, UnicodeDecodeError, ValueError) as e:
        raise error_type(f"cannot read the {what} {path}: {first_line(e)}") from None


def remove_tree(path):
    """Deletes a directory tree on any filesystem; a missing path is not an error.

    `tf.io.gfile.rmtree` stops at the first listed name that does not exist, and
    TensorFlow's ram:// lists such phantom names (it matches names by prefix), so the
    tree is deleted file by file, deepest first, skipping what is already gone.
    """
    if not tf.io.gfile.exists(path):
        return
    if not tf.io.gfile.isdir(path):
        tf.io.gfile.remove(path)
        return
    for root, _, names in reversed(list(tf.io.gfile.walk(path))):
        for name in names:
            try:
                tf.io.gfile.remove(os.path.join(root, name))
            except tf.errors.NotFoundError:
                pass
        try:
            tf.io.gfile.rmtree(root)
        except tf.errors.NotFoundError:
            pass


def remove_temporaries(directory, prefix=""):
    """Deletes the `*.tmp-*` leftovers of writers that are gone, directly inside
    `directory`.

    A leftover is deleted when the writer its name records is gone, or when it records
    none (`dac_tf.scratch.abandoned`); a live writer's temporary file is left alone.

    Args:
      directory: the folder to clean.
      prefix: only names starting with it (e.g. "eval_best.json").

    Returns:
      The paths removed.
    """
    removed = []
    if not tf.io.gfile.isdir(directory):
        return removed
    for name in tf.io.gfile.listdir(directory):
        name = name.rstrip("/")
        if name.startswith(prefix) and TMP_MARKER in name and scratch.abandoned(name):
            path = os.path.join(directory, name)
            remove_tree(path)
            removed.append(path)
    return removed

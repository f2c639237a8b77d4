"""TF Serving's versioned layout: version numbers, and moving a version into place.

An export base (export/NAME) holds numbered version directories, the only ones TF
Serving loads. A version is written into a hidden folder beside them and renamed into
place (`move_into_place`), so TF Serving never sees half of one; a replaced version is
first moved aside into another hidden folder. Both folders are scratch names that record
their owner (`dac_tf.scratch`): the next export deletes those of exports that are gone
and puts back a version a killed `--overwrite` had moved aside
(`remove_dead_hidden_dirs`).
"""

import errno
import os

import numpy as np
import tensorflow as tf

from dac_tf import fileio
from dac_tf import scratch
from dac_tf.serving.signatures import SAVED_MODEL_FILE
from dac_tf.serving.signatures import ExportError

_WRITING = ".tmp-export"   # a version being written
_ASIDE = ".old"            # `.old-V-...`: version V moved aside by --overwrite


def parse_version(value):
    """A `--version` value as an int (None stays None: the next free version).

    Args:
      value: None, an int, or a string of digits.

    Returns:
      None or a non-negative int.

    Raises:
      ExportError: anything else.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, str)):
        raise ExportError(f"--version={value!r} must be a non-negative integer.")
    text = str(value).strip()
    if not text.isdigit() or not text.isascii():
        raise ExportError(f"--version={value!r} must be a non-negative integer "
                          "(TF Serving loads numbered directories only).")
    return int(text)


def list_versions(export_base):
    """The versions in an export base directory.

    Args:
      export_base: e.g. export/NAME.

    Returns:
      {version int: directory name}. TF Serving reads "01" as version 1 too, so names
      are parsed as integers.
    """
    if not tf.io.gfile.isdir(export_base):
        return {}
    names = [name.rstrip("/") for name in tf.io.gfile.listdir(export_base)]
    return {int(name): name for name in names
            if name.isdigit() and name.isascii()
            and tf.io.gfile.isdir(os.path.join(export_base, name))}


def next_version(export_base):
    """The next free version: one more than the highest, 1 for an empty base."""
    versions = list_versions(export_base)
    return max(versions) + 1 if versions else 1


def _rename_dir(source, target):
    """Moves a directory. On a local disk a rename: atomic, and it fails (EEXIST or
    ENOTEMPTY) when `target` exists. On object storage, where a "directory" is a name
    prefix and renames are copies, the files are copied with `saved_model.pb` last (TF
    Serving loads a version only once that file exists), then `source` is deleted."""
    if fileio.is_local(source):
        os.rename(source, target)
        return
    if tf.io.gfile.exists(target):
        raise OSError(errno.EEXIST, "exists", target)
    # Only names that exist: TensorFlow's ram:// lists a phantom "assets/.extra" beside
    # the real "assets.extra/" (it matches names by prefix).
    files = [os.path.join(root, name) for root, _, names in tf.io.gfile.walk(source)
             for name in names if tf.io.gfile.exists(os.path.join(root, name))]
    files.sort(key=lambda path: os.path.basename(path) == SAVED_MODEL_FILE)
    for path in files:
        destination = os.path.join(target, os.path.relpath(path, source))
        tf.io.gfile.makedirs(os.path.dirname(destination))
        # Read and write, not tf.io.gfile.copy: not every filesystem plugin implements
        # a server-side copy (TensorFlow's ram:// does not).
        with tf.io.gfile.GFile(path, "rb") as src, tf.io.gfile.GFile(destination, "wb") as dst:
            dst.write(src.read())
    fileio.remove_tree(source)


def move_into_place(tmp, export_base, version, explicit, overwrite):
    """Renames `tmp` to export_base/<version>; returns the final path."""
    for _ in range(100):
        existing = list_versions(export_base).get(version)
        final = os.path.join(export_base, str(version))
        old = None
        if existing is not None:
            if not overwrite:
                if explicit:
                    raise ExportError(_exists_message(export_base, version))
                # Another export took this version meanwhile: take the next one.
                version = next_version(export_base)
                continue
            # POSIX cannot rename onto a non-empty directory: move the old version aside
            # first (TF Serving sees it gone for an instant, never half-written).
            old = _make_hidden_dir(export_base, f"{_ASIDE}-{existing}")
            _rename_dir(os.path.join(export_base, existing), os.path.join(old, existing))
        try:
            _rename_dir(tmp, final)
        except OSError as e:
            if old is not None:
                _rename_dir(os.path.join(old, existing), os.path.join(export_base, existing))
                remove_quietly(old)
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY) and not explicit:
                version = next_version(export_base)
                continue
            raise ExportError(f"cannot move the export into {final}: {e}") from None
        if old is not None:
            remove_quietly(old)
        return final
    raise ExportError(f"no free version in {export_base} after 100 tries.")


def _exists_message(export_base, version):
    return (f"version {version} already exists in {export_base}; pass --overwrite to "
            f"replace it, or omit --version to write the next free version "
            f"({next_version(export_base)}).")


def check_target(export_base, version, overwrite):
    """Fails early (before any loading) on a bad --export_dir or a taken --version."""
    version = parse_version(version)
    if not export_base:
        raise ExportError("--export_dir is required (e.g. --export_dir=export/NAME).")
    if tf.io.gfile.exists(export_base) and not tf.io.gfile.isdir(export_base):
        raise ExportError(f"--export_dir={export_base!r} exists and is not a directory.")
    if tf.io.gfile.exists(os.path.join(export_base, SAVED_MODEL_FILE)):
        raise ExportError(f"--export_dir={export_base!r} is itself a SavedModel; give its "
                          "parent, the directory TF Serving watches (export/NAME).")
    if version is not None and version in list_versions(export_base) and not overwrite:
        raise ExportError(_exists_message(export_base, version))
    return version


def remove_dead_hidden_dirs(export_base):
    """Cleans up after exports that were killed (`dac_tf.scratch.abandoned`: the owner
    a hidden folder's name records is gone, or it records none).

    `.tmp-export-*` (a version being written) is deleted. `.old-V-*` holds version V
    moved aside by `--overwrite`: it is deleted when the new V is in place, and moved
    back when the kill came before that, so an interrupted overwrite never loses the
    version that was served. A live export's folders are left alone.
    """
    for name in tf.io.gfile.listdir(export_base):
        name = name.rstrip("/")
        version = name.split("-")[1] if name.startswith(f"{_ASIDE}-") else None
        if not (name.startswith(f"{_WRITING}-") or (version or "").isdigit()):
            continue
        if not scratch.abandoned(name):
            continue
        path = os.path.join(export_base, name)
        if version is not None:
            target = os.path.join(export_base, version)
            saved = os.path.join(path, version)
            if not tf.io.gfile.exists(target) and tf.io.gfile.isdir(saved):
                _rename_dir(saved, target)
        remove_quietly(path)


def remove_quietly(path):
    """`fileio.remove_tree`, leaving what cannot be removed to its owner."""
    try:
        fileio.remove_tree(path)
    except (OSError, tf.errors.OpError):
        pass   # another process's to clean


def make_version_dir(export_base):
    """A new hidden folder to write a version into (`.tmp-export-<owner>`)."""
    return _make_hidden_dir(export_base, _WRITING)


def _make_hidden_dir(parent, prefix):
    # Hidden and non-numeric, so TF Serving never loads it; os.mkdir (unlike mkdtemp's
    # 0700) honours the umask, so a server running as another user can read the version.
    path = os.path.join(parent, scratch.scratch_name(prefix))
    if fileio.is_local(path):
        os.mkdir(path)
    else:
        tf.io.gfile.makedirs(path)
    return path

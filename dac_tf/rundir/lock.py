"""`.lock`: one training process per run directory (`RunLock`).

The lock records its holder as `dac_tf.scratch` records the owner of any scratch file
(host, pid, process start time), and takes over a lock only by `scratch`'s one rule:
its holder is gone (`scratch.Owner.is_gone`, which survives pid reuse).
"""

import contextlib
import errno
import json
import math
import os
import socket
import threading
import time

try:
    import fcntl
except ImportError:   # not on POSIX: the lock's take-over is not serialized
    fcntl = None

import tensorflow as tf

from dac_tf import fileio
from dac_tf import scratch
from dac_tf.rundir import RunDirError

LOCK_FILE = ".lock"
# A lock whose holder runs on another host cannot be checked by pid; it is stale when it
# has not been refreshed for this long (the holder refreshes it every _HEARTBEAT_SECONDS).
STALE_LOCK_SECONDS = 600
_HEARTBEAT_SECONDS = 60


def parse_lock_record(text):
    """The holder named by a lock file's content, or None when it is not a lock record.

    A record is a JSON object with `pid` (int > 0), `host` (non-empty str), `start`
    (int clock ticks since boot, or null) and `time` (finite seconds since the epoch);
    other keys are ignored. Empty, non-JSON or wrongly typed content is not a record.
    """
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    pid, host, start, when = (record.get(k) for k in ("pid", "host", "start", "time"))

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if not (is_int(pid) and pid > 0 and isinstance(host, str) and host
            and (start is None or is_int(start))
            and (is_int(when) or isinstance(when, float)) and math.isfinite(when)):
        return None
    return dict(pid=pid, host=host, start=start, time=float(when))


@contextlib.contextmanager
def _serialized(directory, timeout=30.0):
    """Holds an exclusive `flock` on `directory` (local disks), so that the processes
    (and threads) taking a run's lock check and replace a stale one one at a time.

    Without it two contenders that both judged a lock stale could each remove it, the
    second removing the fresh lock of the first. Elsewhere (object stores, file systems
    without flock) it does nothing.
    """
    fd = None
    if fcntl is not None and fileio.is_local(directory):
        try:
            fd = os.open(directory, os.O_RDONLY)
        except OSError:
            fd = None
    try:
        deadline = time.monotonic() + timeout
        while fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RunDirError(f"--model_dir={directory}: another process has been "
                                      f"taking its lock for {timeout:.0f} s; try again.")
                time.sleep(0.005)
            except OSError:
                break   # no flock on this file system: unserialized
        yield
    finally:
        if fd is not None:
            os.close(fd)   # releases the flock


class RunLock:
    """One training process per run directory.

    `acquire` creates `model_dir/.lock` holding the pid, host and start time of this
    process (a record, `parse_lock_record`) and refreshes it every minute. The file is
    created whole: written under a temporary name, then hard-linked to `.lock`, which
    fails if `.lock` exists (on object stores: written whole, then read back to see who
    won). So a lock is never seen empty or half-written, and any content other than a
    record was not written by a live dac_tf process.

    The rule for an existing lock: it is taken over only when it provably belongs to no
    running training: its host is this one and its pid is not running or was reused by
    a process started at another time, or its host is another one and it was not
    refreshed for STALE_LOCK_SECONDS. Anything else is refused with the lock's path and
    what to do: a live holder, and content that is not a record (empty, not JSON, a
    list, wrong types), which proves nothing about a holder.
    """

    def __init__(self, model_dir):
        self.path = os.path.join(model_dir, LOCK_FILE)
        self._stop = threading.Event()
        self._thread = None
        self._content = None
        self.held = False

    def _record(self):
        owner = scratch.Owner.current()
        return dict(pid=owner.pid, host=socket.gethostname(), start=owner.start,
                    time=owner.time)

    def _read(self):
        """The lock file's text (undecodable bytes replaced), or None when it is absent."""
        try:
            with tf.io.gfile.GFile(self.path, "rb") as f:
                return f.read().decode("utf-8", errors="replace")
        except (OSError, tf.errors.OpError):
            return None

    def holder(self):
        """The holder named by the lock (`parse_lock_record`), or None (no lock, or
        content that is not a record)."""
        text = self._read()
        return None if text is None else parse_lock_record(text)

    def _stale(self, holder):
        # The holder refreshes `time` every _HEARTBEAT_SECONDS, so on another host it is
        # gone once STALE_LOCK_SECONDS passed without a refresh.
        owner = scratch.Owner.of_host(holder["host"], holder["pid"], holder["start"],
                                      holder["time"])
        return owner.is_gone(stale_after=STALE_LOCK_SECONDS)

    def _create(self, content):
        """Creates the lock with `content` unless it exists; whether it did."""
        if fileio.is_local(self.path):
            tmp = fileio.temporary_name(self.path)
            try:
                with open(tmp, "w", encoding="utf-8") as f:
                    f.write(content)
                    f.flush()
                    os.fsync(f.fileno())
                os.link(tmp, self.path)   # atomic, and fails if the lock exists
                return True
            except FileExistsError:
                return False
            except FileNotFoundError:
                return False   # the directory went away meanwhile
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                    raise
                # No hard links on this file system: create exclusively, then fill. A
                # contender may see it empty for an instant; empty is refused, never
                # taken over, so this stays safe.
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(content)
                return True
            finally:
                try:
                    os.remove(tmp)
                except OSError:
                    pass
        # Object stores have no exclusive create: write, then read back who won.
        if tf.io.gfile.exists(self.path):
            return False
        fileio.write_atomic(self.path, content)
        return self._read() == content

    def _remove_if_unchanged(self, text):
        """Removes the lock if it still holds `text` (the stale record judged)."""
        if self._read() == text:
            try:
                tf.io.gfile.remove(self.path)
            except (OSError, tf.errors.OpError):
                pass

    def acquire(self):
        """Takes the lock or raises RunDirError (a live holder, or a lock file that is
        not a record), naming the lock file and what to do."""
        model_dir = os.path.dirname(self.path)
        with _serialized(model_dir):
            for _ in range(3):
                content = json.dumps(self._record())
                if self._create(content):
                    self._content, self.held = content, True
                    self._thread = threading.Thread(target=self._heartbeat, daemon=True)
                    self._thread.start()
                    return self
                text = self._read()
                if text is None:
                    continue   # released in between
                holder = parse_lock_record(text)
                if holder is None:
                    shown = "is empty" if not text.strip() else (
                        f"holds {text[:40]!r}{'...' if len(text) > 40 else ''}, not a lock "
                        "record")
                    raise RunDirError(
                        f"--model_dir={model_dir}: its lock file {self.path} {shown}, so "
                        "whether a training process uses the run cannot be told; if none "
                        f"does, delete {self.path} and start again.")
                if self._stale(holder):
                    self._remove_if_unchanged(text)
                    continue
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["time"]))
                raise RunDirError(
                    f"--model_dir={model_dir} is in use by another training process "
                    f"(pid {holder['pid']} on host {holder['host']}, lock refreshed "
                    f"{since}); wait for it to finish or stop it, or choose another "
                    f"--model_dir. If that process is gone, delete {self.path}.")
        raise RunDirError(f"cannot take the lock {self.path}; another process keeps "
                          "creating it.")

    def _heartbeat(self):
        while not self._stop.wait(_HEARTBEAT_SECONDS):
            try:
                if self._read() != self._content:
                    return   # taken over (this process was judged gone): never clobber
                content = json.dumps(self._record())
                fileio.write_atomic(self.path, content)
                self._content = content
            except (OSError, tf.errors.OpError):
                pass   # a missed refresh only makes the lock look older

    def release(self):
        if not self.held:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            if self._read() == self._content:
                tf.io.gfile.remove(self.path)
        except (OSError, tf.errors.OpError):
            pass
        self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()



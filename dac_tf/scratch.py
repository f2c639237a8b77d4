"""Who owns a scratch file, folder or lock, and whether that owner is gone.

A killed process leaves what it was writing: the temporary file of an atomic write
(`dac_tf.fileio.write_atomic`), the hidden folders of an export being written or moved
aside (`dac_tf.serving`), a run directory's lock (`dac_tf.rundir.RunLock`). Each records
its owner (`Owner`): a tag of the host name, the pid, the start time of that process
(Linux: clock ticks since boot, from /proc/PID/stat) and when the record was made. A
scratch name carries it (`scratch_name`); the lock holds it as JSON. One rule,
`Owner.is_gone`, decides whether a leftover may be deleted or a lock taken over:

- on this host the owner is gone when its pid runs no process, or runs one that started
  at another time: the pid was reused. A pid alone cannot tell a reused pid from the
  owner, so a leftover could be kept forever, or a live lock taken over;
- another host's processes cannot be looked at: its owner counts as gone once the
  record is older than `stale_after`. The lock refreshes its record every minute and
  passes 10 minutes; a scratch name is never refreshed, and no dac_tf write lasts
  `SCRATCH_STALE_SECONDS` (a day).
"""

import dataclasses
import os
import re
import socket
import time
import uuid
import zlib

# A scratch leftover of another host is judged gone after this long: no write of
# dac_tf (an atomic file replacement, an export with its round-trip check) lasts a day.
SCRATCH_STALE_SECONDS = 24 * 3600
# "-PID-START-HOST-TIME-RANDOM" at the end of a scratch name (START "x": unknown).
_TOKEN = re.compile(r"-(\d+)-(\d+|x)-([0-9a-f]{8})-(\d+)-[0-9a-f]{8}$")


def process_start(pid):
    """The start time of process `pid` in clock ticks since boot (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            # Field 22; the command name (field 2, in parentheses) may hold spaces.
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def host_id(host=None):
    """A short tag of a host name (this host's by default): 8 hex digits of its CRC32."""
    host = socket.gethostname() if host is None else host
    return f"{zlib.crc32(host.encode('utf-8')):08x}"


@dataclasses.dataclass(frozen=True)
class Owner:
    """The process that owns a scratch file, folder or lock.

    Attributes:
      host_id: `host_id()` of its host.
      pid: its process id.
      start: its start time in clock ticks since boot, or None where /proc is missing.
      time: when the record was made, seconds since the epoch.
    """

    host_id: str
    pid: int
    start: int | None
    time: float

    @classmethod
    def current(cls):
        """This process, now."""
        pid = os.getpid()
        return cls(host_id(), pid, process_start(pid), time.time())

    @classmethod
    def of_host(cls, host, pid, start, when):
        """The owner a record names by its host name (a lock record)."""
        return cls(host_id(host), pid, start, when)

    @property
    def on_this_host(self):
        return self.host_id == host_id()

    def is_gone(self, stale_after=None):
        """Whether this owner runs no more (see the module docstring for the rule).

        Args:
          stale_after: seconds after which another host's record counts as gone; None:
            never (another host's owner is then never judged gone).

        Returns:
          True on this host when the pid is not running or was reused by a process
          started at another time; on another host when the record is older than
          `stale_after`.
        """
        if not self.on_this_host:
            return stale_after is not None and time.time() - self.time > stale_after
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass   # running, as another user
        running_start = process_start(self.pid)
        return (self.start is not None and running_start is not None
                and running_start != self.start)


def scratch_name(prefix):
    """A unique name starting with `prefix` that records this process as its owner.

    Args:
      prefix: e.g. "metrics.csv.tmp" or ".tmp-export".

    Returns:
      `prefix` + "-PID-START-HOST-TIME-RANDOM" (`owner_of` reads it back).
    """
    owner = Owner.current()
    start = "x" if owner.start is None else str(owner.start)
    return (f"{prefix}-{owner.pid}-{start}-{owner.host_id}-{int(owner.time)}-"
            f"{uuid.uuid4().hex[:8]}")


def owner_of(name):
    """The `Owner` a `scratch_name` records, or None when `name` records none."""
    match = _TOKEN.search(name.rstrip("/"))
    if match is None:
        return None
    pid, start, host, when = match.groups()
    return Owner(host, int(pid), None if start == "x" else int(start), float(when))


def abandoned(name):
    """Whether a scratch leftover called `name` may be deleted: it records an owner that
    is gone (`SCRATCH_STALE_SECONDS` for another host's), or records none (dac_tf's
    writers always record one: a name without is a copy or from an older dac_tf)."""
    owner = owner_of(name)
    return owner is None or owner.is_gone(SCRATCH_STALE_SECONDS)

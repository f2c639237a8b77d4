"""`dac_tf.rundir`: the run lock (records, take-over, races).

The metrics file and `inspect` are exercised through the training CLI in
tests/test_run_integrity.py (damaged runs, resumes) and tests/test_train.py.
"""

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from dac_tf import rundir
from dac_tf import scratch


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_run_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    lock = rundir.RunLock(str(tmp_path)).acquire()
    try:
        with pytest.raises(rundir.RunDirError, match=f"pid {os.getpid()} on host"):
            rundir.RunLock(str(tmp_path)).acquire()
    finally:
        lock.release()
    assert not (tmp_path / rundir.LOCK_FILE).exists()
    # A lock from a process that is gone is stale.
    holder = dict(pid=_dead_pid(), host=os.uname().nodename, start=None, time=time.time())
    (tmp_path / rundir.LOCK_FILE).write_text(json.dumps(holder))
    with rundir.RunLock(str(tmp_path)) as taken:
        assert taken.holder()["pid"] == os.getpid()
    # Another host's lock is trusted until it has not been refreshed for a while.
    holder.update(host="elsewhere", pid=1)
    (tmp_path / rundir.LOCK_FILE).write_text(json.dumps(holder))
    with pytest.raises(rundir.RunDirError, match="host elsewhere"):
        rundir.RunLock(str(tmp_path)).acquire()
    holder["time"] = time.time() - rundir.STALE_LOCK_SECONDS - 1
    (tmp_path / rundir.LOCK_FILE).write_text(json.dumps(holder))
    rundir.RunLock(str(tmp_path)).acquire().release()


def test_a_reused_pid_is_stale_and_the_same_process_start_is_not(tmp_path):
    """Same host, live pid: the holder is that process only if it started when the lock
    says (/proc start time); otherwise the pid was reused and the lock is stale."""
    start = scratch.process_start(os.getpid())
    if start is None:
        pytest.skip("needs /proc")
    holder = dict(pid=os.getpid(), host=os.uname().nodename, start=start, time=time.time())
    (tmp_path / rundir.LOCK_FILE).write_text(json.dumps(holder))
    with pytest.raises(rundir.RunDirError, match="in use by another training process"):
        rundir.RunLock(str(tmp_path)).acquire()
    holder["start"] = start + 1            # the pid now runs a later process
    (tmp_path / rundir.LOCK_FILE).write_text(json.dumps(holder))
    with rundir.RunLock(str(tmp_path)) as taken:
        assert taken.holder()["start"] == start


_HOST = os.uname().nodename


@pytest.mark.parametrize("content", [
    b"", b"  \n", b"garbage", b"\xff\xfe\x00binary", b"[1, 2]", b'"a string"', b"null",
    b'{"pid": "abc", "host": "%s", "start": null, "time": 1.0}' % _HOST.encode(),
    b'{"pid": 1, "host": "%s", "start": null, "time": "yesterday"}' % _HOST.encode(),
    b'{"pid": true, "host": "%s", "start": null, "time": 1.0}' % _HOST.encode(),
    b'{"pid": 1, "host": ["%s"], "start": null, "time": 1.0}' % _HOST.encode(),
    b'{"pid": 1, "host": "%s", "start": "x", "time": 1.0}' % _HOST.encode(),
    b'{"pid": 1, "host": "%s", "start": null, "time": NaN}' % _HOST.encode(),
    b'{"pid": -5, "host": "%s", "start": null, "time": 1.0}' % _HOST.encode(),
    b'{"pid": 123}',
])
def test_a_lock_that_is_not_a_record_is_refused_with_how_to_clear_it(tmp_path, content):
    """One rule for any content: only a record that proves its holder gone is taken
    over; anything else is refused (never a traceback, never a silent take-over)."""
    lock = tmp_path / rundir.LOCK_FILE
    lock.write_bytes(content)
    with pytest.raises(rundir.RunDirError) as refused:
        rundir.RunLock(str(tmp_path)).acquire()
    message = str(refused.value)
    assert str(lock) in message and f"delete {lock}" in message and "\n" not in message
    assert lock.read_bytes() == content


def test_a_lock_file_being_created_is_never_seen_partial(tmp_path):
    """The lock is created whole: a reader polling it while processes take and release
    it sees no file or a complete record, never an empty or half-written one (which a
    contender could otherwise mistake for a stale lock)."""
    path = tmp_path / rundir.LOCK_FILE
    seen, stop = [], threading.Event()

    def poll():
        while not stop.is_set():
            try:
                seen.append(path.read_bytes())
            except FileNotFoundError:
                pass

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        for _ in range(300):
            rundir.RunLock(str(tmp_path)).acquire().release()
    finally:
        stop.set()
        reader.join()
    assert seen, "the reader never saw the lock"
    partial = [text for text in seen if rundir.parse_lock_record(text.decode()) is None]
    assert partial == []


def test_contenders_for_a_stale_lock_end_with_exactly_one_holder(tmp_path):
    """Six contenders (threads: separate opens of the directory) find the same stale
    lock at once; one takes it over, the others are refused naming the live holder. A
    contender that removed the stale lock after another had replaced it would make two
    holders."""
    path = tmp_path / rundir.LOCK_FILE
    for _ in range(30):
        stale = dict(pid=_dead_pid(), host=_HOST, start=None, time=time.time())
        path.write_text(json.dumps(stale))
        barrier, holders, refused = threading.Barrier(6), [], []

        def contend():
            barrier.wait()
            try:
                holders.append(rundir.RunLock(str(tmp_path)).acquire())
            except rundir.RunDirError as e:
                refused.append(str(e))

        threads = [threading.Thread(target=contend) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(holders) == 1 and len(refused) == 5, (holders, refused)
        assert all(f"pid {os.getpid()}" in r for r in refused)
        holders[0].release()
        assert not path.exists()

"""`dac_tf.scratch`: who owns a scratch name or lock, and the one rule for "gone"."""

import os
import subprocess
import sys
import time

from dac_tf import scratch


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_this_process_is_not_gone_and_an_exited_one_is():
    me = scratch.Owner.current()
    assert (me.host_id, me.pid) == (scratch.host_id(), os.getpid())
    assert not me.is_gone() and not me.is_gone(stale_after=0)
    exited = scratch.Owner(scratch.host_id(), dead_pid(), None, time.time())
    assert exited.is_gone()


def test_a_reused_pid_is_gone_and_the_same_process_start_is_not():
    """A live pid is the owner only if it started when the record says: otherwise the
    pid was reused. Without a start time (no /proc) a live pid counts as the owner."""
    start = scratch.process_start(os.getpid())
    if start is None:
        import pytest  # noqa: PLC0415
        pytest.skip("needs /proc")
    now = time.time()
    assert not scratch.Owner(scratch.host_id(), os.getpid(), start, now).is_gone()
    assert scratch.Owner(scratch.host_id(), os.getpid(), start + 1, now).is_gone()
    assert not scratch.Owner(scratch.host_id(), os.getpid(), None, now).is_gone()


def test_another_hosts_owner_is_gone_only_after_stale_after():
    fresh = scratch.Owner.of_host("elsewhere", 1, None, time.time())
    old = scratch.Owner.of_host("elsewhere", 1, None, time.time() - 601)
    assert not fresh.on_this_host and scratch.host_id("elsewhere") == fresh.host_id
    assert not fresh.is_gone() and not fresh.is_gone(stale_after=600)
    assert not old.is_gone() and old.is_gone(stale_after=600)


def test_scratch_names_record_their_owner_and_are_unique():
    before = int(time.time())
    name = scratch.scratch_name("metrics.csv.tmp")
    owner = scratch.owner_of(name)
    assert name.startswith("metrics.csv.tmp-") and name != scratch.scratch_name("metrics.csv.tmp")
    assert (owner.host_id, owner.pid, owner.start) == (
        scratch.host_id(), os.getpid(), scratch.process_start(os.getpid()))
    assert before <= owner.time <= time.time()
    assert scratch.owner_of(name + "/") == owner          # a listed folder name
    assert not scratch.abandoned(name)


def test_leftovers_of_gone_writers_and_names_without_an_owner_are_abandoned():
    pid = dead_pid()
    dead = f".tmp-export-{pid}-x-{scratch.host_id()}-{int(time.time())}-abcd1234"
    assert scratch.owner_of(dead).pid == pid and scratch.abandoned(dead)
    # Another host's leftover: kept for SCRATCH_STALE_SECONDS after it was named.
    other = scratch.host_id("elsewhere")
    recent = f"a.tmp-1-5-{other}-{int(time.time())}-abcd1234"
    old = f"a.tmp-1-5-{other}-{int(time.time() - scratch.SCRATCH_STALE_SECONDS - 1)}-abcd1234"
    assert not scratch.abandoned(recent) and scratch.abandoned(old)
    # An older dac_tf's "PID-RANDOM" (or any name without a record) records no owner.
    for name in ("metrics.csv.tmp-123-abcd", ".old-1-456-abcd1234", "x.tmp-probe"):
        assert scratch.owner_of(name) is None and scratch.abandoned(name)

"""`dac_tf.fileio`: temporary names and the cleanup of killed writers' leftovers."""

import os
import time

from dac_tf import fileio
from dac_tf import scratch
from test_scratch import dead_pid


def test_remove_temporaries_removes_gone_writers_leftovers_only(tmp_path):
    live = os.path.basename(fileio.temporary_name(str(tmp_path / "metrics.csv")))
    dead = (f"eval_best.json.tmp-{dead_pid()}-x-{scratch.host_id()}-{int(time.time())}-"
            "abcd1234")
    names = [live, dead, "config.json.tmp-123-abcd", "metrics.csv", "eval_best.json"]
    for name in names:
        (tmp_path / name).write_text("x")
    (tmp_path / "ckpt.tmp-9-abcd").mkdir()                      # a folder, recorded by none
    (tmp_path / "ckpt.tmp-9-abcd" / "part").write_text("x")
    assert fileio.remove_temporaries(str(tmp_path), prefix="eval_best.json") == [
        str(tmp_path / dead)]
    removed = fileio.remove_temporaries(str(tmp_path))
    assert sorted(removed) == sorted(str(tmp_path / n) for n in
                                     ("config.json.tmp-123-abcd", "ckpt.tmp-9-abcd"))
    assert sorted(os.listdir(tmp_path)) == sorted([live, "metrics.csv", "eval_best.json"])


def test_write_atomic_leaves_no_temporary_file(tmp_path):
    path = str(tmp_path / "a.json")
    fileio.write_json_atomic(path, {"b": 1, "a": [2]})
    fileio.write_atomic(path + ".bin", b"\x00\x01")
    assert sorted(os.listdir(tmp_path)) == ["a.json", "a.json.bin"]
    assert fileio.read_json(path) == {"a": [2], "b": 1}

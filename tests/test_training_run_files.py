"""dac_tf.training.run_files: creating a run directory and cleaning after killed writers.

On a temporary folder, without training: what a failed creation leaves (nothing), what
the leftovers of killed writers are (temporary files, `_temp` checkpoint folders, worker
scratch folders) and that nothing else is touched.
"""

import os

import pytest

from dac_tf import checkpoints
from dac_tf import fileio
from dac_tf import rundir
from dac_tf.training import run_files


def test_create_model_dir_reports_the_outermost_folder_it_made(tmp_path):
    target = tmp_path / "a" / "b" / "run"
    assert run_files.first_missing_ancestor(str(target)) == str(tmp_path / "a")
    assert run_files.create_model_dir(str(target)) == str(tmp_path / "a")
    assert target.is_dir()
    assert run_files.create_model_dir(str(target)) is None     # exists: nothing made


def test_a_model_dir_that_cannot_be_created_leaves_none_of_its_parents(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(rundir.RunDirError, match="cannot be created"):
        run_files.create_model_dir(str(tmp_path / "new" / "file_parent" / ("c" * 300)))
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_remove_empty_folders_stops_at_a_folder_that_holds_something(tmp_path):
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (tmp_path / "a" / "keep.txt").write_text("x")
    run_files.remove_empty_folders(str(deep), str(tmp_path / "a"))
    assert sorted(os.listdir(tmp_path / "a")) == ["keep.txt"]


def test_remove_leftovers_removes_only_what_killed_writers_leave(tmp_path):
    model_dir = tmp_path / "run"
    last = model_dir / checkpoints.LAST_DIR
    last.mkdir(parents=True)
    (last / "ckpt-1.index").write_bytes(b"i")
    (last / "ckpt-2_temp").mkdir()
    (model_dir / f"metrics.csv{fileio.TMP_MARKER}123-abcd").write_text("half")
    (model_dir / "metrics.csv").write_text("epoch\n1\n")
    (model_dir / run_files.worker_scratch_dir("", 1)).mkdir()
    removed = run_files.remove_leftovers(str(model_dir))
    assert len(removed) == 3
    assert sorted(os.listdir(model_dir)) == [checkpoints.LAST_DIR, "metrics.csv"]
    assert os.listdir(last) == ["ckpt-1.index"]

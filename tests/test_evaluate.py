"""The evaluation program `python -m dac_tf.evaluate`: flags, outputs, resume, one-line
errors, and an end-to-end run in a subprocess on a fabricated training run directory.

The training run holds the small CNN trained for a few seconds on sklearn's 8x8 digits
(tests/conftest.py, once per session, shared with the library's tests:
tests/test_evaluation_*.py).
"""

import json
import os
import subprocess
import sys

from absl import flags
import keras
import numpy as np
import pytest
import tensorflow as tf

from dac_tf import checkpoints
from dac_tf import evaluate
from dac_tf import fileio
from dac_tf.evaluation import loading
from dac_tf.evaluation import results
from dac_tf.evaluation import suite
from dac_tf.evaluation import table
from helpers_evaluation import EPS
from helpers_evaluation import WIDTHS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run_dir(trained, tmp_path_factory):
    """A training run directory as dac_tf.train lays it out (config.json, best/, last)."""
    model_dir = str(tmp_path_factory.mktemp("run") / "digits_run")
    os.makedirs(model_dir)
    fileio.write_json_atomic(checkpoints.config_path(model_dir), dict(
        arch="small_cnn", num_classes=10, input_shape=[8, 8, 1], normalization="none",
        dataset="digits", epsilon=EPS, norm="linf", arch_kwargs=dict(widths=list(WIDTHS))))
    ckpt = tf.train.Checkpoint(model=trained)
    for sub in (checkpoints.BEST_DIR, checkpoints.LAST_DIR):
        tf.train.CheckpointManager(ckpt, os.path.join(model_dir, sub), max_to_keep=1).save()
    return model_dir


# ----------------------------------------------------------------------------- CLI
def test_cli_refuses_a_run_whose_weights_overflowed(trained, tmp_path, capsys):
    """`evaluate` on a run whose checkpoint gives Inf/NaN logits: exit 2, one line, and
    no result file (it used to report accuracies and exit 0)."""
    overflowed = keras.models.clone_model(trained)
    overflowed.set_weights([w * np.float32(1e38) if w.ndim > 1 else w
                            for w in trained.get_weights()])
    model_dir = str(tmp_path / "overflowed")
    os.makedirs(model_dir)
    fileio.write_json_atomic(checkpoints.config_path(model_dir), dict(
        arch="small_cnn", num_classes=10, input_shape=[8, 8, 1], normalization="none",
        dataset="digits", epsilon=EPS, norm="linf", arch_kwargs=dict(widths=list(WIDTHS))))
    tf.train.CheckpointManager(tf.train.Checkpoint(model=overflowed),
                               os.path.join(model_dir, checkpoints.LAST_DIR), 1).save()
    output = tmp_path / "r.json"
    code, err = _main([f"--model={model_dir}", "--checkpoint=last", "--attacks=clean,pgd2",
                       "--num_examples=40", "--noprogress", f"--output={output}"], capsys)
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: ") and "non-finite logits" in err[0]
    assert model_dir in err[0] and "last checkpoint" in err[0]
    assert not output.exists()


def _cli(args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "-m", "dac_tf.evaluate", *args], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_cli_end_to_end_on_a_training_run(run_dir, tmp_path):
    out = tmp_path / "res" / "results.json"
    proc = _cli([f"--model={run_dir}", "--checkpoint=best", "--attacks=clean,fgsm,pgd5",
                 "--num_examples=50", "--batch_size=16", f"--output={out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for key in ("model", "dataset", "split", "epsilon", "epsilon_255", "num_examples",
                "accuracy", "worst_case_accuracy", "robust_flags", "seconds",
                "autoattack_components", "adversarial_certainty", "sanity_checks"):
        assert key in result, key
    assert result["dataset"] == "digits" and result["split"] == "test"
    assert result["epsilon"] == pytest.approx(EPS)          # the run's own epsilon
    assert result["epsilon_255"] == pytest.approx(EPS * 255)
    assert result["num_examples"] == 50 and result["complete"]
    assert list(result["accuracy"]) == ["clean", "fgsm", "pgd5"]
    assert all(len(result["robust_flags"][a]) == 50 for a in result["accuracy"])
    assert result["adversarial_certainty"]["attack"] == "pgd5"
    assert result["adversarial_certainty"]["measure"] == "std"
    assert all(c["passed"] for c in result["sanity_checks"])
    text = (tmp_path / "res" / "results.md").read_text()
    assert "| Model | Clean | FGSM | PGD-5 | Worst case |" in text
    row = next(line for line in text.splitlines() if line.startswith("| digits_run (best)"))
    assert f"| {100 * result['accuracy']['pgd5']:.2f} |" in row
    assert "| Model | Clean | FGSM | PGD-5 | Worst case |" in proc.stdout
    assert "Traceback" not in proc.stderr

    # Bad flags: one line on stderr, non-zero exit, no traceback.
    proc = _cli([f"--model={run_dir}", "--attacks=clean,pgd20,deepfool",
                 f"--output={tmp_path / 'x.json'}"])
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "deepfool" in errors[0] and "pgdK" in errors[0]


def _flag_values(argv):
    flag_values = flags.FlagValues()
    evaluate.define_flags(flag_values)
    flag_values(["evaluate", *argv])
    return flag_values


def _config(argv):
    return evaluate.config_from_flags(_flag_values(argv))


def _main(argv, capsys):
    flag_values = _flag_values(argv)
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["evaluate"], flag_values)
    err = capsys.readouterr().err.strip().splitlines()
    return exit_info.value.code, err


@pytest.mark.parametrize("argv,needle", [
    (["--epsilon=-1"], "--epsilon"),
    (["--epsilon=0.031"], "--epsilon=7.905"),
    (["--checkpoint=middle"], "best, last"),
    (["--split=val"], "test, train"),
    (["--norm=l1"], "linf, l2"),
    (["--attacks=pgd"], "pgdK"),
    (["--autoattack_attacks=apgd-ce,deepfool"], "apgd-ce, apgd-t, fab-t, square"),
    (["--batch_size=0"], "--batch_size"),
])
def test_cli_rejects_bad_flags_in_one_line(argv, needle, run_dir, tmp_path, capsys):
    code, err = _main([f"--model={run_dir}", f"--output={tmp_path / 'r.json'}", *argv], capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err


def test_cli_rejects_missing_paths_and_dataset_mismatch(run_dir, tmp_path, capsys):
    code, err = _main([f"--model={tmp_path / 'nope'}", f"--output={tmp_path / 'r.json'}"],
                      capsys)
    assert code == 2 and len(err) == 1 and "no such directory" in err[0]
    code, err = _main([f"--output={tmp_path / 'r.json'}"], capsys)
    assert code == 2 and len(err) == 1 and "--model" in err[0]
    code, err = _main([f"--model={run_dir}", f"--output={tmp_path / 'r.json'}",
                       "--dataset=npz:/does/not/exist.npz"], capsys)
    assert code == 2 and len(err) == 1


def test_cli_default_outputs(run_dir, tmp_path):
    config = _config([f"--model={run_dir}", "--checkpoint=last"])
    assert config.output == os.path.join(run_dir, "eval_last.json")
    # Several models, or a SavedModel: results/<names>.json in the current directory,
    # never inside an export.
    config = _config([f"--model={run_dir}", f"--model={run_dir}", "--checkpoint=last,best"])
    assert config.output == os.path.join("results", "digits_run_last-digits_run_best.json")
    config = _config([f"--model={tmp_path / 'export' / 'at_dac'}"])
    assert config.output == os.path.join("results", "at_dac.json")


@pytest.mark.parametrize("case", ["directory", "parent_is_file", "read_only"])
def test_unwritable_outputs_fail_in_one_line_before_any_attack(run_dir, tmp_path, capsys,
                                                               monkeypatch, case):
    if case == "directory":
        output, needle = tmp_path, "is a directory"
    elif case == "parent_is_file":
        (tmp_path / "file").write_text("x")
        output, needle = tmp_path / "file" / "r.json", "cannot be written"
    else:   # the default output inside a read-only run directory
        import errno
        output, needle = None, "Read-only file system"
        write_atomic = fileio.write_atomic

        def read_only(path, content):
            if str(path).startswith(str(run_dir)):
                raise OSError(errno.EROFS, "Read-only file system", str(path))
            return write_atomic(path, content)

        monkeypatch.setattr(fileio, "write_atomic", read_only)
    calls = []
    monkeypatch.setattr(loading, "load_logits_fn", lambda *a: calls.append(a))
    argv = [f"--model={run_dir}"] + ([f"--output={output}"] if output else [])
    code, err = _main(argv, capsys)
    assert code == 2 and len(err) == 1 and needle in err[0] and "--output" in err[0], err
    assert not calls          # refused before loading the model or running an attack


def test_hand_edited_resume_json_is_a_one_line_error(run_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = [f"--model={run_dir}", "--attacks=clean", "--num_examples=8", f"--output={out}",
            "--noprogress"]
    suite.evaluate_models(_config(argv))
    record = json.loads(out.read_text())
    for damage in ({"robust_flags": 5}, {"robust_flags": {"clean": "10x"}},
                   {"attack_settings": []}):
        out.write_text(json.dumps(dict(record, **damage)))
        code, err = _main([*argv, "--resume"], capsys)
        assert code == 2 and len(err) == 1 and "--resume cannot reuse it" in err[0], err
    out.write_text("{not json")
    code, err = _main([*argv, "--resume"], capsys)
    assert code == 2 and len(err) == 1 and str(out) in err[0]


def test_cli_two_models_one_table_and_resume(run_dir, tmp_path, capsys):
    out = tmp_path / "both.json"
    argv = [f"--model={run_dir}", f"--model={run_dir}", "--checkpoint=last,best",
            "--attacks=clean,pgd3", "--num_examples=20", "--batch_size=8", f"--output={out}",
            "--noprogress"]
    records, text = suite.evaluate_models(_config(argv))
    doc = json.loads(out.read_text())
    assert [r["model_label"] for r in doc["models"]] == ["digits_run (last)",
                                                         "digits_run (best)"]
    assert results.read_results(str(out)) == doc["models"]
    rows = [line for line in text.splitlines() if line.startswith("| digits_run")]
    assert len(rows) == 2 and (tmp_path / "both.md").read_text() == text

    # --resume with everything done reruns nothing and gives the same numbers.
    records2, _ = suite.evaluate_models(_config([*argv, "--resume"]))
    for a, b in zip(records, records2):
        assert a["accuracy"] == b["accuracy"] and a["seconds"] == b["seconds"]


def test_results_table_and_resume_on_a_url_output(run_dir):
    """`ram://` (TensorFlow's in-memory filesystem) stands in for gs://: the result file,
    its table and --resume all go through gfile."""
    out = "ram://evaluate_test/results/r.json"
    argv = [f"--model={run_dir}", "--attacks=clean,pgd2", "--num_examples=16",
            "--batch_size=8", f"--output={out}", "--noprogress"]
    first, text = suite.evaluate_models(_config(argv))
    stored = results.read_results(out)
    assert stored[0]["robust_flags"] == first[0]["robust_flags"]
    assert fileio.read_text(table.table_path(out)) == text
    again, _ = suite.evaluate_models(_config([*argv, "--resume"]))
    assert again[0]["seconds"] == first[0]["seconds"]   # every attack reused
    assert sorted(tf.io.gfile.listdir("ram://evaluate_test/results")) == ["r.json", "r.md"]


@pytest.mark.slow
def test_resume_never_reuses_results_of_other_weights(run_dir, trained, tmp_path):
    """`last` moved on (ckpt-1 -> ckpt-2) with the same clean predictions: the stored
    attack results belong to the old weights and must be recomputed, not reused."""
    import shutil
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    out = tmp_path / "last.json"
    argv = [f"--model={run}", "--checkpoint=last", "--attacks=clean,pgd3",
            "--num_examples=40", "--batch_size=8", f"--output={out}", "--noprogress"]
    first, _ = suite.evaluate_models(_config(argv))

    # Same argmax everywhere (logits scaled by 3), other gradients: a new `last`.
    moved = keras.models.clone_model(trained)
    moved.set_weights([w * 3 if i >= len(trained.weights) - 2 else w
                       for i, w in enumerate(trained.get_weights())])
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=moved),
                                         str(run / checkpoints.LAST_DIR), max_to_keep=1)
    manager.save(checkpoint_number=2)
    resumed, _ = suite.evaluate_models(_config([*argv, "--resume"]))
    fresh, _ = suite.evaluate_models(_config([a for a in argv if not a.startswith("--output")]
                                    + [f"--output={tmp_path / 'fresh.json'}"]))
    assert resumed[0]["robust_flags"]["__clean__"] == first[0]["robust_flags"]["__clean__"]
    assert resumed[0]["checkpoint_path"].endswith("ckpt-2")
    assert resumed[0]["model_fingerprint"] != first[0]["model_fingerprint"]
    assert resumed[0]["seconds"]["pgd3"] != first[0]["seconds"]["pgd3"]   # recomputed
    assert resumed[0]["robust_flags"]["pgd3"] == fresh[0]["robust_flags"]["pgd3"]

    # Other examples under the same flags (the data file changed): not reused either.
    record = dict(first[0], data_fingerprint="0" * 64)
    info = dict(first[0])
    assert results.matching_previous([record], info) is None
    assert results.matching_previous([first[0]], info) is first[0]


def test_official_autoattack_without_torch_fails_early_in_one_line(run_dir, tmp_path, capsys):
    try:
        import torch  # noqa: F401
        import autoattack  # noqa: F401
        pytest.skip("torch and autoattack are installed")
    except ImportError:
        pass
    code, err = _main([f"--model={run_dir}", f"--output={tmp_path / 'r.json'}",
                       "--attacks=clean,autoattack", "--autoattack_impl=official"], capsys)
    assert code == 2 and len(err) == 1 and "autoattack" in err[0].lower()
    assert not (tmp_path / "r.json").exists()



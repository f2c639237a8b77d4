"""dac_tf.evaluation.suite: the evaluation's config, checked before any model is loaded.

The runs themselves (a trained digits model evaluated into an output, `--resume`, a
`ram://` output) are in tests/test_evaluate.py.
"""

import inspect
import os

import pytest

from dac_tf import checkpoints
from dac_tf.evaluation import EvaluationError
from dac_tf.evaluation import runner
from dac_tf.evaluation import suite


def test_runner_kwargs_are_arguments_of_the_runner():
    """Every setting reaches `runner.evaluate_path` / `evaluate_model` under a name they
    take (the one place the settings object meets the runner's arguments)."""
    kwargs = suite.AttackSettings().runner_kwargs()
    takes = set(inspect.signature(runner.evaluate_model).parameters)
    assert set(kwargs) <= takes
    path_args = set(inspect.signature(runner.evaluate_path).parameters)
    resolved_by_path = {"dataset", "data_dir", "split", "num_examples", "previous_records",
                        "on_update"}
    assert resolved_by_path <= path_args
    # Every field of the config is either a runner argument or the suite's own business.
    own = {"model", "checkpoint", "output", "resume"}
    fields = {f for f in suite.EvalConfig.__dataclass_fields__}
    used = set(kwargs) | resolved_by_path | own | {"progress"} | {
        f for f in fields if f.startswith("autoattack_")}
    assert fields <= used


def test_one_checkpoint_for_all_models_or_one_each():
    config = suite.resolve(suite.EvalConfig(model=("a", "b"), checkpoint=("last",),
                                            attacks="clean"))
    assert config.checkpoint == ("last", "last")
    config = suite.resolve(suite.EvalConfig(model=("a", "b"), checkpoint=("last", "best"),
                                            attacks="clean"))
    assert config.checkpoint == ("last", "best")
    with pytest.raises(EvaluationError, match="--checkpoint lists 3 entries for 2"):
        suite.resolve(suite.EvalConfig(model=("a", "b"), checkpoint=("last",) * 3))
    with pytest.raises(EvaluationError, match="--model is required"):
        suite.resolve(suite.EvalConfig())


def test_the_default_output_of_a_run_is_where_the_export_looks(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / checkpoints.CONFIG_FILE).write_text("{}")
    assert suite.default_output((str(run),), ("last",)) == checkpoints.eval_result_path(
        str(run), "last") == os.path.join(str(run), "eval_last.json")
    assert suite.default_output((str(run), "export/at dac"), ("last", "best")) == \
        os.path.join("results", "run_last-at_dac.json")


@pytest.mark.parametrize("change, needle", [
    (dict(split="val"), "--split='val'"), (dict(norm="l1"), "--norm='l1'"),
    (dict(batch_size=0), "--batch_size=0"), (dict(cw_confidence=-1.0), "--cw_confidence"),
    (dict(attacks="clean,deepfool"), "deepfool"),
    (dict(autoattack_impl="torch"), "--autoattack_impl"),
])
def test_a_bad_setting_is_refused_before_any_model_is_loaded(change, needle):
    config = suite.EvalConfig(model=("/no/such/run",), **change)
    with pytest.raises(ValueError, match=needle):
        suite.resolve(config)

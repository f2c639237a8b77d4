"""Tests of dac_tf.evaluation.runner: `evaluate_model` on the trained small CNN (eps = 0 gives
clean accuracy, more steps never help, restarts keep the worst case, AutoAttack's components,
resume from a partial record, non-finite logits refused).

The trained small CNN on digits: tests/conftest.py (once per session)."""

import copy
import json

import numpy as np
import pytest
import tensorflow as tf

from dac_tf.evaluation import EvaluationError
from dac_tf.evaluation import attacks
from dac_tf.evaluation import runner
from dac_tf.evaluation import table
from helpers_evaluation import EPS
from helpers_evaluation import SMALL_AA
from helpers_evaluation import linear_fn


def test_eps_zero_gives_clean_accuracy_for_every_attack(digits, logits_fn):
    x, y = digits.x_test[:40], digits.y_test[:40]
    record = runner.evaluate_model(logits_fn, x, y, attacks="clean,fgsm,pgd5,cw5",
                                   epsilon=0.0, batch_size=16, show_progress=False)
    clean = np.mean(np.argmax(logits_fn(x).numpy(), -1) == y)
    assert clean > 0.5
    for name in ("clean", "fgsm", "pgd5", "cw5"):
        assert record["accuracy"][name] == pytest.approx(clean, abs=0)
    assert record["worst_case_accuracy"] == pytest.approx(clean, abs=0)


@pytest.mark.slow
def test_more_steps_never_help_on_a_trained_cnn(digits, logits_fn):
    x, y = digits.x_test, digits.y_test
    record = runner.evaluate_model(logits_fn, x, y, attacks="clean,fgsm,pgd20,pgd100",
                                   epsilon=EPS, batch_size=128, show_progress=False)
    acc = record["accuracy"]
    assert acc["clean"] > 0.9
    assert acc["pgd100"] <= acc["pgd20"] <= acc["fgsm"] < acc["clean"]
    assert acc["pgd100"] > 0.1   # non-trivial: the attack does not win everywhere
    assert acc["fgsm"] - acc["pgd20"] > 0.05
    names = {c["name"]: c["passed"] for c in record["sanity_checks"]}
    assert names["pgd100_not_above_pgd20"] and names["fgsm_not_below_pgd100"]
    assert all(c["passed"] for c in record["sanity_checks"])


def test_restarts_keep_the_per_example_worst_case(digits, logits_fn):
    x, y = digits.x_test[:64], digits.y_test[:64]
    common = dict(epsilon=EPS, batch_size=64, show_progress=False, sanity_checks=False)
    one = runner.evaluate_model(logits_fn, x, y, attacks="pgd2", **common)
    three = runner.evaluate_model(logits_fn, x, y, attacks="pgd2", pgd_restarts=3, **common)
    f1 = np.array([c == "1" for c in one["robust_flags"]["pgd2"]])
    f3 = np.array([c == "1" for c in three["robust_flags"]["pgd2"]])
    # Restart 0 uses the same seed with and without restarts, so 3 restarts can only
    # remove robust points.
    assert np.all(f3 <= f1)
    assert three["accuracy"]["pgd2"] <= one["accuracy"]["pgd2"]


def test_autoattack_through_evaluate_reports_its_components(digits, logits_fn):
    x, y = digits.x_test[:24], digits.y_test[:24]
    record = runner.evaluate_model(
        logits_fn, x, y, attacks="clean,autoattack", epsilon=EPS, batch_size=12,
        autoattack_options=dict(SMALL_AA, attacks=("apgd-ce", "square")),
        show_progress=False)
    assert record["autoattack_components"] == ["apgd-ce", "square"]
    assert record["columns"]["autoattack"] == "AA(apgd-ce,square)"
    assert record["autoattack"]["standard"] is False
    aa = np.array([c == "1" for c in record["robust_flags"]["autoattack"]])
    assert record["accuracy"]["autoattack"] == pytest.approx(aa.mean())
    assert record["accuracy"]["autoattack"] <= record["accuracy"]["clean"]
    assert "black_box_not_beating_white_box" in {c["name"] for c in record["sanity_checks"]}
    assert "| AA(apgd-ce,square) |" in table.markdown_table([record])
    assert attacks.autoattack_label(attacks.AUTOATTACK_STANDARD,
                                    attacks.autoattack_settings(
                                         EPS, seed=0, batch_size=1)) == "AutoAttack"


class _Interrupt(Exception):
    pass


@pytest.mark.slow
def test_resume_from_a_partial_json_equals_a_full_run(digits, logits_fn):
    x, y = digits.x_test[:30], digits.y_test[:30]
    kwargs = dict(attacks="clean,pgd5,fgsm,autoattack", epsilon=EPS, batch_size=8, seed=3,
                  autoattack_options=SMALL_AA, show_progress=False)
    full = runner.evaluate_model(logits_fn, x, y, **kwargs)

    saved = {}

    def interrupt_in_autoattack(record):
        saved["record"] = json.loads(json.dumps(record))   # what was on disk
        state = record.get("autoattack_state")
        if state and state.get("current") and state["current"]["batches_done"] >= 1:
            raise _Interrupt()

    with pytest.raises(_Interrupt):
        runner.evaluate_model(logits_fn, x, y, on_update=interrupt_in_autoattack, **kwargs)
    partial = saved["record"]
    assert not partial["complete"] and "autoattack" not in partial["accuracy"]
    assert set(partial["accuracy"]) == {"clean", "pgd5", "fgsm"}

    resumed = runner.evaluate_model(logits_fn, x, y, previous=partial, **kwargs)
    assert resumed["seconds"]["pgd5"] == partial["seconds"]["pgd5"]   # reused, not rerun
    assert resumed["accuracy"] == full["accuracy"]
    assert resumed["robust_flags"] == full["robust_flags"]
    assert resumed["worst_case_accuracy"] == full["worst_case_accuracy"]
    assert resumed["autoattack_components"] == full["autoattack_components"]

    # Changed settings are not reused: another seed reruns pgd5.
    changed = copy.deepcopy(partial)
    changed["attack_settings"]["pgd5"]["seed"] = 99
    again = runner.evaluate_model(logits_fn, x, y, previous=changed,
                                  **dict(kwargs, attacks="clean,pgd5"))
    assert again["seconds"]["pgd5"] != partial["seconds"]["pgd5"]
    assert again["robust_flags"]["pgd5"] == full["robust_flags"]["pgd5"]


@pytest.mark.parametrize("bad_index", [3, 150])   # in the first batch of 100, or later
def test_a_model_with_non_finite_logits_is_refused_not_scored(digits, bad_index):
    """NaN logits still give accuracies (argmax of NaN is class 0), and the sanity
    checks then blame dropout; such a model must be refused, naming the example."""
    x, y = digits.x_test[:200].copy(), digits.y_test[:200]
    x[bad_index, 0, 0, 0] = 1.0
    assert np.sum(x[:, 0, 0, 0] == 1.0) == 1
    fn = linear_fn(0)
    poisoned = lambda t: tf.where(t[:, :1, 0, 0] == 1.0, np.nan, fn(t))   # noqa: E731
    counted = "the first 100" if bad_index < 100 else "200"
    with pytest.raises(EvaluationError, match=rf"non-finite logits .* on 1 of {counted} "
                                              rf".*example {bad_index}\)"):
        runner.evaluate_model(poisoned, x, y, attacks="clean,pgd2", epsilon=EPS,
                              batch_size=100, show_progress=False)
    assert runner.evaluate_model(fn, x, y, attacks="clean", epsilon=EPS, batch_size=100,
                                 show_progress=False)["complete"]


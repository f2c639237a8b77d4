"""dac_tf.benchmark.timing: the timing rule and the error line."""

import itertools

import pytest

from dac_tf.benchmark import timing


def test_time_runs_warms_up_once_then_times_each_run_per_step(monkeypatch):
    calls = []
    # A fake clock: each call of `run(n)` takes n + 1 "seconds" (n steps and 1 of sync).
    clock = itertools.count()
    now = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])

    def run(num):
        calls.append(num)
        now[0] += num + 1 + 0.5 * (next(clock) % 2)   # runs alternate +0 / +0.5
        return 0

    result = timing.time_runs(run, warmup=2, runs=3, steps=4)
    assert calls == [2, 4, 4, 4]
    assert result.warmup_s == 3.0
    assert result.run_step_s == (5.5 / 4, 5.0 / 4, 5.5 / 4)
    assert result.step_s == pytest.approx(5.5 / 4)   # the median run


def test_error_line_is_the_message_not_the_traceback():
    tf_style = ('Graph execution error:\n\nDetected at node x defined at (most recent call '
                'last):\n  File "a.py", line 6, in <module>\n    model.fit(ds)\n\n  File '
                '"b.py", line 2, in f\n\nNo valid config found for convolution\n\t '
                '[[{{node x}}]] [Op:__inference_step_1]')
    assert timing.one_line(RuntimeError(tf_style)) == (
        "RuntimeError: No valid config found for convolution")
    assert timing.one_line(ValueError("")) == "ValueError"

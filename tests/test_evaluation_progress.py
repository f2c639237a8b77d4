"""`dac_tf.evaluation.progress`: Keras' Progbar, on stderr (stdout holds the table)."""

from dac_tf.evaluation import progress


def test_progress_bar_draws_keras_progbar_on_stderr_only(capsys):
    bar = progress.ProgressBar("pgd20")
    for done in (4, 8, 10):
        bar(done, 10)
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("pgd20\n") and "10/10" in err and "example" in err
    assert err.count("pgd20") == 1        # one bar, titled once

"""Tests of dac_tf.evaluation.table: the Markdown table of results."""

from dac_tf.evaluation import attacks
from dac_tf.evaluation import table


def test_markdown_table_has_one_row_per_model():
    def record(label, clean, pgd, aa_components):
        settings = attacks.autoattack_settings(8 / 255, seed=0, batch_size=10)
        return dict(model_label=label, dataset="cifar10", split="test", num_examples=10000,
                    epsilon=8 / 255, epsilon_255=8.0, norm="linf",
                    attacks=["clean", "pgd20", "autoattack"], complete=True,
                    accuracy=dict(clean=clean, pgd20=pgd, autoattack=0.4512),
                    worst_case_accuracy=0.45, attack_settings=dict(autoattack=settings),
                    columns=dict(clean="Clean", pgd20="PGD-20",
                                 autoattack=attacks.autoattack_label(aa_components, settings)),
                    autoattack=dict(standard=True, components=list(aa_components)),
                    sanity_checks=[])
    text = table.markdown_table([
        record("AT (last)", 0.82884, 0.41512, attacks.AUTOATTACK_STANDARD),
        record("AT (best)", 0.82675, 0.49234, attacks.AUTOATTACK_STANDARD)])
    lines = text.splitlines()
    assert "cifar10 test, 10000 examples, L-inf eps = 8/255" in lines[0]
    assert lines[2] == "| Model | Clean | PGD-20 | AutoAttack | Worst case |"
    assert lines[4] == "| AT (last) | 82.88 | 41.51 | 45.12 | 45.00 |"
    assert lines[5] == "| AT (best) | 82.67 | 49.23 | 45.12 | 45.00 |"


"""`dac_tf.evaluation.specs`: what the attack names mean.

(That the module loads without CleverHans: tests/test_import.py.)
"""

import pytest

from dac_tf.evaluation import specs


def test_parse_attacks_names_and_errors():
    parsed = specs.parse_attacks("clean, fgsm,PGD20,pgd100,cw,cw20,autoattack")
    assert [s.name for s in parsed] == ["clean", "fgsm", "PGD20", "pgd100", "cw", "cw20",
                                        "autoattack"]
    assert [(s.kind, s.steps) for s in parsed][2:6] == [("pgd", 20), ("pgd", 100),
                                                        ("cw", 30), ("cw", 20)]
    assert [specs.column_label(s) for s in parsed] == [
        "Clean", "FGSM", "PGD-20", "PGD-100", "CW-inf", "CW-inf-20", "AutoAttack"]
    for bad in ("pgd", "pgd0", "deepfool", "", "cw,cw30", "pgd20,pgd20"):
        with pytest.raises(specs.AttackError):
            specs.parse_attacks(bad)

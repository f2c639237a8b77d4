"""`dac_tf.benchmark.torch_reference`: the reference's PyTorch iteration the issue
targets are measured against (runs when torch is installed; a benchmark, so only its
well-formedness and its model are checked here)."""

import math

import pytest

from dac_tf.benchmark import torch_reference

torch = pytest.importorskip("torch")


def test_the_timed_model_is_the_references_preact_resnet18():
    # REFERENCE.md: 11,172,170 trainable parameters with 10 classes.
    model = torch_reference._preact_resnet18(torch)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 11_172_170
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.slow
@pytest.mark.parametrize("use_dac", [False, True])
def test_a_timed_iteration_is_well_formed(use_dac):
    row = torch_reference.time_reference_step(batch_size=2, steps=2, use_dac=use_dac)
    assert len(row["step_ms_runs"]) == 2 and all(ms > 0 for ms in row["step_ms_runs"])
    assert row["step_ms_median"] == pytest.approx(sum(row["step_ms_runs"]) / 2)
    assert math.isclose(row["img_per_s"], 2000 / row["step_ms_median"])
    assert row["use_dac"] is use_dac and row["torch_threads"] >= 1

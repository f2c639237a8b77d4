"""Shared by tests/test_benchmark_rows.py and tests/test_benchmark_table.py: a benchmark
train row with every field a table reads."""


def train_row(**fields):
    row = dict(kind="train", arch="small_cnn", method="at", use_dac=True,
               reference_bn_updates=False, batch_size=8, mode="fp32", pipeline="synthetic",
               num_steps=10, img_per_s=50.0, step_ms_median=160.0, gflop_per_image=0.5)
    row.update(fields)
    return row

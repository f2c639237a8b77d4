"""dac_tf.benchmark.table: the Markdown tables of benchmark rows."""

from dac_tf.benchmark import kernels
from dac_tf.benchmark import table
from helpers_benchmark import train_row


def test_tables_show_measured_rates_and_assume_no_peak():
    """A floor in images/s needs the device's rate; none is assumed (a CPU used to get
    "% floor 0.0%" of an assumed 400 TFLOP/s): the rate shown is the measured one."""
    row = train_row(achieved_gflop_per_s=25.0, measured_gflop_per_s=50.0,
                    fraction_of_measured=0.5, peak_memory_mb=10.0, error=None)
    kernel_row = dict(kind="kernels", arch="small_cnn", batch_size=8, mode="fp32",
                      error=None, kernels=[dict(
                          layer="conv 8x8x3 k3x3 s1 same -> 8x8x4", count=1, gflop=0.001,
                          **{f"{op}_ms": 1.0 for op in kernels.OPS},
                          **{f"{op}_gflop_per_s": 1.0 for op in kernels.OPS})],
                      **{f"{op}_gflop_per_s": 1.0 for op in kernels.OPS})
    lines = table.format_table([kernel_row, row]).splitlines()
    assert "floor" not in lines[0] and "| GFLOP/s | % measured |" in lines[0]
    assert len(lines) == 3   # the kernels row has its own table
    assert "| 25.0 | 50.0% |" in lines[2]
    kernel_lines = table.format_kernel_table([kernel_row, row]).splitlines()
    assert len(kernel_lines) == 2 + 2   # one layer, then the row's summary
    assert kernel_lines[2].startswith("| small_cnn | 8 | fp32 | conv 8x8x3")
    assert table.format_kernel_table([row]) == ""

"""The benchmark's output: markdown tables of the rows and the JSON file."""

from dac_tf import fileio
from dac_tf.benchmark import kernels

_ON_OFF = {None: "-", True: "on", False: "off"}


def _fmt(value, spec="{:,.0f}"):
    return "-" if value is None else spec.format(value)


def _lines(header, body):
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(cells) + " |" for cells in body)])


def format_table(rows):
    """A markdown table of the train, eval and input rows (one line per row).

    `GFLOP/s` is the row's achieved rate (counted FLOPs x images/s); `% measured` is
    that rate as a share of the rate its kernels reach alone (`--include_kernels`).
    """
    header = ["arch", "kind", "method", "DAC", "ref BN", "batch", "mode", "pipeline", "img/s",
              "step ms", "DAC cost", "ref BN cost", "peak MB", "GFLOP/img", "GFLOP/s",
              "% measured", "vs synthetic", "error"]
    body = []
    for r in rows:
        if r["kind"] == "kernels":
            continue
        fraction = r.get("fraction_of_measured")
        body.append([
            r["arch"], r["kind"], r["method"], _ON_OFF[r["use_dac"]],
            _ON_OFF[r.get("reference_bn_updates")], str(r["batch_size"]), r["mode"],
            r["pipeline"], _fmt(r.get("img_per_s"), "{:,.1f}"),
            _fmt(r.get("step_ms_median"), "{:,.1f}"), _fmt(r.get("dac_cost_ratio"), "{:.2f}x"),
            _fmt(r.get("ref_bn_cost_ratio"), "{:.2f}x"), _fmt(r.get("peak_memory_mb")),
            _fmt(r.get("gflop_per_image"), "{:.1f}"),
            _fmt(r.get("achieved_gflop_per_s"), "{:,.1f}"),
            _fmt(None if fraction is None else 100.0 * fraction, "{:.1f}%"),
            _fmt(r.get("input_slowdown"), "{:.2f}x"), (r.get("error") or "")[:80]])
    return _lines(header, body)


def format_kernel_table(rows):
    """A markdown table of the kernels rows: one line per distinct layer shape, then a
    line per row with the rates over all its layers (each kernel of each layer once).
    Empty string when there is no kernels row."""
    kernel_rows = [r for r in rows if r["kind"] == "kernels"]
    if not kernel_rows:
        return ""
    header = ["arch", "batch", "mode", "layer", "layers", "GFLOP", "fwd ms", "in-grad ms",
              "w-grad ms", "fwd GFLOP/s", "in-grad GFLOP/s", "w-grad GFLOP/s"]
    body = []
    for r in kernel_rows:
        head = [r["arch"], str(r["batch_size"]), r["mode"]]
        if r.get("error") or not r.get("kernels"):
            body.append(head + ["error: " + (r.get("error") or "no kernels")[:80]]
                        + ["-"] * (len(header) - 4))
            continue
        for e in r["kernels"]:
            body.append(head + [e["layer"], str(e["count"]), f"{e['gflop']:.3f}",
                                *(f"{e[f'{op}_ms']:.3f}" for op in kernels.OPS),
                                *(f"{e[f'{op}_gflop_per_s']:,.1f}" for op in kernels.OPS)])
        body.append(head + ["**all layers**", str(sum(e["count"] for e in r["kernels"])),
                            "", "", "", "",
                            *(f"{r[f'{op}_gflop_per_s']:,.1f}" for op in kernels.OPS)])
    return _lines(header, body)


def write_json(rows, path):
    """Writes the rows to `path` atomically (a reader never sees half a file)."""
    fileio.write_json_atomic(path, rows)

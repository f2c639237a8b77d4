"""Fixed-size batches over N examples: the last batch padded, the padding cut off.

Every call of a traced function then sees one batch shape, so it is traced (and, under
XLA, compiled) once instead of again for a smaller last batch. The padded rows are
copies of the batch's last example and are removed before anything is returned, so
every example counts exactly once whatever N and the batch size are (big_vision's
evaluators pad and mask the same way). This is valid for functions whose rows are
independent of each other (a model with BatchNorm in inference mode, a per-example
attack), which is what the evaluation attacks, the heatmaps and AutoAttack's
predictions run.
"""

import numpy as np


def batch_bounds(n, batch_size):
    """(start, stop) of each batch of `range(n)`; every batch is later padded to full size."""
    return [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def pad_to(a, size):
    """Pads the first axis of `a` to `size` by repeating its last row."""
    missing = size - len(a)
    if missing <= 0:
        return a
    return np.concatenate([a, np.repeat(a[-1:], missing, axis=0)], axis=0)


def effective_batch_size(n, batch_size):
    """`batch_size`, but at most `n` (no needless padding) and at least 1."""
    return max(1, min(int(batch_size), int(n)))


def map_padded(fn, arrays, batch_size, *, progress=None):
    """Calls `fn` on padded batches of `arrays` and joins the unpadded results.

    Args:
      fn: `fn(k, *batch_arrays)` for batch k, each array padded to the full batch size
        (NumPy, as sliced from `arrays`); returns an array or tensor [batch, ...] or a
        dict of them.
      arrays: sequence of NumPy arrays with the same first dimension N >= 1.
      batch_size: examples per call (`effective_batch_size`: at most N).
      progress: optional callable(done_examples, N), called after every batch.

    Returns:
      NumPy array [N, ...] (or a dict of them, with `fn`'s keys): the rows of the
      padding are cut off before the batches are joined.

    Raises:
      ValueError: no examples, or arrays of different lengths.
    """
    n = len(arrays[0])
    if n == 0 or any(len(a) != n for a in arrays):
        raise ValueError(f"need N >= 1 examples in arrays of one length, got lengths "
                         f"{[len(a) for a in arrays]}.")
    batch_size = effective_batch_size(n, batch_size)
    parts = []
    for k, (start, stop) in enumerate(batch_bounds(n, batch_size)):
        out = fn(k, *(pad_to(a[start:stop], batch_size) for a in arrays))
        if isinstance(out, dict):
            parts.append({key: np.asarray(v)[:stop - start] for key, v in out.items()})
        else:
            parts.append(np.asarray(out)[:stop - start])
        if progress is not None:
            progress(stop, n)
    if isinstance(parts[0], dict):
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    return np.concatenate(parts)

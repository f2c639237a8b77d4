"""Run PyTorch attacks, e.g. the official AutoAttack, on a dac_tf (TensorFlow) model.

    module = torch_bridge.TFLogitsModule(logits_fn)        # a torch.nn.Module
    out = torch_bridge.run_official_autoattack(logits_fn, x, y, epsilon=8 / 255)
    out = torch_bridge.run_official_autoattack(logits_fn, x, y, epsilon=8 / 255,
                                               package="pyautoattack")

`TFLogitsModule` wraps a TensorFlow logits function (NHWC float32 images in [0, 1] ->
logits) as a `torch.nn.Module` taking NCHW tensors, as PyTorch attack code expects. Its
forward pass runs TensorFlow on the NumPy values; its backward pass is a TensorFlow
vector-Jacobian product (`tape.gradient(logits, x, output_gradients=grad)`), so any
torch attack that calls `.backward()` through the module gets the TF model's exact
input gradient. The NCHW <-> NHWC transposition is a torch op, so autograd handles it.

Two PyTorch AutoAttack packages are supported:
- `package="autoattack"`: the authors' code, fra31/auto-attack, installed from its
  repository (`pip install git+https://github.com/fra31/auto-attack`; it is not on PyPI);
  `python -m dac_tf.evaluate --autoattack_impl=official`.
- `package="pyautoattack"`: the PyPI package `pyautoattack` (0.2.0), a repackaging of the
  same code with a keyword-only API and an evaluation-state file; installable from the
  registry, so the cross-check tests (`tests/test_autoattack_crosscheck.py`) use it;
  `--autoattack_impl=pyautoattack`.
Neither they nor torch are dependencies of dac_tf: they are imported only here, and only
when used. These runs cannot resume (their state is not exposed); the native runner
(`dac_tf.autoattack`) can.
Tensors stay on the CPU on the torch side: TensorFlow does the compute on its own
device, so the official code is run with `device="cpu"`.
"""

import numpy as np
import tensorflow as tf

from dac_tf import errors


class BridgeError(errors.UserError):
    """torch or the official autoattack package is missing (the message says how to fix)."""


def _import_torch():
    try:
        import torch  # noqa: PLC0415 (optional dependency)
    except ImportError:
        raise BridgeError("--autoattack_impl=official needs PyTorch (pip install torch) "
                          "and the official AutoAttack (pip install "
                          "git+https://github.com/fra31/auto-attack).") from None
    return torch


# package name -> (the --autoattack_impl value that uses it, how to install it)
PACKAGES = {
    "autoattack": ("official", "pip install git+https://github.com/fra31/auto-attack"),
    "pyautoattack": ("pyautoattack", "pip install pyautoattack"),
}


def _import_autoattack(package="autoattack"):
    if package not in PACKAGES:
        raise ValueError(f"package={package!r} is not valid; use one of {', '.join(PACKAGES)}.")
    impl, install = PACKAGES[package]
    try:
        module = __import__(package)
    except ImportError:
        raise BridgeError(f"--autoattack_impl={impl} needs the {package} package: "
                          f"{install}") from None
    return module


def check_available(package="autoattack"):
    """Raises BridgeError now, before any attack runs, if torch or the package is missing."""
    _import_torch()
    _import_autoattack(package)


def package_version(package):
    """The installed version of `package` (None if unknown)."""
    from importlib import metadata  # noqa: PLC0415
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return getattr(__import__(package), "__version__", None)


class _TFFunctions:
    """Traced forward pass and VJP of one logits function (shapes may vary)."""

    def __init__(self, logits_fn):
        self.logits_fn = logits_fn

        @tf.function(reduce_retracing=True)
        def forward(x):
            return tf.cast(logits_fn(x), tf.float32)

        @tf.function(reduce_retracing=True)
        def vjp(x, grad_logits):
            with tf.GradientTape() as tape:
                tape.watch(x)
                logits = tf.cast(logits_fn(x), tf.float32)
            return tape.gradient(logits, x, output_gradients=grad_logits)

        self.forward = forward
        self.vjp = vjp


def _make_autograd_function(torch):
    class TFLogits(torch.autograd.Function):
        """y = TF(x) with dL/dx = VJP_TF(x, dL/dy); x is NHWC."""

        @staticmethod
        def forward(ctx, x, functions):
            ctx.functions = functions
            ctx.save_for_backward(x)
            out = functions.forward(tf.constant(x.detach().cpu().numpy(), tf.float32))
            return torch.from_numpy(out.numpy()).to(x.device)

        @staticmethod
        def backward(ctx, grad_out):
            (x,) = ctx.saved_tensors
            grad = ctx.functions.vjp(
                tf.constant(x.detach().cpu().numpy(), tf.float32),
                tf.constant(grad_out.detach().cpu().numpy(), tf.float32))
            if grad is None:    # no path from the input to the logits
                return torch.zeros_like(x), None
            return torch.from_numpy(grad.numpy()).to(x.device, x.dtype), None

    return TFLogits


def TFLogitsModule(logits_fn):  # pylint: disable=invalid-name (acts as a class)
    """A `torch.nn.Module` computing `logits_fn` on NCHW torch tensors.

    Args:
      logits_fn: TF callable, float32 NHWC images in [0, 1] -> logits, BatchNorm in
        inference mode.

    Returns:
      A module whose forward takes [B, C, H, W] float tensors and returns [B, K] float32
      logits, differentiable w.r.t. its input.

    Raises:
      BridgeError: torch is not installed.
    """
    torch = _import_torch()
    function = _make_autograd_function(torch)
    functions = _TFFunctions(logits_fn)

    class _Module(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.functions = functions

        def forward(self, x):
            nhwc = x.permute(0, 2, 3, 1).contiguous()
            return function.apply(nhwc, self.functions)

    return _Module().eval()


def run_official_autoattack(logits_fn, x, y, *, epsilon, seed=0, batch_size=500,
                            attacks=("apgd-ce", "apgd-t", "fab-t", "square"),
                            apgd_n_iter=100, fab_n_iter=100, square_n_queries=5000,
                            n_target_classes=9, verbose=False, package="autoattack"):
    """A PyTorch AutoAttack (L-inf) on a TF model; returns per-example robust flags.

    With the default arguments this is `AutoAttack(version="standard")`. Other
    components or budgets start from the standard settings and change only those.

    Args:
      logits_fn: TF callable, NHWC float32 images in [0, 1] -> logits (inference mode).
      x: images [N, H, W, C] in [0, 1] (NumPy).
      y: int labels [N].
      epsilon: L-inf budget in [0, 1] units.
      seed: the official code's seed.
      batch_size: its `bs`.
      attacks: its `attacks_to_run`.
      apgd_n_iter, fab_n_iter, square_n_queries, n_target_classes: budgets.
      verbose: let the official code print its log.
      package: "autoattack" (fra31/auto-attack) or "pyautoattack" (its PyPI repackaging).

    Returns:
      dict(robust_flags [N] bool (clean-correct and not broken, re-checked here on the
      returned images), components (list), max_linf (largest perturbation returned)).

    Raises:
      BridgeError: torch or autoattack is not installed.
    """
    torch = _import_torch()
    AutoAttack = _import_autoattack(package).AutoAttack  # pylint: disable=invalid-name
    x = np.asarray(x, np.float32)
    y = np.asarray(y).astype(np.int64)
    module = TFLogitsModule(logits_fn)
    if package == "pyautoattack":   # keyword-only constructor, no verbose argument
        adversary = AutoAttack(module, norm="Linf", eps=float(epsilon), seed=int(seed),
                               version="standard", device="cpu")
        adversary.verbose = verbose
    else:
        adversary = AutoAttack(module, norm="Linf", eps=float(epsilon), seed=int(seed),
                               version="standard", device="cpu", verbose=verbose)
    # After the standard settings, so restarts and the rest stay standard.
    adversary.attacks_to_run = list(attacks)
    adversary.apgd.n_iter = int(apgd_n_iter)
    adversary.apgd_targeted.n_iter = int(apgd_n_iter)
    adversary.apgd_targeted.n_target_classes = int(n_target_classes)
    adversary.fab.n_iter = int(fab_n_iter)
    adversary.fab.n_target_classes = int(n_target_classes)
    adversary.square.n_queries = int(square_n_queries)
    x_nchw = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    if package == "pyautoattack":   # returns (x_adv, y_adv); the batch is `batch_size`
        x_adv, _ = adversary.run_standard_evaluation(x_nchw, torch.from_numpy(y),
                                                     batch_size=int(batch_size))
    else:
        x_adv = adversary.run_standard_evaluation(x_nchw, torch.from_numpy(y),
                                                  bs=int(batch_size))
    x_adv = x_adv.detach().cpu().numpy().transpose(0, 2, 3, 1)
    # Trust nothing the attack says about itself: project and re-classify.
    x_adv = np.clip(np.clip(x_adv, x - epsilon, x + epsilon), 0.0, 1.0).astype(np.float32)
    functions = module.functions
    clean_pred = np.concatenate([
        np.argmax(functions.forward(tf.constant(x[i:i + batch_size])).numpy(), -1)
        for i in range(0, len(x), batch_size)])
    adv_pred = np.concatenate([
        np.argmax(functions.forward(tf.constant(x_adv[i:i + batch_size])).numpy(), -1)
        for i in range(0, len(x), batch_size)])
    return dict(robust_flags=(clean_pred == y) & (adv_pred == y), components=list(attacks),
                max_linf=float(np.abs(x_adv - x).max()) if len(x) else 0.0,
                package=package, package_version=package_version(package))

"""The standard AutoAttack evaluation: APGD-CE, APGD-T, FAB-T, Square, worst case over all.

As the official `AutoAttack.run_standard_evaluation`: the clean prediction is computed
first; each attack then runs, in order, only on the points still robust (correctly
classified and not broken by an earlier attack), in batches; a point is broken when the
attack's output is misclassified. The robust accuracy after an attack is cumulative
(the fraction of all N points robust to every attack so far), which is what the official
code logs after each attack; the last one is the AutoAttack robust accuracy.

Two safeguards the official runner does not have:
- each returned point is projected onto the eps-ball and the [0, 1] box (a no-op up to
  float rounding for a correct attack) and re-classified here, so a reported break
  never rests on an attack's own bookkeeping;
- the evaluation can resume: `state` (a JSON-serialisable dict, passed to `progress`
  after every batch) holds the flags after each attack, the completed attacks and the
  number of batches done in the current one. Seeds depend only on (seed, attack, batch,
  target), and batches are formed from the flags at the attack's start, so a resumed run
  gives the same flags as an uninterrupted one.

Adversarial images are not part of the state (too large); `AutoAttackResult.x_adv`
holds those found by this call (`adv_found`).
"""

import dataclasses
import logging
import time

import numpy as np
import tensorflow as tf

from dac_tf import protocol
from dac_tf.autoattack import _common
from dac_tf.autoattack import autopgd
from dac_tf.autoattack import fab
from dac_tf.autoattack import square_attack

STANDARD_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")
# Seeds are keyed by this fixed index, not by the position in `attacks`, so an attack
# draws the same noise whether it runs alone or after others.
_ATTACK_IDS = {name: i + 1 for i, name in enumerate(STANDARD_ATTACKS)}
STANDARD_CONFIG = dict(apgd_n_iter=100, fab_n_iter=100, square_n_queries=5000,
                       n_target_classes=9)
_STATE_FORMAT = "dac_tf.autoattack.state/1"

_log = logging.getLogger(__name__)


def _run_apgd_ce(logits_fn, x, y, eps, seed, cfg, jit):
    return autopgd.apgd(logits_fn, x, y, epsilon=eps, loss="ce", n_iter=cfg["apgd_n_iter"],
                        seed=seed, jit_compile=jit).x_adv


def _run_apgd_t(logits_fn, x, y, eps, seed, cfg, jit):
    return autopgd.apgd_targeted(logits_fn, x, y, epsilon=eps, n_iter=cfg["apgd_n_iter"],
                                 n_target_classes=cfg["n_target_classes"], seed=seed,
                                 jit_compile=jit).x_adv


def _run_fab_t(logits_fn, x, y, eps, seed, cfg, jit):
    return fab.fab_targeted(logits_fn, x, y, epsilon=eps, n_iter=cfg["fab_n_iter"],
                            n_target_classes=cfg["n_target_classes"], seed=seed,
                            jit_compile=jit).x_adv


def _run_square(logits_fn, x, y, eps, seed, cfg, jit):
    return square_attack.square(logits_fn, x, y, epsilon=eps,
                                n_queries=cfg["square_n_queries"], seed=seed,
                                rescale_schedule=False, jit_compile=jit).x_adv


# name -> fn(logits_fn, x, y, epsilon, seed, config, jit_compile) -> adversarial images.
ATTACKS = {"apgd-ce": _run_apgd_ce, "apgd-t": _run_apgd_t, "fab-t": _run_fab_t,
           "square": _run_square}


@dataclasses.dataclass(frozen=True)
class AutoAttackResult:
    """Outcome of `run_standard_autoattack`.

    Attributes:
      components: attacks that ran to completion, in order (a subset is never silent).
      is_standard: True iff components are exactly the standard four with the standard
        settings (`STANDARD_CONFIG`), i.e. the number is an AutoAttack number.
      epsilon: the L-inf budget.
      clean_accuracy: fraction correctly classified.
      robust_accuracy: fraction robust to every component (worst case).
      accuracy: "clean" and each component -> cumulative robust accuracy after it.
      flags: "clean" and each component -> [N] bool, robust after it (AND over attacks).
      robust_flags: [N] bool after the last component.
      n_attacked: component -> number of points it was run on.
      seconds: "clean" and each component -> wall time (summed over resumed sessions).
      x_adv: [N, ...] adversarial images found in this call; the clean image elsewhere.
      adv_found: [N] bool, where `x_adv` is adversarial.
      config: the settings used (seed, batch size, iterations, queries, targets).
      state: the final resumable state.
    """
    components: tuple
    is_standard: bool
    epsilon: float
    clean_accuracy: float
    robust_accuracy: float
    accuracy: dict
    flags: dict
    robust_flags: np.ndarray
    n_attacked: dict
    seconds: dict
    x_adv: np.ndarray
    adv_found: np.ndarray
    config: dict
    state: dict


def flags_to_str(flags):
    """Per-example booleans as JSON-friendly text: "1" robust, "0" not, one per example.

    The encoding of this runner's resumable state and of the evaluation's result files
    (`dac_tf.evaluation.results`), so per-component flags are copied across unchanged.
    """
    return "".join("1" if f else "0" for f in np.asarray(flags, bool))


def str_to_flags(s):
    """The inverse of `flags_to_str`: a bool array [N]."""
    return np.frombuffer(s.encode("ascii"), np.uint8) == ord("1")


def _check_state(state, n, epsilon, config, attacks):
    if state.get("format") != _STATE_FORMAT:
        raise ValueError(f"Unknown AutoAttack state format {state.get('format')!r}.")
    if state["n"] != n:
        raise ValueError(f"State is for {state['n']} examples, got {n}.")
    if not np.isclose(state["epsilon"], epsilon, rtol=0, atol=1e-12):
        raise ValueError(f"State is for epsilon={state['epsilon']}, got {epsilon}.")
    if state["config"] != config:
        raise ValueError(f"State was made with {state['config']}, got {config}.")
    done = list(state["completed"])
    if done != list(attacks[:len(done)]):
        raise ValueError(f"State completed {done}, not a prefix of the requested {attacks}.")


def run_standard_autoattack(logits_fn, x, y, *, epsilon, seed=0, batch_size=500,
                            attacks=STANDARD_ATTACKS, state=None, progress=None,
                            apgd_n_iter=100, fab_n_iter=100, square_n_queries=5000,
                            n_target_classes=9, jit_compile=False):
    """Runs standard AutoAttack (L-inf) and returns per-example and aggregate results.

    Args:
      logits_fn: callable float32 images [B, H, W, C] in [0, 1] -> logits [B, K]; pass
        the model in inference mode (e.g. `lambda x: model(x, training=False)`). The
        same callable object should be reused across calls to reuse traced graphs.
      x: images [N, H, W, C] in [0, 1] (NumPy or tensor).
      y: labels [N].
      epsilon: L-inf budget (8/255 for the paper's CIFAR-10 numbers).
      seed: integer seed; attack a, batch k (and target j) use seed folded with (a, k, j).
      batch_size: points per attack batch (the official default is 250 / 500).
      attacks: components to run, in order; the standard version is `STANDARD_ATTACKS`.
      state: a state from an earlier, interrupted call with the same inputs and
        settings; the completed attacks are skipped and the current one continues.
      progress: optional callable, called with the (JSON-serialisable) state after the
        clean pass and after every batch; store it to be able to resume.
      apgd_n_iter, fab_n_iter, square_n_queries, n_target_classes: budgets of the
        components; anything but the defaults makes the result non-standard.
      jit_compile: compile the attack loops with XLA.

    Returns:
      An `AutoAttackResult`. An attack reached when no point is left robust is recorded
      as completed with `n_attacked == 0` (the official runner skips it silently).

    Raises:
      ValueError: unknown or repeated attack names, or a `state` made with other inputs
        or settings.
    """
    attacks = tuple(attacks)
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown or len(set(attacks)) != len(attacks):
        raise ValueError(f"attacks={attacks} must be distinct names among {STANDARD_ATTACKS}.")
    x = np.asarray(x, np.float32)
    y = np.asarray(y).astype(np.int32)
    n = len(x)
    # [0, 1] units like every library radius; 8 is refused with "pass 8/255".
    epsilon = protocol.unit_value("epsilon", float(epsilon))
    config = dict(seed=int(seed), batch_size=int(batch_size), apgd_n_iter=int(apgd_n_iter),
                  fab_n_iter=int(fab_n_iter), square_n_queries=int(square_n_queries),
                  n_target_classes=int(n_target_classes))
    if attacks != STANDARD_ATTACKS or any(config[k] != v for k, v in STANDARD_CONFIG.items()):
        _log.warning("AutoAttack is not the standard version: attacks=%s, config=%s.",
                     attacks, config)

    def emit():
        if progress is not None:
            progress(_copy_state(state))

    if state is None:
        t0 = time.perf_counter()
        clean = _common.batched_predict(logits_fn, x, batch_size, jit_compile) == y
        state = dict(format=_STATE_FORMAT, n=n, epsilon=epsilon, config=config,
                     attacks=list(attacks), completed=[], current=None,
                     flags={"clean": flags_to_str(clean)}, robust=flags_to_str(clean),
                     accuracy={"clean": float(clean.mean()) if n else 0.0},
                     seconds={"clean": time.perf_counter() - t0}, n_attacked={})
        _log.info("AutoAttack clean accuracy: %.2f%%", 100 * state["accuracy"]["clean"])
        emit()
    else:
        _check_state(state, n, epsilon, config, attacks)
        state = _copy_state(state)
        state["attacks"] = list(attacks)

    x_adv = x.copy()
    adv_found = np.zeros([n], bool)
    for attack in attacks:
        if attack in state["completed"]:
            continue
        previous = state["completed"][-1] if state["completed"] else "clean"
        # Batches are formed from the flags at the attack's start, so a resumed attack
        # sees the same batches (and seeds) as an uninterrupted one.
        todo = np.flatnonzero(str_to_flags(state["flags"][previous]))
        robust = str_to_flags(state["robust"])
        current = state["current"]
        if current is None or current["attack"] != attack:
            current = state["current"] = dict(attack=attack, batches_done=0, seconds=0.0)
        n_batches = -(-len(todo) // batch_size)
        for k in range(current["batches_done"], n_batches):
            t0 = time.perf_counter()
            idx = todo[k * batch_size:(k + 1) * batch_size]
            xb, yb = x[idx], y[idx]
            adv = ATTACKS[attack](logits_fn, xb, yb, epsilon,
                                  _common.fold_seed(seed, _ATTACK_IDS[attack], k), config,
                                  jit_compile)
            adv = _common.project_linf(tf.convert_to_tensor(adv, tf.float32), tf.constant(xb),
                                       _common.per_example_eps(epsilon, len(idx))).numpy()
            broken = _common.batched_predict(logits_fn, adv, batch_size, jit_compile) != yb
            robust[idx[broken]] = False
            x_adv[idx[broken]] = adv[broken]
            adv_found[idx[broken]] = True
            current["batches_done"] = k + 1
            current["seconds"] += time.perf_counter() - t0
            state["robust"] = flags_to_str(robust)
            _log.info("%s - batch %d/%d - %d of %d points broken", attack, k + 1, n_batches,
                      int(broken.sum()), len(idx))
            emit()
        state["flags"][attack] = state["robust"]
        state["accuracy"][attack] = float(robust.mean()) if n else 0.0
        state["seconds"][attack] = current["seconds"]
        state["n_attacked"][attack] = int(len(todo))
        state["completed"].append(attack)
        state["current"] = None
        _log.info("robust accuracy after %s: %.2f%% (%.1f s)", attack.upper(),
                  100 * state["accuracy"][attack], state["seconds"][attack])
        emit()

    components = tuple(state["completed"])
    flags = {k: str_to_flags(v) for k, v in state["flags"].items()}
    final = flags[components[-1]] if components else flags["clean"]
    is_standard = (components == STANDARD_ATTACKS
                   and all(config[k] == v for k, v in STANDARD_CONFIG.items()))
    return AutoAttackResult(
        components=components, is_standard=is_standard, epsilon=epsilon,
        clean_accuracy=state["accuracy"]["clean"],
        robust_accuracy=float(final.mean()) if n else 0.0,
        accuracy=dict(state["accuracy"]), flags=flags, robust_flags=final,
        n_attacked=dict(state["n_attacked"]), seconds=dict(state["seconds"]),
        x_adv=x_adv, adv_found=adv_found, config=config, state=_copy_state(state))


def _copy_state(state):
    """A deep copy through plain containers (the state is JSON data)."""
    if isinstance(state, dict):
        return {k: _copy_state(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_copy_state(v) for v in state]
    return state

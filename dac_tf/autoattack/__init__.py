"""Native TensorFlow implementation of standard AutoAttack, L-inf (Croce & Hein, ICML 2020).

The paper evaluates robust models with AutoAttack's standard version: APGD-CE, APGD-T
(9 targets), FAB-T (9 targets) and Square (5000 queries), each run only on the points
the earlier ones did not break; the robust accuracy is the worst case over all four.
The official implementation (fra31/auto-attack) is PyTorch; this package follows its
algorithms and its standard-version settings, with the inner loops as `tf.while_loop`s
in `tf.function`s (optionally XLA-compiled) and all randomness from stateless ops with an
explicit seed.

Components (each public and usable on one batch):
- `apgd` (loss "ce" | "dlr" | "dlr-targeted") and `apgd_targeted` (APGD-T), in
  `autopgd`;
- `fab_targeted` (FAB-T) and the hyperplane/box projection `projection_linf`, in `fab`;
- `square` (Square attack, margin loss), in `square_attack`;
- `run_standard_autoattack`, the resumable runner, in `runner` (with `flags_to_str` /
  `str_to_flags`, the per-example flag encoding of its state and of the evaluation's
  result files).

Shared with the rest of dac_tf rather than copied: seeds (`dac_tf.seeds`), padded
batches (`dac_tf.batching`) and the margin (`dac_tf.attacks.cw_margin`).

Where this differs from the official code (details in each module's docstring):
- APGD: checkpoints from the paper's closed form (identical to the official list for
  n_iter = 100); condition 1 counts the first comparison of the first segment against
  the starting loss (the official code compares with an unfilled zero).
- Square: window position and signs are drawn per image (the official AutoAttack
  version shares them across the batch); the corner ranges over all positions; the
  p schedule is not rescaled to the query budget, as in the official standard version
  (`resc_schedule=False`).
- FAB-T: the projection locates its active set by counting instead of bisection (same
  result); the optional final search of the FAB paper is available but off (AutoAttack
  does not use it).
- Runner: outputs are re-projected onto the ball and the box and re-classified before a
  point counts as broken; the evaluation can resume from a JSON state.
- Not implemented: L2 / L1 norms, restarts > 1 (the "plus" and "rand" versions),
  untargeted FAB, targeted Square, EOT, the official pre-run sanity checks
  (`checks.py`).
"""

from dac_tf.autoattack.autopgd import APGDOutput
from dac_tf.autoattack.autopgd import AttackOutput
from dac_tf.autoattack.autopgd import apgd
from dac_tf.autoattack.autopgd import apgd_checkpoints
from dac_tf.autoattack.autopgd import apgd_targeted
from dac_tf.autoattack.autopgd import step_size_update
from dac_tf.autoattack.autopgd import target_ranking
from dac_tf.autoattack.fab import fab_single_target
from dac_tf.autoattack.fab import fab_targeted
from dac_tf.autoattack.fab import projection_linf
from dac_tf.autoattack.losses import ce_loss
from dac_tf.autoattack.losses import dlr_loss
from dac_tf.autoattack.losses import dlr_loss_targeted
from dac_tf.autoattack.losses import margin
from dac_tf.autoattack.runner import ATTACKS
from dac_tf.autoattack.runner import STANDARD_ATTACKS
from dac_tf.autoattack.runner import STANDARD_CONFIG
from dac_tf.autoattack.runner import AutoAttackResult
from dac_tf.autoattack.runner import flags_to_str
from dac_tf.autoattack.runner import run_standard_autoattack
from dac_tf.autoattack.runner import str_to_flags
from dac_tf.autoattack.square_attack import p_selection
from dac_tf.autoattack.square_attack import square
from dac_tf.autoattack.square_attack import square_sizes

"""AutoAttack components and runner: schedules, losses, exact linear cases, aggregation.

Models are tiny (8x8x1 inputs) and iteration / query budgets are reduced wherever a test
is not about the schedule itself, so the whole file runs in well under a minute on CPU.
Reference values are computed independently: exact fractions for the checkpoints, hand
formulas for the losses, an LP solver for the projection and, on linear models, the
closed-form minimal L-inf distance `min_t (z_y - z_t) / ||w_y - w_t||_1`.
"""

import fractions
import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import optimize

from dac_tf import autoattack as aa
from dac_tf.autoattack import runner

SHAPE = (8, 8, 1)
D = int(np.prod(SHAPE))
SMALL = dict(apgd_n_iter=10, fab_n_iter=10, square_n_queries=60, n_target_classes=3)


class Linear:
    """logits = flatten(x) W + b, with the exact minimal L-inf adversarial distance."""

    def __init__(self, classes, seed):
        rng = np.random.default_rng(seed)
        self.w = rng.normal(size=(D, classes)).astype(np.float32)
        self.b = rng.normal(size=classes).astype(np.float32)

    def __call__(self, x):
        return tf.reshape(x, [-1, D]) @ self.w + self.b

    def distance(self, x, y):
        """Without the box, the nearest point of another class is at L-inf distance
        min over t of the margin to t divided by the dual (L1) norm of w_y - w_t."""
        z = x.reshape(len(x), D) @ self.w + self.b
        out = []
        for zi, yi in zip(z, y):
            others = [t for t in range(len(zi)) if t != yi]
            out.append(min((zi[yi] - zi[t]) / np.abs(self.w[:, yi] - self.w[:, t]).sum()
                           for t in others))
        return np.asarray(out, np.float32)


def interior_points(model, n, seed):
    # Far from the box faces (distance >= 0.3 > any tested budget), so the box never
    # binds and the closed-form distance is the true one.
    x = np.random.default_rng(seed).uniform(0.3, 0.7, (n,) + SHAPE).astype(np.float32)
    y = np.argmax(model(x).numpy(), 1).astype(np.int32)
    return x, y


@pytest.fixture(scope="module")
def linear10():
    model = Linear(10, seed=0)
    x, y = interior_points(model, 6, seed=1)
    dist = model.distance(x, y)
    assert dist.max() < 0.25
    return model, x, y, dist


@pytest.fixture(scope="module")
def small_net():
    """A tiny MLP; labels are its predictions except two wrong ones (clean acc 10/12)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(),
                              keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(10)])
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, (12,) + SHAPE).astype(np.float32)
    x[0] = 0.0  # corners of the box: the projection must keep them inside
    x[1] = 1.0
    y = np.argmax(model(x).numpy(), 1).astype(np.int32)
    y[[3, 7]] = (y[[3, 7]] + 1) % 10
    return model, x, y


def linf(a, b):
    return np.abs(a - b).reshape(len(a), -1).max(1)


# ----------------------------------------------------------------------------- APGD


def test_checkpoints_equal_published_closed_form():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), w_j = ceil(p_j N),
    # in exact arithmetic.
    f = fractions.Fraction
    p = [f(0), f(22, 100)]
    while p[-1] <= 1:
        p.append(p[-1] + max(p[-1] - p[-2] - f(3, 100), f(6, 100)))
    expected = [math.ceil(q * 100) for q in p[1:] if math.ceil(q * 100) <= 100]
    assert aa.apgd_checkpoints(100) == expected
    # The official code's integer form (period 22, shrinking by 3, at least 6) agrees.
    official, w, k = [], 0, 22
    while w + k <= 100:
        w += k
        official.append(w)
        k = max(k - 3, 6)
    assert expected == official == [22, 41, 57, 70, 80, 87, 93, 99]


def test_step_size_halving_conditions():
    step = tf.ones([5])
    # Segment of 22 iterations, rho = 0.75 -> condition 1 holds for <= 16.5 increases.
    n_inc = tf.constant([16.0, 17.0, 20.0, 20.0, 22.0])
    reduced_last = tf.constant([True, True, False, False, True])
    loss_best = tf.constant([1.0, 1.0, 2.0, 2.5, 2.0])
    loss_best_last = tf.constant([0.0, 0.0, 2.0, 2.0, 2.0])
    new_step, reduced = aa.step_size_update(step, n_inc, 22, reduced_last, loss_best,
                                            loss_best_last)
    # 0: too few increases; 1: enough increases; 2: not reduced last time and no
    # improvement (condition 2); 3: improvement; 4: no improvement but reduced last time.
    np.testing.assert_array_equal(reduced.numpy(), [True, False, True, False, False])
    np.testing.assert_allclose(new_step.numpy(), [0.5, 1.0, 0.5, 1.0, 1.0])


def test_step_halves_at_every_checkpoint_when_loss_never_increases():
    # Constant logits: no increase in any segment, so condition 1 halves the step at each
    # of the 8 checkpoints of a 100-iteration run: 2 eps / 2^8.
    def flat(x):
        return tf.zeros([tf.shape(x)[0], 10]) + 0.0 * tf.reduce_sum(x)

    x = np.full((2,) + SHAPE, 0.5, np.float32)
    out = aa.apgd(flat, x, np.array([0, 1]), epsilon=0.1, n_iter=100)
    np.testing.assert_allclose(out.step_size.numpy(), 2 * 0.1 / 2 ** 8, rtol=1e-6)
    # Another N: one halving per checkpoint of its own list.
    out = aa.apgd(flat, x, np.array([0, 1]), epsilon=0.1, n_iter=21)
    np.testing.assert_allclose(out.step_size.numpy(), 2 * 0.1 / 2 ** len(
        aa.apgd_checkpoints(21)), rtol=1e-6)


def test_dlr_losses_closed_form():
    z = tf.constant([[3.0, 1.0, 2.0, 0.5, -1.0],     # y=0 top: margin vs 2nd (2.0)
                     [3.0, 1.0, 2.0, 0.5, -1.0],     # y=1 not top: margin vs top (3.0)
                     [0.0, 4.0, 1.0, 1.5, 2.5]])
    y = tf.constant([0, 1, 4])
    t = tf.constant([2, 3, 1])
    # sorted rows: [3, 2, 1, .5, -1], [3, 2, 1, .5, -1], [4, 2.5, 1.5, 1, 0]
    dlr = [-(3 - 2) / (3 - 1), -(1 - 3) / (3 - 1), -(2.5 - 4) / (4 - 1.5)]
    dlr_t = [-(3 - 2) / (3 - (1 + 0.5) / 2), -(1 - 0.5) / (3 - (1 + 0.5) / 2),
             -(2.5 - 4) / (4 - (1.5 + 1) / 2)]
    np.testing.assert_allclose(aa.dlr_loss(z, y).numpy(), dlr, rtol=1e-6)
    np.testing.assert_allclose(aa.dlr_loss_targeted(z, y, t).numpy(), dlr_t, rtol=1e-6)
    np.testing.assert_allclose(aa.margin(z, y).numpy(), [1.0, -2.0, -1.5])
    # DLR is invariant to shifting and positively scaling the logits.
    np.testing.assert_allclose(aa.dlr_loss(3.0 * z + 7.0, y).numpy(), dlr, rtol=1e-5)


def test_seeds_and_predictions_are_the_shared_helpers_with_autoattacks_conventions():
    """Component seeds fold int32 data (the stream AutoAttack was defined with), and
    predictions run in padded batches that count each example once."""
    from dac_tf.autoattack import _common  # pylint: disable=import-outside-toplevel

    fold_in = tf.random.experimental.stateless_fold_in
    expected = fold_in(fold_in(tf.constant([7, 0], tf.int64), tf.constant(2, tf.int32),
                               alg="philox"), tf.constant(5, tf.int32), alg="philox")
    got = _common.fold_seed(7, 2, 5)
    assert got.dtype == tf.int64
    np.testing.assert_array_equal(got.numpy(), expected.numpy())
    model = Linear(10, seed=5)
    x = np.random.default_rng(6).uniform(0, 1, (23,) + SHAPE).astype(np.float32)
    pred = _common.batched_predict(model, x, batch_size=10)
    np.testing.assert_array_equal(pred, np.argmax(model(x).numpy(), axis=1))
    assert pred.shape == (23,) and _common.batched_predict(model, x[:0]).shape == (0,)


def test_target_ranking_is_second_to_tenth_logit():
    z = tf.constant([[0.0, 9.0, 1.0, 8.0, 2.0, 7.0, 3.0, 6.0, 4.0, 5.0, -1.0]])
    np.testing.assert_array_equal(aa.target_ranking(z, 9).numpy(),
                                  [[3, 5, 7, 9, 8, 6, 4, 2, 0]])
    assert aa.target_ranking(z[:, :4], 9).shape == (1, 3)  # capped at K - 1


def test_linear_apgd_targeted_succeeds_iff_eps_exceeds_distance(linear10):
    model, x, y, dist = linear10
    hit = aa.apgd_targeted(model, x, y, epsilon=1.2 * dist, n_iter=10, seed=1)
    assert hit.success.numpy().all()
    assert (np.argmax(model(hit.x_adv).numpy(), 1) != y).all()
    assert (linf(hit.x_adv.numpy(), x) <= 1.2 * dist + 1e-6).all()
    miss = aa.apgd_targeted(model, x, y, epsilon=0.8 * dist, n_iter=10, seed=1)
    assert not miss.success.numpy().any()
    np.testing.assert_array_equal(miss.x_adv.numpy(), x)


def test_linear_apgd_ce_binary_succeeds_iff_eps_exceeds_distance():
    # With two classes the CE gradient's sign is the optimal L-inf direction.
    model = Linear(2, seed=3)
    x, y = interior_points(model, 6, seed=4)
    dist = model.distance(x, y)
    assert aa.apgd(model, x, y, epsilon=1.2 * dist, n_iter=10).success.numpy().all()
    assert not aa.apgd(model, x, y, epsilon=0.8 * dist, n_iter=10).success.numpy().any()


def test_linear_fab_targeted_finds_minimal_distance(linear10):
    model, x, y, dist = linear10
    hit = aa.fab_targeted(model, x, y, epsilon=1.2 * dist, n_iter=10)
    assert hit.success.numpy().all()
    norm = linf(hit.x_adv.numpy(), x)
    # On a linear model FAB's projection is exact: it lands just past the boundary.
    assert (norm >= dist * (1 - 1e-4)).all() and (norm <= 1.1 * dist).all()
    miss = aa.fab_targeted(model, x, y, epsilon=0.8 * dist, n_iter=10)
    assert not miss.success.numpy().any()


def test_projection_linf_matches_linear_program():
    rng = np.random.default_rng(5)
    n, d = 60, 10
    t = rng.uniform(0, 1, (n, d))
    w = rng.normal(size=(n, d)) * (rng.uniform(size=(n, d)) > 0.2)
    b = np.einsum("nd,nd->n", w, rng.uniform(0, 1, (n, d)))  # a reachable hyperplane
    b[::5] = np.einsum("nd,nd->n", w[::5], t[::5]) + 10.0 * np.sign(rng.normal(size=12))
    steps = aa.projection_linf(*(tf.constant(a, tf.float32) for a in (t, w, b))).numpy()
    n_feasible = 0
    for ti, wi, bi, di in zip(t, w, b, steps):
        # min lam s.t. <w, t + d> = b, |d_i| <= lam, 0 <= t + d <= 1.
        a_ub = np.r_[np.c_[np.eye(d), -np.ones(d)], np.c_[-np.eye(d), -np.ones(d)]]
        lp = optimize.linprog(np.r_[np.zeros(d), 1.0], A_ub=a_ub, b_ub=np.zeros(2 * d),
                              A_eq=np.r_[wi, 0.0][None], b_eq=[bi - wi @ ti],
                              bounds=[(-v, 1 - v) for v in ti] + [(0, None)])
        assert (ti + di).min() >= -1e-6 and (ti + di).max() <= 1 + 1e-6
        if lp.status == 0:
            n_feasible += 1
            assert np.abs(di).max() == pytest.approx(lp.x[-1], abs=1e-4)
            assert wi @ (ti + di) == pytest.approx(bi, abs=1e-3)
        else:  # out of reach: the box corner closest to the hyperplane
            np.testing.assert_allclose(ti + di, np.where(wi * np.sign(wi @ ti - bi) < 0, 1.0,
                                                         np.where(wi == 0, ti, 0.0)),
                                       atol=1e-6)
    assert 30 < n_feasible < n


# --------------------------------------------------------------------------- Square


def test_p_schedule_halves_at_published_iterations():
    halvings = [10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000]
    for m, it in enumerate(halvings):
        assert aa.p_selection(it, 10000) == pytest.approx(0.8 / 2 ** m)
        assert aa.p_selection(it + 1, 10000) == pytest.approx(0.8 / 2 ** (m + 1))
    # Rescaled to 5000 queries the thresholds halve; AutoAttack's default does not rescale.
    assert aa.p_selection(26, 5000, rescale_schedule=True) == pytest.approx(0.4 / 2)
    assert aa.p_selection(26, 5000) == pytest.approx(0.4)
    # CIFAR-sized windows: round(sqrt(0.8 * 1024)) = 29, then round(sqrt(0.4 * 1024)) = 20.
    assert list(aa.square_sizes(5000, 32, 32)[[0, 10, 11]]) == [29, 29, 20]


def test_square_succeeds_on_easy_linear_case(linear10):
    model, x, y, dist = linear10
    hit, queries = aa.square(model, x, y, epsilon=3.0 * dist, n_queries=300, seed=0,
                             return_queries=True)
    assert hit.success.numpy().all()
    assert (queries.numpy() < 301).all()  # stopped early, per example
    assert (linf(hit.x_adv.numpy(), x) <= 3.0 * dist + 1e-6).all()
    assert not aa.square(model, x, y, epsilon=0.8 * dist, n_queries=30).success.numpy().any()


# ------------------------------------------------------------------- all components


COMPONENTS = {
    "apgd-ce": lambda m, x, y, e: aa.apgd(m, x, y, epsilon=e, loss="ce", n_iter=10),
    "apgd-dlr": lambda m, x, y, e: aa.apgd(m, x, y, epsilon=e, loss="dlr", n_iter=10),
    "apgd-t": lambda m, x, y, e: aa.apgd_targeted(m, x, y, epsilon=e, n_iter=10,
                                                  n_target_classes=3),
    "fab-t": lambda m, x, y, e: aa.fab_targeted(m, x, y, epsilon=e, n_iter=10,
                                                n_target_classes=3),
    "square": lambda m, x, y, e: aa.square(m, x, y, epsilon=e, n_queries=60),
}


@pytest.mark.parametrize("attack", list(COMPONENTS))
def test_attack_stays_in_ball_and_box(small_net, attack):
    model, x, y = small_net
    eps = 8 / 255
    out = COMPONENTS[attack](model, x, y, eps)
    x_adv = out.x_adv.numpy()
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert linf(x_adv, x).max() <= eps + 1e-6
    # Success is reported exactly where the returned point is misclassified.
    np.testing.assert_array_equal(out.success.numpy(),
                                  np.argmax(model(x_adv).numpy(), 1) != y)


def test_eps_zero_gives_clean_accuracy(small_net):
    model, x, y = small_net
    res = aa.run_standard_autoattack(model, x, y, epsilon=0.0, batch_size=8, **SMALL)
    assert res.clean_accuracy == pytest.approx(10 / 12)
    assert res.robust_accuracy == res.clean_accuracy
    np.testing.assert_array_equal(res.robust_flags, res.flags["clean"])
    assert not res.adv_found.any()


class Spy:
    """Wraps the runner's attack registry and records which points each attack got."""

    def __init__(self, monkeypatch):
        self.calls = {}
        registry = dict(runner.ATTACKS)
        for name, fn in registry.items():
            monkeypatch.setitem(runner.ATTACKS, name, self._wrap(name, fn))

    def _wrap(self, name, fn):
        def spy(logits_fn, x, y, *args):
            self.calls.setdefault(name, []).append(np.asarray(x).copy())
            return fn(logits_fn, x, y, *args)
        return spy


def test_runner_worst_case_aggregation(small_net, monkeypatch):
    model, x, y = small_net
    spy = Spy(monkeypatch)
    res = aa.run_standard_autoattack(model, x, y, epsilon=0.03, batch_size=4, seed=3, **SMALL)
    assert res.components == aa.STANDARD_ATTACKS and not res.is_standard
    assert min(res.n_attacked.values()) > 0  # every attack had points to work on
    prev = res.flags["clean"]
    assert prev.sum() == 10
    for name in res.components:
        got = np.concatenate(spy.calls.get(name, [np.zeros((0,) + SHAPE, np.float32)]))
        # Each attack gets exactly the points still robust, nothing else.
        assert res.n_attacked[name] == prev.sum() == len(got)
        np.testing.assert_array_equal(got, x[prev])
        flags = res.flags[name]
        assert not (flags & ~prev).any()  # robust after => robust before (AND)
        assert res.accuracy[name] == flags.sum() / len(x)  # exact count over all N
        prev = flags
    np.testing.assert_array_equal(res.robust_flags, prev)
    assert res.robust_accuracy == prev.sum() / len(x) == res.accuracy["square"]
    # Every reported break is a misclassified point inside the ball.
    broken = res.flags["clean"] & ~res.robust_flags
    assert broken.any() and (res.adv_found == broken).all()
    assert (np.argmax(model(res.x_adv).numpy(), 1)[broken] != y[broken]).all()
    assert linf(res.x_adv, x).max() <= 0.03 + 1e-6


def test_resume_gives_same_flags_as_full_run(small_net):
    model, x, y = small_net
    kw = dict(epsilon=0.03, batch_size=2, seed=7, **SMALL)
    full = aa.run_standard_autoattack(model, x, y, **kw)

    # Session 1 runs two attacks; session 2 resumes from the JSON state with all four.
    part = aa.run_standard_autoattack(model, x, y, attacks=("apgd-ce", "apgd-t"), **kw)
    assert part.components == ("apgd-ce", "apgd-t")
    state = json.loads(json.dumps(part.state))
    resumed = aa.run_standard_autoattack(model, x, y, state=state, **kw)
    assert resumed.components == aa.STANDARD_ATTACKS
    np.testing.assert_array_equal(resumed.robust_flags, full.robust_flags)
    assert resumed.accuracy == full.accuracy and resumed.n_attacked == full.n_attacked

    # Interrupted inside an attack, after the first of its batches.
    assert full.n_attacked["apgd-t"] > kw["batch_size"]
    saved = []

    def progress(s):
        saved.append(json.dumps(s))
        cur = s["current"]
        if cur and cur["attack"] == "apgd-t" and cur["batches_done"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        aa.run_standard_autoattack(model, x, y, progress=progress, **kw)
    resumed = aa.run_standard_autoattack(model, x, y, state=json.loads(saved[-1]), **kw)
    for name, flags in full.flags.items():
        np.testing.assert_array_equal(resumed.flags[name], flags)

    with pytest.raises(ValueError, match="epsilon"):
        aa.run_standard_autoattack(model, x, y, state=json.loads(saved[-1]),
                                   **dict(kw, epsilon=0.1))


def test_components_report_what_ran(small_net):
    model, x, y = small_net
    res = aa.run_standard_autoattack(model, x, y, epsilon=0.03, attacks=("square",),
                                     batch_size=16, **SMALL)
    assert res.components == ("square",) and not res.is_standard
    assert set(res.accuracy) == {"clean", "square"}
    with pytest.raises(ValueError):
        aa.run_standard_autoattack(model, x, y, epsilon=0.03, attacks=("pgd",))


def test_same_seed_same_result(small_net):
    model, x, y = small_net
    a = aa.apgd(model, x, y, epsilon=0.05, n_iter=5, seed=11).x_best.numpy()
    b = aa.apgd(model, x, y, epsilon=0.05, n_iter=5, seed=11).x_best.numpy()
    c = aa.apgd(model, x, y, epsilon=0.05, n_iter=5, seed=12).x_best.numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.slow   # XLA compiles every component
def test_xla_compiled_runner_matches_graph_mode(small_net):
    model, x, y = small_net
    kw = dict(epsilon=0.03, batch_size=6, seed=5, **SMALL)
    plain = aa.run_standard_autoattack(model, x, y, **kw)
    xla = aa.run_standard_autoattack(model, x, y, jit_compile=True, **kw)
    for name, flags in plain.flags.items():
        np.testing.assert_array_equal(xla.flags[name], flags)

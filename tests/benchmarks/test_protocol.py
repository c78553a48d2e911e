"""The speedup protocol on synthetic curves whose answers are known in closed form."""

import numpy as np
import pytest

from benchmarks import _protocol as p


class TestEma:

  def test_constant_curve_is_unchanged(self):
    np.testing.assert_allclose(p.ema(np.full(50, 3.0), 0.9), np.full(50, 3.0))

  def test_known_values(self):
    # m0 = .5*1 -> 1/(1-.5) = 1; m1 = .5*.5 + .5*0 = .25 -> .25/.75 = 1/3.
    np.testing.assert_allclose(p.ema(np.array([1.0, 0.0]), 0.5), [1.0, 1.0 / 3.0])

  def test_matches_debiased_recursion(self):
    x = np.random.default_rng(0).normal(size=(3, 40))
    beta, m, ref = 0.8, np.zeros(3), []
    for t in range(40):
      m = beta * m + (1 - beta) * x[:, t]
      ref.append(m / (1 - beta ** (t + 1)))
    np.testing.assert_allclose(p.ema(x, beta), np.stack(ref, -1), rtol=1e-12)

  def test_zero_decay_is_identity(self):
    x = np.arange(5.0)
    np.testing.assert_allclose(p.ema(x, 0.0), x)

  def test_divergence_poisons_the_rest(self):
    out = p.ema(np.array([1.0, 1.0, np.nan, 0.5, 0.5]), 0.5)
    np.testing.assert_allclose(out[:2], 1.0)
    assert np.all(np.isposinf(out[2:]))

  def test_bad_decay(self):
    with pytest.raises(ValueError, match="decay"):
      p.ema(np.ones(3), 1.0)

  def test_auto_decay(self):
    assert p.auto_ema_decay(50) == pytest.approx(0.5)          # window floor of 2
    assert p.auto_ema_decay(500) == pytest.approx(0.9)         # window 10 = 2 % of 500
    assert p.auto_ema_decay(10**6) == pytest.approx(0.95)      # capped


class TestEnvelope:

  def test_min_over_lrs_of_seed_means(self):
    # lr 0 is good early, lr 1 good late: the envelope switches between them.
    a = np.array([[4.0, 2.0, 1.5, 1.4], [6.0, 2.0, 1.5, 1.4]])  # seeds of lr 0 (mean 5,2,1.5,1.4)
    b = np.array([[8.0, 3.0, 1.0, 0.5], [8.0, 3.0, 1.0, 0.3]])  # lr 1 (mean 8,3,1,.4)
    env = p.lower_envelope(np.stack([a, b]))
    np.testing.assert_allclose(env, [5.0, 2.0, 1.0, 0.4])

  def test_diverged_lr_drops_out(self):
    good = np.array([[3.0, 2.0, 1.0]])
    bad = np.array([[0.5, np.inf, np.inf]])  # better at first, then diverges
    env = p.lower_envelope(np.stack([good, bad]))
    np.testing.assert_allclose(env, [0.5, 2.0, 1.0])

  def test_without_seed_axis(self):
    np.testing.assert_allclose(p.lower_envelope(np.array([[1.0, 3.0], [2.0, 0.0]]),
                                                seed_axis=None), [1.0, 0.0])


class TestSpeedup:

  def test_steps_to_reach(self):
    ref = np.array([10.0, 8.0, 9.0, 5.0, 4.0])
    np.testing.assert_array_equal(p.steps_to_reach(ref, [10.0, 8.5, 8.0, 4.5, 4.0, 3.9, np.inf]),
                                  [1, 2, 2, 5, 5, np.inf, 1])

  def test_exponential_curves_give_the_rate_ratio(self):
    # Adam: exp(-t/100); optimizer twice as fast: exp(-2t/100). Reaching the
    # optimizer's loss at t takes Adam 2t steps, a speedup of 2 while 2t <= T.
    t = np.arange(1, 1001, dtype=np.float64)
    adam, fast = np.exp(-t / 100), np.exp(-2 * t / 100)
    speed, lower = p.speedup_curve(fast, adam)
    np.testing.assert_allclose(speed[:500], 2.0)
    assert not lower[:500].any()
    # Beyond T/2 Adam never gets there: the bound T/t is returned and flagged.
    assert lower[500:].all()
    np.testing.assert_allclose(speed[500:], 1000.0 / t[500:])

  def test_slower_optimizer(self):
    t = np.arange(1, 401, dtype=np.float64)
    speed, lower = p.speedup_curve(1.0 / (1.0 + t / 4), 1.0 / (1.0 + t))  # 4x slower
    np.testing.assert_allclose(speed[3::4], 0.25)
    assert not lower.any()

  def test_identical_curves_have_speedup_one(self):
    c = np.linspace(5.0, 1.0, 30)
    speed, _ = p.speedup_curve(c, c)
    np.testing.assert_allclose(speed, 1.0)

  def test_diverged_optimizer_reaches_speedup_one_over_t(self):
    speed, lower = p.speedup_curve(np.array([1.0, np.inf, np.inf]), np.array([1.0, 0.5, 0.2]))
    np.testing.assert_allclose(speed, [1.0, 0.5, 1.0 / 3.0])
    assert not lower.any()


class TestIqmAndBootstrap:

  def test_iqm_drops_quartiles(self):
    assert p.iqm([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 100.0]) == pytest.approx(4.5)
    assert p.iqm([1.0, 2.0, 3.0]) == pytest.approx(2.0)          # fewer than 4: plain mean
    assert p.iqm(np.arange(12.0)) == pytest.approx(np.mean(np.arange(3.0, 9.0)))

  def test_iqm_matches_scipy_trim_mean(self):
    from scipy import stats

    x = np.random.default_rng(1).lognormal(size=37)
    assert p.iqm(x) == pytest.approx(stats.trim_mean(x, 0.25))

  def test_bootstrap_constant_scores_have_a_point_interval(self):
    point, lo, hi = p.bootstrap_ci(np.full((4, 3), 2.0), num_samples=200)
    assert point == lo == hi == 2.0

  def test_bootstrap_covers_the_mean(self):
    # IQM of a symmetric distribution is its mean; a 95 % interval from 5 x 20
    # normal scores (sd 1) should cover 0 and have width about 2 * 1.96 * sd/sqrt(n).
    x = np.random.default_rng(2).normal(size=(5, 20))
    point, lo, hi = p.bootstrap_ci(x, num_samples=2000, seed=3)
    assert lo < point < hi
    assert lo < 0.0 < hi
    assert 0.2 < hi - lo < 1.2

  def test_bootstrap_is_stratified(self):
    # Each task's runs are identical, so resampling runs within tasks changes nothing.
    scores = np.array([[1.0] * 5, [2.0] * 5, [10.0] * 5, [20.0] * 5])
    point, lo, hi = p.bootstrap_ci(scores, num_samples=100)
    assert point == lo == hi == pytest.approx(6.0)

  def test_bootstrap_is_deterministic_given_seed(self):
    x = np.random.default_rng(4).normal(size=(3, 6))
    assert p.bootstrap_ci(x, seed=7) == p.bootstrap_ci(x, seed=7)

  def test_one_dimensional_scores_resample_tasks(self):
    point, lo, hi = p.bootstrap_ci(np.array([1.0, 2.0, 3.0, 4.0]), stat=np.mean, num_samples=500)
    assert point == pytest.approx(2.5)
    assert 1.0 <= lo < 2.5 < hi <= 4.0


class TestHorizonSpeedup:
  """Speedups at the horizon against a baseline that runs 4x longer."""

  T = 100
  steps = np.arange(1, 4 * T + 1, dtype=np.float64)
  baseline = np.exp(-steps / 100)   # a 4x-horizon baseline curve

  def test_speedup_of_three_with_a_4x_baseline(self):
    # The optimizer reaches exp(-3) in T = 100 steps; the baseline needs 300.
    s, lower = p.horizon_speedup(np.exp(-3.0), self.baseline, self.T)
    assert s == pytest.approx(3.0) and not lower

  def test_never_reached_is_a_flagged_lower_bound(self):
    s, lower = p.horizon_speedup(np.exp(-5.0), self.baseline, self.T)
    assert lower and s == pytest.approx(4.0)   # >= 4: all the baseline's 400 steps

  def test_per_seed_values(self):
    s, lower = p.horizon_speedup(np.exp(-np.array([1.0, 2.0, 9.0])), self.baseline, self.T)
    np.testing.assert_allclose(s, [1.0, 2.0, 4.0])
    np.testing.assert_array_equal(lower, [False, False, True])

  def test_test_loss_on_a_step_grid(self):
    # Test losses every 20 steps; the first grid point at or below the target counts.
    grid = np.arange(20, 4 * self.T + 1, 20)
    test_env = 1.0 / grid
    s, lower = p.horizon_speedup(1.0 / 250, test_env, self.T, grid=grid)
    assert s == pytest.approx(2.6) and not lower    # reached at step 260 (between grid points)
    s, lower = p.horizon_speedup(1.0 / 180, test_env, self.T, grid=grid)
    assert s == pytest.approx(1.8)
    with pytest.raises(ValueError, match="grid"):
      p.horizon_speedup(0.1, test_env, self.T, grid=grid[:-1])

  def test_wallclock_from_per_step_times(self):
    # 3x fewer steps, each 2x as expensive as the baseline's: 1.5x in wall-clock.
    assert p.wallclock_speedup(3.0, 0.02, 0.01) == pytest.approx(1.5)
    np.testing.assert_allclose(p.wallclock_speedup(np.array([1.0, 4.0]), 0.005, 0.01), [2.0, 8.0])
    with pytest.raises(ValueError, match="positive"):
      p.wallclock_speedup(1.0, 0.0, 0.01)

  def test_pretrained_over_fresh_ratio(self):
    pre = np.array([[2.0, 4.0], [1.0, 1.0], [3.0, 3.0]])
    fresh = np.array([[1.0, 2.0], [2.0, 2.0], [1.0, 1.0]])
    r = p.ratio_scores(pre, fresh)
    np.testing.assert_allclose(r, [[2.0, 2.0], [0.5, 0.5], [3.0, 3.0]])
    point, lo, hi = p.bootstrap_ci(r, num_samples=100)   # every task's runs agree: no spread
    assert point == lo == hi == pytest.approx(np.mean([0.5, 2.0, 2.0, 3.0]))  # IQM of six
    with pytest.raises(ValueError, match="shapes"):
      p.ratio_scores(pre, fresh[:2])

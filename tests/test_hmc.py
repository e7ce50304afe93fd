"""The functional NUTS core (bayesmix.hmc) on targets whose answer is known in closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayesmix import hmc

# A correlated 3-D Gaussian target: potential 0.5 (z - m)^T A (z - m), A = C^-1.
MEAN = np.array([1.0, -2.0, 0.5])
COV = np.array([[1.0, 0.6, 0.3], [0.6, 2.0, -0.5], [0.3, -0.5, 0.8]])  # condition number ~10
PRECISION = np.linalg.inv(COV)
NO_CUT = 1e300  # the NaN region z[0] > cut is out of reach
NUM_CHAINS = 4
BUFFER = 1000


def gaussian_potential(z, args):
    """0.5 (z - m)^T A (z - m), plus a term that is NaN (value and gradient) where z[0] > cut."""
    mean, precision, cut = args
    d = z - mean
    return 0.5 * d @ precision @ d + 0.0 * jnp.sqrt(cut - z[0])


def gaussian_args(cut=NO_CUT):
    return (jnp.asarray(MEAN), jnp.asarray(PRECISION), jnp.asarray(cut, jnp.float64))


@jax.jit
def _start(key, position, args):
    """The sampler's path: the Laplace approximation at ``position``, every chain drawn from it inflated."""
    lap = hmc.laplace(gaussian_potential, position, args)
    modes = jnp.broadcast_to(lap.mode, (NUM_CHAINS, *lap.mode.shape))
    inverse = jnp.broadcast_to(lap.inverse_hessian, (NUM_CHAINS, *lap.inverse_hessian.shape))
    states, adapts = hmc.start(key, gaussian_potential, modes, inverse, args)
    return states, adapts, lap


@jax.jit
def _run(states, adapts, args, schedule, num_samples):
    """All chains, one compiled program for every schedule and length (buffer size fixed)."""

    def one(state, adapt):
        return hmc.run(gaussian_potential, state, adapt, args, schedule, num_samples, BUFFER)

    return jax.vmap(one)(states, adapts)


@jax.jit
def _init_at(position, args, key, inverse_mass):
    """Chains at one given position with the given inverse mass (and Laplace inverse)."""
    tuning = hmc.tuning_from_inverse_mass(0.5, inverse_mass)
    states = jax.vmap(lambda k: hmc.init(k, gaussian_potential, position, args, tuning))(
        jax.random.split(key, NUM_CHAINS))
    return states, jax.vmap(hmc.adapt_init)(states)


def _schedule(num_warmup, adapt_mass=True):
    return tuple(jnp.asarray(v) for v in hmc.warmup_schedule(num_warmup, adapt_mass))


def _started(seed, cut=NO_CUT):
    args = gaussian_args(cut)
    states, adapts, _ = _start(jax.random.PRNGKey(seed), jnp.asarray(MEAN + 3.0), args)
    return states, adapts, args


# --------------------------------------------------------------------------- starts


def test_starts_are_overdispersed_draws_around_each_chains_own_mode():
    """Chains start at draws from N(mode_c, dispersion^2 H_c^-1), each with H_c^-1 as its inverse mass:
    breaks if the inflation, the per-chain mode or the per-chain mass matrix is lost."""
    args = gaussian_args()
    n = 400
    key = jax.random.PRNGKey(0)
    modes = jnp.asarray(np.where(np.arange(n)[:, None] % 2 == 0, MEAN, MEAN + 10.0))
    inverse = jnp.broadcast_to(jnp.asarray(COV), (n, 3, 3))
    states, _ = jax.jit(lambda k, m, h, a: hmc.start(k, gaussian_potential, m, h, a, dispersion=2.0))(
        key, modes, inverse, args)
    z = np.asarray(states.hmc.position)
    even, odd = z[0::2], z[1::2]
    tolerance = 4 * 2.0 * np.sqrt(np.diag(COV).max() / (n / 2))  # 4 standard errors of the mean
    np.testing.assert_allclose(even.mean(axis=0), MEAN, atol=tolerance)
    np.testing.assert_allclose(odd.mean(axis=0), MEAN + 10.0, atol=tolerance)
    # Standard deviations twice the Laplace ones (sampling error of a 200-draw sd is about 5%).
    np.testing.assert_allclose(even.std(axis=0), 2.0 * np.sqrt(np.diag(COV)), rtol=0.2)
    np.testing.assert_allclose(np.asarray(states.tuning.inverse_mass[0]), COV, rtol=1e-12)
    narrow, _ = jax.jit(lambda k, m, h, a: hmc.start(k, gaussian_potential, m, h, a, dispersion=1.0))(
        key, modes, inverse, args)
    np.testing.assert_allclose(np.asarray(narrow.hmc.position)[0::2].std(axis=0), np.sqrt(np.diag(COV)),
                               rtol=0.2)


def test_laplace_log_mass_compares_the_mass_of_two_modes():
    """Two Gaussian bumps of equal height but widths 1 and 3 (per dimension, 3-D): their Laplace
    masses differ by 3 log 3."""
    def potential(z, width):
        return 0.5 * jnp.sum((z / width) ** 2)

    lap1 = hmc.laplace(potential, jnp.ones(3), 1.0)
    lap3 = hmc.laplace(potential, jnp.ones(3), 3.0)
    gap = float(hmc.laplace_log_mass(lap3) - hmc.laplace_log_mass(lap1))
    assert gap == pytest.approx(3 * np.log(3.0), rel=1e-6)


# --------------------------------------------------------------------------- laplace


def test_laplace_finds_mode_and_inverse_hessian_of_a_gaussian():
    """From a start far from the mode, Newton lands on m and H^-1 = A^-1: breaks if the
    Newton step, the finite-difference Hessian or the args pass-through is wrong."""
    lap = jax.jit(lambda z, a: hmc.laplace(gaussian_potential, z, a))(jnp.array([5.0, 5.0, -5.0]),
                                                                       gaussian_args())
    np.testing.assert_allclose(np.asarray(lap.mode), MEAN, atol=1e-6)
    np.testing.assert_allclose(np.asarray(lap.inverse_hessian), COV, atol=1e-6)
    np.testing.assert_allclose(float(lap.potential_energy), 0.0, atol=1e-10)
    assert bool(lap.hessian_ok)


def test_laplace_on_indefinite_potential_repairs_and_never_goes_uphill():
    """An indefinite quadratic: hessian_ok is False, the inverse Hessian handed to the mass
    matrix is still symmetric positive definite, and the potential does not increase."""
    indefinite = np.diag([1.0, -1.0, 2.0]) + 0.3 * (np.ones((3, 3)) - np.eye(3))
    assert np.linalg.eigvalsh(indefinite)[0] < 0
    args = (jnp.zeros(3), jnp.asarray(indefinite), jnp.asarray(NO_CUT))
    z0 = jnp.array([1.0, 0.3, -1.0])
    lap = jax.jit(lambda z, a: hmc.laplace(gaussian_potential, z, a))(z0, args)
    assert not bool(lap.hessian_ok)
    inv = np.asarray(lap.inverse_hessian)
    np.testing.assert_allclose(inv, inv.T, rtol=0, atol=1e-12)
    assert np.linalg.eigvalsh(inv)[0] > 0
    assert np.all(np.isfinite(np.asarray(lap.mode)))
    pot0 = float(gaussian_potential(z0, args))
    assert float(lap.potential_energy) <= pot0
    np.testing.assert_allclose(float(gaussian_potential(lap.mode, args)), float(lap.potential_energy),
                               rtol=1e-12)


# --------------------------------------------------------------------------- kinetic energy


@pytest.mark.parametrize(
    ("inverse_mass", "momentum"),
    [
        ([[1.0, -0.5], [-0.5, 1.0]], [1e200, 3e200]),  # plain r^T M^-1 r / 2 gave -inf here
        ([[1.0, -0.9], [-0.9, 1.0]], [1e200, 2e200]),
        ([[1.0, -0.5], [-0.5, 1.0]], [1e200, 1e200]),
        ([[1.0, -0.5], [-0.5, 1.0]], [-1e200, 1e200]),
        ([[4.0, -3.9], [-3.9, 4.0]], [1e308, 1.5e308]),  # products overflow to inf - inf
    ],
)
def test_kinetic_energy_overflow_is_plus_inf(inverse_mass, momentum):
    """An overflowing kinetic energy is +inf, never -inf or NaN: -inf read as an infinitely
    good state let NUTS accept a position with potential 1e196."""
    ke = float(hmc._kinetic_energy(jnp.asarray(inverse_mass), jnp.asarray(momentum)))
    assert ke == np.inf


def test_kinetic_energy_ordinary_momentum():
    """For ordinary momenta it is r^T M^-1 r / 2 (dense and diagonal inverse mass)."""
    rng = np.random.default_rng(0)
    r = rng.normal(size=3)
    got = float(hmc._kinetic_energy(jnp.asarray(COV), jnp.asarray(r)))
    np.testing.assert_allclose(got, 0.5 * r @ COV @ r, rtol=1e-14)
    diag = np.array([0.5, 2.0, 3.0])
    got = float(hmc._kinetic_energy(jnp.asarray(diag), jnp.asarray(r)))
    np.testing.assert_allclose(got, 0.5 * np.sum(diag * r**2), rtol=1e-14)


# --------------------------------------------------------------------------- warmup schedule


@pytest.mark.parametrize("num_warmup", [0, 5, 20, 29, 39, 40, 100, 301, 1000])
@pytest.mark.parametrize("adapt_mass", [True, False])
def test_warmup_schedule_window(num_warmup, adapt_mass):
    """The mass window lies inside [0, num_warmup) or is empty at num_warmup (no mass
    adaptation asked for, or a window shorter than 20 draws)."""
    sched = hmc.warmup_schedule(num_warmup, adapt_mass)
    assert sched.num_warmup == num_warmup
    empty = sched.window_start == sched.window_end == num_warmup
    if not adapt_mass or num_warmup < 30:
        assert empty
    elif num_warmup >= 40:
        assert not empty
    if not empty:
        assert 0 <= sched.window_start < sched.window_end <= num_warmup
        assert sched.window_end - sched.window_start >= 20
    for v in sched:
        assert isinstance(v, int)


def test_warmup_schedule_split():
    """20% step size only, 50% mass window, 30% step size."""
    assert tuple(hmc.warmup_schedule(300)) == (300, 60, 210)
    assert tuple(hmc.warmup_schedule(300, adapt_mass=False)) == (300, 300, 300)


# --------------------------------------------------------------------------- sampling


def test_nuts_draws_match_a_correlated_gaussian():
    """4 chains, 300 warmup, 1000 draws each: mean and covariance of the draws match the
    target within Monte Carlo error, no divergences, acceptance near its 0.8 target.

    Breaks if the momentum is drawn with the wrong covariance (M rather than M^-1), if the
    kinetic energy, tree or step-size adaptation is wrong, or if the mass window corrupts
    the tuning.
    """
    states, adapts, args = _started(1)
    out_states, out_adapts, draws, infos = _run(states, adapts, args, _schedule(300), BUFFER)
    draws = np.asarray(draws)
    assert draws.shape == (NUM_CHAINS, BUFFER, 3) and np.all(np.isfinite(draws))
    flat = draws.reshape(-1, 3)
    # ESS of NUTS on a well-conditioned Gaussian is near the number of draws; a quarter
    # of it is conservative.
    ess = flat.shape[0] / 4
    sd = np.sqrt(np.diag(COV))
    assert np.all(np.abs(flat.mean(axis=0) - MEAN) < 5 * sd / np.sqrt(ess))
    np.testing.assert_array_less(np.abs(np.cov(flat.T) - COV), 0.15 * np.outer(sd, sd))
    # Each chain on its own is in the right place too (no stuck chain).
    for c in range(NUM_CHAINS):
        assert np.all(np.abs(draws[c].mean(axis=0) - MEAN) < 5 * sd / np.sqrt(ess / NUM_CHAINS))
    assert not np.any(np.asarray(infos.diverging))
    accept = float(np.asarray(infos.accept_prob).mean())
    assert 0.6 < accept < 0.95
    assert np.all(np.asarray(infos.num_steps) >= 1)
    # The adapted inverse mass stays near the target covariance; after warmup the step
    # size is the dual-averaging average.
    for c in range(NUM_CHAINS):
        inv_mass = np.asarray(out_states.tuning.inverse_mass[c])
        np.testing.assert_array_less(np.abs(inv_mass - COV), 0.3 * np.outer(sd, sd))
    np.testing.assert_allclose(np.asarray(out_states.tuning.step_size),
                               np.exp(np.asarray(out_adapts.da.log_step_size_avg)), rtol=1e-14)
    assert np.all(np.asarray(out_states.tuning.step_size) > 0)


@pytest.mark.parametrize("adapt_mass", [True, False])
def test_mass_window_reestimates_inverse_mass(adapt_mass):
    """Started with an identity inverse mass (and Laplace inverse), the warmup window's draws
    move the inverse mass most of the way to the target covariance; without a window it
    is left exactly as it was. (A window estimate from ~300 correlated draws is noisy:
    each chain must beat identity clearly, the four together must be close.)"""
    args = gaussian_args()
    states, adapts = _init_at(jnp.asarray(MEAN), args, jax.random.PRNGKey(4), jnp.eye(3))
    out_states, _, _, _ = _run(states, adapts, args, _schedule(600, adapt_mass), 1)
    inv_mass = np.asarray(out_states.tuning.inverse_mass)
    if not adapt_mass:
        np.testing.assert_array_equal(inv_mass, np.broadcast_to(np.eye(3), inv_mass.shape))
        return
    np.testing.assert_allclose(inv_mass, np.swapaxes(inv_mass, 1, 2), rtol=0, atol=1e-14)
    start_err = np.linalg.norm(np.eye(3) - COV)
    for c in range(NUM_CHAINS):
        assert np.linalg.norm(inv_mass[c] - COV) < 0.8 * start_err
        assert np.linalg.eigvalsh(inv_mass[c])[0] > 0
    assert np.linalg.norm(inv_mass.mean(axis=0) - COV) < 0.45 * start_err


@pytest.mark.parametrize(("num_warmup", "adapt_mass", "averaged"), [
    (30, True, 30),     # too short for a window: averaging runs over the whole warmup
    (300, False, 300),  # no window asked for: the same
    (300, True, 90),    # a window [60, 210): averaging restarts when it ends
])
def test_final_step_size_is_the_dual_averaging_average(num_warmup, adapt_mass, averaged):
    """The step size after warmup is exp(log_step_avg) over the iterations since the last
    restart. It used to restart at the last warmup step when there was no mass window, which
    left the last noisy iterate (a spread of 0.4-2.0 over four chains on this Gaussian)."""
    args = gaussian_args()
    states, adapts = _init_at(jnp.asarray(MEAN), args, jax.random.PRNGKey(5), jnp.asarray(COV))
    out_states, out_adapt, _, _ = _run(states, adapts, args, _schedule(num_warmup, adapt_mass), 1)
    # BlackJAX's dual averaging counts from 1: ``step - 1`` updates since the last restart.
    np.testing.assert_array_equal(np.asarray(out_adapt.da.step) - 1, averaged)
    np.testing.assert_allclose(np.asarray(out_states.tuning.step_size),
                               np.exp(np.asarray(out_adapt.da.log_step_size_avg)), rtol=1e-12)


def test_one_compiled_program_serves_every_warmup_and_run_length():
    """Warmup length, mass window and number of draws are data, not constants of the program:
    runs of every length trace (and so compile) the NUTS loop once."""
    traces = {"n": 0}

    @jax.jit
    def run(states, adapts, args, schedule, num_samples):
        traces["n"] += 1  # runs once per trace
        return jax.vmap(lambda st, ad: hmc.run(gaussian_potential, st, ad, args, schedule, num_samples,
                                               BUFFER))(states, adapts)

    args = gaussian_args()
    states, adapts = _init_at(jnp.asarray(MEAN), args, jax.random.PRNGKey(6), jnp.asarray(COV))
    for num_warmup, adapt_mass, num_samples in [(0, True, 1), (50, False, 7), (120, True, BUFFER)]:
        out = run(states, adapts, args, _schedule(num_warmup, adapt_mass), jnp.asarray(num_samples))
        states = out[0]
    assert traces["n"] == 1


def test_continuation_is_exact():
    """run for 2n draws equals run for n draws then n more from the returned state with
    no warmup, bit for bit: breaks if the PRNG key, step size or tuning handed back is
    not the one the next iteration would have used."""
    n = 40
    states, adapts, args = _started(2)
    _, _, whole, whole_info = _run(states, adapts, args, _schedule(100), 2 * n)
    mid_states, mid_adapts, first, _ = _run(states, adapts, args, _schedule(100), n)
    _, _, second, second_info = _run(mid_states, mid_adapts, args, (0, 0, 0), n)
    whole, first, second = np.asarray(whole), np.asarray(first), np.asarray(second)
    np.testing.assert_array_equal(whole[:, :n], first[:, :n])
    np.testing.assert_array_equal(whole[:, n:2 * n], second[:, :n])
    np.testing.assert_array_equal(np.asarray(whole_info.energy)[:, n:2 * n],
                                  np.asarray(second_info.energy)[:, :n])
    # Rows past num_samples are zeros.
    assert np.all(whole[:, 2 * n:] == 0) and np.all(first[:, n:] == 0)
    # Draws do move (the test would pass trivially on a stuck chain otherwise).
    assert np.unique(whole[0, :, 0][: 2 * n]).size > n


def test_nan_region_of_the_potential_is_never_entered():
    """A potential that is NaN (value and gradient) where z[0] > cut: no draw is NaN and
    none lies in that region (NaN is read as +inf potential, so it is never accepted)."""
    cut = MEAN[0] + 0.3
    args = gaussian_args(cut)
    states, adapts = _init_at(jnp.asarray(MEAN - 0.5 * np.sqrt(np.diag(COV))), args, jax.random.PRNGKey(3),
                             jnp.asarray(COV))
    out_states, _, draws, infos = _run(states, adapts, args, _schedule(100), 300)
    draws = np.asarray(draws)[:, :300]
    assert np.all(np.isfinite(draws))
    assert np.all(draws[..., 0] <= cut)
    assert np.all(np.isfinite(np.asarray(infos.potential_energy)[:, :300]))
    assert np.all(np.isfinite(np.asarray(out_states.hmc.position)))
    # The chains do explore up to the boundary rather than freezing.
    assert draws[..., 0].max() > cut - 0.3
    # Laplace draws that land inside the NaN region are moved to the mode (a chain started
    # there would never move), so every chain starts finite and every chain moves.
    states, adapts, _ = _start(jax.random.PRNGKey(6), jnp.asarray(MEAN), args)
    assert np.all(np.asarray(states.hmc.position)[:, 0] <= cut)
    assert np.all(np.isfinite(np.asarray(states.hmc.potential_energy)))
    out_states, _, draws, infos = _run(states, adapts, args, _schedule(100), 50)
    draws = np.asarray(draws)[:, :50]
    assert np.all(np.isfinite(draws)) and np.all(np.isfinite(np.asarray(out_states.hmc.position)))
    assert all(np.unique(draws[c, :, 0]).size > 10 for c in range(draws.shape[0]))


def test_blackjax_public_pieces_are_what_hmc_uses():
    """bayesmix.hmc builds on BlackJAX's public NUTS kernel, Euclidean metric, dual averaging and
    Welford estimator (``blackjax>=1.2,<2`` in pyproject.toml). This test fails loudly when the
    signatures or field names the code relies on change, so a new BlackJAX major is taken only
    after hmc.py is checked against it."""
    import inspect

    from blackjax.adaptation.mass_matrix import WelfordAlgorithmState, welford_algorithm
    from blackjax.adaptation.step_size import DualAveragingAdaptationState, dual_averaging_adaptation
    from blackjax.mcmc import hmc as hmc_base
    from blackjax.mcmc import metrics, nuts

    assert list(inspect.signature(nuts.build_kernel).parameters)[:2] == ["integrator", "divergence_threshold"]
    kernel = nuts.build_kernel(divergence_threshold=1000.0)
    assert list(inspect.signature(kernel).parameters) == ["rng_key", "state", "logdensity_fn", "step_size",
                                                          "inverse_mass_matrix", "max_num_doublings"]
    assert hmc_base.HMCState._fields == ("position", "logdensity", "logdensity_grad")
    read_by_hmc = {"is_divergent", "energy", "num_trajectory_expansions", "num_integration_steps",
                   "acceptance_rate"}
    assert read_by_hmc <= set(nuts.NUTSInfo._fields)
    assert {"sample_momentum", "kinetic_energy", "check_turning"} <= set(metrics.Metric._fields)
    # The kernel takes a Metric object as it is (so hmc passes its own momentum sampler and
    # overflow-safe kinetic energy, and nothing is refactorised per step).
    metric = metrics.gaussian_euclidean(jnp.eye(2))
    assert metrics.default_metric(metric) is metric
    assert DualAveragingAdaptationState._fields == ("log_step_size", "log_step_size_avg", "step", "avg_error",
                                                    "mu")
    da_init, da_update, da_final = dual_averaging_adaptation(0.8)
    da = da_update(da_init(0.5), 0.7)
    assert int(da.step) == 2 and float(da_final(da)) > 0
    assert WelfordAlgorithmState._fields == ("mean", "m2", "sample_size")
    w_init, w_update, w_final = welford_algorithm(False)
    cov, n, _ = w_final(w_update(w_update(w_init(2), jnp.zeros(2)), jnp.ones(2)))
    assert int(n) == 2 and cov.shape == (2, 2)
    # A NUTS step through the public kernel runs and returns the state bayesmix converts back.
    state = hmc_base.init(jnp.zeros(2), lambda z: -0.5 * jnp.sum(z**2))
    new, info = kernel(jax.random.key(0), state, lambda z: -0.5 * jnp.sum(z**2), 0.5, metric, 3)
    assert new.position.shape == (2,) and int(info.num_trajectory_expansions) <= 3


def test_draws_without_warmup_ignore_the_bookkeeping_they_are_given():
    """With num_warmup 0 the run program only needs warmup bookkeeping of the right shapes:
    inert_adapt's host zeros (no tracing, no BlackJAX) give exactly the draws of fresh
    bookkeeping (adapt_init), and of warmup bookkeeping carried over from the warmup run."""
    states, adapts, args = _started(3)
    warmed, carried, _, _ = _run(states, adapts, args, _schedule(100), 0)
    fresh = jax.vmap(hmc.adapt_init)(warmed)
    inert = hmc.inert_adapt(warmed)
    assert isinstance(inert.da.log_step_size, np.ndarray)
    assert jax.tree.structure(inert) == jax.tree.structure(fresh)
    shapes = [[(x.shape, x.dtype) for x in jax.tree.leaves(tree)] for tree in (inert, fresh)]
    assert shapes[0] == shapes[1]
    runs = [_run(warmed, bookkeeping, args, _schedule(0), 40) for bookkeeping in (fresh, inert, carried)]
    for other in runs[1:]:
        np.testing.assert_array_equal(np.asarray(other[2]), np.asarray(runs[0][2]))


def test_state_types_are_bayesmix_own_and_mirror_blackjax_field_for_field():
    """The states a stored program takes and returns are this module's NamedTuples, so a stored
    program loads without importing BlackJAX; converting at BlackJAX's boundary is positional,
    so the field names and order must stay BlackJAX's."""
    from blackjax.adaptation.mass_matrix import WelfordAlgorithmState
    from blackjax.adaptation.step_size import DualAveragingAdaptationState

    assert all(cls.__module__ == "bayesmix.hmc" for cls in hmc.state_types())
    assert hmc.DualAveragingState._fields == DualAveragingAdaptationState._fields
    assert hmc.WelfordState._fields == WelfordAlgorithmState._fields

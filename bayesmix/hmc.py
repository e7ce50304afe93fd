"""The sampler core: pure JAX ``init``/``step``/``run`` over a flat parameter vector.

Everything here is a pure function of explicit PRNG keys (always the first argument)
and NamedTuple states, so a whole run (every warmup and sampling iteration of a chain)
compiles into one XLA loop: no Python between iterations, no per-chain recompilation.
The transition is BlackJAX's multinomial NUTS (``blackjax.mcmc.nuts.build_kernel``, a
public, versioned kernel) with its Euclidean metric, and warmup uses BlackJAX's dual
averaging and Welford estimator; what is ours is the driver around them:

* the mass matrix starts from the **Laplace approximation** at the EM/MAP start
  (:func:`laplace`: a few safeguarded Newton steps on the unconstrained potential, then
  the inverse Hessian), so warmup begins with trajectories that are already short;
* chains start apart (:func:`start`): each at a draw from an inflated Laplace
  approximation of its own mode (several modes when EM found several optima), so R-hat
  can reveal chains that disagree;
* warmup follows a :class:`WarmupSchedule` given as data: dual-averaging step-size
  adaptation throughout, with one optional window in which the chain's own draws
  re-estimate the dense mass matrix, shrunk towards the Laplace one by the window's size
  (``n / (n + n_params + 5)``);
* warmup and draws are one loop (:func:`run`) with traced lengths writing into a
  fixed-size buffer, so one compiled program serves the first run and every later
  chunk, extension and checkpoint (and the NUTS step is traced once, not twice);
* safety: a NaN potential counts as +inf (divergent, never accepted), and a kinetic
  energy that overflows is +inf, never -inf.

The potential is ``potential_fn(position, args) -> scalar`` (minus the log density in
unconstrained space); ``args`` is passed through so data stay arguments of the
compiled program, not constants baked into it. States keep bayesmix's own field names
(:class:`HMCState` holds the potential, not BlackJAX's log density), which checkpoints
store; :func:`step` converts at the kernel's boundary.
"""

from __future__ import annotations

import functools
import types
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.linalg import solve_triangular

from bayesmix import _x64  # noqa: F401


@functools.cache
def _blackjax() -> types.SimpleNamespace:
    """The BlackJAX pieces this module uses, imported on first use.

    ``import blackjax`` starts JAX's backend, and the backend's device count is fixed from
    then on: importing it with this module would make
    :func:`bayesmix.sampling.set_host_device_count` (which must run first) useless, and
    chains would lose their parallel CPU devices.
    """
    from blackjax.adaptation import mass_matrix, step_size
    from blackjax.mcmc import hmc as hmc_base
    from blackjax.mcmc import metrics, nuts

    return types.SimpleNamespace(
        WelfordAlgorithmState=mass_matrix.WelfordAlgorithmState,
        welford_algorithm=mass_matrix.welford_algorithm,
        DualAveragingAdaptationState=step_size.DualAveragingAdaptationState,
        dual_averaging_adaptation=step_size.dual_averaging_adaptation, HMCState=hmc_base.HMCState,
        metrics=metrics, nuts=nuts)


__all__ = [
    "AdaptState",
    "ChainState",
    "DualAveragingState",
    "HMCState",
    "LaplaceResult",
    "StepInfo",
    "Tuning",
    "WarmupSchedule",
    "WelfordState",
    "adapt_init",
    "inert_adapt",
    "init",
    "laplace",
    "laplace_log_mass",
    "run",
    "start",
    "state_types",
    "step",
    "tuning_from_inverse_mass",
    "warmup_schedule",
]


class HMCState(NamedTuple):
    """Where a chain is: position (n_params,), potential energy (), its gradient (n_params,)."""

    position: Any
    potential_energy: Any
    grad: Any


class Tuning(NamedTuple):
    """Step size (), inverse mass matrix (n_params, n_params) and its lower Cholesky factor."""

    step_size: Any
    inverse_mass: Any
    inverse_mass_chol: Any


class ChainState(NamedTuple):
    """Everything needed to continue a chain exactly: HMC state, tuning, PRNG key."""

    hmc: HMCState
    tuning: Tuning
    key: Any


class StepInfo(NamedTuple):
    """Per-iteration statistics: mean acceptance probability of the tree, leapfrog steps,
    divergence flag, Hamiltonian and potential energy of the draw, tree depth."""

    accept_prob: Any
    num_steps: Any
    diverging: Any
    energy: Any
    potential_energy: Any
    tree_depth: Any


class LaplaceResult(NamedTuple):
    """Mode (n_params,), potential there, inverse Hessian (n_params, n_params), and whether
    the Hessian was positive definite without repair."""

    mode: Any
    potential_energy: Any
    inverse_hessian: Any
    hessian_ok: Any


class WarmupSchedule(NamedTuple):
    """Warmup iterations ``[0, num_warmup)``; the mass window is ``[window_start, window_end)``
    (empty when equal). Plain integers, passed to the compiled program as data."""

    num_warmup: int
    window_start: int
    window_end: int


def warmup_schedule(num_warmup: int, adapt_mass: bool = True) -> WarmupSchedule:
    """Split warmup: 20% step size only, 50% mass window (if ``adapt_mass``), 30% step size.

    Windows shorter than 20 draws are skipped: such an estimate is mostly noise, and the
    Laplace mass matrix it would replace is already good near the mode.
    """
    num_warmup = int(num_warmup)
    start = round(0.2 * num_warmup)
    end = start + round(0.5 * num_warmup)
    if not adapt_mass or end - start < 20:
        start = end = num_warmup
    return WarmupSchedule(num_warmup, start, end)


def tuning_from_inverse_mass(step_size, inverse_mass) -> Tuning:
    """A :class:`Tuning` (the Cholesky factor drawn once, not per step)."""
    inverse_mass = 0.5 * (inverse_mass + inverse_mass.T)
    return Tuning(jnp.asarray(step_size, inverse_mass.dtype), inverse_mass, jnp.linalg.cholesky(inverse_mass))


def _repair_spd(matrix, floor_ratio=1e-8):
    """Symmetric matrix with its eigenvalues floored at ``floor_ratio * max |eigenvalue|``."""
    matrix = 0.5 * (matrix + matrix.T)
    vals, vecs = jnp.linalg.eigh(matrix)
    floor = floor_ratio * jnp.max(jnp.abs(vals)) + 1e-300
    vals = jnp.where(vals > floor, vals, jnp.maximum(jnp.abs(vals), floor))
    return (vecs * vals) @ vecs.T, jnp.all(jnp.linalg.eigvalsh(0.5 * (matrix + matrix.T)) > floor)


def _gradient_and_hessian(value_and_grad, z):
    """Gradient at ``z`` and the Hessian by central differences of gradients, symmetrised.

    One batched gradient call over ``2 n_params + 1`` points: cheaper to trace and to
    run than forward-over-reverse AD through the model. The potential's gradient is
    close to linear over the tiny steps (1e-5 relative), so the differences are
    accurate to far better than a mass matrix needs.
    """
    n = z.shape[0]
    h = 1e-5 * (1.0 + jnp.abs(z))
    points = jnp.concatenate([z[None], z + jnp.diag(h), z - jnp.diag(h)])
    _, grads = jax.vmap(value_and_grad)(points)
    hess = (grads[1:n + 1] - grads[n + 1:]) / (2.0 * h[:, None])
    return grads[0], 0.5 * (hess + hess.T)


def laplace(potential_fn, position, args, num_newton: int = 6, hessian_fn=None) -> LaplaceResult:
    """Newton steps to the mode of the unconstrained potential, then the inverse Hessian.

    The EM start maximises the likelihood (and its own MAP prior) in the constrained
    parameters; the sampler's potential adds the priors and the Jacobians of the
    transforms, so its mode is a little away. Each Newton step is halved until the
    potential decreases (at most 20 times, else the step is refused), with the Hessian
    made positive definite first, so this never moves uphill.

    Parameters
    ----------
    potential_fn : callable (position, args) -> scalar
    position : array (n_params,)
    args : pytree passed to ``potential_fn``
    num_newton : int
    hessian_fn : callable (value_and_grad, z) -> (gradient, Hessian), optional
        How the Hessian is found; the default differences all ``n_params`` gradient
        directions. A model whose Hessian is sparse can pass a coloured one
        (e.g. :func:`bayesmix.cluster_runs` for many independent groups).

    Returns
    -------
    LaplaceResult
    """
    f = lambda z: potential_fn(z, args)  # noqa: E731
    value_and_grad = jax.value_and_grad(f)
    gradient_and_hessian = _gradient_and_hessian if hessian_fn is None else hessian_fn

    def newton(i, carry):
        z, pot, _ = carry
        g, h_raw = gradient_and_hessian(value_and_grad, z)
        h, _ = _repair_spd(h_raw)
        direction = -jnp.linalg.solve(h, g)

        def halve(state):
            scale, _, _ = state
            scale = 0.5 * scale
            z_new = z + scale * direction
            return scale, z_new, f(z_new)

        def uphill(state):
            scale, _, pot_new = state
            return (scale > 2.0**-20) & ~(pot_new <= pot)

        z_try = z + direction
        _scale, z_new, pot_new = lax.while_loop(uphill, halve, (jnp.ones(()), z_try, f(z_try)))
        # The last pass only evaluates the Hessian at the final point.
        ok = jnp.isfinite(pot_new) & (pot_new <= pot) & (i < num_newton)
        return jnp.where(ok, z_new, z), jnp.where(ok, pot_new, pot), h_raw

    n = position.shape[0]
    init = (position, f(position), jnp.zeros((n, n), position.dtype))
    z, pot, h_raw = lax.fori_loop(0, num_newton + 1, newton, init)
    h, ok = _repair_spd(h_raw)
    return LaplaceResult(z, pot, jnp.linalg.inv(h), ok)


def laplace_log_mass(lap: LaplaceResult):
    """Log posterior mass of a mode under its Laplace approximation (up to a shared constant).

    ``-U(mode) + log det(H^-1) / 2``: comparing two modes' values compares the posterior
    mass around them, the height of each peak corrected for its volume.
    """
    # NumPy: called on the host between programs, where each JAX operation would compile.
    inverse_hessian = np.asarray(lap.inverse_hessian)
    chol = np.linalg.cholesky(0.5 * (inverse_hessian + inverse_hessian.T))
    return -float(lap.potential_energy) + float(np.sum(np.log(np.diagonal(chol))))


def start(key, potential_fn, modes, inverse_hessians, args, *, dispersion: float = 2.0):
    """Chains started apart: chain ``c`` at a draw from ``N(modes[c], dispersion**2 H_c^-1)``.

    Each chain starts at a draw from an over-dispersed (inflated) Laplace approximation of
    its own mode, with that mode's inverse Hessian ``H_c^-1`` as its dense inverse mass:
    warmup starts with trajectories that already fit the posterior's shape, while the
    spread of the starts, ``dispersion`` times the posterior's, keeps R-hat's power to
    reveal chains that do not converge to one distribution. Chains given different modes
    start in different modes (:func:`bayesmix.sampling.sample_posterior` does that when
    EM found several optima).

    Parameters
    ----------
    key : jax PRNG key
    potential_fn : callable (position, args) -> scalar
    modes : array (num_chains, n_params)
    inverse_hessians : array (num_chains, n_params, n_params)
        From :func:`laplace` at each chain's mode.
    args : pytree
    dispersion : float
        Inflation of the Laplace standard deviations for the starting draws (1: draws
        from the Laplace approximation itself).

    Returns
    -------
    (ChainState, AdaptState)
        Batched over chains.
    """
    key_start, key_chains = jax.random.split(key)
    num_chains, n_params = modes.shape
    sym = 0.5 * (inverse_hessians + jnp.swapaxes(inverse_hessians, -1, -2))
    chol = jnp.linalg.cholesky(sym)
    noise = jax.random.normal(key_start, (num_chains, n_params), modes.dtype)
    positions = modes + dispersion * jnp.einsum("cij,cj->ci", chol, noise)
    step_size = min(1.0, 1.5 / n_params**0.25)
    tunings = jax.vmap(lambda m: tuning_from_inverse_mass(step_size, m))(sym)
    keys = jax.random.split(key_chains, num_chains)
    states = jax.vmap(lambda k, z, t: init(k, potential_fn, z, args, t))(keys, positions, tunings)
    # A draw where the potential or its gradient is not finite (a repaired Hessian can
    # reach far into the tails) would never move: start that chain at its mode instead.
    finite = jnp.isfinite(states.hmc.potential_energy) & jnp.all(jnp.isfinite(states.hmc.grad), axis=1)
    positions = jnp.where(finite[:, None], positions, modes)
    states = jax.vmap(lambda k, z, t: init(k, potential_fn, z, args, t))(keys, positions, tunings)
    return states, jax.vmap(adapt_init)(states)


def init(key, potential_fn, position, args, tuning: Tuning) -> ChainState:
    """A chain at ``position`` (n_params,) with the given tuning; ``key`` drives its transitions."""
    pot, grad = jax.value_and_grad(potential_fn)(position, args)
    return ChainState(HMCState(position, pot, grad), tuning, key)


def _finite_or_inf(kinetic_energy):
    """``kinetic_energy`` with every non-finite value read as +inf.

    Far in the tails (a scale pushed to 1e100 by one huge warmup step) the gradient, and
    with it the momentum, overflows; the plain quadratic form then comes out -inf (or NaN)
    by cancellation, which the trajectory would read as an infinitely *good* state and
    accept. Its gradient (the velocity) is untouched where the energy is finite.
    """

    def safe(momentum, position=None):
        ke = kinetic_energy(momentum, position)
        return jnp.where(jnp.isfinite(ke), ke, jnp.inf)

    return safe


def _kinetic_energy(inverse_mass, momentum):
    """``r^T M^-1 r / 2`` as the sampler computes it (BlackJAX's Euclidean metric), +inf where
    it overflows; ``inverse_mass`` dense (n, n) or diagonal (n,)."""
    return _finite_or_inf(_blackjax().metrics.gaussian_euclidean(inverse_mass).kinetic_energy)(momentum)


def _metric(tuning: Tuning):
    """BlackJAX's Euclidean metric for ``tuning``, with the momentum drawn from the Cholesky
    factor the tuning already holds and an overflow-safe kinetic energy.

    ``gaussian_euclidean`` factorises the inverse mass itself; only its momentum sampler
    (and ``scale``, which NUTS never calls) use that factor, so with the sampler replaced
    XLA drops the factorisation and no step pays for it.
    """
    base = _blackjax().metrics.gaussian_euclidean(tuning.inverse_mass)

    def sample_momentum(key, position):
        noise = jax.random.normal(key, position.shape, position.dtype)
        # M = (L L^T)^-1 for the inverse mass L L^T, so r = L^-T noise has covariance M.
        return solve_triangular(tuning.inverse_mass_chol.T, noise, lower=False)

    return base._replace(sample_momentum=sample_momentum, kinetic_energy=_finite_or_inf(base.kinetic_energy))


def _log_density(potential_fn, args):
    """``-potential``, with NaN read as -inf (a NaN potential counts as +inf: divergent, never
    accepted)."""

    def log_density(z):
        pe = potential_fn(z, args)
        return -jnp.where(jnp.isnan(pe), jnp.inf, pe)

    return log_density


def step(key, potential_fn, state: HMCState, tuning: Tuning, args, *, max_tree_depth: int = 10,
         max_delta_energy: float = 1000.0) -> tuple[HMCState, StepInfo]:
    """One NUTS transition (BlackJAX's multinomial NUTS with a dense Euclidean metric).

    Parameters
    ----------
    key : jax PRNG key
    potential_fn : callable (position, args) -> scalar
    state : HMCState
    tuning : Tuning
    args : pytree
    max_tree_depth : int
        Most trajectory doublings.
    max_delta_energy : float
        Energy error above which a trajectory is divergent.

    Returns
    -------
    (HMCState, StepInfo)
    """
    kernel = _blackjax().nuts.build_kernel(divergence_threshold=max_delta_energy)
    current = _blackjax().HMCState(state.position, -state.potential_energy, -state.grad)
    new, info = kernel(key, current, _log_density(potential_fn, args), tuning.step_size, _metric(tuning),
                       max_num_doublings=max_tree_depth)
    potential = -new.logdensity
    out = StepInfo(info.acceptance_rate, jnp.asarray(info.num_integration_steps, jnp.int32),
                   info.is_divergent, info.energy, potential,
                   jnp.asarray(info.num_trajectory_expansions, jnp.int32))
    return HMCState(new.position, potential, -new.logdensity_grad), out


class DualAveragingState(NamedTuple):
    """Dual averaging's state, field for field BlackJAX's ``DualAveragingAdaptationState``
    (log step size, its running average, iteration, averaged error, shrinkage target ``mu``).

    Our own type, converted at BlackJAX's boundary inside the compiled programs (as
    :class:`HMCState` is): a program stored with its states then loads and runs without
    importing BlackJAX, whose import (with optax's) cost a fresh process 0.35 s.
    """

    log_step_size: Any
    log_step_size_avg: Any
    step: Any
    avg_error: Any
    mu: Any


class WelfordState(NamedTuple):
    """The mass window's running moments, field for field BlackJAX's ``WelfordAlgorithmState``
    (mean (n_params,), sum of squared deviations (n_params, n_params), count ())."""

    mean: Any
    m2: Any
    sample_size: Any


class AdaptState(NamedTuple):
    """Warmup bookkeeping of one chain: the dual-averaging state, the window's Welford
    state, the Laplace inverse mass a window estimate is shrunk towards, divergences counted."""

    da: DualAveragingState
    welford: WelfordState
    laplace_inverse: Any
    divergences: Any


def state_types() -> tuple[type, ...]:
    """The NamedTuples in this module's states and results (what ``jax.export`` must know to
    store a program that takes or returns them); all of them this module's own."""
    return (HMCState, Tuning, ChainState, StepInfo, LaplaceResult, DualAveragingState, WelfordState,
            AdaptState)


def _dual_averaging(target_accept: float = 0.8):
    """BlackJAX's dual averaging (Hoffman & Gelman 2014, section 3.2; t0=10, gamma=0.05,
    kappa=0.75) as ``(init, update, final)`` on :class:`DualAveragingState`."""
    init, update, final = _blackjax().dual_averaging_adaptation(target_accept)
    theirs = _blackjax().DualAveragingAdaptationState
    return (lambda step_size: DualAveragingState(*init(step_size)),
            lambda da, accept: DualAveragingState(*update(theirs(*da), accept)),
            lambda da: final(theirs(*da)))


def _da_init(step_size):
    """Fresh dual averaging at ``step_size``, with fixed dtypes (a loop carry must keep them)."""
    da = _dual_averaging()[0](step_size)
    real = jnp.result_type(step_size)
    return DualAveragingState(jnp.asarray(da.log_step_size, real), jnp.asarray(da.log_step_size_avg, real),
                              jnp.asarray(da.step, jnp.int32), jnp.asarray(da.avg_error, real),
                              jnp.asarray(da.mu, real))


def _welford_init(n_params: int, dtype):
    """An empty dense Welford state, with the position's dtype and an int32 count
    (BlackJAX's own ``init`` starts the count as a Python int, which a loop carry cannot keep)."""
    return WelfordState(jnp.zeros(n_params, dtype), jnp.zeros((n_params, n_params), dtype),
                        jnp.zeros((), jnp.int32))


def _welford(state: WelfordState, position, *, finish: bool = False):
    """BlackJAX's dense Welford algorithm: ``state`` updated with ``position``, or with
    ``finish`` its (covariance, count, mean)."""
    _, update, final = _blackjax().welford_algorithm(False)
    theirs = _blackjax().WelfordAlgorithmState(*state)
    return final(theirs) if finish else WelfordState(*update(theirs, position))


def adapt_init(state: ChainState) -> AdaptState:
    """Fresh warmup bookkeeping for a chain whose tuning holds the Laplace mass matrix."""
    position = state.hmc.position
    return AdaptState(_da_init(state.tuning.step_size), _welford_init(position.shape[0], position.dtype),
                      state.tuning.inverse_mass, jnp.zeros((), jnp.int32))


def inert_adapt(states: ChainState) -> AdaptState:
    """Zero warmup bookkeeping shaped for ``states`` (batched over chains): what :func:`run`
    takes, and ignores, when ``num_warmup`` is 0 (draws after warmup, an extension).

    Host arrays, built without tracing or compiling anything.
    """
    position = np.asarray(states.hmc.position)
    (n_chains, n_params), real = position.shape, position.dtype
    scalar, count = np.zeros(n_chains, real), np.zeros(n_chains, np.int32)
    da = DualAveragingState(scalar, scalar, count, scalar, scalar)
    matrix = np.zeros((n_chains, n_params, n_params), real)
    welford = WelfordState(np.zeros((n_chains, n_params), real), matrix, count)
    return AdaptState(da, welford, matrix, count)


def _where(flag, new, old):
    return jax.tree_util.tree_map(lambda a, b: jnp.where(flag, a, b), new, old)


def _adapt(i, schedule, chain: ChainState, adapt: AdaptState, hmc: HMCState, info: StepInfo,
           target_accept: float):
    """The warmup bookkeeping of iteration ``i`` (inert once ``i >= num_warmup``): one
    dual-averaging update, the window's Welford update, the window's end, the final step size.

    Returns (Tuning, AdaptState).
    """
    num_warmup, window_start, window_end = schedule
    _, da_update, da_final = _dual_averaging(target_accept)
    warming = i < num_warmup
    accept = jnp.where(jnp.isfinite(info.accept_prob), info.accept_prob, 0.0)
    da = _where(warming, da_update(adapt.da, accept), adapt.da)
    in_window = warming & (i >= window_start) & (i < window_end)
    welford = _where(in_window, _welford(adapt.welford, hmc.position), adapt.welford)

    def end_window(da):
        cov, n, _ = _welford(welford, None, finish=True)
        n = n.astype(cov.dtype)
        # Shrunk towards the Laplace inverse mass by a pseudo-count of n_params + 5 draws:
        # BlackJAX's own imm_shrinkage_to_previous also adds a 1e-3 identity, which in the
        # sampler's standardised coordinates (posterior variances 1e-6 at 1e6 stars) would
        # swamp the estimate.
        weight = n / (n + cov.shape[0] + 5.0)
        new = tuning_from_inverse_mass(jnp.exp(da.log_step_size),
                                       weight * cov + (1.0 - weight) * adapt.laplace_inverse)
        # The chain has moved on a scale the old step size knew; restart averaging there.
        return new, _da_init(new.step_size)

    # Only a real window ends: with none (start == end == num_warmup) this step would be
    # the last warmup one, and restarting averaging there left the last noisy iterate.
    window_ends = warming & (window_end > window_start) & (i == window_end - 1)
    tuning, da = lax.cond(window_ends, end_window, lambda da: (chain.tuning, da), da)
    tuning = tuning._replace(step_size=jnp.where(warming & (i == num_warmup - 1), da_final(da),
                                                 tuning.step_size))
    divergences = adapt.divergences + (warming & info.diverging).astype(jnp.int32)
    return tuning, AdaptState(da, welford, adapt.laplace_inverse, divergences)


def run(potential_fn, state: ChainState, adapt: AdaptState, args, schedule, num_samples, buffer_size: int,
        *, target_accept: float = 0.8, max_tree_depth: int = 10):
    """Warmup then draws of one chain, as a single loop (one trace of the NUTS step).

    Iterations ``[0, num_warmup)`` adapt the step size by dual averaging (and, in the
    schedule's window, the dense mass matrix: the window's sample covariance shrunk
    towards the Laplace one by ``n / (n + n_params + 5)``, after which averaging
    restarts); the step size is then fixed at the dual-averaging average. The next
    ``num_samples`` iterations are draws, written to a buffer.

    Parameters
    ----------
    potential_fn : callable (position, args) -> scalar
    state : ChainState
    adapt : AdaptState
        From :func:`adapt_init` (ignored when ``num_warmup`` is 0).
    args : pytree
    schedule : WarmupSchedule or triple of int arrays
        May be traced, like ``num_samples``: one compiled program serves every length.
    num_samples : int or int array, at most ``buffer_size``
    buffer_size : int (static)
    target_accept : float
        Dual averaging's target for the mean acceptance probability.
    max_tree_depth : int

    Returns
    -------
    (ChainState, AdaptState, positions (buffer_size, n_params), StepInfo of arrays (buffer_size,))
        Rows past ``num_samples`` are zeros. Continuing from the returned state (with
        ``num_warmup`` 0) gives exactly the draws a longer run would have given.
    """
    schedule = tuple(jnp.asarray(v) for v in schedule)
    num_warmup = schedule[0]
    position = state.hmc.position
    draws = jnp.zeros((buffer_size, position.shape[0]), position.dtype)
    real, count = jnp.zeros(buffer_size, position.dtype), jnp.zeros(buffer_size, jnp.int32)
    infos = StepInfo(real, count, jnp.zeros(buffer_size, bool), real, real, count)

    def body(i, carry):
        chain, adapt, draws, infos = carry
        warming = i < num_warmup
        key, key_step = jax.random.split(chain.key)
        step_size = jnp.where(warming, jnp.exp(adapt.da.log_step_size), chain.tuning.step_size)
        hmc, info = step(key_step, potential_fn, chain.hmc, chain.tuning._replace(step_size=step_size), args,
                         max_tree_depth=max_tree_depth)
        tuning, adapt = _adapt(i, schedule, chain, adapt, hmc, info, target_accept)
        slot = jnp.where(warming, buffer_size, i - num_warmup)  # out of range: dropped
        draws = draws.at[slot].set(hmc.position, mode="drop")
        infos = jax.tree_util.tree_map(lambda buf, x: buf.at[slot].set(x, mode="drop"), infos, info)
        return ChainState(hmc, tuning, key), adapt, draws, infos

    return lax.fori_loop(0, num_warmup + num_samples, body, (state, adapt, draws, infos))

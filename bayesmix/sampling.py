"""NUTS from the EM start: chains, warmup, draws, extension, checkpoints; results as InferenceData.

The sampler is :mod:`bayesmix.hmc`: BlackJAX's NUTS kernel with a dense mass matrix,
driven by bayesmix's own loop in which warmup and draws are one compiled program with
traced lengths. :class:`_Sampler` compiles that loop once per run for all chains, as
``chain_method`` says: one after the other in one program (``"sequential"``), batched
(``"vectorized"``) or spread over local devices (``"parallel"``), ``"auto"`` choosing by
backend and problem size; with :func:`enable_compilation_cache` the programs are also
stored on disk (:mod:`bayesmix._programs`), so a repeated run neither traces nor compiles.
The key is an integer seed or a JAX key (:func:`bayesmix._random.as_key`); each chain
carries its own key in its state.

Chains start apart: when EM found several distinct optima
(:attr:`bayesmix.em.EMResult.optima`), each optimum that holds a non-negligible share of
the posterior mass (Laplace approximation, at least 0.1% of the best one's) gets its own
chains; every chain starts at a draw from its mode's Laplace approximation inflated
two-fold in standard deviation, with the mode's inverse Hessian as its mass matrix. So
R-hat keeps its power to detect chains that disagree, and chains that settle in
different modes are reported by :func:`bayesmix.diagnostics.check_modes`.

The chains move in standardised coordinates (each mean in units of its feature's spread
around the EM start, see :class:`_Sampler`), so the same run in other units (1e-150 to
1e150 times) gives the same posterior.

Long runs can write a checkpoint after every chunk of draws (:mod:`bayesmix.checkpoint`:
plain arrays, atomically replaced); :func:`sample_posterior` with the same checkpoint
path resumes from it with no new warmup and without losing draws, refusing other data
or settings; :func:`load_fit` reads it back as a fit; :func:`extend` adds draws to a
finished run from its last state, exactly as if the run had been longer.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import tempfile
from collections.abc import Callable
from numbers import Integral, Real
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bayesmix import __version__, _arviz, _padding, _programs, _x64, hmc  # noqa: F401
from bayesmix._choices import CHAIN_METHODS
from bayesmix._constraints import Interval, Options, validate_params
from bayesmix._random import as_key, split
from bayesmix._x64 import device_array
from bayesmix.checkpoint import Checkpoint, check_continues, read_checkpoint, write_checkpoint
from bayesmix.checkpoint import checkpoint_draws as _checkpoint_draws
from bayesmix.em import EMResult, fit_em
from bayesmix.likelihood import MixtureParams, Observations, as_observations, star_rows
from bayesmix.membership import _bind_constants, _program_constants, padded_data, posterior_predictive
from bayesmix.models import MixtureModel

__all__ = [
    "CHAIN_METHODS",
    "LOG_LIKELIHOOD_DRAWS",
    "MAX_STORED_VALUES",
    "PREDICTIVE_DRAWS",
    "PosteriorFit",
    "add_log_likelihood",
    "arviz_complete",
    "data_digest",
    "enable_compilation_cache",
    "extend",
    "load_fit",
    "sample_posterior",
    "set_host_device_count",
]

logger = logging.getLogger(__name__)

_STAT_NAMES = {"diverging": "diverging", "num_steps": "n_steps", "accept_prob": "acceptance_rate",
               "energy": "energy", "step_size": "step_size", "tree_depth": "tree_depth"}


class _RunState(NamedTuple):
    """What a live fit keeps to continue (:func:`extend`): each chain's state, the compiled
    sampler, the draws and statistics so far (constrained), the start information, the chain
    method. A checkpoint (:class:`bayesmix.checkpoint.Checkpoint`) holds the same on disk."""

    states: hmc.ChainState
    sampler: Any
    samples: dict
    stats: dict
    start_info: dict
    method: str


@dataclasses.dataclass
class PosteriorFit:
    """A finished NUTS run.

    Attributes
    ----------
    idata : arviz.InferenceData
        ``posterior`` (chain, draw, ...) with ``weights``, ``means``, ``covariances``,
        ``scales`` (and ``correlations`` for D > 1) plus the model's raw sites;
        ``sample_stats`` (``diverging``, ``n_steps``, ``acceptance_rate``, ``lp``,
        ``energy``, ``step_size``); ``observed_data`` (``values``); ``constant_data``
        (``error_covs`` and the covariates).
    model : MixtureModel
    data : Observations
    covariates : dict of str to ndarray
    em : EMResult or None
        The point fit the chains started from.
    catalogue : Catalogue or None
    settings : dict
        Sampler settings and seed, for provenance.
    """

    idata: Any
    model: MixtureModel
    data: Observations
    covariates: dict
    em: Any = None
    catalogue: Any = None
    settings: dict = dataclasses.field(default_factory=dict)
    _state: Any = dataclasses.field(default=None, repr=False)

    @property
    def posterior(self):
        """The ``posterior`` group as an ``xarray.Dataset``, whichever ArviZ line made ``idata``.

        Under ArviZ 1.x ``idata.posterior`` is a DataTree node, which lacks some Dataset
        methods (``stack``, selecting a list of variables); this is always a Dataset.
        """

        return _arviz.group_dataset(self.idata, "posterior")

    @property
    def n_draws(self) -> int:
        return int(self.idata.posterior.sizes["draw"])

    @property
    def n_chains(self) -> int:
        return int(self.idata.posterior.sizes["chain"])

    def posterior_mean_params(self) -> MixtureParams:
        """Posterior-mean weights, means and covariances (a point summary, not a draw)."""
        post = self.idata.posterior
        return MixtureParams(jnp.asarray(post["weights"].mean(("chain", "draw")).values),
                             jnp.asarray(post["means"].mean(("chain", "draw")).values),
                             jnp.asarray(post["covariances"].mean(("chain", "draw")).values))


# Values of BAYESMIX_CACHE that keep the store off.
_CACHE_OFF = frozenset({"off", "0", "none", "false", "no"})


def enable_compilation_cache(directory: str | os.PathLike | None = None) -> Path | None:
    """Keep compiled programs on disk so later runs, on this catalogue or another, skip compiling.

    Two stores under one directory: JAX's persistent compilation cache (compiled
    executables) and bayesmix's own store of its programs (EM, Laplace, NUTS, constrain,
    memberships, log-likelihood, mock catalogues) as serialized :mod:`jax.export` modules,
    so a later run also skips tracing the model. Both are keyed by everything the program
    depends on (for bayesmix's store: the package source, the model's structure and the
    sampler settings, the data's shapes), never by file names or dates. Stars are padded to
    a few bucket sizes (:mod:`bayesmix._padding`: four per octave, at most 25% extra rows,
    given zero weight), so a catalogue of another size in the same bucket, with other
    values and prior values, reuses every stored program.

    The command line turns the store on by default (``--no-cache``, or ``BAYESMIX_CACHE=off``,
    turns it off); in Python call this once, before fitting. The folder may be deleted at
    any time (it is rebuilt); a damaged file is rebuilt with a warning.

    Parameters
    ----------
    directory : path, optional
        Default ``$BAYESMIX_CACHE``, else ``$XDG_CACHE_HOME/bayesmix/jax``, else
        ``~/.cache/bayesmix/jax``. ``BAYESMIX_CACHE=off`` (or ``0``, ``none``, ``false``)
        keeps the store off when no ``directory`` is given.

    Returns
    -------
    Path of the cache, or None when it is off or cannot be used (not a folder, not
    writable): the run goes on without it, with a warning in the second case.

    Examples
    --------
    >>> from bayesmix.sampling import enable_compilation_cache
    >>> enable_compilation_cache()  # doctest: +SKIP
    PosixPath('/home/me/.cache/bayesmix/jax')
    """
    env = os.environ.get("BAYESMIX_CACHE", "")
    if directory is None and env.strip().lower() in _CACHE_OFF:
        _programs.set_store(None)
        return None
    xdg = os.environ.get("XDG_CACHE_HOME")
    path = Path(directory or env or (Path(xdg) if xdg else Path.home() / ".cache") / "bayesmix" / "jax")
    try:  # the cache only saves time: an unusable one is skipped, never fatal
        (path / "bayesmix-programs").mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path / "bayesmix-programs", prefix=".probe-", delete=True)
        probe.close()
    except OSError as exc:
        logger.warning("compilation cache %s is unusable (%s: %s); running without it (set BAYESMIX_CACHE "
                       "to a writable folder, or pass --no-cache)", path, type(exc).__name__, exc)
        _programs.set_store(None)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    _programs.set_store(path / "bayesmix-programs")
    return path


def _default_progress_bar() -> bool:
    return bool(sys.stderr.isatty()) and not os.environ.get("CI")


def _resolve_data(data, covariates):
    catalogue = None
    if hasattr(data, "covariates") and hasattr(data, "error_covs") and hasattr(data, "table"):
        catalogue = data
        if covariates is None:
            covariates = data.covariates
    obs = as_observations(data)
    covariates = {name: np.asarray(v, float) for name, v in (covariates or {}).items()}
    for name, v in covariates.items():
        if v.shape != (obs.n_stars,):
            raise ValueError(f"covariate {name!r} has shape {v.shape}; need ({obs.n_stars},).")
    return obs, covariates, catalogue


# Chains start from the EM optima whose objective is within this many nats of the best one
# (no Laplace approximation is computed for the others: their share of the posterior mass is
# below e^-25 by any volume correction seen in practice) ...
_MODE_PREFILTER_NATS = 25.0
# ... and whose Laplace-approximated posterior mass is at least this fraction of the best mode's.
_MODE_MIN_MASS = 1e-3
# Starting draws come from each mode's Laplace approximation with standard deviations inflated
# by this factor (over-dispersed starts give R-hat its power).
START_DISPERSION = 2.0


def _initial_point(key, model: MixtureModel, obs: Observations, init, em_kwargs, mesh=None):
    """(MixtureParams, background_weight, EMResult or None) to start the chains from."""

    if init is None:
        init = _em_start(key, model, obs, em_kwargs, mesh)
    if isinstance(init, EMResult):
        if init.n_components != model.n_components:
            raise ValueError(f"init has {init.n_components} components; the model has "
                             f"{model.n_components}.")
        return init.params, init.background_weight, init
    if isinstance(init, MixtureParams):
        if init.n_components != model.n_components or init.n_features != model.n_features:
            raise ValueError("init parameters do not match the model's components/features.")
        return init, None, None
    raise ValueError(f"init must be None, an EMResult or MixtureParams; got {type(init).__name__}.")


def _em_start(key, model: MixtureModel, obs: Observations, em_kwargs, mesh) -> EMResult:
    """The EM fit the chains start from: :func:`bayesmix.em.fit_em`, or with a mesh
    :func:`bayesmix.distributed.fit_em_sharded` (E-step statistics summed over the shards)."""
    kwargs = {"n_init": 4, **(em_kwargs or {})}
    if mesh is not None:
        from bayesmix.distributed import fit_em_sharded

        return fit_em_sharded(key, obs, model.n_components, mesh=mesh, **kwargs)
    if model.background is not None:
        kwargs.setdefault("background", model.background)
    return fit_em(key, obs, model.n_components, **kwargs)


def _candidate_starts(params, background_weight, em, num_chains: int) -> list[tuple]:
    """``(params, background_weight)`` of the EM optima chains may start from, best first.

    The distinct optima of an EM fit within ``_MODE_PREFILTER_NATS`` of the best, at most
    one per chain; just the given point otherwise.
    """
    optima = getattr(em, "optima", ()) or ()
    if not optima:
        return [(params, background_weight)]
    best = optima[0].objective
    return [(o.params, o.background_weight) for o in optima[:num_chains]
            if o.objective >= best - _MODE_PREFILTER_NATS]


class _Sampler:
    """The compiled programs of one run and the chains' state (what extend/resume need).

    Programs take the data as arguments, so JAX's persistent cache serves them again for
    another data set of the same shape and the same model structure.

    The chains move in standardised coordinates ``u``, with the model's unconstrained
    parameters ``theta = theta_0 + scale * u``: ``theta_0`` is the template (the EM start)
    and ``scale`` each coordinate's natural scale (the data's spread for a mean, 1 for a
    log dispersion or a weight; :meth:`MixtureModel.coordinate_scales`). In ``u`` the
    posterior is the same function whatever the data's units, so the sampler's absolute
    constants (finite-difference steps, eigenvalue floors, the first step size) mean the
    same at 1e-150 km/s as at 1 km/s; in ``theta`` a mean in units of 1e20 next to a log
    dispersion made the Hessian's eigenvalues 1e40 apart, and the floor that repairs it
    froze the means. The map is a function of the template, the data and the model
    alone, so a resumed run (which rebuilds the template from the saved start) recomputes
    it exactly. Positions, mass matrices and the potential's gradient are in ``u``; the
    potential's value is the model's (no Jacobian constant), and draws are reported in
    ``theta``'s constrained sites.
    """

    def __init__(self, model: MixtureModel, obs: Observations, covariates: dict, template: dict, *,
                 num_chains: int, chain_method: str, block: int, target_accept: float,
                 max_tree_depth: int, mesh=None):
        from numpyro.infer.util import constrain_fn, potential_energy

        self.model = model
        self.mesh = mesh
        self.num_chains = int(num_chains)
        self.block = int(block)
        self.chain_method = chain_method
        flat, self.unravel = _ravel_on_host(template)
        self.n_params = int(flat.shape[0])
        unravel = self.unravel
        shift = device_array(flat, np.float64)
        scale = device_array(_ravel_on_host(model.coordinate_scales(obs, template))[0], np.float64)
        shift, scale = _shared_map(mesh, model, shift, scale)
        # The map travels with the data as arguments, not as constants of the programs;
        # the stars are padded to a bucket size, so catalogues of many sizes share them
        # (with a mesh: split over its devices, and the potential sums over the shards).
        target, data_args = _sampled_target(model, obs, covariates, mesh)
        self.args = (*data_args, model.hyperparameters(), (shift, scale))
        self.data = (obs, covariates)  # as given (unpadded, unsharded)

        def theta(z, args):
            shift, scale = args[3]
            return unravel(shift + scale * z)

        def potential(z, args):
            return potential_energy(target.model, args[:3], {}, theta(z, args))

        def constrain(z, args):
            return constrain_fn(target.model, args[:3], {}, theta(z, args), return_deterministic=True)

        self.potential = potential
        self._pending = None
        self.warmup_divergences = None
        self._chain_shardings = self._placed_args = None
        fingerprint = (f"{target.program_key()}|{_template_structure(template)}|chains={self.num_chains}|"
                       f"method={chain_method}|block={self.block}|accept={target_accept}|"
                       f"depth={max_tree_depth}")
        if chain_method == "parallel":
            fingerprint += f"|devices={_n_parallel_devices(self.num_chains)}"
        classes = (Observations, MixtureParams, *hmc.state_types())
        jit = _mesh_jit(mesh)
        self._laplace = _placed(mesh, _programs.Program(
            "laplace", jit(lambda z, args: hmc.laplace(potential, z, args)), fingerprint, classes))
        self._start = _placed(mesh, _programs.Program("start", jit(
            lambda key, modes, inverse_hessians, dispersion, args: hmc.start(
                key, potential, modes, inverse_hessians, args, dispersion=dispersion)),
            fingerprint, classes))
        self._run = self._over_chains(lambda st, args, extra: hmc.run(
            potential, st[0], st[1], args, extra[0], extra[1], self.block, target_accept=target_accept,
            max_tree_depth=max_tree_depth))
        self._run = _placed(mesh, _programs.Program("run", self._run, fingerprint, classes))
        # Deterministic sites only: XLA drops the (unused) likelihood from this program.
        self._constrain = _placed(mesh, _programs.Program(
            "constrain", jit(jax.vmap(constrain, in_axes=(0, None))), fingerprint, classes))

    def _over_chains(self, fn):
        """Run ``fn(chain_state, args, extra)`` for every chain, as the chain method says."""
        method, n_chains = self.chain_method, self.num_chains
        if method == "vectorized":
            return _mesh_jit(self.mesh)(jax.vmap(fn, in_axes=(0, None, None)))

        def per_device(states, args, extra):
            return lax.map(lambda st: fn(st, args, extra), states)

        if method == "sequential":
            return _mesh_jit(self.mesh)(per_device)
        # "parallel": the chains split over a mesh of local devices, each device running its
        # share one after another. shard_map under jit, unlike pmap, is a program jax.export
        # stores, so a fresh process loads it instead of tracing and compiling it (1.1-1.6 s
        # at N = 20000 on 2 cores). A stored multi-device program runs only on arguments
        # already on its devices: _place_for_run puts them there.
        chain_mesh = jax.sharding.Mesh(np.array(jax.local_devices()[:_n_parallel_devices(n_chains)]),
                                       ("chain",))
        split, whole = jax.sharding.PartitionSpec("chain"), jax.sharding.PartitionSpec()
        self._chain_shardings = (jax.sharding.NamedSharding(chain_mesh, split),
                                 jax.sharding.NamedSharding(chain_mesh, whole))
        # check_vma=False: every device runs whole chains on its own, with no collective; the
        # check would reject the sampler's lax.cond, whose branches mix per-chain values with
        # the (replicated) data's.
        return jax.jit(jax.shard_map(per_device, mesh=chain_mesh, in_specs=(split, whole, whole),
                                     out_specs=split, check_vma=False))

    def _place_for_run(self, states, args, extra):
        """The run program's arguments on its devices: chains split over the chain mesh, the
        data (copied once, not on every call) and settings on every device."""
        if self._chain_shardings is None:
            return states, args, extra
        split, whole = self._chain_shardings
        if self._placed_args is None or self._placed_args[0] is not args:
            self._placed_args = (args, jax.device_put(args, whole))
        return _via_host(states, split), self._placed_args[1], jax.device_put(extra, whole)

    def standardised(self, theta) -> np.ndarray:
        """The sampler's coordinates ``u = (theta - theta_0) / scale`` of an unconstrained vector."""
        shift, scale = (np.asarray(a) for a in self.args[3])
        return (np.asarray(theta, np.float64) - shift) / scale

    def modes(self, starts: list[np.ndarray]) -> tuple[list, dict]:
        """Laplace approximations at the candidate starts; the modes the chains start from.

        Newton steps take each start to its posterior mode. Modes within one standard
        deviation (Mahalanobis distance 1 under the better mode's Hessian) of a better one
        are that mode; modes whose Laplace mass is below ``_MODE_MIN_MASS`` of the best
        one's are dropped (logged), since chains stuck there would report a mode of
        negligible weight.

        Parameters
        ----------
        starts : list of ndarray (n_params,)
            Unconstrained parameter vectors ``theta`` (the model's coordinates).

        Returns
        -------
        (list of LaplaceResult in the standardised coordinates, best first; info dict)
        """
        found = []
        for theta in starts:
            lap = jax.device_get(self._laplace(self.standardised(theta), self.args))
            mass = float(hmc.laplace_log_mass(lap))
            if not (np.isfinite(mass) and np.isfinite(float(lap.potential_energy))):
                continue
            found.append((mass, lap))
        if not found:
            raise ValueError("the posterior density is not finite at any EM optimum: check the priors "
                             "(e.g. a component's mean prior far from the data, [model.priors.<component>]) "
                             "and the data.")
        kept = _distinct_modes(found)
        best_mass = kept[0][0]
        info = {"laplace_hessian_ok": all(bool(lap.hessian_ok) for _, lap in kept),
                "laplace_potential": float(kept[0][1].potential_energy),
                "n_modes": len(kept),
                "mode_log_mass": [round(m - best_mass, 6) for m, _ in kept]}
        return [lap for _, lap in kept], info

    def start(self, key, starts: list[np.ndarray], schedule: hmc.WarmupSchedule,
              dispersion: float = START_DISPERSION):
        """Laplace modes from the candidate ``starts`` (unconstrained vectors, best first),
        chains spread over them (chain ``c`` on mode ``c mod n_modes``), each started at a
        draw from its mode's Laplace approximation with standard deviations times ``dispersion``.

        Returns (states, start info); the warmup runs inside the first :meth:`draws`.
        """
        laps, info = self.modes(starts)
        assignment = np.arange(self.num_chains) % len(laps)
        modes = device_array(np.stack([laps[m].mode for m in assignment]))
        inverse_hessians = device_array(np.stack([laps[m].inverse_hessian for m in assignment]))
        states, adapt = self._start(key, modes, inverse_hessians, device_array(float(dispersion)), self.args)
        info["mode_of_chain"] = assignment.tolist()
        if len(laps) > 1:
            logger.warning("EM found %d distinct optima with non-negligible posterior mass (log mass "
                           "relative to the best: %s); chains start in each, so the diagnostics can tell "
                           "whether they agree", len(laps), info["mode_log_mass"])
        self._pending = (adapt, tuple(device_array(v, np.int32) for v in schedule))
        return states, info

    def draws(self, states, n: int, progress=None):
        """``n`` draws per chain in blocks (after the pending warmup, if any).

        Returns (states, samples dict, stats dict).
        """
        parts = []
        done = 0
        zero = device_array(0, np.int32)
        while done < n:
            m = min(self.block, n - done)
            if self._pending is not None:
                adapt, schedule = self._pending
                self._pending = None
            else:
                # No warmup: the bookkeeping only fills the program's argument. Placed like the
                # states (as the start program's bookkeeping is): an uncommitted argument would
                # make JAX compile the stored run program a second time (1.4 s at N = 1500).
                adapt, schedule = _on_devices_of(states, hmc.inert_adapt(states)), (zero, zero, zero)
            n_now = device_array(m, np.int32)
            carry, args, extra = self._place_for_run((states, adapt), self.args, (schedule, n_now))
            states, adapt, z, info = self._run(carry, args, extra)
            if int(np.asarray(schedule[0])) > 0:
                self.warmup_divergences = int(np.sum(np.asarray(adapt.divergences)))
            parts.append((np.asarray(z)[:, :m], {k: np.asarray(v)[:, :m] for k, v in info._asdict().items()}))
            done += m
            if progress is not None:
                progress.update(m)
        z = np.concatenate([p[0] for p in parts], axis=1)
        stats = {k: np.concatenate([p[1][k] for p in parts], axis=1) for k in parts[0][1]}
        return states, self.constrained(z), stats

    def constrained(self, z):
        """Sites (and deterministics) for unconstrained draws (chain, draw, n_params).

        Draws go through in fixed-size chunks (one compiled shape): a deterministic that
        averages over stars (the member fraction under a radius law) would otherwise
        make an (n_draws, n_stars) temporary, 32 GB at 4000 draws of 1e6 stars.
        """
        n_chains, n_draws = z.shape[:2]
        flat = z.reshape((n_chains * n_draws, self.n_params))
        total = flat.shape[0]
        # One chunk size whatever the number of draws (a short extend() pads to it), so a run
        # and its extensions share one compiled program.
        chunk = int(max(1, min(512, 20_000_000 // max(self.args[0].n_stars, 1))))
        parts = []
        for begin in range(0, total, chunk):
            rows = np.minimum(np.arange(begin, begin + chunk), total - 1)  # pad: one compiled shape
            out = jax.device_get(self._constrain(device_array(flat[rows]), self.args))
            parts.append({k: np.asarray(v)[: min(chunk, total - begin)] for k, v in out.items()})
        return {k: np.concatenate([p[k] for p in parts]).reshape((n_chains, n_draws, *parts[0][k].shape[1:]))
                for k in parts[0]}


def _via_host(tree, sharding):
    """``tree`` placed with ``sharding`` through host copies (typed PRNG keys as their raw
    data): moving an array from one device to a split over several compiles a slicing
    program per shape (0.2 s for a run's chain states), a copy from the host none."""
    def put(x):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(jax.device_put(np.asarray(jax.random.key_data(x)), sharding),
                                            impl=jax.random.key_impl(x))
        return jax.device_put(np.asarray(x), sharding)

    return jax.tree_util.tree_map(put, tree)


def _on_devices_of(states, tree):
    """``tree`` on the device(s) of the chain states (committed there, like a program's output)."""
    first = jax.tree_util.tree_leaves(states)[0]
    if not isinstance(first, jax.Array) or not first.committed or not first.sharding.is_fully_replicated:
        return tree  # host values, or chains split over devices: _place_for_run places them
    return jax.device_put(tree, first.sharding)


def _sampled_target(model: MixtureModel, obs: Observations, covariates: dict, mesh):
    """(the model whose program the potential runs, its data arguments ``(obs, covariates)``).

    Without a mesh: ``model`` and the stars padded to a bucket size. With one: the model
    whose likelihood is summed over star shards (:func:`bayesmix.distributed.sharded_model`,
    another stored program) and the stars split over the mesh's devices
    (:func:`bayesmix.distributed.shard_observations`, weight-0 padding rows); no covariates,
    since the models it accepts never read them.
    """
    if mesh is None:
        return model, padded_data(model, obs, covariates)
    from bayesmix.distributed import shard_observations, sharded_model

    return sharded_model(model, mesh), (shard_observations(obs, mesh), {})


def _shared_map(mesh, model: MixtureModel, shift, scale):
    """The coordinate map ``(shift, scale)`` every process uses.

    One process: as computed. Over several processes each holds its own stars, whose spread
    gives another ``scale``: process 0's map is used everywhere (any common map gives the
    same posterior). The prior values, which every process passes to the same programs as
    replicated arguments, must then agree; a model built from each process's own stars is
    refused.
    """
    if mesh is None or jax.process_count() == 1:
        return shift, scale
    from bayesmix.distributed import _allgather, _from_process_zero

    hyper = _allgather({k: np.asarray(v) for k, v in model.hyperparameters().items()})
    differ = sorted(k for k, v in hyper.items() if not np.array_equal(v, np.broadcast_to(v[:1], v.shape)))
    if differ:
        raise ValueError(f"mesh=: the model's prior values {differ} differ between processes (a model built "
                         "from each process's own stars?); build it identically in every process, e.g. "
                         "mixture_model(...) on the same stars or with explicit priors=.")
    return tuple(jnp.asarray(a) for a in _from_process_zero((np.asarray(shift), np.asarray(scale))))


def _ravel_on_host(tree) -> tuple[np.ndarray, Callable]:
    """``jax.flatten_util.ravel_pytree(tree)``, the flat vector computed with NumPy.

    ``ravel_pytree`` reshapes and concatenates with JAX, a compiled program per leaf shape
    (a few ms each in every fresh process); the vector here is a host copy. The ``unravel``
    returned works on JAX values (traced or not) and gives leaves of the shapes in ``tree``.

    Returns
    -------
    (ndarray (n_params,) of float64, unravel: vector -> tree)
    """
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    shapes = [np.shape(leaf) for leaf in leaves]
    flat = np.concatenate([np.ravel(np.asarray(leaf, np.float64)) for leaf in leaves] or [np.zeros(0)])
    ends = np.cumsum([math.prod(shape) for shape in shapes])

    def unravel(vector):
        parts = jnp.split(vector, ends[:-1]) if len(ends) else []
        leaves = [part.reshape(shape) for part, shape in zip(parts, shapes, strict=True)]
        return jax.tree_util.tree_unflatten(treedef, leaves)

    return flat, unravel


def _mesh_jit(mesh):
    """``jax.jit``; with a mesh, every output replicated over it (so each process can read it)."""
    if mesh is None:
        return jax.jit
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return lambda fn: jax.jit(fn, out_shardings=sharding)


def _on_mesh(tree, mesh):
    """``tree`` with every value not yet on ``mesh`` (host values, one-device arrays, typed
    PRNG keys) replicated over it; over several processes a program takes only such
    global arrays, and every process passes the same values."""
    from bayesmix.distributed import replicate

    devices = set(mesh.devices.flat)

    def put(x):
        if isinstance(x, jax.Array) and x.sharding.device_set == devices:
            return x
        if jax.dtypes.issubdtype(getattr(x, "dtype", np.float64), jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(x)))
        return replicate(np.asarray(x), mesh)

    return jax.tree_util.tree_map(put, tree)


def _placed(mesh, program):
    """``program``, called with its arguments placed on ``mesh`` (unchanged without one)."""
    if mesh is None:
        return program
    return lambda *args: program(*_on_mesh(args, mesh))


def _distinct_modes(found: list[tuple]) -> list[tuple]:
    """``(log mass, LaplaceResult)`` pairs, best first, one per mode, without negligible ones.

    A mode within one standard deviation (Mahalanobis distance 1 under the better mode's
    Hessian) of a better one is that mode; one whose Laplace mass is below
    ``_MODE_MIN_MASS`` of the best one's is dropped (logged).
    """
    kept = []
    for mass, lap in sorted(found, key=lambda item: -item[0]):
        if not any(_mahalanobis2(lap.mode, other.mode, other.inverse_hessian) < 1.0 for _, other in kept):
            kept.append((mass, lap))
    best_mass = kept[0][0]
    dropped = [m for m, _ in kept if m < best_mass + math.log(_MODE_MIN_MASS)]
    if dropped:
        logger.info("%d EM optimum(s) hold under %.1g of the best mode's posterior mass (log ratios %s); "
                    "no chain starts there", len(dropped), _MODE_MIN_MASS,
                    [round(m - best_mass, 1) for m in dropped])
    return [(m, lap) for m, lap in kept if m >= best_mass + math.log(_MODE_MIN_MASS)]


def _mahalanobis2(a, b, inverse_covariance) -> float:
    """Squared Mahalanobis distance ``(a - b)^T C^-1 (a - b)``; ``C`` is a mode's inverse Hessian."""
    diff = np.asarray(a) - np.asarray(b)
    return float(diff @ np.linalg.solve(np.asarray(inverse_covariance), diff))


def _template_structure(template: dict) -> str:
    """Site names and shapes of the unconstrained parameters (part of a program's key)."""
    return ",".join(f"{k}{tuple(np.shape(v))}" for k, v in sorted(template.items()))


def _n_parallel_devices(num_chains: int) -> int:
    """Largest number of local devices, at most ``num_chains``, that divides it."""
    n = min(len(jax.local_devices()), num_chains)
    while num_chains % n:
        n -= 1
    return n


# Below this many star-component terms a gradient costs tens of microseconds and
# shipping chains to other devices costs more than it saves (measured on 2 cores:
# N = 1500, K = 2 ran 15% slower in parallel; N = 20000 ran 1.4x faster).
_PARALLEL_MIN_TERMS = 10_000


def _resolve_chain_method(chain_method: str, num_chains: int, n_terms: int = _PARALLEL_MIN_TERMS,
                          mesh=None) -> str:
    if chain_method not in CHAIN_METHODS:
        raise ValueError(f"chain_method={chain_method!r}; use one of {CHAIN_METHODS}.")
    if mesh is not None:  # the devices hold star shards: chains share them
        return _mesh_chain_method(chain_method)
    if chain_method != "auto":
        if chain_method == "parallel" and _n_parallel_devices(num_chains) < 2:
            logger.info("chain_method='parallel' with one usable device: chains run sequentially. "
                        "Call bayesmix.sampling.set_host_device_count(n) before JAX starts to use n cores.")
            return "sequential"
        return chain_method
    if jax.default_backend() != "cpu":
        return "vectorized"  # an accelerator batches chains for free
    if _n_parallel_devices(num_chains) >= 2 and n_terms >= _PARALLEL_MIN_TERMS:
        return "parallel"
    return "sequential"


def _mesh_chain_method(chain_method: str) -> str:
    """Chains over star shards: one after another, or batched ("auto": batched on an accelerator)."""
    if chain_method != "auto":
        return chain_method
    return "vectorized" if jax.default_backend() != "cpu" else "sequential"


def set_host_device_count(n: int | None = None) -> None:
    """Expose ``n`` CPU cores as JAX devices so chains run in parallel (before JAX starts).

    Must run before the first JAX computation of the process (the CLI does it first
    thing). ``n`` defaults to the number of cores.
    """
    import numpyro

    numpyro.set_host_device_count(int(n or os.cpu_count() or 1))


def _progress(total, enabled, desc):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)


def _concat(parts: list[dict]) -> dict:
    return {k: np.concatenate([p[k] for p in parts], axis=1) for k in parts[0]}


def _to_idata(model: MixtureModel, obs: Observations, covariates, samples, extra, catalogue, attrs):

    k, d = model.n_components, model.n_features
    coords = {"component": list(model.component_names[:k]), "feature": list(model.feature_names),
              "feature_bis": list(model.feature_names)}
    ordered = ["component"]
    if getattr(model, "member_apart", False):  # the cluster has its own site; the field is ordered
        coords["field_component"] = list(model.component_names[1:k])
        ordered = ["field_component"]
    if "field_weights" in samples:
        coords["field_column"] = list(model.component_names[1:])
    ids = np.asarray(catalogue.ids) if catalogue is not None else np.arange(obs.n_stars)
    # An array, not a list: xarray indexes a list of 20000 Python ints ten times slower.
    coords["star"] = ids if ids.dtype.kind in "iuUS" else np.arange(obs.n_stars)
    dims = {"weights": ["component"], "means": ["component", "feature"],
            "means_free": ["component", "feature"], "scales": ["component", "feature"],
            "scales_free": ["component", "feature"], "means_ordered": ordered,
            "scales_ordered": ordered, "field_weights": ["field_column"],
            "covariances": ["component", "feature", "feature_bis"],
            "correlations": ["component", "feature", "feature_bis"],
            "corr_cholesky": ["component", "feature", "feature_bis"],
            "values": ["star", "feature"], "error_covs": ["star", "feature", "feature_bis"]}
    dims.update({name: ["star"] for name in covariates})
    if d == 1:
        for name in ("corr_cholesky", "correlations"):
            dims.pop(name)
    posterior = dict(samples)
    stats = {_STAT_NAMES[k]: v for k, v in extra.items() if k in _STAT_NAMES}
    if "potential_energy" in extra:
        stats["lp"] = -extra["potential_energy"]
    constant = {"error_covs": np.asarray(obs.error_covs), **covariates}
    values = np.asarray(obs.values)
    if obs.observed is not None:
        # Missing features read as missing (NaN) in the file, with the mask beside them.
        values = np.where(np.asarray(obs.observed), values, np.nan)
        constant["observed"] = np.asarray(obs.observed)
        dims["observed"] = ["star", "feature"]
    groups = {"posterior": posterior, "sample_stats": stats,
              "observed_data": {"values": values}, "constant_data": constant}
    return _arviz.from_groups(groups, coords=coords, dims=dims, attrs=attrs, group_attrs={"posterior": attrs})


def _data_digest(obs: Observations, covariates: dict) -> str:
    """SHA-256 of the values, error covariances and covariates a run samples from.

    A checkpoint records it, so that a resume can never append draws of other data.
    """
    import hashlib

    digest = hashlib.sha256()
    arrays = [("values", obs.values), ("error_covs", obs.error_covs),
              *sorted((f"covariate:{k}", v) for k, v in covariates.items())]
    if obs.observed is not None:  # (absent when complete, so complete data keep their old digest)
        arrays.append(("observed", obs.observed))
    for name, array in arrays:
        a = np.ascontiguousarray(np.asarray(array, dtype=np.float64))
        digest.update(f"{name}{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def data_digest(data, covariates: dict | None = None) -> str:
    """SHA-256 of what a run samples from: values, error covariances and covariates.

    Checkpoints and ``run.json`` store it; a resume on other data is refused.

    Parameters
    ----------
    data : Catalogue, Observations or array (n_stars, n_features)
    covariates : dict of str to array (n_stars,), optional
        Default: the catalogue's.

    Returns
    -------
    str
        64 hexadecimal digits.
    """
    obs, covariates, _ = _resolve_data(data, covariates)
    return _data_digest(obs, covariates)


def checkpoint_draws(path) -> int:
    """Draws per chain saved in a checkpoint written by :func:`sample_posterior` (0 if none)."""
    return _checkpoint_draws(path)


def _saved_run(ckpt: Path, settings: dict, num_samples: int) -> Checkpoint:
    """The checkpoint at ``ckpt``, if it continues a run with these settings on these data."""
    saved = read_checkpoint(ckpt)
    # num_samples may grow: resuming a finished run with more draws extends it.
    check_continues(saved, f"checkpoint {ckpt}", data_sha256=settings["data_sha256"], settings=settings,
                    num_samples=num_samples)
    return saved


def sample_posterior(
    key,
    model: MixtureModel,
    data,
    *,
    covariates: dict | None = None,
    init=None,
    num_chains: int = 4,
    num_warmup: int = 300,
    num_samples: int = 1000,
    target_accept: float = 0.8,
    adapt_mass: bool = True,
    max_tree_depth: int = 10,
    chain_method: str = "auto",
    progress_bar: bool | None = None,
    checkpoint: str | os.PathLike | None = None,
    chunk_size: int | None = None,
    em_kwargs: dict | None = None,
    start_dispersion: float = START_DISPERSION,
    mesh: jax.sharding.Mesh | None = None,
) -> PosteriorFit:
    """Sample the posterior of ``model`` with NUTS, started from an EM/MAP fit.

    The run: EM (unless ``init`` is given) -> from each distinct EM optimum within
    25 nats of the best (:attr:`bayesmix.em.EMResult.optima`; at most one per chain),
    Newton steps to the mode of the unconstrained posterior and its Laplace
    approximation; modes holding less than 0.1% of the best one's Laplace mass are
    dropped -> chain ``c`` starts in mode ``c mod n_modes``, at its own draw from that
    mode's Laplace approximation with standard deviations inflated two-fold
    (``start_dispersion``), with the mode's inverse Hessian as its dense mass matrix
    -> ``num_warmup`` iterations of step-size adaptation (with a window that
    re-estimates the mass matrix from the chain's draws, shrunk towards the Laplace
    one, when ``adapt_mass``) -> ``num_samples`` draws. Each stage is one compiled
    program for all chains (:mod:`bayesmix.hmc`).

    Parameters
    ----------
    key : int or jax PRNG key
    model : MixtureModel
    data : Catalogue, Observations or array (n_stars, n_features)
        A catalogue brings its error covariances and covariates.
    covariates : dict of str to array (n_stars,), optional
    init : EMResult, MixtureParams or None
        Starting point; None runs :func:`bayesmix.em.fit_em` (``n_init=4``,
        plus ``em_kwargs``).
    num_chains, num_warmup, num_samples : int
        ``num_samples`` draws per chain after ``num_warmup`` adaptation steps.
    target_accept : float
        NUTS target acceptance probability (raise towards 0.95 on divergences).
    adapt_mass : bool
        Re-estimate the dense mass matrix in a warmup window (needs ``num_warmup`` >= 40);
        False keeps the Laplace one.
    max_tree_depth : int
    chain_method : {"auto", "sequential", "parallel", "vectorized"}
        "parallel" spreads chains over local devices (CPU cores after
        :func:`set_host_device_count`), "vectorized" batches them (the choice on a
        GPU), "sequential" runs them one after the other in one program. "auto":
        vectorized on an accelerator; on CPUs parallel when there are several devices
        and at least 10 000 star-component terms (below that a gradient is too cheap
        to be worth shipping), else sequential.
    progress_bar : bool, optional
        Default: on in an interactive terminal, off in CI.
    checkpoint : path, optional
        Write draws and sampler state here after every ``chunk_size`` draws; if the
        file exists (an interrupted or finished run with the same settings), resume
        from it instead of starting again. ``num_samples`` may exceed the saved run's:
        a finished run is then extended (the same draws as one long run).
    chunk_size : int, optional
        Draws per chunk with ``checkpoint`` (default ``max(num_samples // 10, 1)``).
    em_kwargs : dict, optional
        Passed to :func:`bayesmix.em.fit_em` when ``init`` is None.
    start_dispersion : float
        Starting draws come from each mode's Laplace approximation with its standard
        deviations times this (default 2: over-dispersed, so that R-hat can reveal chains
        that have not forgotten their starts; 1: draws from the approximation itself).
    mesh : jax.sharding.Mesh, optional
        Split the stars over the devices of this mesh (one axis ``"stars"``, e.g.
        :func:`bayesmix.distributed.star_mesh`): every evaluation of the log density and
        its gradient (Laplace start, warmup, draws) is the ``psum`` of the devices' sums
        over their own stars (:func:`bayesmix.distributed.sharded_model`), equal to the
        one-device value to round-off; with ``init=None`` the EM start is
        :func:`bayesmix.distributed.fit_em_sharded` (``em_kwargs`` are its options).
        Chains then run ``"sequential"`` or ``"vectorized"`` (``"auto"``: vectorized on
        an accelerator, else sequential); ``"parallel"`` is refused, since the devices
        hold star shards. Refused: models with per-star log weights (``radius_fraction``,
        ``spatial``, ``kinematics``), stars with missing features or per-star weights, and
        a background component without ``init``. The fit is an ordinary
        :class:`PosteriorFit` (``data`` unsharded), and a checkpoint resumes only with a
        mesh of the same size. Over several processes (:func:`bayesmix.distributed.initialize`)
        each passes its own stars as ``data`` and the same model and settings; all get the
        same draws (``checkpoint`` is then refused). Default None: one device.

    Returns
    -------
    PosteriorFit

    Examples
    --------
    A real run (about 6 s of compilation the first time, so not run as a doctest here):

    >>> from bayesmix.models import cluster_field_model
    >>> from bayesmix.sampling import sample_posterior
    >>> from bayesmix.simulate import simulate_cluster_field
    >>> cat = simulate_cluster_field(0).catalogue  # doctest: +SKIP
    >>> fit = sample_posterior(1, cluster_field_model(cat), cat, num_samples=1000)  # doctest: +SKIP
    >>> fit.idata.posterior["means"].sizes  # doctest: +SKIP
    Frozen({'chain': 4, 'draw': 1000, 'component': 2, 'feature': 1})
    """

    _check_sampler_args(num_chains=num_chains, num_warmup=num_warmup, num_samples=num_samples,
                        target_accept=target_accept, max_tree_depth=max_tree_depth, chunk_size=chunk_size,
                        start_dispersion=start_dispersion, chain_method=chain_method)
    _check_mesh(mesh, model, chain_method, init, checkpoint)
    seed = int(key) if isinstance(key, (int, np.integer)) else None
    key = as_key(key)
    obs, covariates, catalogue = _resolve_data(data, covariates)
    _check_data_fits_model(model, obs, covariates)
    _check_mesh_data(mesh, obs)
    method = _resolve_chain_method(chain_method, int(num_chains), obs.n_stars * model.n_total, mesh)
    progress_bar = _default_progress_bar() if progress_bar is None else progress_bar
    settings = {"seed": seed, "num_chains": int(num_chains), "num_warmup": int(num_warmup),
                "num_samples": int(num_samples), "target_accept": float(target_accept),
                "adapt_mass": bool(adapt_mass), "max_tree_depth": int(max_tree_depth),
                "start_dispersion": float(start_dispersion), "bayesmix_version": __version__,
                "likelihood_precision": model.likelihood_precision,
                "data_sha256": _data_digest(obs, covariates), **_mesh_settings(mesh)}
    k_em, k_start = split(key)

    ckpt = Path(checkpoint) if checkpoint is not None else None
    saved = _saved_run(ckpt, settings, num_samples) if ckpt is not None and ckpt.exists() else None
    if saved is not None:
        start = (saved.params, saved.background_weight, saved.em)
    else:
        start = _initial_point(k_em, model, obs, init, em_kwargs, mesh)
    template = _unconstrained(model, obs, covariates,
                              model.init_values(start[0], start[1], data=obs, covariates=covariates))
    sampler = _Sampler(model, obs, covariates, template, num_chains=int(num_chains), chain_method=method,
                       block=_block_size(int(num_samples), ckpt, chunk_size, progress_bar),
                       target_accept=target_accept, max_tree_depth=int(max_tree_depth), mesh=mesh)
    states, parts, start_info = _start_or_resume(
        k_start, sampler, saved, start, template, warmup=hmc.warmup_schedule(num_warmup, adapt_mass),
        dispersion=start_dispersion)
    if saved is not None:
        logger.info("resuming from %s: %d of %d draws per chain done", ckpt, saved.n_draws, num_samples)

    def save(states, samples, stats, done):
        write_checkpoint(ckpt, Checkpoint(settings, *start, jax.device_get(states), samples, stats,
                                          start_info))
        logger.info("checkpoint %s: %d of %d draws per chain", ckpt, done, num_samples)

    states, parts = _draw_loop(sampler, states, parts, start_info, num_samples,
                               save=save if ckpt is not None else None,
                               progress=_progress(num_samples, progress_bar, "sampling"))
    samples, stats = _concat([p[0] for p in parts]), _concat([p[1] for p in parts])
    fit = _finish(model, obs, covariates, catalogue, start[2], settings, samples, stats, states, sampler,
                  start_info, method)
    n_div = int(np.sum(stats["diverging"]))
    if n_div:
        logger.warning("%d divergent transitions; consider target_accept closer to 1", n_div)
    return fit


# The sampler's settings, declared once (bayesmix._constraints words every refusal alike).
_SAMPLER_CONSTRAINTS = {
    "num_chains": Interval(Integral, 1, None),
    "num_warmup": Interval(Integral, 0, None),
    "num_samples": Interval(Integral, 1, None),
    "target_accept": Interval(Real, 0, 1, closed="neither"),
    "max_tree_depth": Interval(Integral, 1, None),
    "chunk_size": [Interval(Integral, 1, None), None],
    "start_dispersion": Interval(Real, 0, None, closed="neither"),
    "chain_method": Options(CHAIN_METHODS),
}


def _check_sampler_args(**settings) -> None:
    """Refuse sampler settings that cannot run, before any work is done."""
    validate_params(_SAMPLER_CONSTRAINTS, settings, "sample_posterior")


def _check_data_fits_model(model: MixtureModel, obs: Observations, covariates: dict) -> None:
    """The data have the model's features and the covariate its radius law needs."""
    if obs.n_features != model.n_features:
        raise ValueError(f"data have {obs.n_features} features; the model has {model.n_features}.")
    if model.radius_fraction is not None and model.radius_fraction.covariate not in covariates:
        raise ValueError(f"the model's radius law needs covariate {model.radius_fraction.covariate!r}; "
                         f"got {sorted(covariates)}.")


# Models whose log weights depend on each star: the sharded likelihood cannot evaluate them.
_PER_STAR_TERMS = ("radius_fraction", "spatial", "kinematics")


def _check_mesh(mesh, model: MixtureModel, chain_method: str, init, checkpoint) -> None:
    """Refuse, before any work, what ``sample_posterior(..., mesh=)`` cannot run."""
    if mesh is None:
        return
    from bayesmix.distributed import STARS

    if not isinstance(mesh, jax.sharding.Mesh) or tuple(mesh.axis_names) != (STARS,):
        raise ValueError(f"mesh must be a one-axis jax.sharding.Mesh with the axis {STARS!r} "
                         f"(bayesmix.distributed.star_mesh()); got {mesh!r}.")
    if chain_method == "parallel":
        raise ValueError("chain_method='parallel' spreads chains over devices, but with mesh= the devices "
                         "hold star shards; use chain_method='sequential', 'vectorized' or 'auto' with "
                         "mesh=, or drop mesh= to run chains in parallel.")
    for name in _PER_STAR_TERMS:
        if getattr(model, name, None) is not None:
            raise ValueError(f"mesh=: the model's {name} gives each star its own log weights, which the "
                             f"sharded likelihood cannot evaluate (model.{name} is set); sample this model "
                             "without mesh=.")
    if model.background is not None and init is None:
        raise ValueError("mesh=: the sharded EM start (fit_em_sharded) has no background component and the "
                         "model has one (model.background); pass init= (e.g. bayesmix.em.fit_em(..., "
                         "background=model.background)).")
    if checkpoint is not None and jax.process_count() > 1:
        raise ValueError("checkpoint= with mesh= over several processes is not supported (each process "
                         "would write its own stars' run to the file); drop checkpoint=, or run one process.")


def _check_mesh_data(mesh, obs: Observations) -> None:
    """With a mesh, the stars must be complete and unweighted (what the shards can hold)."""
    if mesh is None:
        return
    if obs.observed is not None:
        raise ValueError("mesh=: the data have stars with missing features (Observations.observed), which "
                         "the sharded likelihood cannot evaluate; sample without mesh=, or drop those stars.")
    if obs.weight is not None:
        raise ValueError("mesh=: the data carry per-star weights (Observations.weight), which the sharded "
                         "likelihood cannot evaluate; sample without mesh=.")


def _mesh_settings(mesh) -> dict:
    """What a run records of its mesh (a checkpoint resumes only with one of the same size)."""
    return {} if mesh is None else {"mesh_devices": int(mesh.devices.size)}


def _check_same_mesh(saved_settings: dict, mesh, what: str) -> None:
    """Refuse to continue a run over a mesh of another size (or with or without one): the
    draws would no longer be the ones one uninterrupted run gives."""
    saved, now = saved_settings.get("mesh_devices"), _mesh_settings(mesh).get("mesh_devices")
    if saved != now:
        def say(n):
            return "no mesh" if n is None else f"a mesh of {n} devices"

        raise ValueError(f"{what} was sampled with {say(saved)}, and is now given {say(now)}; pass "
                         + ("mesh=None" if saved is None else f"mesh=star_mesh() over {saved} devices")
                         + " to continue it.")


def _block_size(num_samples: int, ckpt: Path | None, chunk_size: int | None, progress_bar: bool) -> int:
    """Draws per compiled call: a checkpoint's chunk, a twentieth of the run for a progress bar
    to move, else the whole run."""
    if ckpt is not None:
        return int(chunk_size or max(num_samples // 10, 1))
    if progress_bar:
        return max(num_samples // 20, 1)
    return num_samples


def _restored_states(state: hmc.ChainState) -> hmc.ChainState:
    """Chain states read from a checkpoint as the sampler holds them: JAX arrays, typed PRNG keys
    (a checkpoint stores each key's raw uint32 data)."""
    state = jax.tree_util.tree_map(jnp.asarray, state)
    return state._replace(key=jax.random.wrap_key_data(state.key))


def _start_or_resume(key, sampler: _Sampler, saved: Checkpoint | None, start: tuple, template: dict, *,
                     warmup: hmc.WarmupSchedule, dispersion: float):
    """(chain states, draws so far as ``[(samples, stats)]``, start information).

    From a checkpoint: its states and draws, with no new warmup. Otherwise chains start in
    the modes of the EM optima (``start`` is the best one: ``(params, background_weight,
    em_result)``), and the warmup is left pending in ``sampler`` for its first draws.
    """
    if saved is not None:
        return _restored_states(saved.state), [(saved.samples, saved.stats)], dict(saved.start_info)
    model, (obs, covariates) = sampler.model, sampler.data
    # The first candidate is the best optimum, whose unconstrained values are the template.
    others = _candidate_starts(*start, sampler.num_chains)[1:]
    starts = [_ravel_on_host(values)[0] for values in [template, *(
        _unconstrained(model, obs, covariates, model.init_values(p, bw, data=obs, covariates=covariates))
        for p, bw in others)]]
    states, start_info = sampler.start(key, starts, warmup, dispersion)
    if not start_info["laplace_hessian_ok"]:
        logger.warning("the posterior Hessian at the EM start was not positive definite (a "
                       "component at a boundary?); warmup started from a repaired mass matrix")
    return states, [], start_info


def _draw_loop(sampler: _Sampler, states, parts: list, start_info: dict, num_samples: int, *, save,
               progress):
    """Draw until every chain has ``num_samples`` (counting the draws in ``parts``).

    With ``save`` (a checkpointed run) the draws come one block at a time, and after each
    ``save(states, samples, stats, done)`` writes everything so far; otherwise in one call.
    Returns (states, parts).
    """
    done = sum(next(iter(p[1].values())).shape[1] for p in parts)
    if progress is not None:
        progress.update(done)
    while done < num_samples:
        n = min(sampler.block, num_samples - done) if save is not None else num_samples - done
        states, samples_part, stats_part = sampler.draws(states, n, progress)
        if sampler.warmup_divergences is not None:
            start_info["warmup_divergences"] = sampler.warmup_divergences
            sampler.warmup_divergences = None
        parts.append((samples_part, stats_part))
        done += n
        if save is not None:
            parts = [(_concat([p[0] for p in parts]), _concat([p[1] for p in parts]))]
            save(states, *parts[0], done)
    if progress is not None:
        progress.close()
    return states, parts


def _unconstrained(model: MixtureModel, obs, covariates, values: dict) -> dict:
    from numpyro.infer.util import unconstrain_fn

    args = (*padded_data(model, obs, covariates), model.hyperparameters())
    fn = _programs.Program("unconstrain", jax.jit(lambda v, a: unconstrain_fn(model.model, a, {}, v)),
                           model.program_key(), (Observations,))
    return jax.device_get(fn({k: device_array(v) for k, v in values.items()}, args))


def _finish(model, obs, covariates, catalogue, em_result, settings, samples, stats, states, sampler,
            start_info, method):

    stats = dict(stats)
    stats["step_size"] = np.broadcast_to(np.asarray(states.tuning.step_size)[:, None],
                                         stats["accept_prob"].shape).copy()
    # netCDF stores no booleans: flags become 0/1 so the InferenceData can be saved.
    attrs = {"bayesmix_version": __version__, "sampler": "bayesmix NUTS (BlackJAX kernel)",
             "chain_method": method,
             **{f"setting_{k}": (int(v) if isinstance(v, bool) else v) for k, v in settings.items()
                if v is not None},
             **{f"start_{k}": (int(v) if isinstance(v, bool) else v) for k, v in start_info.items()}}
    idata = _to_idata(model, obs, covariates, samples, stats, catalogue, attrs)
    return PosteriorFit(idata=idata, model=model, data=obs, covariates=covariates, em=em_result,
                        catalogue=catalogue, settings=settings,
                        _state=_RunState(states, sampler, samples, stats, start_info, method))


def load_fit(checkpoint, model: MixtureModel, data, *, covariates: dict | None = None,
             chain_method: str = "auto", mesh: jax.sharding.Mesh | None = None) -> PosteriorFit:
    """The run saved in a checkpoint, as a fit that :func:`extend` can continue.

    The checkpoint (written by :func:`sample_posterior` with ``checkpoint=``; plain
    arrays, see :mod:`bayesmix.checkpoint`) holds the draws and every chain's state;
    the model and the data are given again, and the data must be the ones it was made
    from (their SHA-256 is compared).

    Parameters
    ----------
    checkpoint : path
    model : MixtureModel
        The model of the run.
    data : Catalogue, Observations or array (n_stars, n_features)
    covariates : dict of str to array (n_stars,), optional
    chain_method : {"auto", "sequential", "parallel", "vectorized"}
    mesh : jax.sharding.Mesh, optional
        For a run sampled with ``sample_posterior(..., mesh=)``: a mesh of the same number
        of devices, over which :func:`extend` continues it.

    Returns
    -------
    PosteriorFit

    Raises
    ------
    bayesmix.checkpoint.CheckpointError
        The file is damaged or not a checkpoint.
    ValueError
        The data differ from the ones the run sampled, or the mesh from the run's.

    Examples
    --------
    >>> fit = sample_posterior(0, model, catalogue, checkpoint="run.npz")  # doctest: +SKIP
    >>> longer = extend(load_fit("run.npz", model, catalogue), 500)        # doctest: +SKIP
    """
    ckpt = Path(checkpoint)
    # The saved chains are the start: no EM, so the mesh's EM-start refusal does not apply.
    _check_mesh(mesh, model, chain_method, init=ckpt, checkpoint=ckpt)
    saved = read_checkpoint(ckpt)
    obs, covariates, catalogue = _resolve_data(data, covariates)
    _check_mesh_data(mesh, obs)
    check_continues(saved, f"checkpoint {ckpt}", data_sha256=_data_digest(obs, covariates))
    settings = saved.settings
    _check_same_mesh(settings, mesh, f"checkpoint {ckpt}")
    n_chains = int(np.shape(saved.state.hmc.position)[0])
    method = _resolve_chain_method(chain_method, n_chains, obs.n_stars * model.n_total, mesh)
    template = _unconstrained(model, obs, covariates, model.init_values(
        saved.params, saved.background_weight, data=obs, covariates=covariates))
    sampler = _Sampler(model, obs, covariates, template, num_chains=n_chains, chain_method=method,
                       block=max(saved.n_draws // 10, 1), target_accept=settings["target_accept"],
                       max_tree_depth=int(settings["max_tree_depth"]), mesh=mesh)
    states = _restored_states(saved.state)
    return _finish(model, obs, covariates, catalogue, saved.em, {**settings, "num_samples": saved.n_draws},
                   saved.samples, saved.stats, states, sampler, dict(saved.start_info), method)


def extend(fit: PosteriorFit, num_samples: int) -> PosteriorFit:
    """More draws for a finished run, from its last state: no new warmup.

    The result equals a run that had asked for the extra draws in the first place
    (same chains, same keys, same adapted step size and mass matrix).

    Parameters
    ----------
    fit : PosteriorFit
        Made by :func:`sample_posterior` in this process, or read from its checkpoint
        by :func:`load_fit`.
    num_samples : int
        Extra draws per chain.

    Returns
    -------
    PosteriorFit
        With the draws of ``fit`` followed by the new ones.
    """
    if fit._state is None:
        raise ValueError("this fit has no sampler state (was it loaded from disk?); read it from its "
                         "checkpoint with load_fit(checkpoint, model, data) instead.")
    if int(num_samples) < 1:
        raise ValueError(f"num_samples must be at least 1; got {num_samples}.")
    st = fit._state
    states, new_samples, new_stats = st.sampler.draws(st.states, int(num_samples))
    samples = _concat([st.samples, new_samples])
    old_stats = {k: v for k, v in st.stats.items() if k != "step_size"}
    stats = _concat([old_stats, new_stats])
    settings = {**fit.settings, "num_samples": fit.settings.get("num_samples", 0) + int(num_samples)}
    return _finish(fit.model, fit.data, fit.covariates, fit.catalogue, fit.em, settings, samples, stats,
                   states, st.sampler, st.start_info, st.method)


def add_log_likelihood(fit: PosteriorFit, *, max_draws: int | None = None,
                       star_chunk: int = 20000) -> PosteriorFit:
    """Add the pointwise log-likelihood group (for LOO), computed in chunks of stars.

    It holds ``n_chains * n_draws * n_stars`` numbers (8 bytes each: 32 GB for 1e6 stars
    and 4000 draws), so it is never made unless asked for; ``max_draws`` thins the
    draws evenly within each chain to bound it.

    Parameters
    ----------
    fit : PosteriorFit
    max_draws : int, optional
        Upper bound on ``n_chains * draws kept``.
    star_chunk : int
        Stars per compiled block.

    Returns
    -------
    PosteriorFit
        With ``idata.log_likelihood["values"]`` of dims (chain, draw, star): each star's log
        likelihood (all its features jointly), named as ``observed_data["values"]``.
    """
    import math

    import xarray as xr
    from jax.scipy.special import logsumexp


    if star_chunk < 1 or (max_draws is not None and max_draws < fit.n_chains):
        raise ValueError("star_chunk must be >= 1 and max_draws >= the number of chains.")
    post = fit.idata.posterior
    n_chains, n_draws = fit.n_chains, fit.n_draws
    step = 1 if max_draws is None else max(1, math.ceil(n_chains * n_draws / max_draws))
    keep = np.arange(0, n_draws, step)
    sites = {name: post[name].values[:, keep].reshape((n_chains * keep.size, *post[name].shape[2:]))
             for name in post.data_vars}
    model, data = fit.model, fit.data
    n_stars = data.n_stars
    chunk = min(star_chunk, _padding.bucket(n_stars))  # catalogues in one bucket share the program

    # A radius law's reference and minimum radius are an argument: other radii share the program.
    fingerprint, constants = _program_constants(model)

    def per_star(sample, block, covariates, constants):
        bound = _bind_constants(model, constants)
        if getattr(bound, "kinematics", None) is not None:  # a per-star member density: the model joins it
            lj = bound.star_log_joint(sample, block, covariates)
        else:
            lj = bound.joint_log_prob(bound.params(sample), bound.log_weights(sample, covariates), block)
        return logsumexp(lj, axis=1)

    compiled = _programs.Program("log_likelihood",
                                 jax.jit(jax.vmap(per_star, in_axes=(0, None, None, None))),
                                 fingerprint, (Observations,))
    out = np.empty((n_chains * keep.size, n_stars))
    for start in range(0, n_stars, chunk):
        rows = np.minimum(np.arange(start, start + chunk), n_stars - 1)  # pad: one compiled shape
        n = min(start + chunk, n_stars) - start
        cov_rows = {name: v[rows] for name, v in fit.covariates.items()}
        values = compiled(sites, star_rows(data, rows), cov_rows, constants)
        out[:, start:start + n] = np.asarray(values)[:, :n]
    stars = fit.idata.observed_data.coords["star"].values
    group = xr.Dataset({"values": (("chain", "draw", "star"), out.reshape(n_chains, keep.size, n_stars))},
                       coords={"chain": np.arange(n_chains), "draw": keep, "star": stars})
    return dataclasses.replace(fit, idata=_arviz.with_group(fit.idata, "log_likelihood", group))


# --------------------------------------------------------------------------- the written InferenceData

LOG_LIKELIHOOD_DRAWS = 1000
"""Posterior draws (evenly thinned) in the ``log_likelihood`` group of ``posterior.nc``."""
PREDICTIVE_DRAWS = 100
"""Mock catalogues in the ``posterior_predictive`` group of ``posterior.nc``."""
MAX_STORED_VALUES = 20_000_000
"""Largest ``draws x stars (x features)`` array :func:`arviz_complete` stores per group (160 MB):
a larger catalogue gets fewer draws, down to 100 (log likelihood) or 10 (mock catalogues), and
beyond that no such group, with a logged warning (about 2e5 stars for the log likelihood)."""

# The sampler's parametrisation and the derived views of the same quantities: left out of the
# written posterior, so that each quantity has one name there (weights, means, scales,
# correlations, background_weight, and the member-fraction law's own parameters).
_NOT_PUBLISHED = frozenset({
    "means_free", "scales_free", "corr_cholesky", "covariances", "means_ordered", "scales_ordered",
    "means_rest", "scales_rest", "mean_member", "scale_member", "weights_free", "weights_all",
    "mean1", "sigma1", "mean2", "sigma2", "frac1",
})


_MIN_STORED_DRAWS = {"log_likelihood": 100, "posterior_predictive": 10}


def _draws_that_fit(group: str, wanted: int, values_per_draw: int, max_values: int) -> int:
    """Draws of ``group`` to store: ``wanted``, or fewer so that at most ``max_values`` are stored."""
    n = min(wanted, max_values // values_per_draw)
    if n < wanted:
        if n < min(wanted, _MIN_STORED_DRAWS[group]):
            logger.warning("posterior.nc: no %s group: %d draws x %d values per draw exceed %d values "
                           "(bayesmix.sampling.MAX_STORED_VALUES); make it in Python with "
                           "bayesmix.sampling.arviz_complete(key, fit, max_values=...)",
                           group, _MIN_STORED_DRAWS[group], values_per_draw, max_values)
            return 0
        logger.info("posterior.nc: %s at %d draws, not %d (at most %d values)", group, n, wanted, max_values)
    return n


def arviz_complete(key, fit: PosteriorFit, *, log_likelihood_draws: int = LOG_LIKELIHOOD_DRAWS,
                   predictive_draws: int = PREDICTIVE_DRAWS, max_values: int = MAX_STORED_VALUES):
    """The fit's InferenceData as ``bayesmix fit`` writes it: what ArviZ's functions expect.

    * ``posterior``: one name per quantity (``weights``, ``means``, ``scales``, ``correlations``
      when D > 1, ``background_weight``, the member-fraction law's ``frac_*`` and
      ``field_weights``); the sampler's own sites (``means_free``, ``scales_ordered``, ...),
      ``covariances`` (from ``scales`` and ``correlations``) and the tutorial's
      ``mean1 ... frac1`` (``means[cluster, RV]`` ...) stay in ``fit.idata`` only;
    * ``log_likelihood["values"]`` (chain, draw, star): each star's log likelihood at
      ``log_likelihood_draws`` evenly thinned draws, for ``arviz.loo`` (the fit's own group
      when it has one, from :func:`add_log_likelihood`);
    * ``posterior_predictive["values"]`` (chain=1, draw, star, feature): mock catalogues, each
      star drawn with its own measurement errors, for ``arviz.plot_ppc``;
    * ``sample_stats``, ``observed_data`` and ``constant_data`` as in ``fit.idata``.

    A group that would hold more than ``max_values`` numbers gets fewer draws (logged), or is
    left out with a logged warning when under 100 draws of the log likelihood (10 mock
    catalogues) would fit.

    Parameters
    ----------
    key : int or jax.random key
        Seeds the mock catalogues.
    fit : PosteriorFit
    log_likelihood_draws, predictive_draws : int
        Draws in the two added groups (0 leaves a group out).
    max_values : int
        Largest array stored per added group.

    Returns
    -------
    arviz.InferenceData or xarray.DataTree
        A new object; ``fit.idata`` is unchanged.

    Examples
    --------
    >>> idata = arviz_complete(0, fit)  # doctest: +SKIP
    >>> arviz.loo(idata)  # doctest: +SKIP
    """
    import xarray as xr


    for name, value in (("log_likelihood_draws", log_likelihood_draws),
                        ("predictive_draws", predictive_draws), ("max_values", max_values)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer; got {value!r}.")
    posterior = _arviz.group_dataset(fit.idata, "posterior")
    idata = _arviz.with_group(fit.idata, "posterior",
                              posterior.drop_vars([v for v in posterior.data_vars if v in _NOT_PUBLISHED]))
    n_stars, n_features = fit.data.n_stars, fit.data.n_features
    # A log_likelihood group the fit already has (every draw, e.g. by ``[output] loo``) is kept.
    if not _arviz.has_group(fit.idata, "log_likelihood"):
        n_ll = _draws_that_fit("log_likelihood", min(log_likelihood_draws, fit.n_chains * fit.n_draws),
                               n_stars, max_values)
        if n_ll:
            with_ll = add_log_likelihood(fit, max_draws=max(n_ll, fit.n_chains))
            log_lik = _arviz.group_dataset(with_ll.idata, "log_likelihood")
            idata = _arviz.with_group(idata, "log_likelihood", log_lik)
    n_mocks = _draws_that_fit("posterior_predictive", predictive_draws, n_stars * n_features, max_values)
    if n_mocks:
        mocks = posterior_predictive(key, fit, n_mocks)
        stars = fit.idata.observed_data.coords["star"].values
        features = fit.idata.observed_data.coords["feature"].values
        group = xr.Dataset({"values": (("chain", "draw", "star", "feature"), mocks[None])},
                           coords={"chain": [0], "draw": np.arange(mocks.shape[0]), "star": stars,
                                   "feature": features})
        idata = _arviz.with_group(idata, "posterior_predictive", group)
    return idata

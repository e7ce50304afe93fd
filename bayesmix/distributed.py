"""Data-parallel fits over a device mesh and several hosts, on JAX's own distributed runtime.

Every quantity a fit needs from the stars is a sum over stars: EM's sufficient
statistics (:mod:`bayesmix.em`) and the total log-likelihood with its gradient, which
NUTS evaluates at each leapfrog step (:func:`bayesmix.likelihood.total_log_likelihood`).
Here the stars are split along one mesh axis ``"stars"`` (a
:class:`jax.sharding.Mesh` over every device of every process); each device evaluates
the same per-block function the single-device code uses on its own rows inside
:func:`jax.shard_map`, and one ``psum`` adds the results. Nothing else is
re-implemented, so the result equals the single-device one to round-off (the sum is
only taken in another order).

* :func:`fit_em_sharded`: extreme-deconvolution EM whose E-step statistics are
  ``psum`` of ``em._e_stats`` over the shards; the M-step and the stopping rule are
  em's (driven by :func:`bayesmix.stream._em_iterations`).
* :func:`sharded_total_log_likelihood` and :func:`sharded_model`: the NUTS
  log-density as a sum over star shards; its gradient is the ``psum`` of the shards'
  closed-form gradients (JAX transposes the replicated parameters' use into that sum).
  :func:`bayesmix.sampling.sample_posterior` with ``mesh=`` runs NUTS on it.
* Several processes (hosts): call :func:`initialize` (``jax.distributed.initialize``)
  first in every process, give each process its own rows (e.g.
  ``open_catalogue(...).shard(jax.process_index(), jax.process_count())``), and
  call the same functions in every process: :func:`star_mesh` spans all processes'
  devices and the ``psum`` crosses hosts.

Padding rows (each device holds the same number of rows) copy a real row and have
weight 0, so they add exactly nothing (:class:`bayesmix.likelihood.Observations`'s
``weight``; em's ``sample_weight``).
"""

from __future__ import annotations

import functools
import logging
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bayesmix import _padding, _x64  # noqa: F401  (_x64: float64 before any array is made)
from bayesmix._random import as_key
from bayesmix.em import EMOptions, EMResult, MAPPrior, _e_stats, _merged_options, _Model
from bayesmix.likelihood import MixtureParams, Observations, as_observations, total_log_likelihood
from bayesmix.stream import (
    StreamedCatalogue,
    _as_em_result,
    _block_static,
    _check_start,
    _em_iterations,
    _Moments,
    _start_params,
    _stream_model,
)

__all__ = [
    "STARS",
    "fit_em_sharded",
    "initialize",
    "replicate",
    "shard_observations",
    "sharded_model",
    "sharded_total_log_likelihood",
    "star_mesh",
]

logger = logging.getLogger(__name__)

STARS = "stars"  # the mesh axis the stars are split along


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, cpu_collectives: str = "gloo") -> None:
    """Start JAX's distributed runtime (one call per process, before any other JAX work).

    :func:`jax.distributed.initialize` with CPU collectives switched on, so that the
    same code runs across processes on CPUs (tests, laptops) and GPUs. Without
    arguments JAX detects SLURM, Open MPI or a TPU/GPU cluster environment.

    Parameters
    ----------
    coordinator_address : str, optional
        ``"host:port"`` of process 0.
    num_processes, process_id : int, optional
    cpu_collectives : str
        ``jax_cpu_collectives_implementation`` (``"gloo"``; ``"mpi"`` where built).

    Examples
    --------
    >>> initialize("node001:12355", num_processes=4, process_id=int(os.environ["RANK"]))  # doctest: +SKIP
    >>> initialize()  # under srun: SLURM's variables are read  # doctest: +SKIP
    """
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    logger.info("process %d of %d: %d local of %d devices", jax.process_index(), jax.process_count(),
                jax.local_device_count(), jax.device_count())


def star_mesh(devices=None) -> Mesh:
    """A one-axis mesh (axis ``"stars"``) over ``devices`` (default: every device of every process).

    Examples
    --------
    >>> mesh = star_mesh()  # doctest: +SKIP
    >>> mesh.shape  # doctest: +SKIP
    {'stars': 4}
    """
    devices = jax.devices() if devices is None else list(devices)
    # Each process's devices together, in process order: process p's rows land on them.
    devices = sorted(devices, key=lambda dev: (dev.process_index, dev.id))
    return Mesh(np.array(devices), (STARS,))


# --------------------------------------------------------------------------- cross-process sums


def _allgather(tree):
    """``tree`` of every process, stacked on a leading axis (this process's alone when there is one)."""
    if jax.process_count() == 1:
        return jax.tree_util.tree_map(lambda a: np.asarray(a)[None], tree)
    from jax.experimental import multihost_utils

    return jax.tree_util.tree_map(np.asarray, multihost_utils.process_allgather(tree))


def _from_process_zero(tree):
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    return jax.tree_util.tree_map(np.asarray, multihost_utils.broadcast_one_to_all(tree))


# --------------------------------------------------------------------------- layout


def _local_devices(mesh: Mesh) -> int:
    return sum(d.process_index == jax.process_index() for d in mesh.devices.flat)


def _global_array(local: np.ndarray, mesh: Mesh, rows_per_device: int):
    """The processes' local rows as one array split along ``"stars"`` (axis 0)."""
    sharding = NamedSharding(mesh, PartitionSpec(STARS))
    shape = (rows_per_device * mesh.devices.size, *local.shape[1:])
    return jax.make_array_from_process_local_data(sharding, local, shape)


def replicate(tree, mesh: Mesh):
    """Host values (the same in every process) as arrays replicated over ``mesh``.

    What a jitted function over a mesh that spans processes takes as its unsplit
    arguments (parameters): every process must pass the same values.
    """
    sharding = NamedSharding(mesh, PartitionSpec())
    return jax.tree_util.tree_map(
        lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), tree)


def _padded(a: np.ndarray, rows: int) -> np.ndarray:
    extra = rows - a.shape[0]
    return a if extra == 0 else np.concatenate([a, np.repeat(a[:1], extra, axis=0)])


def _rows_per_device(n_local: int, mesh: Mesh, multiple: int = 1) -> int:
    """Rows on each device: the most any process needs, padded to a bucket size
    (:func:`bayesmix._padding.bucket`, so catalogues of other sizes in the same bucket run
    the same compiled and stored programs) and rounded up to ``multiple``."""
    n_dev = _local_devices(mesh)
    per = _padding.bucket(int(np.max(_allgather(np.asarray(-(-n_local // n_dev))))))
    return max(multiple, -(-per // multiple) * multiple)


def _local_observations(data, errors) -> Observations:
    if isinstance(data, StreamedCatalogue):
        parts = [o for _, o, _ in data.chunks()]
        return Observations(np.concatenate([o.values for o in parts]),
                            np.concatenate([o.error_covs for o in parts]))
    obs = as_observations(data, errors)
    if obs.observed is not None or obs.weight is not None:
        raise ValueError("sharded fits take complete stars with unit weights; missing features or per-star "
                         "weights are not supported here (use bayesmix.em.fit_em).")
    return Observations(np.asarray(obs.values), np.asarray(obs.error_covs))


# --------------------------------------------------------------------------- EM


@functools.lru_cache(maxsize=16)
def _stats_program(mesh: Mesh, static):
    """The jitted E-step over ``mesh`` for one block layout (kept, so a second fit compiles nothing)."""
    spec, rep = PartitionSpec(STARS), PartitionSpec()

    def local(params, model, values, covs, sw, log_bg):
        part = _e_stats(params, model._replace(values=values, error_covs=covs, sample_weight=sw,
                                               log_background=log_bg), static)
        return jax.lax.psum(part, STARS)

    # check_vma=False: em._e_stats starts its scan from an unsharded zero carry, which the
    # varying-manual-axes check refuses; the psum above is what makes the output replicated.
    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(rep, rep, spec, spec, spec, spec),
                                 out_specs=rep, check_vma=False))


def _sharded_e_stats(mesh: Mesh, model: _Model, static, arrays):
    """``e_stats(params)``: em's statistics of every shard's blocks, ``psum`` over the mesh."""
    fn = _stats_program(mesh, static)
    model = replicate(model, mesh)

    def e_stats(params):
        # Every process passes identical parameters (computed identically from identical sums).
        return jax.device_get(fn(replicate(params, mesh), model, *arrays))

    return e_stats


def _blocked_shards(obs: Observations, mesh: Mesh, block: int):
    """Each device's rows as ``(n_blocks, block)`` blocks, padded with weight-0 copies; global arrays."""
    n, d = obs.values.shape
    n_dev = _local_devices(mesh)
    rows = _rows_per_device(n, mesh, 8)
    block = min(int(block), rows)
    per_device = -(-rows // block) * block
    total = per_device * n_dev
    sw = np.concatenate([np.ones(n), np.zeros(total - n)])
    local = [_padded(obs.values, total).reshape(-1, block, d),
             _padded(obs.error_covs, total).reshape(-1, block, d, d),
             sw.reshape(-1, block), np.zeros((total // block, block))]
    arrays = [_global_array(a, mesh, per_device // block) for a in local]
    return arrays, per_device // block, block


def _subsample_start(key, obs: Observations, k: int, options: EMOptions, prior, n_start_stars: int):
    """:func:`bayesmix.em.fit_em` on ``n_start_stars`` of process 0's stars, sent to every process."""
    d = obs.values.shape[1]
    start = (np.zeros(k), np.zeros((k, d)), np.zeros((k, d, d)))  # the shapes the broadcast needs
    if jax.process_index() == 0:
        seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
        rows = np.random.default_rng(seed).permutation(obs.values.shape[0])[:n_start_stars]
        fit = _start_params(key, Observations(obs.values[rows], obs.error_covs[rows]), k, options, prior)
        start = tuple(np.asarray(a) for a in fit)
    return MixtureParams(*(jnp.asarray(a) for a in _from_process_zero(start)))


def fit_em_sharded(key, data, n_components: int, *, errors=None, mesh: Mesh | None = None,
                   options: EMOptions | None = None, init_params=None, prior: MAPPrior | None = None,
                   n_start_stars: int = 20000, **option_overrides) -> EMResult:
    """Extreme-deconvolution EM with the stars split over devices (and processes).

    Each device computes :mod:`bayesmix.em`'s E-step statistics of its rows (the same
    compiled per-block function as :func:`bayesmix.em.fit_em`); ``psum`` adds them over
    the mesh, and em's M-step follows. The result equals :func:`bayesmix.em.fit_em`
    from the same start to round-off.

    Parameters
    ----------
    key : int or jax PRNG key
        Seed of the start's subsample fit (unused with ``init_params``).
    data : array_like (n_local, n_features), Observations or StreamedCatalogue
        **This process's** stars (all stars with one process). With several processes
        each passes its own rows, e.g. ``catalogue.shard(jax.process_index(),
        jax.process_count())``; the fit covers their union.
    n_components : int
    errors : array_like, optional
        Standard errors (n_local, n_features) or covariances (n_local, n_features,
        n_features), with array ``data``.
    mesh : jax.sharding.Mesh, optional
        With an axis ``"stars"``; default :func:`star_mesh` (every device).
    options : EMOptions, optional
        As for :func:`bayesmix.em.fit_em` (``chunk_size`` rows per E-step block on a
        device); keywords override fields.
    init_params : MixtureParams or (weights, means, covariances), optional
        The start (the same in every process). Default: :func:`bayesmix.em.fit_em` on
        ``n_start_stars`` of process 0's stars, sent to every process.
    prior : MAPPrior, optional
    n_start_stars : int

    Returns
    -------
    EMResult

    Examples
    --------
    >>> mesh = star_mesh()  # doctest: +SKIP
    >>> res = fit_em_sharded(0, values, 3, errors=sigma, mesh=mesh)  # doctest: +SKIP
    """
    options = _merged_options(options, option_overrides)
    mesh = star_mesh() if mesh is None else mesh
    if STARS not in mesh.axis_names:
        raise ValueError(f"mesh needs an axis named {STARS!r}; got axes {mesh.axis_names} (use star_mesh()).")
    obs = _local_observations(data, errors)
    k, d = int(n_components), obs.values.shape[1]
    shift = _from_process_zero(obs.values.mean(axis=0))
    local = _Moments(0.0, shift, np.zeros(d), np.zeros((d, d)), np.zeros(d)).add(obs)
    moments = _Moments(*(np.sum(a, axis=0) if i != 1 else shift for i, a in enumerate(_allgather(local))))
    start = _check_start(init_params, k, d) if init_params is not None else \
        _subsample_start(as_key(key), obs, k, options, prior, n_start_stars)
    model, w = _stream_model(moments, k, options, prior, start)
    arrays, n_blocks, block = _blocked_shards(obs, mesh, options.chunk_size)
    e_stats = _sharded_e_stats(mesh, model, _block_static(k, d, n_blocks, block), arrays)
    loop = _em_iterations(start, e_stats, model, int(options.max_iter), float(options.tol))
    return _as_em_result(loop, w=w, n_effective=float(moments.total),
                         kind="given" if init_params is not None else "subsample",
                         max_iter=int(options.max_iter), tol=float(options.tol))


# --------------------------------------------------------------------------- NUTS log density


def shard_observations(data, mesh: Mesh | None = None, errors=None) -> Observations:
    """This process's stars as :class:`Observations` split along ``"stars"`` (weight-0 padding rows).

    Parameters
    ----------
    data : array_like, Observations or StreamedCatalogue
        This process's stars (all of them with one process).
    mesh : Mesh, optional
        Default :func:`star_mesh`.
    errors : array_like, optional

    Returns
    -------
    Observations
        Global arrays: values (n_padded, D), error_covs (n_padded, D, D), weight
        (n_padded,) with 1 on real rows and 0 on padding; ``n_padded`` is the mesh's size
        times a bucket size (:func:`bayesmix._padding.bucket` of the rows each device needs),
        so catalogues of nearby sizes share compiled programs.

    Examples
    --------
    >>> sharded = shard_observations(values, star_mesh(), errors=sigma)  # doctest: +SKIP
    """
    mesh = star_mesh() if mesh is None else mesh
    obs = _local_observations(data, errors)
    n = obs.values.shape[0]
    rows = _rows_per_device(n, mesh)
    total = rows * _local_devices(mesh)
    weight = np.concatenate([np.ones(n), np.zeros(total - n)])
    return Observations(_global_array(_padded(obs.values, total), mesh, rows),
                        _global_array(_padded(obs.error_covs, total), mesh, rows),
                        None, _global_array(weight, mesh, rows))


def sharded_total_log_likelihood(mesh: Mesh | None = None, *, precision: str = "float64"):
    """:func:`bayesmix.likelihood.total_log_likelihood` as a sum over star shards.

    Parameters
    ----------
    mesh : Mesh, optional
        Default :func:`star_mesh`.
    precision : {"float64", "mixed"}
        Each shard's :func:`~bayesmix.likelihood.total_log_likelihood` ``precision``.

    Returns
    -------
    callable
        ``f(params, data, log_weights=None, extra_log_prob=None) -> scalar`` with ``data``
        from :func:`shard_observations`, ``log_weights`` (n_total,) replicated and
        ``extra_log_prob`` (n_padded, n_extra) split like ``data``. Differentiable (the
        gradient is the ``psum`` of the shards' closed-form gradients), jit-able, and
        equal to the single-device total to round-off.

    Examples
    --------
    >>> f = sharded_total_log_likelihood(mesh)  # doctest: +SKIP
    >>> jax.value_and_grad(lambda m: f(params._replace(means=m), sharded))(params.means)  # doctest: +SKIP
    """
    mesh = star_mesh() if mesh is None else mesh
    rows, rep = PartitionSpec(STARS), PartitionSpec()

    def local(params, data, log_weights, extra):
        total = total_log_likelihood(params, data, log_weights, extra, precision=precision)
        return jax.lax.psum(total, STARS)

    data_spec = Observations(rows, rows, None, rows)

    @partial(jax.shard_map, mesh=mesh, in_specs=(rep, data_spec, rep), out_specs=rep)
    def plain(params, data, log_weights):
        return local(params, data, log_weights, None)

    @partial(jax.shard_map, mesh=mesh, in_specs=(rep, data_spec, rep, rows), out_specs=rep)
    def with_extra(params, data, log_weights, extra):
        return local(params, data, log_weights, extra)

    def f(params, data: Observations, log_weights=None, extra_log_prob=None):
        if data.weight is None or data.observed is not None:
            raise ValueError("data must come from shard_observations (weights, no missing features).")
        if log_weights is None:
            log_weights = jnp.log(params.weights)
        if extra_log_prob is None:
            return plain(params, data, log_weights)
        extra = jnp.reshape(extra_log_prob, (extra_log_prob.shape[0], -1))
        return with_extra(params, data, log_weights, extra)

    return f


def sharded_model(model, mesh: Mesh | None = None):
    """A copy of a :class:`bayesmix.models.MixtureModel` whose likelihood is summed over star shards.

    Its NumPyro program (and so the NUTS potential built from it) is the model's own with
    :meth:`total_log_likelihood` replaced by :func:`sharded_total_log_likelihood`; call it
    with :func:`shard_observations` data. Models whose log weights depend on each star
    (a radius-dependent member fraction, spatial terms, member kinematics) are refused.

    Parameters
    ----------
    model : MixtureModel
    mesh : Mesh, optional

    Returns
    -------
    MixtureModel (a subclass instance)

    Examples
    --------
    >>> from numpyro.infer.util import potential_energy  # doctest: +SKIP
    >>> sm = sharded_model(model, mesh)  # doctest: +SKIP
    >>> potential_energy(sm.model, (shard_observations(values, mesh, sigma),), {}, sample)  # doctest: +SKIP
    """
    for name in ("radius_fraction", "spatial", "kinematics"):
        if getattr(model, name, None) is not None:
            raise ValueError(f"sharded_model: the model has per-star log weights ({name}); only mixtures "
                             "with global weights (and a fixed background) can be sharded here.")
    mesh = star_mesh() if mesh is None else mesh
    sharded = sharded_total_log_likelihood(mesh, precision=model.likelihood_precision)

    class ShardedMixtureModel(type(model)):
        def total_log_likelihood(self, params, log_w, data):
            extra = self.log_background(data)
            return sharded(params, data, log_w, None if extra is None else extra[:, None])

        def program_key(self) -> str:
            # Another program than the unsharded model's: stored programs must not be shared.
            return f"{super().program_key()}|sharded:{dict(mesh.shape)}"

    out = object.__new__(ShardedMixtureModel)
    out.__dict__.update(model.__dict__)
    return out

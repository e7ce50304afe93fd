"""Stars padded to bucket sizes: zero-weight rows change no value, gradient or output."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayesmix import _padding, _programs, membership, sampling
from bayesmix.components import UniformBackground
from bayesmix.likelihood import MixtureParams, Observations, log_likelihood, pad_stars, total_log_likelihood
from bayesmix.models import RadiusFraction, cluster_field_model, mixture_model
from bayesmix.own_model import posterior_from_draws
from bayesmix.simulate import simulate_cluster_field


def test_buckets_are_few_and_waste_at_most_a_quarter():
    sizes = np.arange(1, 300_000)
    buckets = np.array([_padding.bucket(int(n)) for n in sizes])
    assert np.all(buckets >= sizes) and np.all(np.diff(buckets) >= 0)
    assert np.max(buckets[sizes > 256] / sizes[sizes > 256]) <= 1.25
    assert len(set(buckets[sizes <= 65536].tolist())) == 33  # 256, then 4 per octave up to 65536
    assert [_padding.bucket(n) for n in (1, 256, 257, 1500, 1450, 1600, 20000)] == [
        256, 256, 320, 1536, 1536, 1792, 20480]


def _stars(seed, n, d, missing=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * 3
    a = rng.normal(size=(n, d, d)) * 0.3
    covs = a @ np.swapaxes(a, 1, 2) + 0.1 * np.eye(d)
    observed = None
    if missing:
        observed = rng.random((n, d)) > 0.3
        observed[:, 0] = True
    return Observations(x, covs, observed)


@pytest.mark.parametrize("d, missing", [(1, False), (2, True), (3, False)])
def test_padded_total_log_likelihood_and_gradient_equal_unpadded(d, missing):
    data = _stars(d, 300, d, missing)
    padded = pad_stars(data)
    assert padded.n_stars == 320 and float(padded.weight.sum()) == 300.0
    np.testing.assert_array_equal(padded.values[300:], np.repeat(data.values[:1], 20, axis=0))
    k = 2
    rng = np.random.default_rng(7)
    means = jnp.asarray(rng.normal(size=(k, d)))
    covs = jnp.asarray(np.stack([np.eye(d) * (1 + i) for i in range(k)]))
    log_w = jnp.asarray(np.log(rng.dirichlet(np.ones(k + 1), size=300)))  # per star, with an extra column
    extra = jnp.asarray(rng.normal(size=300) - 5)

    def total(m, c, lw, obs, ex):
        return total_log_likelihood(MixtureParams(None, m, c), obs, lw, ex)

    grad = jax.value_and_grad(total, argnums=(0, 1, 2))
    value, (g_m, g_c, g_w) = grad(means, covs, log_w, data, extra)
    value_p, (g_mp, g_cp, g_wp) = grad(means, covs, _padding.pad_rows(log_w, 320), padded,
                                       _padding.pad_rows(extra, 320))
    np.testing.assert_allclose(value_p, value, rtol=1e-13)
    np.testing.assert_allclose(g_mp, g_m, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(g_cp, g_c, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(g_wp[:300], g_w, rtol=1e-12)
    np.testing.assert_array_equal(g_wp[300:], 0.0)  # padding rows: no weight, no gradient
    # The custom JVP against autodiff of the plain (weighted) log-likelihood.
    plain = jax.grad(lambda m: log_likelihood(MixtureParams(jnp.ones(k) / k, m, covs), padded))(means)
    custom = jax.grad(lambda m: total_log_likelihood(MixtureParams(jnp.ones(k) / k, m, covs), padded))(means)
    np.testing.assert_allclose(custom, plain, rtol=1e-10, atol=1e-12)


def _potential(model, obs, covariates, theta):
    from numpyro.infer.util import potential_energy

    args = (obs, covariates, model.hyperparameters())
    return jax.value_and_grad(lambda t: potential_energy(model.model, args, {}, t))(theta)


def _model_and_data(kind):
    """(model, obs, covariates) of 300 stars for one kind of model."""
    from bayesmix.models import MemberKinematics, SpatialLaw
    from bayesmix.spatial import simulate_cluster_kinematics

    if kind == "spatial":
        sim = simulate_cluster_kinematics(0, 150, 150)
        obs, covariates = sim.data, dict(sim.covariates)
        return (cluster_field_model(obs, covariates=covariates, spatial=SpatialLaw(sim.footprint),
                                    kinematics=MemberKinematics(radius="R")), obs, covariates)
    cat = simulate_cluster_field(3, 300).catalogue
    obs, covariates, _ = sampling._resolve_data(cat, None)
    background = UniformBackground(low=(-400.0,), high=(400.0,))
    models = {"plain": lambda: cluster_field_model(cat),
              "background": lambda: mixture_model(cat, 2, background=background),
              "radius": lambda: cluster_field_model(cat, radius_fraction="R_proj"),
              # A lumpy field (two Gaussians and a background: field_weights) under a Plummer law.
              "radius_plummer": lambda: mixture_model(
                  cat, 3, background=background, radius_fraction=RadiusFraction("R_proj", kind="plummer"))}
    return models[kind](), obs, covariates


@pytest.mark.parametrize("kind", ["plain", "background", "spatial", "radius", "radius_plummer"])
def test_padded_model_potential_equals_unpadded(kind):
    """The NumPyro program (priors, per-star spatial weights and member kinematics, a radius
    law, a background) on padded stars: value and gradient as unpadded."""
    from numpyro.infer.util import initialize_model

    model, obs, covariates = _model_and_data(kind)
    assert membership.pads_stars(model)
    p_obs, p_cov = membership.padded_data(model, obs, covariates)
    assert p_obs.n_stars == 320 and all(v.shape == (320,) for v in p_cov.values())
    init = initialize_model(jax.random.key(0), model.model,
                            model_args=(obs, covariates, model.hyperparameters()))
    theta = init.param_info.z
    value, grad = _potential(model, obs, covariates, theta)
    value_p, grad_p = _potential(model, p_obs, p_cov, theta)
    np.testing.assert_allclose(value_p, value, rtol=1e-12)
    for name in grad:
        np.testing.assert_allclose(grad_p[name], grad[name], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["radius", "radius_plummer"])
def test_radius_law_weights_of_padded_stars_equal_unpadded(kind):
    """A radius law's global ``weights`` (and ``background_weight``, ``frac1``) average the
    per-star weights over the real stars only: padded as unpadded, where a plain mean over
    the padded rows would differ."""
    from numpyro.infer.util import constrain_fn, initialize_model

    model, obs, covariates = _model_and_data(kind)
    p_obs, p_cov = membership.padded_data(model, obs, covariates)
    assert p_obs.n_stars == 320
    args = (obs, covariates, model.hyperparameters())
    theta = initialize_model(jax.random.key(1), model.model, model_args=args).param_info.z
    plain = constrain_fn(model.model, args, {}, theta, return_deterministic=True)
    padded = constrain_fn(model.model, (p_obs, p_cov, model.hyperparameters()), {}, theta,
                          return_deterministic=True)
    names = [n for n in ("weights", "background_weight", "frac1") if n in plain]
    assert "weights" in names and ("background_weight" in names) == (kind == "radius_plummer")
    for name in names:
        np.testing.assert_allclose(padded[name], plain[name], rtol=1e-13)
    # The check can fail: the unweighted mean over the padded rows is another number.
    unweighted = np.mean(np.exp(model.log_weights(padded, p_cov)), axis=0)[: model.n_components]
    assert not np.allclose(unweighted, plain["weights"], rtol=1e-6)


@pytest.fixture(scope="module")
def own_fit():
    """A fit from given draws (no sampling): 300 stars, two components, 2 chains x 30 draws."""
    sim = simulate_cluster_field(5, 300)
    rng = np.random.default_rng(1)
    draws = {"weights": rng.dirichlet([30, 70], size=(2, 30)),
             "means": np.stack([rng.normal(-40, 0.3, (2, 30)), rng.normal(-20, 2, (2, 30))], -1)[..., None],
             "scales": np.stack([rng.uniform(2, 3, (2, 30)), rng.uniform(40, 50, (2, 30))], -1)[..., None]}
    return posterior_from_draws(draws, sim.catalogue, component_names=["cluster", "field"])


def test_per_star_outputs_equal_unpadded(own_fit, monkeypatch):
    """Memberships, the pointwise log-likelihood and mock catalogues have the catalogue's rows
    and the values of unpadded programs (mocks included: random draws come row by row)."""
    padded = (membership.membership_probabilities(own_fit, star_chunk=128),
              sampling.add_log_likelihood(own_fit).idata.log_likelihood["values"].values,
              membership.posterior_predictive(0, own_fit, 4),
              membership.posterior_predictive_counts(0, own_fit, [np.linspace(-200, 200, 21)], 3))
    monkeypatch.setattr(_padding, "bucket", lambda n: n)  # rows and bins unpadded
    monkeypatch.setattr(_padding, "bin_bucket", lambda n: n)
    plain = (membership.membership_probabilities(own_fit, star_chunk=128),
             sampling.add_log_likelihood(own_fit).idata.log_likelihood["values"].values,
             membership.posterior_predictive(0, own_fit, 4),
             membership.posterior_predictive_counts(0, own_fit, [np.linspace(-200, 200, 21)], 3))
    assert padded[0].mean.shape == (300, 2) and padded[1].shape == (2, 30, 300)
    assert padded[2].shape == (4, 300, 1)
    for name in ("mean", "p16", "p84"):
        np.testing.assert_allclose(getattr(padded[0], name), getattr(plain[0], name), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(padded[1], plain[1], rtol=1e-12)
    np.testing.assert_allclose(padded[2], plain[2], rtol=1e-12)
    np.testing.assert_array_equal(padded[3], plain[3])


def _radius_fit(seed, n_stars):
    """A radius-law fit from given draws (no sampling): two components, 2 chains x 30 draws."""
    from bayesmix.sampling import PosteriorFit, _to_idata

    sim = simulate_cluster_field(seed, n_stars)
    model = cluster_field_model(sim.catalogue, radius_fraction="R_proj")
    obs, covariates, _ = sampling._resolve_data(sim.catalogue, None)
    rng = np.random.default_rng(seed)
    shape = (2, 30)
    scales = np.stack([rng.uniform(2, 3, shape), rng.uniform(40, 50, shape)], -1)[..., None]
    samples = {"frac_intercept": rng.normal(-0.5, 0.2, shape), "frac_slope": rng.normal(-1.0, 0.2, shape),
               "means": np.stack([rng.normal(-40, 0.3, shape), rng.normal(-20, 2, shape)], -1)[..., None],
               "scales": scales, "covariances": scales[..., None] ** 2,
               "weights": rng.dirichlet([30, 70], size=shape)}
    idata = _to_idata(model, obs, covariates, samples, {}, sim.catalogue, {})
    return PosteriorFit(idata=idata, model=model, data=obs, covariates=covariates, catalogue=sim.catalogue)


def _outputs(fit, edges):
    return (membership.membership_probabilities(fit, star_chunk=128),
            sampling.add_log_likelihood(fit).idata.log_likelihood["values"].values,
            membership.posterior_predictive(0, fit, 4),
            membership.posterior_predictive_counts(0, fit, edges, 3))


def _assert_outputs_equal(padded, plain):
    for name in ("mean", "p16", "p84"):
        np.testing.assert_allclose(getattr(padded[0], name), getattr(plain[0], name), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(padded[1], plain[1], rtol=1e-12)
    np.testing.assert_allclose(padded[2], plain[2], rtol=1e-12)
    np.testing.assert_array_equal(padded[3], plain[3])


def test_radius_law_outputs_equal_unpadded(monkeypatch):
    """Memberships, the pointwise log-likelihood, mock catalogues and predictive counts of a
    radius-law fit: padded stars (per-star weights from padded radii) as unpadded."""
    fit = _radius_fit(5, 300)
    assert membership.pads_stars(fit.model)
    edges = [np.linspace(-200, 200, 21)]
    padded = _outputs(fit, edges)
    monkeypatch.setattr(_padding, "bucket", lambda n: n)
    monkeypatch.setattr(_padding, "bin_bucket", lambda n: n)
    plain = _outputs(fit, edges)
    assert padded[0].mean.shape == (300, 2) and padded[3].shape == (3, 1, 20)
    _assert_outputs_equal(padded, plain)


def test_radius_law_programs_are_shared_across_catalogues_and_binnings(tmp_path):
    """Two radius-law catalogues of other sizes (one star bucket), other reference and minimum
    radii, and binnings of 10 and 14 bins (one bin bucket): one stored log-likelihood, memberships,
    mock and counts program each, whose results equal the unstored ones (the radii are arguments,
    not constants of the first catalogue)."""
    fits = [_radius_fit(5, 300), _radius_fit(8, 280)]
    assert fits[0].model.reference_radius != fits[1].model.reference_radius
    assert fits[0].model.minimum_radius != fits[1].model.minimum_radius
    binnings = [[np.linspace(-200, 200, 11)], [np.linspace(-150, 150, 15)]]
    previous = _programs.store()
    try:
        _programs.set_store(None)  # each program traced for its own fit (the suite's store would share)
        plain = [_outputs(fit, edges) for fit, edges in zip(fits, binnings, strict=True)]
        _programs.set_store(tmp_path)
        stored = [_outputs(fit, edges) for fit, edges in zip(fits, binnings, strict=True)]
    finally:
        _programs.set_store(previous)
    names = sorted(path.name.split("-")[0] for path in tmp_path.glob("*.jaxexport"))
    assert names == ["log_likelihood", "memberships", "predictive_counts", "predictive_draws"], names
    for got, want in zip(stored, plain, strict=True):
        _assert_outputs_equal(got, want)
    assert [s[3].shape for s in stored] == [(3, 1, 10), (3, 1, 14)]


def test_program_counts_are_recorded():
    _programs.count_compilations()
    _programs.program_counts(reset=True)
    jax.jit(lambda x: x * 3.0 + 1.0)(jnp.arange(7.0))
    counts = _programs.program_counts()
    assert counts.get("jax_traces", 0) >= 1 and counts.get("jax_executables", 0) >= 1

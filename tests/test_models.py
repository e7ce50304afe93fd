"""The NumPyro programs: log density against scipy by hand, orderings, initial values, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer.util import log_density, unconstrain_fn
from scipy import stats

from bayesmix.components import GaussianBackground, UniformBackground
from bayesmix.likelihood import as_observations, check_params, log_likelihood
from bayesmix.models import (
    ComponentPrior,
    Ordering,
    Priors,
    RadiusFraction,
    cluster_field_model,
    mixture_model,
)
from bayesmix.sampling import sample_posterior
from bayesmix.simulate import simulate_cluster_field, simulate_mixture, thin_thick_disc_params


@pytest.fixture(scope="module")
def velocity_data():
    sim = simulate_cluster_field(0, 200)
    return sim, as_observations(sim.catalogue)


def test_cluster_field_log_density_equals_hand_computation(velocity_data):
    sim, obs = velocity_data
    priors = Priors(mean_loc=-10.0, mean_scale=80.0, scale_scale=60.0, weight_concentration=1.5)
    model = cluster_field_model(sim.catalogue, priors=priors)
    values = {"weights": np.array([0.3, 0.7]), "means_free": np.array([[-44.0], [5.0]]),
              "scales_ordered": np.array([2.5, 45.0])}
    got, trace = log_density(model.model, (obs, {}, model.hyperparameters()), {}, values)
    params = check_params([0.3, 0.7], [[-44.0], [5.0]], [[[2.5**2]], [[45.0**2]]])
    want = (float(log_likelihood(params, obs))
            + stats.dirichlet([1.5, 1.5]).logpdf([0.3, 0.7])
            + stats.norm(-10.0, 80.0).logpdf([-44.0, 5.0]).sum()
            + stats.halfnorm(scale=60.0).logpdf([2.5, 45.0]).sum())
    np.testing.assert_allclose(float(got), want, rtol=1e-12)
    # The tutorial's names are recorded.
    assert float(trace["sigma1"]["value"]) == 2.5 and float(trace["frac1"]["value"]) == pytest.approx(0.3)


def test_two_dimensional_log_density_with_lkj(velocity_data):
    sim = simulate_mixture(1, thin_thick_disc_params(), 150, error_scale=[0.05, 0.04],
                           max_error_correlation=0.3)
    obs = as_observations(sim.catalogue)
    model = mixture_model(sim.catalogue, 2, ordering=Ordering("mean", 1),
                          priors=Priors(lkj_concentration=1.0))
    rho = np.array([-0.3, -0.4])
    chol = np.stack([np.linalg.cholesky([[1, r], [r, 1]]) for r in rho])
    values = {"weights": np.array([0.7, 0.3]), "means_ordered": np.array([0.05, 0.28]),
              "means_rest": np.array([[-0.05], [-0.5]]), "scales_free": np.array([[0.2, 0.04], [0.25, 0.05]]),
              "corr_cholesky": chol}
    got, trace = log_density(model.model, (obs, {}, model.hyperparameters()), {}, values)
    means = np.array([[-0.05, 0.05], [-0.5, 0.28]])
    sd = values["scales_free"]
    covs = np.stack([np.diag(sd[k]) @ chol[k] @ chol[k].T @ np.diag(sd[k]) for k in range(2)])
    np.testing.assert_allclose(np.asarray(trace["means"]["value"]), means)
    np.testing.assert_allclose(np.asarray(trace["covariances"]["value"]), covs, rtol=1e-12)
    hyper = model.hyperparameters()
    # Per-component priors are (n_components, n_features); with none given every row is the shared one.
    loc, scale = np.asarray(hyper["mean_loc"]), np.asarray(hyper["mean_scale"])
    sscale = np.asarray(hyper["scale_scale"])
    assert loc.shape == scale.shape == sscale.shape == (2, 2) and np.all(loc[0] == loc[1])
    loc, scale, sscale = loc[0], scale[0], sscale[0]
    # LKJ(1) in Cholesky form on 2x2: density of rho is uniform on (-1, 1) -> log 1/2, and the
    # Cholesky parameterisation contributes the Jacobian of rho -> L[1,0] (= 1 on 2x2).
    want = (float(log_likelihood(check_params([0.7, 0.3], means, covs), obs))
            + stats.dirichlet([1.0, 1.0]).logpdf([0.7, 0.3])
            + stats.norm(loc[1], scale[1]).logpdf([0.05, 0.28]).sum()
            + stats.norm(loc[0], scale[0]).logpdf([-0.05, -0.5]).sum()
            + stats.halfnorm(scale=sscale).logpdf(sd).sum()
            + 2 * np.log(0.5))
    np.testing.assert_allclose(float(got), want, rtol=1e-10)


def test_background_and_radius_models_have_their_sites(velocity_data):
    sim, obs = velocity_data
    bg = UniformBackground(low=[-300.0], high=[300.0])
    m = mixture_model(sim.catalogue, 1, background=bg)
    assert m.component_names == ("c0", "background") and m.n_total == 2
    values = m.init_values(check_params([1.0], [[-44.0]], [[[6.0]]]), background_weight=0.6)
    np.testing.assert_allclose(values["weights_all"], [0.4, 0.6])
    _, trace = log_density(m.model, (obs, {}, m.hyperparameters()), {}, values)
    total_sd = np.sqrt(6.0 + np.asarray(obs.error_covs)[:, 0, 0])
    per_star = np.logaddexp(np.log(0.4) + stats.norm(-44.0, total_sd).logpdf(np.asarray(obs.values)[:, 0]),
                            np.log(0.6) - np.log(600.0))
    assert float(trace["log_likelihood"]["fn"].log_factor) == pytest.approx(per_star.sum(), rel=1e-12)
    assert float(trace["background_weight"]["value"]) == pytest.approx(0.6)
    g = mixture_model(sim.catalogue, 1, background=GaussianBackground(mean=[0.0], covariance=[[2500.0]]))
    assert np.asarray(g.log_background(obs)).shape == (obs.n_stars,)

    rm = cluster_field_model(sim.catalogue, radius_fraction="R_proj")
    vals = rm.init_values(check_params([0.4, 0.6], [[-44.0], [3.0]], [[[5.0]], [[2000.0]]]))
    assert vals["frac_slope"] == 0.0 and vals["frac_intercept"] == pytest.approx(np.log(0.4 / 0.6))
    _, trace = log_density(rm.model, (obs, sim.catalogue.covariates, rm.hyperparameters()), {}, vals)
    np.testing.assert_allclose(np.asarray(trace["weights"]["value"]), [0.4, 0.6], rtol=1e-6)
    lw = rm.log_weights({k: v for k, v in vals.items()}, sim.catalogue.covariates)
    assert lw.shape == (obs.n_stars, 2)


def test_radius_law_with_a_lumpy_field_log_density_equals_hand_computation(velocity_data):
    """Cluster (component 0, its own scale site) + two field Gaussians ordered by scale + a background:
    the law gives f(R) to the cluster, (1 - f(R)) x share to each field column."""
    sim, obs = velocity_data
    bg = UniformBackground(low=[-400.0], high=[400.0])
    m = mixture_model(sim.catalogue, 3, radius_fraction=RadiusFraction("R_proj"), background=bg,
                      component_names=("cluster", "stream", "halo", "background"))
    assert m.member_apart
    values = {"frac_intercept": np.asarray(-0.5), "frac_slope": np.asarray(-1.5),
              "field_weights": np.array([0.1, 0.7, 0.2]), "means_free": np.array([[-44.0], [120.0], [0.0]]),
              "scale_member": np.asarray(3.0), "scales_ordered": np.array([5.0, 60.0])}
    _, trace = log_density(m.model, (obs, sim.catalogue.covariates, m.hyperparameters()), {}, values)
    radius = sim.catalogue.covariates["R_proj"]
    f = 1.0 / (1.0 + np.exp(-(-0.5 - 1.5 * np.log(radius / np.median(radius)))))
    v = np.asarray(obs.values)[:, 0]
    e2 = np.asarray(obs.error_covs)[:, 0, 0]
    gauss = [stats.norm(mu, np.sqrt(s**2 + e2)).pdf(v) for mu, s in ((-44.0, 3.0), (120.0, 5.0), (0.0, 60.0))]
    dens = np.column_stack([*gauss, np.full(v.size, 1 / 800)])
    w = np.column_stack([f, (1 - f) * 0.1, (1 - f) * 0.7, (1 - f) * 0.2])
    want = np.sum(np.log(np.sum(w * dens, axis=1)))
    assert float(trace["log_likelihood"]["fn"].log_factor) == pytest.approx(want, rel=1e-10)
    np.testing.assert_allclose(np.asarray(trace["weights"]["value"]), w[:, :3].mean(axis=0), rtol=1e-10)
    assert float(trace["background_weight"]["value"]) == pytest.approx(w[:, 3].mean())
    np.testing.assert_allclose(np.asarray(trace["scales"]["value"])[:, 0], [3.0, 5.0, 60.0])
    # log_weights (memberships, predictive draws) agrees with the program.
    lw = np.asarray(m.log_weights(values, sim.catalogue.covariates))
    np.testing.assert_allclose(np.exp(lw), w, rtol=1e-10)


def test_the_cluster_is_the_most_central_component_and_init_values_round_trip(velocity_data):
    sim, obs = velocity_data
    m = mixture_model(sim.catalogue, 3, radius_fraction=RadiusFraction("R_proj"))
    # EM's order is arbitrary; the truth's cluster (-44.7, 2.3 km/s) is the component at index 2 here.
    params = check_params([0.35, 0.3, 0.35], [[20.0], [-20.0], [-44.73]],
                          [[[40.0**2]], [[50.0**2]], [[2.3**2]]])
    assert m.member_component(params, obs, sim.catalogue.covariates) == 2
    values = m.init_values(params, data=obs, covariates=sim.catalogue.covariates)
    assert float(values["scale_member"]) == pytest.approx(2.3)
    assert values["scales_ordered"].tolist() == [40.0, 50.0]
    np.testing.assert_allclose(values["field_weights"], [0.35 / 0.65, 0.3 / 0.65])  # field ordered by scale
    assert float(values["frac_intercept"]) == pytest.approx(np.log(0.35 / 0.65))
    unconstrained = unconstrain_fn(m.model, (obs, sim.catalogue.covariates, m.hyperparameters()), {}, values)
    assert all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree_util.tree_leaves(unconstrained))


def test_component_priors_replace_the_shared_ones_for_their_component(velocity_data):
    sim, obs = velocity_data
    priors = Priors(mean_loc=0.0, mean_scale=100.0, scale_scale=50.0,
                    components={"cluster": ComponentPrior(mean_loc=-44.8, mean_scale=2.0, scale_scale=10.0)})
    model = cluster_field_model(sim.catalogue, priors=priors)
    hyper = model.hyperparameters()
    np.testing.assert_allclose(np.asarray(hyper["mean_loc"])[:, 0], [-44.8, 0.0])
    np.testing.assert_allclose(np.asarray(hyper["scale_scale"])[:, 0], [10.0, 50.0])
    values = {"weights": np.array([0.3, 0.7]), "means_free": np.array([[-44.0], [5.0]]),
              "scales_ordered": np.array([2.5, 45.0])}
    got, _ = log_density(model.model, (obs, {}, hyper), {}, values)
    params = check_params([0.3, 0.7], [[-44.0], [5.0]], [[[2.5**2]], [[45.0**2]]])
    want = (float(log_likelihood(params, obs)) + stats.dirichlet([1.0, 1.0]).logpdf([0.3, 0.7])
            + stats.norm(-44.8, 2.0).logpdf(-44.0) + stats.norm(0.0, 100.0).logpdf(5.0)
            + stats.halfnorm(scale=10.0).logpdf(2.5) + stats.halfnorm(scale=50.0).logpdf(45.0))
    np.testing.assert_allclose(float(got), want, rtol=1e-12)
    by_index = cluster_field_model(sim.catalogue, priors=Priors(components={1: ComponentPrior(mean_loc=7.0)}))
    assert np.asarray(by_index.hyperparameters()["mean_loc"])[1, 0] == 7.0


def test_init_values_respect_the_ordering_and_round_trip():
    sim = simulate_mixture(2, thin_thick_disc_params(), 300, error_scale=[0.05, 0.04])
    params = check_params([0.3, 0.7], [[-0.5, 0.28], [-0.05, 0.05]],
                          [[[0.06, -0.003], [-0.003, 0.0025]], [[0.04, -0.002], [-0.002, 0.0016]]])
    for ordering, site in ((Ordering("mean", 1), "means_ordered"), (Ordering("scale", 0), "scales_ordered"),
                           (Ordering("weight"), "weight_gammas")):
        m = mixture_model(sim.catalogue, 2, ordering=ordering)
        values = m.init_values(params)
        assert np.all(np.diff(values[site]) > 0)
        obs = as_observations(sim.catalogue)
        unconstrained = unconstrain_fn(m.model, (obs, {}, m.hyperparameters()), {}, values)
        assert all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree_util.tree_leaves(unconstrained))
        _, trace = log_density(m.model, (obs, {}, m.hyperparameters()), {}, values)
        got = np.asarray(trace["covariances"]["value"])
        perm = m.order_components(params)
        np.testing.assert_allclose(got, np.asarray(params.covariances)[perm], rtol=2e-3, atol=1e-8)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_components": 0}, "n_components must be a positive integer"),
        ({"n_components": 500}, "exceeds the number of stars"),
        ({"n_components": 2, "ordering": Ordering("mean", 3)}, "ordering.feature=3"),
        ({"n_components": 2, "ordering": "weight", "background": UniformBackground([-1.0], [1.0])},
         "ordering by weight cannot"),
        ({"n_components": 1, "radius_fraction": RadiusFraction("R_proj")}, "needs a field"),
        ({"n_components": 3, "radius_fraction": RadiusFraction("R_proj"), "ordering": "weight"},
         "order by scale or mean"),
        ({"n_components": 2, "priors": Priors(components={"cluster": None})}, "'cluster' is not a component"),
        ({"n_components": 2, "priors": Priors(components={5: None})}, "index 5 is not a component"),
        ({"n_components": 2, "radius_fraction": RadiusFraction("DCEN")}, "needs the covariate 'DCEN'"),
        ({"n_components": 2, "priors": Priors(mean_scale=-1.0)}, "must be > 0"),
        ({"n_components": 2, "priors": Priors(mean_loc=np.nan)}, "must be finite"),
        ({"n_components": 2, "frozen_means": [True, False]}, "needs frozen="),
        ({"n_components": 2, "component_names": ["a"]}, "component_names has 1 names"),
    ],
)
def test_bad_model_settings(velocity_data, kwargs, match):
    sim, _ = velocity_data
    n = kwargs.pop("n_components")
    with pytest.raises(ValueError, match=match):
        mixture_model(sim.catalogue, n, **kwargs)


def test_bad_ordering_and_radius_kind():
    with pytest.raises(ValueError, match="Ordering kind='size'"):
        Ordering("size")
    with pytest.raises(ValueError, match="RadiusFraction kind='king'"):
        RadiusFraction("R", kind="king")


def test_radius_must_be_non_negative_and_finite():
    sim = simulate_cluster_field(0, 50)
    cov = {"R_proj": np.array(sim.catalogue.covariates["R_proj"], float)}
    cov["R_proj"][[3, 7]] = [-1.0, np.nan]  # R = 0 is allowed (tests/test_spatial.py)
    message = r"'R_proj' must hold one finite radius >= 0.*2 star\(s\).*rows \[3, 7\]"
    with pytest.raises(ValueError, match=message):
        cluster_field_model(sim.catalogue, radius_fraction="R_proj", covariates=cov)


def test_tutorial_names_need_one_feature():
    sim = simulate_mixture(0, thin_thick_disc_params(), 50)
    with pytest.raises(ValueError, match="tutorial_names needs"):
        mixture_model(sim.catalogue, 2, tutorial_names=True)


def test_hyperparameters_are_arrays_not_constants():
    sim = simulate_cluster_field(0, 50)
    m = cluster_field_model(sim.catalogue)
    hyper = m.hyperparameters()
    assert all(isinstance(v, jnp.ndarray) for v in hyper.values())
    assert set(hyper) >= {"mean_loc", "mean_scale", "scale_scale", "alpha", "eta"}


def test_frozen_components_keep_their_values(velocity_data):
    sim, obs = velocity_data
    fixed = check_params([0.5, 0.5], [[-44.73], [2.76]], [[[2.3**2]], [[46.1**2]]])
    m = mixture_model(sim.catalogue, 2, frozen=fixed, frozen_means=[False, True],
                      frozen_covariances=[False, True])
    values = {"weights": np.array([0.4, 0.6]), "means_free": np.array([[-40.0], [99.0]]),
              "scales_ordered": np.array([3.0, 80.0])}
    _, trace = log_density(m.model, (obs, {}, m.hyperparameters()), {}, values)
    means = np.asarray(trace["means"]["value"])
    covs = np.asarray(trace["covariances"]["value"])
    np.testing.assert_allclose(means[:, 0], [-40.0, 2.76])          # component 1 frozen
    np.testing.assert_allclose(covs[:, 0, 0], [9.0, 46.1**2])
    want = float(log_likelihood(check_params([0.4, 0.6], [[-40.0], [2.76]], [[[9.0]], [[46.1**2]]]), obs))
    assert float(trace["log_likelihood"]["fn"].log_factor) == pytest.approx(want, rel=1e-12)


def test_frozen_weights_keep_their_values_and_the_rest_share_the_remainder(velocity_data):
    sim, obs = velocity_data
    fixed = check_params([0.3, 0.2, 0.5], [[-44.73], [0.0], [2.76]], [[[2.3**2]], [[30.0**2]], [[46.1**2]]])
    m = mixture_model(sim.catalogue, 3, frozen=fixed, frozen_weights=[True, False, False])
    values = {"weights_free": np.array([0.25, 0.75]), "means_free": np.array([[-44.0], [0.0], [3.0]]),
              "scales_ordered": np.array([2.0, 30.0, 45.0])}
    _, trace = log_density(m.model, (obs, {}, m.hyperparameters()), {}, values)
    weights = np.asarray(trace["weights"]["value"])
    np.testing.assert_allclose(weights, [0.3, 0.7 * 0.25, 0.7 * 0.75], rtol=1e-12)
    want = float(log_likelihood(check_params(weights, values["means_free"],
                                             values["scales_ordered"][:, None, None] ** 2), obs))
    assert float(trace["log_likelihood"]["fn"].log_factor) == pytest.approx(want, rel=1e-12)
    # Sampling starts from the EM point and keeps the frozen weight in every draw.
    fit = sample_posterior(0, m, sim.catalogue, num_chains=2, num_warmup=60, num_samples=40,
                           progress_bar=False)
    w = fit.idata.posterior["weights"].values
    np.testing.assert_allclose(w[..., 0], 0.3, rtol=1e-12)
    np.testing.assert_allclose(w.sum(axis=-1), 1.0, rtol=1e-12)
    assert w[..., 1].std() > 0


def test_frozen_weights_reject_impossible_settings(velocity_data):
    sim, _ = velocity_data
    fixed = check_params([0.6, 0.4], [[-44.73], [2.76]], [[[2.3**2]], [[46.1**2]]])
    with pytest.raises(ValueError, match="leave at least one"):
        mixture_model(sim.catalogue, 2, frozen=fixed, frozen_weights=[True, True])
    with pytest.raises(ValueError, match="ordering by weight"):
        mixture_model(sim.catalogue, 2, frozen=fixed, frozen_weights=[True, False], ordering="weight")


def test_likelihood_precision_auto_follows_the_catalogue_and_reaches_the_program():
    """"auto" is mixed precision from 10000 star-component terms when the data's variances
    sit well inside float32's range, float64 otherwise; an explicit choice is kept; the
    choice is part of the programs' key and the NumPyro program evaluates with it."""
    small = simulate_cluster_field(0, 200).catalogue
    big = simulate_cluster_field(1, 6000)
    assert cluster_field_model(small).likelihood_precision == "float64"
    assert cluster_field_model(small, likelihood_precision="mixed").likelihood_precision == "mixed"
    mixed = cluster_field_model(big.catalogue)
    exact = cluster_field_model(big.catalogue, likelihood_precision="float64")
    assert mixed.likelihood_precision == "mixed" and exact.likelihood_precision == "float64"
    assert mixed.program_key() != exact.program_key()
    obs = as_observations(big.catalogue)
    errors = np.sqrt(np.asarray(obs.error_covs)[:, :, 0])
    tiny = as_observations(np.asarray(obs.values) * 1e-17, errors * 1e-17)
    assert cluster_field_model(tiny).likelihood_precision == "float64"  # variances ~1e-32: float64
    with pytest.raises(ValueError, match=r"likelihood_precision='mixed' rounds .* outside 1e-30\.\.1e\+30"):
        cluster_field_model(tiny, likelihood_precision="mixed")
    values = {"weights": np.array([0.3, 0.7]), "means_free": np.array([[-44.0], [5.0]]),
              "scales_ordered": np.array([2.5, 45.0])}
    got = [float(log_density(m.model, (obs, {}, m.hyperparameters()), {}, values)[0]) for m in (mixed, exact)]
    assert got[0] != got[1] and abs(got[0] - got[1]) < 1e-6 * abs(got[1])
    with pytest.raises(ValueError, match="likelihood_precision='single'"):
        cluster_field_model(small, likelihood_precision="single")

"""Simulators: the draws follow the stated truth (tolerances from N), deterministically per key."""

import itertools

import jax
import numpy as np
import pytest

from bayesmix.likelihood import check_params
from bayesmix.simulate import (
    simulate_cluster_field,
    simulate_mixture,
    thin_thick_disc_params,
)


def test_cluster_field_defaults_are_the_ngc288_numbers():
    sim = simulate_cluster_field(0)
    t = sim.truth
    assert (t.cluster_mean, t.cluster_dispersion, t.field_mean, t.field_dispersion,
            t.member_fraction) == (-44.73, 2.30, 2.76, 46.1, 0.365)
    assert sim.catalogue.n_stars == 386 and sim.catalogue.feature_names == ("RV",)
    assert set(sim.catalogue.covariates) == {"R_proj"}
    for col in ("star_id", "RV", "E_RV", "R_proj", "RV_true", "component"):
        assert col in sim.table.colnames
    p = t.mixture_params()
    np.testing.assert_allclose(np.asarray(p.covariances).ravel(), [2.30**2, 46.1**2])


def test_cluster_field_statistics_match_truth():
    n = 40_000
    sim = simulate_cluster_field(jax.random.PRNGKey(3), n)
    t, lab = sim.truth, sim.labels
    members = lab == 0
    frac = members.mean()
    assert abs(frac - t.member_fraction) < 4 * np.sqrt(t.member_fraction * (1 - t.member_fraction) / n)
    rv, err = sim.catalogue.values[:, 0], sim.catalogue.errors[:, 0]
    true_rv = np.asarray(sim.table["RV_true"])
    for sel, mean, disp in ((members, t.cluster_mean, t.cluster_dispersion),
                            (~members, t.field_mean, t.field_dispersion)):
        m = sel.sum()
        assert abs(true_rv[sel].mean() - mean) < 4 * disp / np.sqrt(m)
        assert abs(true_rv[sel].std() / disp - 1) < 4 / np.sqrt(2 * m)
    # Observed = true + error with the stated per-star error.
    pulls = (rv - true_rv) / err
    assert abs(pulls.mean()) < 4 / np.sqrt(n) and abs(pulls.std() - 1) < 4 / np.sqrt(2 * n)
    assert err.min() >= 0.1 and err.max() <= 10.0
    assert abs(np.median(err) - 1.05) < 0.05
    # Radii: truncated, and the membership-vs-radius law holds in bins.
    r = sim.catalogue.covariates["R_proj"]
    assert r.min() > 0 and r.max() <= t.max_radius
    edges = np.linspace(0, t.max_radius, 9)
    for lo, hi in itertools.pairwise(edges):
        in_bin = (r >= lo) & (r < hi)
        expected = t.member_probability_at_radius(r[in_bin]).mean()
        got = members[in_bin].mean()
        assert abs(got - expected) < 4 * np.sqrt(expected * (1 - expected) / in_bin.sum()) + 1e-3


def test_mixture_statistics_match_truth():
    params = thin_thick_disc_params()
    n = 30_000
    sim = simulate_mixture(11, params, n, error_scale=[0.05, 0.04], max_error_correlation=0.6,
                           feature_names=["FeH", "MgFe"])
    assert sim.catalogue.feature_names == ("FeH", "MgFe")
    w = np.asarray(params.weights)
    counts = np.bincount(sim.labels, minlength=2)
    assert np.all(np.abs(counts / n - w) < 4 * np.sqrt(w * (1 - w) / n))
    for k in range(2):
        xk = sim.true_values[sim.labels == k]
        m = xk.shape[0]
        cov = np.asarray(params.covariances[k])
        sd = np.sqrt(np.diag(cov))
        assert np.all(np.abs(xk.mean(0) - np.asarray(params.means[k])) < 4 * sd / np.sqrt(m))
        assert np.all(np.abs(np.cov(xk.T) - cov) < 5 * np.sqrt((cov**2 + np.outer(sd**2, sd**2)) / m))
    # Whitened measurement errors are standard normal.
    s = sim.catalogue.error_covs
    low = np.linalg.cholesky(s)
    z = np.linalg.solve(low, (sim.catalogue.values - sim.true_values)[..., None])[..., 0]
    assert np.all(np.abs(z.mean(0)) < 4 / np.sqrt(n))
    assert np.all(np.abs(np.cov(z.T) - np.eye(2)) < 5 / np.sqrt(n))
    corr = s[:, 0, 1] / np.sqrt(s[:, 0, 0] * s[:, 1, 1])
    assert np.abs(corr).max() <= 0.6 + 1e-12 and np.abs(corr).max() > 0.3
    assert np.all(np.linalg.eigvalsh(s)[:, 0] > 0)
    med = np.median(np.sqrt(np.diagonal(s, axis1=1, axis2=2)), axis=0)
    np.testing.assert_allclose(med, [0.05, 0.04], rtol=0.05)


@pytest.mark.parametrize("n_features", [1, 3, 6])
def test_mixture_in_any_dimension_and_error_free(n_features):
    rng = np.random.default_rng(n_features)
    a = rng.normal(size=(2, n_features, n_features))
    params = check_params([0.4, 0.6], rng.normal(size=(2, n_features)),
                          a @ np.swapaxes(a, 1, 2) + np.eye(n_features))
    sim = simulate_mixture(0, params, 200, max_error_correlation=0.5)
    assert sim.catalogue.values.shape == (200, n_features)
    assert np.all(np.linalg.eigvalsh(sim.catalogue.error_covs)[:, 0] > 0)
    clean = simulate_mixture(0, params, 200, error_scale=0.0)
    np.testing.assert_array_equal(clean.catalogue.values, clean.true_values)
    assert np.all(clean.catalogue.error_covs == 0)


def test_same_key_same_data_and_int_seed_equals_key():
    a = simulate_cluster_field(5, 50)
    b = simulate_cluster_field(jax.random.PRNGKey(5), 50)
    c = simulate_cluster_field(6, 50)
    np.testing.assert_array_equal(a.catalogue.values, b.catalogue.values)
    assert not np.array_equal(a.catalogue.values, c.catalogue.values)
    p = thin_thick_disc_params()
    np.testing.assert_array_equal(simulate_mixture(1, p, 20).catalogue.values,
                                  simulate_mixture(1, p, 20).catalogue.values)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_stars": 0}, "n_stars"),
        ({"cluster_dispersion": -1.0}, "cluster_dispersion"),
        ({"member_fraction": 1.5}, "member_fraction"),
        ({"max_radius": 0.0}, "max_radius"),
    ],
)
def test_cluster_field_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        simulate_cluster_field(0, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_stars": 0}, "n_stars"),
        ({"n_stars": 5, "error_scale": -0.1}, "error_scale"),
        ({"n_stars": 5, "error_scale": [0.1, 0.0]}, "error_scale"),
        ({"n_stars": 5, "max_error_correlation": 1.0}, "max_error_correlation"),
        ({"n_stars": 5, "feature_names": ["a"]}, "feature_names"),
    ],
)
def test_mixture_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        simulate_mixture(0, thin_thick_disc_params(), **kwargs)


def test_contaminated_field_has_a_concentrated_cluster_a_broad_halo_and_a_spread_stream():
    from bayesmix.simulate import simulate_contaminated_field

    sims = [simulate_contaminated_field(seed) for seed in range(10)]
    for sim in sims:
        t, labels, table = sim.truth, sim.labels, sim.table
        assert sim.catalogue.n_stars == 400 and set(np.unique(labels)) <= {0, 1, 2, 3}
        assert -120 <= t.cluster_mean <= 120 and 80 <= abs(t.stream_mean - t.cluster_mean) <= 120
        assert np.isclose(t.member_fraction + sum(t.halo_fractions) + t.stream_fraction, 1.0)
        radius = np.asarray(table["R_proj"])
        assert np.median(radius[labels == 0]) < 0.5 * np.median(radius[labels != 0])  # members are central
        stream = np.asarray(table["RV_true"])[labels == 3]
        assert abs(np.mean(stream) - t.stream_mean) < 5.0
    counts = np.array([[np.sum(s.labels == k) for k in range(4)] for s in sims])
    # 70, 186, 124 and 20 expected of 400 (binomial sd about 8, 10, 9 and 4.4 for one field).
    assert np.all(np.abs(counts.mean(axis=0) - [70, 186, 124, 20]) <= [8, 10, 9, 4.4]), counts.mean(axis=0)
    members = np.concatenate([np.asarray(s.table["RV_true"])[s.labels == 0] - s.truth.cluster_mean
                              for s in sims])
    assert np.std(members) == pytest.approx(4.0, rel=0.1)
    again = simulate_contaminated_field(3)
    np.testing.assert_array_equal(np.asarray(again.table["RV"]), np.asarray(sims[3].table["RV"]))
    fixed = simulate_contaminated_field(0, 200, cluster_mean=10.0, stream_offset=-90.0, halo_means=(0.0, 5.0))
    assert fixed.truth.cluster_mean == 10.0 and fixed.truth.stream_mean == -80.0


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"n_stars": 0}, "n_stars must be at least 1"),
    ({"member_fraction": 0.9, "stream_fraction": 0.2}, "their sum below 1"),
    ({"halo_dispersions": (50.0,), "halo_weights": (0.5, 0.5)}, "one entry per halo Gaussian"),
    ({"halo_means": (0.0,)}, "halo_means has 1 entries for 2"),
    ({"cluster_dispersion": -1.0}, "cluster_dispersion must be a positive number"),
])
def test_contaminated_field_rejects_bad_settings(kwargs, match):
    from bayesmix.simulate import simulate_contaminated_field

    with pytest.raises(ValueError, match=match):
        simulate_contaminated_field(0, **kwargs)

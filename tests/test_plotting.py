"""Figures: each returns a Figure, draws into a given fig/ax, and refuses what it cannot draw."""

import dataclasses
import types

import matplotlib

matplotlib.use("Agg")  # files only, also outside CI (which sets MPLBACKEND=Agg)

import matplotlib.pyplot as plt
import numpy as np
import pytest
from astropy.table import Table
from matplotlib.collections import LineCollection
from matplotlib.patches import Ellipse, StepPatch

from bayesmix import _arviz, plotting
from bayesmix.em import EMConvergenceWarning, fit_em
from bayesmix.likelihood import as_observations, check_params
from bayesmix.models import cluster_field_model
from bayesmix.plotting import (
    corner_plot,
    ellipse_plot,
    em_animation,
    em_history_plot,
    information_criterion_plot,
    membership_histogram,
    membership_radius_plot,
    ppc_plot,
    ppc_plot_fit,
    trace_plot,
)
from bayesmix.sampling import sample_posterior
from bayesmix.simulate import simulate_cluster_field, simulate_mixture, thin_thick_disc_params

NAMES = ["mean1", "sigma1", "frac1"]


@pytest.fixture(scope="module")
def small_fit():
    sim = simulate_cluster_field(2, 200)
    fit = sample_posterior(0, cluster_field_model(sim.catalogue), sim.catalogue, num_chains=2,
                           num_warmup=100, num_samples=100, progress_bar=False)
    return sim, fit


@pytest.fixture(scope="module")
def disc():
    """A few hundred thin/thick-disc stars and their K = 2 EM fit (two restarts)."""
    sim = simulate_mixture(3, thin_thick_disc_params(), 300, error_scale=[0.05, 0.04],
                           feature_names=["FeH", "MgFe"])
    return sim, fit_em(0, sim.catalogue, 2, n_init=2)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _nonblank_png(fig, path):
    fig.savefig(path, dpi=60)
    image = plt.imread(path)
    assert image.std() > 0.01  # something was drawn, not a blank canvas


def _with_divergences(fit, chain, draws):
    stats = _arviz.group_dataset(fit.idata, "sample_stats")
    flags = np.zeros(stats["diverging"].shape, dtype=bool)
    flags[chain, draws] = True
    stats = stats.assign(diverging=(stats["diverging"].dims, flags))
    return dataclasses.replace(fit, idata=_arviz.with_group(fit.idata, "sample_stats", stats))


def _mahalanobis_of_patch(patch, mean, cov):
    """Mahalanobis distance of points around an ellipse patch (in data coordinates)."""
    angle = np.linspace(0.0, 2.0 * np.pi, 64)
    # The patch is the unit circle under its patch transform (its path's Bezier control
    # points lie off the curve).
    xy = patch.get_patch_transform().transform(np.column_stack([np.cos(angle), np.sin(angle)]))
    d = xy - mean
    return np.sqrt(np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d))


# --------------------------------------------------------------------------- corner / radius


def test_corner_plot_draws_posterior_with_truths(small_fit, tmp_path):
    sim, fit = small_fit
    fig = corner_plot(fit, NAMES, truths={"mean1": sim.truth.cluster_mean})
    assert len(fig.axes) == len(NAMES) ** 2
    assert "mean1" in fig.axes[0].get_title()
    _nonblank_png(fig, tmp_path / "corner.png")
    given = plt.figure()
    assert corner_plot(fit, NAMES, fig=given) is given


def test_corner_plot_refuses_unknown_or_constant_variables(small_fit):
    _, fit = small_fit
    with pytest.raises(ValueError, match="not posterior variables"):
        corner_plot(fit, ["mean1", "no_such"])
    with pytest.raises(ValueError, match="labels has 1 entries for 2 plotted"):
        corner_plot(fit, ["means"], labels=["mu"])
    frozen = types.SimpleNamespace(idata=types.SimpleNamespace(
        posterior=fit.posterior[["mean1"]] * 0.0 + 1.0))
    with pytest.raises(ValueError, match="constant over the draws"):
        corner_plot(frozen, ["mean1"])


def test_membership_radius_plot_uses_the_given_axes(tmp_path):
    rng = np.random.default_rng(0)
    fig, ax = plt.subplots()
    out = membership_radius_plot(rng.normal(size=50), rng.uniform(1, 10, 50), rng.uniform(size=50), ax=ax,
                                 value_label="RV")
    assert out is fig and ax.get_ylabel() == "RV" and len(ax.collections) == 1
    _nonblank_png(fig, tmp_path / "members.png")
    with pytest.raises(ValueError, match="one entry per star"):
        membership_radius_plot(np.zeros(3), np.ones(4), np.zeros(3))


# --------------------------------------------------------------------------- trace


def test_trace_plot_defaults_to_every_scalar_variable(small_fit, tmp_path):
    _, fit = small_fit
    scalars = [n for n in fit.idata.posterior.data_vars if fit.idata.posterior[n].ndim == 2]
    assert set(NAMES) <= set(scalars)
    fig = trace_plot(fit)
    assert len(fig.axes) == 2 * len(scalars)
    assert [ax.get_ylabel() for ax in fig.axes[::2]] == scalars
    # One line per chain in the trace, holding that chain's draws.
    trace = fig.axes[2 * scalars.index("sigma1")]
    lines = [line for line in trace.get_lines() if len(line.get_ydata()) == fit.n_draws]
    assert len(lines) == fit.n_chains
    np.testing.assert_allclose(lines[1].get_ydata(), fit.idata.posterior["sigma1"].values[1])
    _nonblank_png(fig, tmp_path / "trace.png")


def test_trace_plot_density_panels_keep_their_own_scale(small_fit):
    _, fit = small_fit
    fig = trace_plot(fit, ["mean1", "mean2"])
    # The cluster mean is known to ~0.3 km/s, the field mean to ~5: densities differ tenfold,
    # which a density axis shared between rows would flatten.
    tight, broad = fig.axes[1].get_xlim()[1], fig.axes[3].get_xlim()[1]
    assert tight > 5 * broad


def test_trace_plot_density_panels_cover_the_trace_values_without_ticks(small_fit):
    _, fit = small_fit
    fig = trace_plot(fit, ["mean1", "sigma1"])
    for row in range(2):
        trace, density = fig.axes[2 * row], fig.axes[2 * row + 1]
        assert density.get_ylim() == pytest.approx(trace.get_ylim())  # same values, side by side
        assert list(density.get_xticks()) == [] and list(density.get_yticks()) == []
        assert len(trace.get_yticks()) >= 3  # the values are read off the trace's axis


def test_trace_plot_marks_divergences_and_uses_the_given_figure(small_fit):
    _, fit = small_fit
    clean = _with_divergences(fit, 0, [])
    assert not [c for c in trace_plot(clean, ["mean1"]).axes[0].collections if isinstance(c, LineCollection)]
    bad = _with_divergences(fit, 1, [3, 40, 41])
    given = plt.figure()
    fig = trace_plot(bad, NAMES, fig=given)
    assert fig is given and len(fig.axes) == 2 * len(NAMES)
    ticks = [c for c in fig.axes[0].collections if isinstance(c, LineCollection)]
    assert len(ticks) == 1 and len(ticks[0].get_segments()) == 3
    np.testing.assert_allclose(sorted(seg[0, 0] for seg in ticks[0].get_segments()), [3, 40, 41])
    assert any("divergent (3)" in t.get_text() for t in fig.axes[0].get_legend().get_texts())


def test_vector_variables_get_one_panel_per_element(small_fit):
    _, fit = small_fit
    fig = trace_plot(fit, ["means"])
    assert [ax.get_ylabel() for ax in fig.axes[::2]] == ["means[cluster, RV]", "means[field, RV]"]
    np.testing.assert_array_equal(fig.axes[2].lines[0].get_ydata(),
                                  fit.idata.posterior["means"].values[0, :, 1, 0])
    em_means = [-40.0, 1.0]
    fig = corner_plot(fit, ["weights", "means"], truths={"means": em_means})
    labels = [ax.get_xlabel() for ax in fig.axes[-4:]]
    assert labels == ["weights[cluster]", "weights[field]", "means[cluster, RV]", "means[field, RV]"]
    # The reference line of means[field] sits at its value; weights got none.
    assert any(np.allclose(line.get_xdata(), em_means[1]) for line in fig.axes[-1].lines)
    with pytest.raises(ValueError, match="truths\\['means'\\] has 3 values"):
        corner_plot(fit, ["means"], truths={"means": [1.0, 2.0, 3.0]})


def test_trace_plot_refuses_what_it_cannot_draw(small_fit):
    _, fit = small_fit
    with pytest.raises(ValueError, match="not posterior variables"):
        trace_plot(fit, ["mean1", "no_such"])
    with pytest.raises(ValueError, match="axes"):
        trace_plot(fit, NAMES, fig=plt.subplots(2, 2)[0])
    vector_only = types.SimpleNamespace(idata=types.SimpleNamespace(posterior=fit.posterior[["means"]]))
    with pytest.raises(ValueError, match="no scalar variables"):
        trace_plot(vector_only)


# --------------------------------------------------------------------------- membership histogram


def test_membership_histogram_counts_and_annotation(tmp_path):
    p = np.concatenate([np.zeros(300), np.full(7, 0.3), np.full(5, 0.7), np.full(40, 0.95), np.ones(60)])
    fig, ax = plt.subplots()
    assert membership_histogram(p, ax=ax, component_name="NGC 288") is fig
    assert sum(patch.get_height() for patch in ax.patches) == p.size
    text = "\n".join(t.get_text() for t in ax.texts)
    assert "p > 0.5: 105 stars" in text and "p > 0.9: 100 stars" in text and "Σp = 103.6" in text
    assert ax.get_yscale() == "log"  # 300 stars in one bin, 5 in another
    assert "NGC 288" in ax.get_xlabel()
    _nonblank_png(fig, tmp_path / "membership_hist.png")
    # Counts read as plain numbers on the log axis, not as typeset powers of ten.
    fig.canvas.draw()
    labels = {t.get_text() for t in ax.get_yticklabels() if t.get_text()}
    assert {"1", "10", "100"} <= labels and not any("$" in label for label in labels)
    flat = membership_histogram(np.linspace(0, 1, 200)).axes[0]
    assert flat.get_yscale() == "linear"


def test_membership_histogram_refuses_bad_input():
    with pytest.raises(ValueError, match="one component's column"):
        membership_histogram(np.full((10, 2), 0.5))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        membership_histogram(np.array([0.2, 1.3]))
    with pytest.raises(ValueError, match="bins"):
        membership_histogram(np.array([0.2, 0.3]), bins=0)
    with pytest.raises(ValueError, match="bins"):
        membership_histogram(np.array([0.2, 0.3]), bins=[0.0, 0.5, 2.0])


# --------------------------------------------------------------------------- posterior predictive


def _stairs(ax):
    return {patch.get_label(): patch for patch in ax.patches if isinstance(patch, StepPatch)}


def test_ppc_plot_bins_observed_and_mocks_on_the_same_edges(tmp_path):
    rng = np.random.default_rng(1)
    observed = np.column_stack([rng.normal(0, 1, 500), rng.normal(10, 2, 500)])
    replicated = np.stack([np.column_stack([rng.normal(0, 1, 500), rng.normal(10, 2, 500)])
                           for _ in range(30)])
    fig, ax = plt.subplots()
    assert ppc_plot(observed, replicated, feature=1, ax=ax, bins=15, label="[Mg/Fe]") is fig
    stairs = _stairs(ax)
    counts, edges = stairs["observed"].get_data().values, stairs["observed"].get_data().edges
    assert edges.size == 16 and edges[0] <= observed[:, 1].min() and edges[-1] >= observed[:, 1].max()
    np.testing.assert_array_equal(counts, np.histogram(observed[:, 1], edges)[0])  # feature 1, not 0
    expected_median = np.median([np.histogram(r[:, 1], edges)[0] for r in replicated], axis=0)
    np.testing.assert_allclose(stairs["posterior predictive median"].get_data().values, expected_median)
    assert ax.get_xlabel() == "[Mg/Fe]"
    _nonblank_png(fig, tmp_path / "ppc.png")
    one_feature = ppc_plot(observed[:, 0], replicated[:, :, 0])  # (N,) with (n_draws, N)
    assert _stairs(one_feature.axes[0])["observed"].get_data().values.sum() == 500


def test_ppc_plot_refuses_mismatched_shapes():
    observed = np.zeros((50, 2))
    with pytest.raises(ValueError, match="replicated must have shape"):
        ppc_plot(observed, np.zeros((10, 49, 2)))
    with pytest.raises(ValueError, match="out of range"):
        ppc_plot(observed, np.zeros((10, 50, 2)), feature=2)
    with pytest.raises(ValueError, match="at least 2"):
        ppc_plot(observed, np.zeros((1, 50, 2)))


def test_ppc_plot_fit_draws_mock_catalogues_of_the_fit(small_fit):
    sim, fit = small_fit
    fig, ax = plt.subplots()
    assert ppc_plot_fit(0, fit, n_draws=20, ax=ax) is fig
    assert ax.get_xlabel() == "RV [km / s]"  # the feature with its catalogue unit
    assert _stairs(ax)["observed"].get_data().values.sum() == sim.catalogue.n_stars
    with pytest.raises(ValueError, match="n_draws"):
        ppc_plot_fit(0, fit, n_draws=1)


# --------------------------------------------------------------------------- ellipses


def test_ellipse_plot_draws_one_and_two_sigma_at_the_right_mahalanobis_radius(disc, tmp_path):
    sim, em = disc
    fig, ax = plt.subplots()
    assert ellipse_plot(sim.catalogue, em, ax=ax) is fig
    ellipses = [p for p in ax.patches if isinstance(p, Ellipse)]
    assert len(ellipses) == 2 * em.n_components
    for k in range(em.n_components):
        for n, radius in enumerate((1.0, 2.0)):
            d = _mahalanobis_of_patch(ellipses[2 * k + n], em.means[k], em.covariances[k])
            np.testing.assert_allclose(d, radius, rtol=1e-6)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("FeH", "MgFe")
    _nonblank_png(fig, tmp_path / "ellipses.png")


def test_ellipse_plot_colours_by_membership_and_shows_posterior_draws(disc):
    sim, em = disc
    values = sim.catalogue.values
    prob = np.zeros((len(values), 2))
    prob[np.arange(len(values)), sim.labels] = 1.0
    rng = np.random.default_rng(0)
    means = em.means + 0.01 * rng.normal(size=(2, 6, 2, 2))
    covs = np.broadcast_to(em.covariances, (2, 6, 2, 2, 2))
    import xarray as xr

    draws = xr.Dataset({"means": (("chain", "draw", "k", "d"), means),
                        "covariances": (("chain", "draw", "k", "d", "e"), covs)})
    posterior = types.SimpleNamespace(idata=types.SimpleNamespace(posterior=draws))
    fig = ellipse_plot(values, em.params, probability=prob, posterior=posterior, n_posterior_ellipses=5,
                       component_names=["thin", "thick"])
    ax = fig.axes[0]
    assert len([p for p in ax.patches if isinstance(p, Ellipse)]) == 2 * 2 + 5 * 2
    colours = ax.collections[0].get_facecolors()
    assert len(np.unique(np.round(colours[:, :3], 3), axis=0)) == 2  # one colour per hard label
    assert [t.get_text() for t in ax.get_legend().get_texts()][:2] == ["thin", "thick"]


def test_ellipse_plot_picks_the_marginal_of_the_chosen_features(disc):
    sim, em = disc
    values = np.column_stack([sim.catalogue.values, sim.catalogue.values[:, 0] * 0.5])
    means = np.column_stack([em.means, [0.1, 0.7]])
    covs = np.zeros((2, 3, 3))
    covs[:, :2, :2] = em.covariances
    covs[:, 2, 2] = [0.02, 0.05]
    covs[:, 0, 2] = covs[:, 2, 0] = [0.005, -0.01]
    params = check_params(em.weights, means, covs)
    ax = ellipse_plot(values, params, features=(2, 0), feature_names=["a", "b", "c"]).axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("c", "a")
    first = next(p for p in ax.patches if isinstance(p, Ellipse))
    sub = np.ix_([2, 0], [2, 0])
    np.testing.assert_allclose(_mahalanobis_of_patch(first, means[0, [2, 0]], covs[0][sub]), 1.0, rtol=1e-6)


def test_ellipse_plot_refuses_what_it_cannot_draw(disc, small_fit):
    sim, em = disc
    _, fit = small_fit
    with pytest.raises(ValueError, match="one feature; ellipses need two"):
        ellipse_plot(fit.data.values, fit)
    with pytest.raises(ValueError, match="two different features"):
        ellipse_plot(sim.catalogue, em, features=(1, 1))
    with pytest.raises(ValueError, match="out of range"):
        ellipse_plot(sim.catalogue, em, features=(0, 2))
    with pytest.raises(ValueError, match="probability must have shape"):
        ellipse_plot(sim.catalogue, em, probability=np.full((10, 2), 0.5))
    with pytest.raises(ValueError, match="params must be"):
        ellipse_plot(sim.catalogue, "em")
    with pytest.raises(ValueError, match="component_names has 1"):
        ellipse_plot(sim.catalogue, em, component_names=["thin"])


# --------------------------------------------------------------------------- EM history / scans


def test_em_history_plot_shows_the_history_and_restarts(disc, tmp_path):
    _, em = disc
    fig, ax = plt.subplots()
    assert em_history_plot(em, ax=ax) is fig
    by_label = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_allclose(by_label["log-likelihood"].get_ydata(), em.log_likelihood_history)
    # The default Bovy w adds a log prior, so the objective is a separate curve.
    np.testing.assert_allclose(by_label["objective (log L + log prior)"].get_ydata(), em.objective_history)
    np.testing.assert_allclose(np.sort(by_label["final objective of each start"].get_ydata()),
                               np.sort(em.restart_objectives))
    text = ax.get_title(loc="left")
    assert f"{em.n_iter} iterations, converged" in text and "6 starts (2 kmeans++, 4 peak)" in text
    _nonblank_png(fig, tmp_path / "em_history.png")
    # Nothing drawn over the starts' ticks: the summary is above the axes, the legend clear of them.
    ticks = by_label["final objective of each start"]
    points = ax.transData.transform(np.column_stack([ticks.get_xdata(), ticks.get_ydata()]))
    legend = ax.get_legend().get_window_extent()
    assert not ax.texts and not any(legend.contains(x, y) for x, y in points)


def test_em_history_plot_of_a_plain_fit_has_one_curve(disc):
    sim, em = disc
    # One M-step from a given start (the program em_animation compiles too): no prior, and
    # stopped early.
    start = em.params._replace(means=em.params.means + 0.05)  # away from the optimum
    with pytest.warns(EMConvergenceWarning):
        plain = fit_em(1, sim.catalogue, 2, w=0.0, init="given", init_params=start, max_iter=1)
    ax = em_history_plot(plain).axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["log-likelihood"]
    assert "1 iteration, NOT converged" in ax.get_title(loc="left")
    with pytest.raises(ValueError, match="EMResult"):
        em_history_plot({"log_likelihood_history": [1.0]})


def _scan_table():
    return Table({"n_components": [3, 1, 2, 4], "bic": [105.0, 130.0, 100.0, 112.0],
                  "aic": [90.0, 128.0, 95.0, 93.0]})


def test_information_criterion_plot_marks_each_criterions_choice(tmp_path):
    fig, ax = plt.subplots()
    assert information_criterion_plot(_scan_table(), ax=ax) is fig
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["BIC (best K = 2)", "AIC (best K = 3)"]
    curves = [line for line in ax.get_lines() if line.get_label().startswith("BIC")]
    np.testing.assert_array_equal(curves[0].get_xdata(), [1, 2, 3, 4])  # sorted by K
    stars = [(line.get_xdata()[0], line.get_ydata()[0]) for line in ax.get_lines()
             if line.get_marker() == "*"]
    assert stars == [(2, 100.0), (3, 90.0)]
    _nonblank_png(fig, tmp_path / "ic.png")


def test_information_criterion_plot_adds_loo_on_a_twin_axis():
    table = _scan_table()
    table["elpd_loo"] = [-50.0, -70.0, -45.0, -52.0]  # rows for K = 3, 1, 2, 4
    fig = information_criterion_plot(table.to_pandas())
    assert len(fig.axes) == 2 and "elpd_loo" in fig.axes[1].get_ylabel()
    assert "elpd_loo (best K = 2)" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_information_criterion_plot_refuses_other_tables():
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['aic'\]"):
        information_criterion_plot(Table({"n_components": [1, 2], "bic": [1.0, 2.0]}))
    with pytest.raises(ValueError, match="distinct n_components"):
        information_criterion_plot({"n_components": [1, 1], "bic": [1.0, 2.0], "aic": [1.0, 2.0]})


# --------------------------------------------------------------------------- EM animation


def _frames(path):
    from PIL import Image

    with Image.open(path) as image:
        frames = []
        for i in range(image.n_frames):
            image.seek(i)
            frames.append(np.asarray(image.convert("RGB"), dtype=float))
    return frames


def test_em_animation_writes_a_gif_of_the_iterations(disc, tmp_path):
    sim, _ = disc
    path = tmp_path / "em.gif"
    assert em_animation(0, sim.catalogue, 2, path, n_frames=5, fps=4, dpi=40) == path
    frames = _frames(path)
    assert len(frames) > 1
    assert np.abs(frames[0] - frames[-1]).mean() > 0.1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["em.gif"]  # no temporary file left


def test_em_animation_one_feature(small_fit, tmp_path):
    sim, _ = small_fit
    path = em_animation(1, sim.catalogue, 2, tmp_path / "em_1d.gif", n_frames=3, dpi=40)
    frames = _frames(path)
    assert len(frames) > 1 and np.abs(frames[0] - frames[-1]).mean() > 0.1


def test_em_animation_replays_the_path_of_fit_em(disc):
    sim, _ = disc
    obs = as_observations(sim.catalogue)
    full = fit_em(5, obs, 2, init="kmeans++")  # the animation follows one start: k-means++ by default
    path = plotting._em_path(5, obs, 2, {})
    assert len(path) == full.n_iter + 1
    np.testing.assert_allclose([ll for _, ll in path], full.log_likelihood_history, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(path[-1][0].covariances), full.covariances, rtol=1e-10)


def test_em_animation_refuses_bad_input_before_fitting(disc, tmp_path):
    sim, _ = disc
    with pytest.raises(ValueError, match=r"\.gif"):
        em_animation(0, sim.catalogue, 2, tmp_path / "em.png")
    with pytest.raises(ValueError, match="n_init=3"):
        em_animation(0, sim.catalogue, 2, tmp_path / "em.gif", n_init=3)
    with pytest.raises(ValueError, match="init='auto' runs several starts"):
        em_animation(0, sim.catalogue, 2, tmp_path / "em.gif", init="auto")
    with pytest.raises(ValueError, match="n_frames"):
        em_animation(0, sim.catalogue, 2, tmp_path / "em.gif", n_frames=1)
    with pytest.raises(ValueError, match="out of range"):
        em_animation(0, sim.catalogue, 2, tmp_path / "em.gif", features=(0, 2))
    assert not list(tmp_path.iterdir())


def test_feature_and_element_labels_carry_the_catalogue_units(small_fit):
    _, fit = small_fit
    assert plotting.feature_labels(fit) == ["RV [km / s]"]  # astropy's spelling of the simulated unit
    no_units = dataclasses.replace(fit, catalogue=types.SimpleNamespace(units=(None,)))
    assert plotting.feature_labels(no_units) == ["RV"]
    assert plotting.element_labels(no_units, ["mean1", "means"]) == ["mean1", "means[cluster, RV]",
                                                                    "means[field, RV]"]
    with_units = dataclasses.replace(fit, catalogue=types.SimpleNamespace(units=("km/s",)))
    assert plotting.feature_labels(with_units) == ["RV [km/s]"]
    assert plotting.element_labels(with_units, ["mean1", "frac1", "weights", "means", "scales"]) == [
        "mean1 [km/s]", "frac1", "weights[cluster]", "weights[field]", "means[cluster, RV] [km/s]",
        "means[field, RV] [km/s]", "scales[cluster, RV] [km/s]", "scales[field, RV] [km/s]"]
    fig = plotting.ppc_plot_fit(0, with_units, n_draws=5)
    assert fig.axes[0].get_xlabel() == "RV [km/s]"
    plt.close(fig)


def test_corner_and_trace_take_a_plain_inference_data(small_fit):
    """Any InferenceData (e.g. of your own program) draws, and a wrong object is a clear error."""
    _, fit = small_fit
    fig = plotting.corner_plot(fit.idata, ["mean1", "sigma1"])
    assert len(fig.axes) == 4
    plt.close(fig)
    fig = plotting.trace_plot(fit.idata, ["mean1", "sigma1"])
    assert len(fig.axes) == 4
    plt.close(fig)
    with pytest.raises(ValueError, match="posterior_from_draws"):
        plotting.corner_plot({"mean1": [1.0]}, ["mean1"])


# --------------------------------------------------------------------------- a run's figures


def test_run_figures_draw_one_membership_histogram_for_two_components(small_fit, tmp_path, monkeypatch):
    import gc

    from bayesmix import workflow
    from bayesmix.membership import membership_probabilities

    sim, fit = small_fit
    drawn = []
    original = plotting.membership_histogram
    monkeypatch.setattr(plotting, "membership_histogram",
                        lambda p, **kw: drawn.append(kw["component_name"]) or original(p, **kw))
    assert gc.isenabled()
    written = workflow.run_figures(tmp_path, fit, membership_probabilities(fit), sim.catalogue)
    assert drawn == ["cluster"]  # the field's panel would be 1 - p, mirrored
    assert {p.name for p in written} >= {"corner.png", "trace.png", "membership_histogram.png", "ppc.png"}
    assert gc.isenabled()  # the collector paused while drawing is back on


def test_cyclic_gc_pause_restores_the_collector_state_even_on_error():
    import gc

    from bayesmix._drawing import cyclic_gc_paused

    with pytest.raises(RuntimeError, match="figure bug"), cyclic_gc_paused():
        assert not gc.isenabled()
        raise RuntimeError("figure bug")
    assert gc.isenabled()
    gc.disable()
    try:
        with cyclic_gc_paused():
            pass
        assert not gc.isenabled()  # a caller that had it off keeps it off
    finally:
        gc.enable()

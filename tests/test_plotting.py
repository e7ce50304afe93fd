"""Figures: each returns a Figure, draws into a given fig/ax, and refuses what it cannot draw."""

import matplotlib

matplotlib.use("Agg")  # files only, also outside CI (which sets MPLBACKEND=Agg)

import matplotlib.pyplot as plt
import numpy as np
import pytest

from bayesmix.models import cluster_field_model
from bayesmix.plotting import corner_plot, membership_radius_plot
from bayesmix.sampling import sample_posterior
from bayesmix.simulate import simulate_cluster_field

NAMES = ["mean1", "sigma1", "frac1"]


@pytest.fixture(scope="module")
def small_fit():
    sim = simulate_cluster_field(2, 200)
    fit = sample_posterior(0, cluster_field_model(sim.catalogue), sim.catalogue, num_chains=2,
                           num_warmup=100, num_samples=100, progress_bar=False)
    return sim, fit


def _nonblank_png(fig, path):
    fig.savefig(path, dpi=60)
    image = plt.imread(path)
    assert image.std() > 0.01  # something was drawn, not a blank canvas


def test_corner_plot_draws_posterior_with_truths(small_fit, tmp_path):
    sim, fit = small_fit
    fig = corner_plot(fit, NAMES, truths={"mean1": sim.truth.cluster_mean})
    assert len(fig.axes) == len(NAMES) ** 2
    assert "mean1" in fig.axes[0].get_title()
    _nonblank_png(fig, tmp_path / "corner.png")
    given = plt.figure()
    assert corner_plot(fit, NAMES, fig=given) is given
    plt.close("all")


def test_corner_plot_refuses_non_scalar_or_unknown_variables(small_fit):
    _, fit = small_fit
    with pytest.raises(ValueError, match="not scalar posterior variables"):
        corner_plot(fit, ["mean1", "no_such"])
    with pytest.raises(ValueError, match="pick scalar variables"):
        corner_plot(fit, ["means"])


def test_membership_radius_plot_uses_the_given_axes(tmp_path):
    rng = np.random.default_rng(0)
    fig, ax = plt.subplots()
    out = membership_radius_plot(rng.normal(size=50), rng.uniform(1, 10, 50), rng.uniform(size=50), ax=ax,
                                 value_label="RV")
    assert out is fig and ax.get_ylabel() == "RV" and len(ax.collections) == 1
    _nonblank_png(fig, tmp_path / "members.png")
    with pytest.raises(ValueError, match="one entry per star"):
        membership_radius_plot(np.zeros(3), np.ones(4), np.zeros(3))
    plt.close("all")

"""The ArviZ seam (bayesmix/_arviz.py) on whichever ArviZ line is installed.

CI runs this module twice: in the full suite on the newest stack (ArviZ 1.x, DataTree) and in
.ci/release_check against the installed wheel on the default python3 (ArviZ 0.x on Python 3.11),
where ``BAYESMIX_DEMO_POSTERIOR`` names the ``posterior.nc`` the wheel's demo just wrote.
"""

import json
import os
from pathlib import Path

import arviz as az
import numpy as np
import pytest
from scipy.special import logsumexp

from bayesmix import _arviz


def _idata(rng, n_chains=2, n_draws=300):
    return _arviz.from_groups(
        {"posterior": {"means": rng.normal(size=(n_chains, n_draws, 2)),
                       "frac": rng.uniform(size=(n_chains, n_draws))},
         "observed_data": {"values": rng.normal(size=5)}},
        coords={"component": ["cluster", "field"], "star": np.arange(5)},
        dims={"means": ["component"], "values": ["star"]},
        attrs={"bayesmix_provenance": json.dumps({"seed": 3})},
        group_attrs={"posterior": {"sampler": "nuts"}},
    )


def test_major_version_matches_the_installed_arviz():
    assert _arviz.ARVIZ_MAJOR == int(az.__version__.split(".")[0])
    assert _arviz.ARVIZ_MAJOR in (0, 1)


def test_statistics_are_arvizs_own_functions():
    # On 1.x from arviz-stats (without the meta-package's arviz-plots and Matplotlib), on 0.x from
    # arviz: either way the very functions arviz.ess, arviz.rhat, ... are.
    for name in ("ess", "rhat", "mcse", "hdi", "loo"):
        assert getattr(_arviz.stats(), name) is getattr(az, name), name


def test_from_groups_coords_dims_and_attributes_survive_netcdf(tmp_path):
    idata = _idata(np.random.default_rng(0))
    assert _arviz.group_names(idata) == ("posterior", "observed_data")
    assert idata.posterior["means"].dims == ("chain", "draw", "component")
    assert list(idata.posterior["means"].coords["component"].values) == ["cluster", "field"]
    assert idata.observed_data["values"].dims == ("star",)
    path = tmp_path / "posterior.nc"
    idata.to_netcdf(str(path))
    again = az.from_netcdf(str(path))  # ArviZ's own reader, default options
    assert json.loads(again.attrs["bayesmix_provenance"]) == {"seed": 3}
    assert again.posterior.attrs["sampler"] == "nuts"
    np.testing.assert_array_equal(again.posterior["means"].values, idata.posterior["means"].values)


def test_empty_groups_are_left_out():
    idata = _arviz.from_groups({"posterior": {"x": np.zeros((1, 4))}, "sample_stats": {}})
    assert _arviz.group_names(idata) == ("posterior",)


def test_with_group_adds_and_replaces_without_touching_the_original():
    import xarray as xr

    idata = _idata(np.random.default_rng(1))
    first = xr.Dataset({"stars": (("chain", "draw", "star"), np.zeros((2, 300, 5)))})
    second = xr.Dataset({"stars": (("chain", "draw", "star"), np.ones((2, 300, 5)))})
    added = _arviz.with_group(idata, "log_likelihood", first)
    assert _arviz.has_group(added, "log_likelihood") and not _arviz.has_group(idata, "log_likelihood")
    replaced = _arviz.with_group(added, "log_likelihood", second)
    assert float(replaced.log_likelihood["stars"].sum()) == 2 * 300 * 5
    assert float(added.log_likelihood["stars"].sum()) == 0.0
    assert isinstance(_arviz.group_dataset(replaced, "log_likelihood"), xr.Dataset)
    # (ArviZ 0.x keeps its canonical group order, 1.x the order of insertion)
    assert sorted(_arviz.group_names(replaced)) == ["log_likelihood", "observed_data", "posterior"]
    smaller = _arviz.with_group(replaced, "posterior", _arviz.group_dataset(replaced, "posterior")[["frac"]])
    assert _arviz.group_names(smaller) == _arviz.group_names(replaced)  # replaced in its place
    assert list(smaller.posterior.data_vars) == ["frac"] and "means" in replaced.posterior
    assert json.loads(smaller.attrs["bayesmix_provenance"]) == {"seed": 3}


def test_hdi_is_the_shortest_interval_of_the_draws():
    import xarray as xr

    rng = np.random.default_rng(2)
    draws = rng.gamma(2.0, size=(2, 2000))  # skewed: the HDI differs from the central interval
    interval = _arviz.hdi(xr.Dataset({"x": (("chain", "draw"), draws)}), 0.9)["x"]
    assert interval.dims == ("hdi",)
    flat = np.sort(draws.ravel())
    n_in = int(np.floor(0.9 * flat.size))
    widths = flat[n_in:] - flat[: flat.size - n_in]
    best = int(np.argmin(widths))
    np.testing.assert_allclose(interval.values, [flat[best], flat[best + n_in]], atol=0.02)


def test_loo_agrees_with_plain_importance_sampling_on_a_well_behaved_likelihood():
    rng = np.random.default_rng(3)
    log_lik = -1.0 - 0.05 * rng.standard_normal((2, 500, 30)) ** 2  # tiny spread: PSIS equals IS
    idata = _arviz.from_groups({"posterior": {"mu": rng.normal(size=(2, 500))},
                                "log_likelihood": {"y": log_lik}})
    result = _arviz.loo(idata)
    flat = log_lik.reshape(-1, 30)
    expected = -np.sum(logsumexp(-flat, axis=0) - np.log(flat.shape[0]))
    assert result.elpd == pytest.approx(expected, abs=0.01)  # Pareto smoothing moves it by ~2e-3
    assert result.pareto_k.shape == (30,) and result.se > 0 and 0 <= result.p_loo < 1


DEMO_POSTERIOR = os.environ.get("BAYESMIX_DEMO_POSTERIOR")


@pytest.mark.skipif(not DEMO_POSTERIOR, reason="BAYESMIX_DEMO_POSTERIOR is set by .ci/release_check")
def test_the_demo_posterior_opens_with_this_arviz():
    idata = az.from_netcdf(DEMO_POSTERIOR)
    for group in ("posterior", "sample_stats", "observed_data", "constant_data"):
        assert _arviz.has_group(idata, group), f"{Path(DEMO_POSTERIOR).name} lacks {group}"
    provenance = json.loads(idata.attrs["bayesmix_provenance"])
    assert provenance["spec"]["name"] == "demo" and provenance["seed"] == 0
    for group in ("log_likelihood", "posterior_predictive"):
        assert _arviz.has_group(idata, group), f"{Path(DEMO_POSTERIOR).name} lacks {group}"
    table = az.summary(idata)  # one name per quantity: K = 2 components of one feature
    assert list(table.index) == ["means[cluster, RV]", "means[field, RV]", "scales[cluster, RV]",
                                 "scales[field, RV]", "weights[cluster]", "weights[field]"]
    assert table["r_hat"].max() < 1.05

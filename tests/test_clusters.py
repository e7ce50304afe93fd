"""Many clusters in one hierarchical model: likelihood, truth recovery, pooling, specs, real data."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from bayesmix.catalogue import Catalogue
from bayesmix.cluster_runs import (
    cluster_table,
    fit_groups,
    read_reference_velocities,
    select_groups,
)
from bayesmix.clusters import GroupParams, group_log_joint, group_log_likelihood, many_cluster_model
from bayesmix.config import RunSpec, SpecError
from bayesmix.likelihood import MixtureParams, as_observations
from bayesmix.models import cluster_field_model

# ----------------------------------------------------------------------------- simulated groups

N_GROUPS = 10
TRUE_M_SIGMA, TRUE_TAU_SIGMA = np.log(5.0), 0.3
SMALL = 0  # the group with few stars and a dispersion far above the population's


def _simulate(seed=3):
    rng = np.random.default_rng(seed)
    mu = rng.uniform(-200.0, 200.0, N_GROUPS)
    sigma = np.exp(rng.normal(TRUE_M_SIGMA, TRUE_TAU_SIGMA, N_GROUPS))
    sigma[SMALL] = 11.0
    frac = rng.uniform(0.4, 0.8, N_GROUPS)
    n = rng.integers(80, 200, N_GROUPS)
    n[SMALL] = 14
    values, errors, labels = [], [], []
    for c in range(N_GROUPS):
        member = rng.random(n[c]) < frac[c]
        if c == SMALL:
            member[:] = True
            member[-2:] = False
        err = rng.uniform(0.5, 2.0, n[c])
        v = np.where(member, rng.normal(mu[c], sigma[c], n[c]), rng.normal(0.3 * mu[c], 60.0, n[c]))
        values.append(v + rng.normal(0.0, err))
        errors.append(err)
        labels += [f"G{c:02d}"] * n[c]
    return np.concatenate(values), np.concatenate(errors), np.array(labels), {"mu": mu, "sigma": sigma}


SETTINGS = {"num_chains": 2, "num_warmup": 200, "num_samples": 250, "target_accept": 0.9}


@pytest.fixture(scope="module")
def simulated():
    values, errors, labels, truth = _simulate()
    model, data, group = many_cluster_model(values, errors, labels)
    pooled = fit_groups(0, model, data, group, **SETTINGS)
    alone = fit_groups(0, dataclasses.replace(model, pooling=False), data, group, **SETTINGS)
    return model, pooled, alone, truth


# ----------------------------------------------------------------------------- likelihood


def test_one_group_likelihood_equals_cluster_field_model():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(-44.0, 3.0, 80), rng.normal(0.0, 45.0, 60)])
    err = rng.uniform(0.3, 3.0, v.size)
    obs = as_observations(v, err)
    mu, sigma, frac, field_mean, field_sigma = -43.7, 2.9, 0.57, 4.2, 47.5
    params = GroupParams(*(jnp.array([x]) for x in (mu, sigma, frac, field_mean, field_sigma)))
    group = jnp.zeros(v.size, jnp.int32)
    reference = cluster_field_model(obs)
    mix = MixtureParams(jnp.array([frac, 1 - frac]), jnp.array([[mu], [field_mean]]),
                        jnp.array([[[sigma**2]], [[field_sigma**2]]]))
    log_w = jnp.log(mix.weights)
    expected_total = float(reference.total_log_likelihood(mix, log_w, obs))
    total = float(group_log_likelihood(params, obs, group))
    assert abs(total - expected_total) <= 1e-10 * abs(expected_total)
    np.testing.assert_allclose(np.asarray(group_log_joint(params, obs, group)),
                               np.asarray(reference.joint_log_prob(mix, log_w, obs)), rtol=1e-12, atol=1e-10)


def test_groups_do_not_see_each_others_parameters():
    v = np.array([-40.0, -41.0, -39.0, 100.0, 101.0, 99.0])
    obs = as_observations(v, np.full(6, 1.0))
    group = jnp.array([0, 0, 0, 1, 1, 1])
    params = GroupParams(jnp.array([-40.0, 100.0]), jnp.array([1.0, 1.0]), jnp.array([0.9, 0.9]),
                         jnp.array([0.0, 0.0]), jnp.array([50.0, 50.0]))
    moved = params._replace(mu=jnp.array([-40.0, 200.0]))
    before, after = (np.asarray(group_log_joint(p, obs, group)) for p in (params, moved))
    np.testing.assert_array_equal(before[:3], after[:3])
    assert np.all(after[3:, 0] < before[3:, 0] - 100.0)


def test_model_refuses_bad_arguments():
    v, err = np.zeros(12), np.ones(12)
    with pytest.raises(ValueError, match="groups 'B' \\(2 stars\\) have fewer than min_stars=5"):
        many_cluster_model(v, err, ["A"] * 10 + ["B"] * 2)
    with pytest.raises(ValueError, match="field='both'"):
        many_cluster_model(v, err, ["A"] * 12, field="both")
    with pytest.raises(ValueError, match="groups has shape"):
        many_cluster_model(v, err, ["A"] * 11)


# ----------------------------------------------------------------------------- sampling


def test_simulated_truth_is_recovered(simulated):
    model, pooled, _, truth = simulated
    assert pooled.max_r_hat < 1.05 and pooled.n_divergent == 0
    for name in ("mu", "sigma"):
        draws = pooled.draws(name).reshape(-1, model.n_groups)
        z = (np.median(draws, axis=0) - truth[name]) / draws.std(axis=0)
        assert np.all(np.abs(z) < 3.0), f"{name}: {np.round(z, 2)}"
    table = pooled.summary
    # The population the dispersions were drawn from (the small group's 11 km/s is one draw of it, too).
    log_sigma = np.log(truth["sigma"])
    for row, value in (("m_sigma", log_sigma.mean()), ("tau_sigma", log_sigma.std())):
        assert abs(table.loc[row, "p50"] - value) < 3.0 * table.loc[row, "sd"], (row, value)


def test_pooling_pulls_a_small_group_towards_the_population(simulated):
    _, pooled, alone, _ = simulated
    table = cluster_table(pooled, alone)
    row = table[SMALL]
    m_sigma = np.exp(pooled.summary.loc["m_sigma", "p50"])
    # Alone, the 14-star group keeps its own high dispersion; pooled, it moves towards exp(m_sigma).
    assert row["sigma_alone_p50"] > row["sigma_p50"] > m_sigma
    assert row["sigma_shift"] < -0.5 * row["sigma_alone_sd"]
    # A well-measured group hardly moves: its own stars outweigh the population.
    big = np.argmax(np.asarray(table["n_stars"]))
    assert abs(table["sigma_shift"][big]) < 0.5 * table["sigma_alone_sd"][big]
    assert abs(table["sigma_shift"][big]) < abs(row["sigma_shift"])
    assert np.allclose(np.asarray(table["n_members"]).sum(), pooled.membership[:, 0].sum())


def test_shared_field_option_runs():
    values, errors, labels, truth = _simulate(seed=5)
    keep = np.isin(labels, ["G01", "G02", "G03"])
    model, data, group = many_cluster_model(values[keep], errors[keep], labels[keep], field="shared")
    fit = fit_groups(1, model, data, group, num_chains=2, num_warmup=150, num_samples=150)
    assert "log_field_sigma" in fit.summary.index and "m_field" not in fit.summary.index
    field_sigma = fit.draws("field_sigma")
    assert np.ptp(field_sigma, axis=-1).max() == 0.0  # one field for all groups
    assert np.all(np.abs(fit.summary.loc[[f"mu[G0{c}]" for c in (1, 2, 3)], "p50"].to_numpy()
                         - truth["mu"][1:4]) < 5.0)


# ----------------------------------------------------------------------------- selection and specs


def _catalogue():
    rng = np.random.default_rng(1)
    labels = np.array(["A"] * 20 + ["B"] * 3 + ["C"] * 10)
    cat = Catalogue.from_arrays(rng.normal(0, 5, labels.size), np.ones(labels.size), feature_names=["RV"])
    cat.table["Cluster"] = labels
    return cat


def test_select_groups_reports_every_dropped_row():
    cat = _catalogue()
    kept, skipped = select_groups(cat, "Cluster", ["A", "B"], min_stars=5)
    assert kept.n_stars == 20 and list(skipped["group"]) == ["B"] and list(skipped["n_stars"]) == [3]
    counts = kept.report.counts()
    assert counts == {"[groups] select: Cluster not selected": 10,
                      "[groups] min_stars: Cluster with fewer than 5 stars": 3}
    assert kept.report.n_kept == kept.n_stars
    with pytest.raises(ValueError, match="'D' not found in column 'Cluster'"):
        select_groups(cat, "Cluster", ["A", "D"])
    with pytest.raises(ValueError, match=r"'Clust' is not a column.*did you mean 'Cluster'"):
        select_groups(cat, "Clust")


def _spec(**groups):
    return {"data": {"path": "x.txt", "values": ["RV"], "errors": ["E_RV"]},
            "model": {"kind": "cluster-field"}, "groups": {"column": "Cluster", **groups}}


@pytest.mark.parametrize(("change", "key"), [
    ({"groups": {"column": "Cluster", "field": "each"}}, "[groups] field"),
    ({"groups": {"column": "Cluster", "min_stars": 1}}, "[groups] min_stars"),
    ({"groups": {"column": "Cluster", "alone_tau": 0}}, "[groups] alone_tau"),
    ({"groups": {"column": "Cluster", "select": "NGC 288", "colour": 1}}, "[groups] colour"),
    ({"groups": {"select": ["NGC 288"]}}, "[groups] column"),
    ({"groups": {"column": "Cluster", "pooling": False}}, "[groups] compare_alone"),
    ({"model": {"kind": "mixture", "n_components": 2}}, "[model] kind"),
    ({"model": {"kind": "cluster-field", "radius_fraction": {"covariate": "DCEN"}},
      "data": {"path": "x.txt", "values": ["RV"], "covariates": ["DCEN"]}}, "[model.radius_fraction]"),
    ({"model": {"kind": "cluster-field", "priors": {"frac_scale": 1.0}}}, "[model.priors]"),
])
def test_spec_errors_name_the_key(change, key):
    table = _spec()
    table.update(change)
    with pytest.raises(SpecError) as info:
        RunSpec.from_dict(table)
    assert info.value.key == key


def test_groups_spec_round_trips():
    spec = RunSpec.from_dict(_spec(select=["NGC 288", "NGC 104"], field="shared", reference="ref.txt"))
    assert spec.groups.select == ("NGC 288", "NGC 104") and spec.groups.field == "shared"
    assert RunSpec.from_dict(spec.to_dict()) == spec


# ----------------------------------------------------------------------------- real data

REAL = ["NGC 104", "NGC 288", "NGC 6121", "NGC 6397", "NGC 6752", "NGC 7099", "Pal 5"]


@pytest.mark.shared_data
def test_reference_velocities_are_read(shared_data):
    ref = read_reference_velocities(shared_data / "baumgardt_gc_rv" / "orbits_table.txt")
    assert ref["NGC 288"] == (-44.83, 0.13) and ref["Whiting 1"] == (-130.41, 1.79)
    assert len(ref) == 154


@pytest.mark.shared_data
def test_baumgardt_clusters_through_the_cli(shared_data, tmp_path, monkeypatch):
    from astropy.table import Table

    from bayesmix.cli import main

    monkeypatch.setenv("BAYESMIX_SHARED_DATA", str(shared_data))
    spec = tmp_path / "clusters.toml"
    names = ", ".join(f'"{n}"' for n in REAL)
    spec.write_text(
        'name = "few-clusters"\n[data]\npath = "{shared_data}/baumgardt_gc_rv/appendix_combined_table.txt"\n'
        'values = ["RV"]\nerrors = ["E_RV"]\n[model]\nkind = "cluster-field"\n'
        f'[groups]\ncolumn = "Cluster"\nselect = [{names}]\ncompare_alone = false\n'
        'reference = "{shared_data}/baumgardt_gc_rv/orbits_table.txt"\n'
        '[sampler]\nnum_chains = 2\nnum_warmup = 200\nnum_samples = 250\nmembership_draws = 100\n'
        '[output]\nformats = ["csv"]\n')
    out = tmp_path / "out"
    status = main(["fit", str(spec), "--out", str(out), "--exit-zero"])
    assert status == 0
    table = Table.read(out / "clusters.csv")
    assert sorted(table["cluster"]) == sorted(REAL)
    stars = Table.read(out / "membership.csv")
    assert len(stars) == int(np.sum(table["n_stars"]))
    assert np.allclose(stars["p_cluster"] + stars["p_field"], 1.0)
    assert np.all(stars["p_cluster_16"] <= stars["p_cluster_84"])
    assert set(np.unique(stars["Cluster"])) == set(REAL)
    # Clusters with >= 30 likely members agree with Baumgardt's catalogue means within
    # 3 combined standard deviations.
    enough = table["n_members"] >= 30
    assert enough.sum() >= 5
    assert np.all(np.abs(table["mu_pull"][enough]) < 3.0), table["cluster", "mu_p50", "rv_ref", "mu_pull"]
    assert np.all(table["r_hat_max"] < 1.05)

"""Streamed EM (bayesmix.stream): equal to in-memory fit_em to round-off, outputs written chunk by chunk."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from bayesmix.em import EMConvergenceWarning, fit_em
from bayesmix.likelihood import MixtureParams, log_likelihood_per_star, responsibilities
from bayesmix.stream import (
    fit_em_streamed,
    open_catalogue,
    streamed_log_likelihood,
    write_memberships,
)

N, D, K = 3000, 3, 2


def _stars(seed=0, n=N):
    rng = np.random.default_rng(seed)
    comp = rng.random(n) < 0.3
    true = np.where(comp[:, None], rng.normal(2.0, 0.5, (n, D)), rng.normal(-1.0, 1.5, (n, D)))
    err = rng.uniform(0.1, 0.6, (n, D))
    rho = rng.uniform(-0.5, 0.5, n)
    cov = np.zeros((n, D, D))
    cov[:, range(D), range(D)] = err**2
    cov[:, 0, 1] = cov[:, 1, 0] = rho * err[:, 0] * err[:, 1]
    x = true + np.einsum("nab,nb->na", np.linalg.cholesky(cov), rng.normal(size=(n, D)))
    table = Table({f"x{j}": x[:, j] for j in range(D)} | {f"e{j}": err[:, j] for j in range(D)})
    table["rho01"] = rho
    table["source_id"] = np.arange(n, dtype=np.int64) + 2**60  # beyond float64's integers
    return table, x, cov


def _open(src, chunk_size=700, **kw):
    return open_catalogue(src, [f"x{j}" for j in range(D)], [f"e{j}" for j in range(D)],
                          correlations={("x0", "x1"): "rho01"}, chunk_size=chunk_size, **kw)


@pytest.fixture(scope="module")
def fits_file(tmp_path_factory):
    table, x, cov = _stars()
    path = tmp_path_factory.mktemp("stream") / "stars.fits"
    table.write(path)
    return path, x, cov


def _start():
    return MixtureParams(np.array([0.5, 0.5]), np.array([[1.0, 1.0, 1.0], [-2.0, 0.0, -1.0]]),
                         np.stack([np.eye(D), 2.0 * np.eye(D)]))


def test_streamed_em_equals_in_memory(fits_file):
    path, x, cov = fits_file
    start = _start()
    cat = _open(path)
    assert (cat.n_stars, cat.n_features) == (N, D)
    streamed = fit_em_streamed(0, cat, K, init_params=start, tol=1e-6, max_iter=200)
    ref = fit_em(0, x, K, errors=cov, init_params=start, tol=1e-6, max_iter=200)
    assert streamed.converged and ref.converged
    assert streamed.n_iter == ref.n_iter
    np.testing.assert_allclose(streamed.log_likelihood, ref.log_likelihood, rtol=1e-12)
    for a, b in zip(streamed.params, ref.params, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(streamed.w, ref.w, rtol=1e-10)
    with pytest.warns(EMConvergenceWarning, match="max_iter=2 was reached"):
        short = fit_em_streamed(0, cat, K, init_params=start, tol=1e-6, max_iter=2)
    assert short.n_iter == 2 and not short.converged
    np.testing.assert_allclose(short.log_likelihood_history, ref.log_likelihood_history[:3], rtol=1e-12)


def test_subsample_start_and_outputs(fits_file, tmp_path):
    path, x, cov = fits_file
    cat = _open(path)
    res = fit_em_streamed(3, cat, K, n_start_stars=800, n_init=1, n_peaks=0, tol=1e-4)
    assert res.start_kinds == ("subsample",) and res.converged
    params = MixtureParams(*res.params)
    want_resp = np.asarray(responsibilities(params, _obs(x, cov)))
    want_ll = np.asarray(log_likelihood_per_star(params, _obs(x, cov)))
    np.testing.assert_allclose(streamed_log_likelihood(res.params, cat), want_ll.sum(), rtol=1e-12)
    np.testing.assert_allclose(res.log_likelihood, want_ll.sum(), rtol=1e-12)
    out = write_memberships(res.params, cat, tmp_path / "m.fits", id_column="source_id")
    got = Table.read(out)
    assert len(got) == N and got.colnames == ["source_id", "log_likelihood", "p_0", "p_1"]
    np.testing.assert_array_equal(got["source_id"], np.arange(N, dtype=np.int64) + 2**60)
    np.testing.assert_allclose(got["log_likelihood"], want_ll, rtol=1e-12)
    np.testing.assert_allclose(np.stack([got["p_0"], got["p_1"]], 1), want_resp, rtol=1e-10, atol=1e-14)
    with fits.open(out) as hdul:
        hdul.verify("exception")
    csv_out = write_memberships(res.params, cat, tmp_path / "m.csv")
    back = Table.read(csv_out, format="ascii.csv")
    np.testing.assert_array_equal(back["row"], np.arange(N))
    np.testing.assert_allclose(back["p_1"], want_resp[:, 1], rtol=1e-10, atol=1e-14)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def _obs(x, cov):
    from bayesmix.likelihood import Observations

    return Observations(x, cov)


def test_hdf5_and_table_sources_match_fits(fits_file, tmp_path):
    h5py = pytest.importorskip("h5py", reason="HDF5 is the optional extra bayesmix[hdf5]")
    path, _, cov = fits_file
    table = Table.read(path)
    h5 = tmp_path / "stars.h5"
    with h5py.File(h5, "w") as f:
        for name in table.colnames:
            f.create_dataset(f"cat/{name}", data=np.asarray(table[name]))
    a = [o for _, o, _ in _open(path, chunk_size=1000).chunks()]
    for src, kw in ((h5, {"key": "cat"}), (table, {})):
        b = [o for _, o, _ in _open(src, chunk_size=1000, **kw).chunks()]
        for oa, ob in zip(a, b, strict=True):
            np.testing.assert_array_equal(oa.values, ob.values)
            np.testing.assert_array_equal(oa.error_covs, ob.error_covs)
    np.testing.assert_allclose(np.concatenate([o.error_covs for o in a]), cov, rtol=1e-14)


def test_parquet_source(fits_file, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="Parquet is the optional extra bayesmix[parquet]")
    import pyarrow as pa

    path, x, _ = fits_file
    table = Table.read(path)
    native = {n: np.asarray(table[n]).astype(table[n].dtype.newbyteorder("=")) for n in table.colnames}
    pq.write_table(pa.table(native), tmp_path / "s.parquet", row_group_size=512)
    cat = _open(tmp_path / "s.parquet")
    got = np.concatenate([o.values for _, o, _ in cat.chunks()])
    np.testing.assert_array_equal(got, x)
    last = np.concatenate([o.values for _, o, _ in cat.shard(2, 3).chunks()])
    np.testing.assert_array_equal(last, x[2000:])


def test_shards_cover_every_row_once(fits_file):
    path, x, _ = fits_file
    cat = _open(path)
    parts = [np.concatenate([o.values for _, o, _ in cat.shard(i, 3).chunks()]) for i in range(3)]
    np.testing.assert_array_equal(np.concatenate(parts), x)


def test_bad_columns_are_named(tmp_path):
    table, _, _ = _stars(n=50)
    with pytest.raises(ValueError, match=r"column\(s\) \['e9'\] not in"):
        open_catalogue(table, ["x0"], ["e9"])
    with pytest.raises(ValueError, match=r"one column \(or None\) per value"):
        open_catalogue(table, ["x0", "x1"], ["e0"])
    table["x1"][7] = np.nan
    with pytest.raises(ValueError, match=r"column 'x1' is not finite in rows \[7\]"):
        list(_open(table, chunk_size=16).chunks())
    table["x1"][7] = 0.0
    table["rho01"][20] = 1.5
    with pytest.raises(ValueError, match=r"'rho01' lies outside \[-1, 1\] in rows \[20\]"):
        list(_open(table, chunk_size=16).chunks())
    with pytest.raises(ValueError, match="cannot stream format"):
        (tmp_path / "a.txt").write_text("x")
        open_catalogue(tmp_path / "a.txt", ["x0"])

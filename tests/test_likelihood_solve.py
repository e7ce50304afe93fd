"""SPD inverse and solve of bayesmix.likelihood (used by the EM M-step) against numpy."""

import jax
import numpy as np
import pytest

from bayesmix.likelihood import UNROLL_MAX_FEATURES, spd_inverse, spd_solve


def _spd(rng, shape, d):
    a = rng.normal(size=(*shape, d, d + 2))
    return a @ np.swapaxes(a, -1, -2) + 0.1 * np.eye(d)


# 1..8 take the unrolled path, 9 and 12 the looped one.
@pytest.mark.parametrize("d", [1, 2, 3, UNROLL_MAX_FEATURES, UNROLL_MAX_FEATURES + 1, 12])
def test_inverse_and_solves_match_numpy(d):
    rng = np.random.default_rng(d)
    a = _spd(rng, (4, 3), d)
    inv = np.asarray(spd_inverse(a))
    np.testing.assert_allclose(inv, np.linalg.inv(a), rtol=1e-9, atol=1e-11)
    np.testing.assert_array_equal(inv, np.swapaxes(inv, -1, -2))  # symmetric by construction
    b_mat = rng.normal(size=(4, 3, d, 5))
    np.testing.assert_allclose(spd_solve(a, b_mat), np.linalg.solve(a, b_mat),
                               rtol=1e-9, atol=1e-11)
    b_vec = rng.normal(size=(4, 3, d))
    np.testing.assert_allclose(spd_solve(a, b_vec), np.linalg.solve(a, b_vec[..., None])[..., 0],
                               rtol=1e-9, atol=1e-11)


def test_solve_broadcasts_and_jits():
    rng = np.random.default_rng(0)
    a = _spd(rng, (1, 4), 2)  # one row of matrices, broadcast against 6 right-hand sides
    b = rng.normal(size=(6, 4, 2, 2))
    x = jax.jit(spd_solve)(a, b)
    np.testing.assert_allclose(x, np.linalg.solve(np.broadcast_to(a, (6, 4, 2, 2)), b), rtol=1e-10)


@pytest.mark.parametrize("d", [2, UNROLL_MAX_FEATURES + 2])
def test_not_positive_definite_gives_nan(d):
    a = -np.eye(d)[None]
    assert np.isnan(np.asarray(spd_inverse(a))).any()
    assert np.isnan(np.asarray(spd_solve(a, np.ones((1, d))))).any()


def test_solve_rejects_mismatched_rows():
    with pytest.raises(ValueError, match="3 rows"):
        spd_solve(np.eye(3)[None], np.ones((1, 2, 4)))


@pytest.mark.timeout(60)
def test_matrix_rhs_solve_at_1e5_does_not_hang():
    # The shape of the M-step's T^-1 Sigma that deadlocked with batched LAPACK (issue 3).
    rng = np.random.default_rng(1)
    t = _spd(rng, (100_000, 3), 2)
    sigma = _spd(rng, (3,), 2)
    f = jax.jit(lambda t, s: spd_solve(t, s[None]))
    for _ in range(5):
        out = np.asarray(f(t, sigma))
    assert np.isfinite(out).all()

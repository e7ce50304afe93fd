"""The PSD check's fast path: Gershgorin bounds decide exactly as numpy's eigvalsh would."""

import numpy as np
import pytest

from bayesmix._covariances import smallest_eigenvalues
from bayesmix.likelihood import as_observations


def _covariance_zoo(rng, n, d):
    """Error covariances of every kind a check meets: well conditioned, strongly correlated,
    singular (a correlation of +-1 or a zero error), indefinite, and spanning 1e-8..1e8 in
    scale within one matrix."""
    sd = np.exp(rng.uniform(-1.0, 1.0, (n, d)))
    sd[: n // 8] *= np.exp(rng.uniform(-9.0, 9.0, (n // 8, d)))  # wide dynamic range
    a = rng.normal(size=(n, d, d))
    corr = a @ np.swapaxes(a, 1, 2) + np.eye(d) * rng.uniform(0.0, 20.0, (n, 1, 1))
    s = np.sqrt(np.einsum("nii->ni", corr))
    corr = corr / (s[:, :, None] * s[:, None, :])
    covs = corr * sd[:, :, None] * sd[:, None, :]
    k = n // 8
    if d == 1:
        covs[k:2 * k] = 0.0  # no error at all
        return covs
    covs[k:2 * k, 0, 1] = covs[k:2 * k, 1, 0] = sd[k:2 * k, 0] * sd[k:2 * k, 1]  # |rho| = 1 in a block
    covs[2 * k:3 * k, 0, :] = covs[2 * k:3 * k, :, 0] = 0.0  # a feature without error
    flip = np.arange(3 * k, 4 * k)
    covs[flip, 0, 1] = covs[flip, 1, 0] = 1.5 * sd[flip, 0] * sd[flip, 1]  # |rho| > 1: indefinite
    return covs


@pytest.mark.parametrize("d", [1, 2, 4, 7])
def test_smallest_eigenvalues_decide_as_eigvalsh(d):
    rng = np.random.default_rng(d)
    covs = _covariance_zoo(rng, 4000, d)
    scale = np.abs(covs).max(axis=(1, 2))
    tol = 1e-12 * scale
    exact = np.linalg.eigvalsh(covs)[:, 0]
    fast = smallest_eigenvalues(covs, tol)
    # Wherever it differs from the exact value it is a lower bound that clears 2 tol.
    differs = fast != exact
    assert (fast[differs] <= exact[differs] * (1 + 1e-12) + 1e-300).all()
    assert (fast[differs] > 2 * tol[differs]).all()
    # Both tests the package makes (semi-definite and definite) decide every row the same.
    np.testing.assert_array_equal(fast < -tol, exact < -tol)
    np.testing.assert_array_equal(fast <= tol, exact <= tol)


def test_typical_error_covariances_skip_eigvalsh_and_a_bad_star_is_still_named():
    """Covariances with |rho| <= 0.3 (as survey catalogues have) are settled by the bound alone;
    one indefinite covariance among them is still found and named."""
    rng = np.random.default_rng(0)
    n, d = 20000, 4
    sd = rng.uniform(0.2, 1.0, (n, d))
    corr = np.tile(np.eye(d), (n, 1, 1))
    for a in range(d):
        for b in range(a + 1, d):
            corr[:, a, b] = corr[:, b, a] = rng.uniform(-0.3, 0.3, n)
    covs = corr * sd[:, :, None] * sd[:, None, :]
    tol = 1e-12 * np.abs(covs).max(axis=(1, 2))
    settled = smallest_eigenvalues(covs, tol) != np.linalg.eigvalsh(covs)[:, 0]
    assert settled.all(), settled.mean()
    covs[12345, 1, 2] = covs[12345, 2, 1] = 1.2 * sd[12345, 1] * sd[12345, 2]
    with pytest.raises(ValueError, match=r"positive semi-definite; row\(s\) 12345 "):
        as_observations(rng.normal(size=(n, d)), covs)
    covs[12345, 1, 2] = covs[12345, 2, 1] = 0.0
    assert as_observations(rng.normal(size=(n, d)), covs).n_stars == n

"""Seeds and keys: an integer seed gives exactly ``jax.random.key(seed)``'s random numbers."""

import jax
import numpy as np
import pytest

from bayesmix._random import as_key


@pytest.mark.parametrize("seed", [0, 3, 2**32 - 1, 2**32, 2**40 + 12345, 2**63 - 1])
def test_a_seed_is_the_key_jax_makes_of_it(seed):
    # as_key wraps threefry's key data on the host instead of running jax.random.key's programs;
    # this fails if JAX ever derives a threefry key from a seed another way.
    key = as_key(seed)
    assert jax.random.key_impl(key) == jax.random.key_impl(jax.random.key(seed))
    np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(jax.random.key(seed)))
    np.testing.assert_array_equal(jax.random.normal(key, (3,)), jax.random.normal(jax.random.key(seed), (3,)))


def test_a_raw_key_and_a_typed_key_pass_through():
    typed = jax.random.key(7)
    assert as_key(typed) is typed
    raw = jax.random.PRNGKey(7)
    np.testing.assert_array_equal(jax.random.key_data(as_key(raw)), jax.random.key_data(typed))


@pytest.mark.parametrize("bad", [-1, 2**63, True, 1.5, "seed"])
def test_bad_seeds_are_refused_by_name(bad):
    with pytest.raises(ValueError, match="key"):
        as_key(bad)

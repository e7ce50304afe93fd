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


@pytest.mark.parametrize("partitionable", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2**32 + 5, 2**63 - 1])
@pytest.mark.parametrize("num", [1, 2, 5, 9, 1000])
def test_split_on_the_host_is_jax_random_split(partitionable, seed, num):
    # split_data reimplements threefry on the host; this fails if JAX ever splits keys another way.
    from bayesmix._random import split, split_data

    before = jax.config.jax_threefry_partitionable
    jax.config.update("jax_threefry_partitionable", partitionable)
    try:
        key = as_key(seed)
        expected = np.asarray(jax.random.key_data(jax.random.split(key, num)))
        got = split_data(key, num)
        assert got.dtype == np.uint32 and got.shape == (num, 2)
        np.testing.assert_array_equal(got, expected)
        keys = split(key, num)
        assert len(keys) == num and all(k.shape == () for k in keys)
        np.testing.assert_array_equal(np.stack([jax.random.key_data(k) for k in keys]), expected)
    finally:
        jax.config.update("jax_threefry_partitionable", before)


def test_split_runs_no_program_and_falls_back_for_other_keys():
    from bayesmix._random import split, split_data

    traces = []

    def listen(event, duration, **kwargs):
        if event.endswith("jaxpr_trace_duration"):
            traces.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        key_a, key_b = split(as_key(11), 2)
        data = split_data(as_key(12), 37)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert traces == []  # no program traced: nothing to lower, compile or load in a fresh process
    assert jax.random.key_impl(key_a) == jax.random.key_impl(key_b) == jax.random.key_impl(as_key(0))
    assert data.shape == (37, 2) and len(np.unique(data, axis=0)) == 37
    # Another PRNG implementation, and a key traced inside a program, go through jax.random.split.
    rbg = jax.random.key(3, impl="rbg")
    np.testing.assert_array_equal(split_data(rbg, 4), jax.random.key_data(jax.random.split(rbg, 4)))
    inside = jax.jit(lambda k: jax.random.key_data(jax.numpy.stack(split(k, 3))))(as_key(5))
    np.testing.assert_array_equal(inside, split_data(as_key(5), 3))

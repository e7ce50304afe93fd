"""Declared parameter constraints (bayesmix._constraints) and the one source of allowed values."""

import doctest
import re
from numbers import Integral, Real

import numpy as np
import pytest

from bayesmix import _choices, _constraints
from bayesmix._constraints import Boolean, Interval, Options, describe, is_satisfied, validate_params


def test_docstring_examples_hold():
    assert doctest.testmod(_constraints).failed == 0


@pytest.mark.parametrize(("constraint", "good", "bad"), [
    (Interval(Integral, 0, None), [0, 3, np.int64(7)], [-1, 2.0, True, np.True_, "1", None]),
    (Interval(Integral, 1, 1000), [1, 1000], [0, 1001, 4.0]),
    (Interval(Real, 0, None), [0, 0.0, 1e300, np.float32(2.5), 3],
     [-1e-300, float("nan"), float("inf"), False]),
    (Interval(Real, 0, 1, closed="neither"), [0.5, 1e-9], [0.0, 1.0, 1]),
    (Interval(Real, 0, 1, closed="left"), [0.0], [1.0]),
    (Interval(Real, 0, 1, closed="right"), [1.0], [0.0]),
    (Options(("em", "nuts")), ["em", np.str_("nuts")], ["mcmc", None, ["em"], np.array(["em", "em"])]),
    (Options((1, 2)), [1, np.int64(2)], [True, 3]),
    (Boolean(), [True, False, np.True_], [0, 1, "yes", None]),
])
def test_values_are_accepted_or_refused(constraint, good, bad):
    for value in good:
        assert constraint.is_satisfied_by(value), value
    for value in bad:
        assert not constraint.is_satisfied_by(value), value


@pytest.mark.parametrize(("allowed", "text"), [
    (Interval(Integral, 0, None), "a non-negative integer"),
    (Interval(Integral, 1, None), "a positive integer"),
    (Interval(Integral, 1, 1000), "an integer from 1 to 1000"),
    (Interval(Integral, 0, 10, closed="neither"), "an integer from 1 to 9"),
    (Interval(Integral, 100, None), "an integer >= 100"),
    (Interval(Integral, None, 5), "an integer <= 5"),
    (Interval(Integral), "an integer"),
    (Interval(Real, 0, None), "a finite number >= 0"),
    (Interval(Real, 0.0, None, closed="neither"), "a finite number > 0.0"),
    (Interval(Real, None, 1, closed="left"), "a finite number < 1"),
    (Interval(Real, 0, 1, closed="right"), "a finite number in (0, 1]"),
    (Interval(Real), "a finite number"),
    (Options(("a", "b")), "one of ('a', 'b')"),
    (Boolean(), "True or False"),
    ([Options(("a", "b")), None], "one of ('a', 'b') or None"),
    ([Interval(Real, 0, None), None], "a finite number >= 0 or None"),
])
def test_what_is_allowed_reads_as_text(allowed, text):
    assert describe(allowed) == text


def test_a_list_accepts_any_of_its_constraints():
    allowed = [Interval(Real, 0, None), None]
    assert is_satisfied(allowed, None) and is_satisfied(allowed, 1.5)
    assert not is_satisfied(allowed, -1.0) and not is_satisfied(Interval(Real, 0, None), None)


def test_the_error_names_where_the_parameter_the_value_and_what_is_allowed():
    constraints = {"n_init": Interval(Integral, 1, 1000, why=" Memory grows with n_init."),
                   "init": [Options(("auto", "given")), None]}
    validate_params(constraints, {"n_init": 4, "init": None, "unchecked": object()}, "fit_em")
    message = "fit_em: n_init must be an integer from 1 to 1000; got 100000. Memory grows with n_init."
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        validate_params(constraints, {"n_init": 100000, "init": None}, "fit_em")
    with pytest.raises(ValueError, match=r"^init must be one of \('auto', 'given'\) or None; got 'peaks'\.$"):
        validate_params(constraints, {"n_init": 1, "init": "peaks"})
    # A long wrong value is shown shortened.
    with pytest.raises(ValueError, match=r"got \[0, 1, 2, 3, 4, 5, \.\.\.\]\.$"):
        validate_params({"tol": Interval(Real, 0, None)}, {"tol": list(range(10**6))})


def test_bad_declarations_are_refused():
    with pytest.raises(TypeError, match="Interval type"):
        Interval(str, 0, 1)
    with pytest.raises(ValueError, match="closed must be one of"):
        Interval(Real, 0, 1, closed="open")
    with pytest.raises(ValueError, match="low 2 is above high 1"):
        Interval(Real, 2, 1)


def test_every_allowed_value_tuple_has_one_home():
    """config, em and the estimator use _choices' tuples themselves, not copies of them."""
    from bayesmix import config, em, estimator

    for name in _choices.__all__:
        assert isinstance(getattr(_choices, name), tuple) and getattr(_choices, name)
    for name in ("SIMULATIONS", "MODEL_KINDS", "ORDERINGS", "RADIUS_LAWS", "BACKGROUND_KINDS",
                 "CHAIN_METHODS", "EM_INITS", "DUPLICATES", "TABLE_FORMATS", "OUTPUT_TABLE_FORMATS"):
        assert getattr(config, name) is getattr(_choices, name)
    assert em._OPTION_CONSTRAINTS["init"][0].options == _choices.EM_INITS
    assert estimator._PARAMETER_CONSTRAINTS["method"].options == _choices.ESTIMATOR_METHODS


def test_owners_accept_exactly_the_allowed_values():
    """Owners that keep their own spelling of a tuple must agree with _choices."""
    from bayesmix.sampling import CHAIN_METHODS
    from bayesmix.simulate import NAMED_SIMULATIONS

    assert tuple(NAMED_SIMULATIONS) == _choices.SIMULATIONS
    assert CHAIN_METHODS == _choices.CHAIN_METHODS

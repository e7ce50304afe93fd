"""Parameter constraints as data, checked by one function at the boundary.

In the spirit of scikit-learn's ``_parameter_constraints``: an owner declares what each
of its parameters accepts, once, as a dict of constraints, and :func:`validate_params`
checks values against it before any work starts (never inside jit). The error names the
parameter, the value and what is allowed, so every boundary words its errors alike.

A parameter's constraint is one of

* :class:`Interval` -- a number of a type (integer or real) within bounds; real numbers
  must also be finite;
* :class:`Options` -- one of a tuple of values (the tuples live in :mod:`bayesmix._choices`);
* :class:`Boolean` -- True or False (numpy booleans too);
* ``None`` -- the value None;
* a list of these -- any of them.

Each constraint may carry ``why``: text appended to the error after its full stop (why
the bound exists, or how the options differ), starting with a space.

The module imports nothing heavy (numpy is looked up only once it is loaded), so the
JAX-free :mod:`bayesmix.config` can use it too.

Examples
--------
>>> from numbers import Integral, Real
>>> from bayesmix._constraints import Interval, Options, validate_params
>>> constraints = {"n_init": Interval(Integral, 1, None),
...                "tol": Interval(Real, 0, None),
...                "init": [Options(("auto", "given")), None]}
>>> validate_params(constraints, {"n_init": 4, "tol": 1e-3, "init": None}, "fit_em")
>>> validate_params(constraints, {"n_init": 0, "tol": 1e-3, "init": None}, "fit_em")
Traceback (most recent call last):
    ...
ValueError: fit_em: n_init must be a positive integer; got 0.
>>> validate_params(constraints, {"n_init": 4, "tol": 1e-3, "init": "peaks"}, "fit_em")
Traceback (most recent call last):
    ...
ValueError: fit_em: init must be one of ('auto', 'given') or None; got 'peaks'.
"""

from __future__ import annotations

import math
import numbers
import reprlib
import sys
from collections.abc import Mapping

__all__ = ["Boolean", "Constraint", "Interval", "Options", "describe", "is_satisfied", "validate_params"]

_CLOSED = ("both", "left", "right", "neither")
# Short reprs in messages: a wrong value may be a whole array.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxstring, _REPR.maxother = 3, 6, 60, 60


def _is_bool(value) -> bool:
    """Python or numpy boolean (a numpy boolean can exist only once numpy is imported)."""
    if isinstance(value, bool):
        return True
    np = sys.modules.get("numpy")
    return np is not None and isinstance(value, np.bool_)


def _equal(value, option) -> bool:
    """``value == option`` as one truth value: False for an array (which compares element by
    element) and for a boolean against a number (True would equal the option 1)."""
    if _is_bool(value) != _is_bool(option):
        return False
    try:
        equal = value == option
    except Exception:  # any value that cannot be compared is simply not an option
        return False
    return _is_bool(equal) and bool(equal)


class Constraint:
    """What one parameter accepts: :meth:`is_satisfied_by` tests a value, ``str()`` says
    what is allowed (completing "must be ..."), ``why`` is added to the error."""

    why: str = ""

    def is_satisfied_by(self, value) -> bool:
        raise NotImplementedError

    def __str__(self) -> str:
        raise NotImplementedError


class Interval(Constraint):
    """A number of ``type`` between ``low`` and ``high`` (None: unbounded on that side).

    Parameters
    ----------
    type : numbers.Integral, numbers.Real, int or float
        Integral: integers (numpy's too), never booleans. Real: any real number, which
        must also be finite (an infinite tolerance or scale is accepted by arithmetic but
        means nothing), never booleans.
    low, high : number or None
    closed : {"both", "left", "right", "neither"}
        Which bounds belong to the interval.
    why : str
        Appended to the error message after its full stop, e.g. " Memory grows with n_init."

    Examples
    --------
    >>> from numbers import Integral, Real
    >>> str(Interval(Integral, 0, None)), str(Interval(Integral, 1, 1000))
    ('a non-negative integer', 'an integer from 1 to 1000')
    >>> str(Interval(Real, 0, 1, closed="neither")), Interval(Real, 0, None).is_satisfied_by(float("inf"))
    ('a finite number in (0, 1)', False)
    """

    def __init__(self, type, low=None, high=None, *, closed="both", why=""):
        if type is int:
            type = numbers.Integral
        elif type is float:
            type = numbers.Real
        if type not in (numbers.Integral, numbers.Real):
            raise TypeError(f"Interval type must be numbers.Integral or numbers.Real; got {type!r}.")
        if closed not in _CLOSED:
            raise ValueError(f"closed must be one of {_CLOSED}; got {closed!r}.")
        if low is not None and high is not None and low > high:
            raise ValueError(f"Interval low {low} is above high {high}.")
        self.type, self.low, self.high, self.closed, self.why = type, low, high, closed, why

    def is_satisfied_by(self, value) -> bool:
        if _is_bool(value) or not isinstance(value, self.type):
            return False
        if self.type is numbers.Real and not math.isfinite(value):
            return False
        return self._above_low(value) and self._below_high(value)

    def _above_low(self, value) -> bool:
        if self.low is None:
            return True
        return value >= self.low if self.closed in ("both", "left") else value > self.low

    def _below_high(self, value) -> bool:
        if self.high is None:
            return True
        return value <= self.high if self.closed in ("both", "right") else value < self.high

    def __str__(self) -> str:
        low_in = self.closed in ("both", "left")
        high_in = self.closed in ("both", "right")
        if self.type is numbers.Integral:
            return self._integer_text(low_in, high_in)
        if self.low is not None and self.high is not None:
            return (f"a finite number in {'[' if low_in else '('}{self.low}, "
                    f"{self.high}{']' if high_in else ')'}")
        if self.low is not None:
            return f"a finite number {'>=' if low_in else '>'} {self.low}"
        if self.high is not None:
            return f"a finite number {'<=' if high_in else '<'} {self.high}"
        return "a finite number"

    def _integer_text(self, low_in, high_in) -> str:
        # Integer bounds are stated inclusively: "from 1 to 1000", "a positive integer".
        low = None if self.low is None else math.ceil(self.low) if low_in else math.floor(self.low) + 1
        high = None if self.high is None else math.floor(self.high) if high_in else math.ceil(self.high) - 1
        if low is not None and high is not None:
            return f"an integer from {low} to {high}"
        if low is not None:
            return {0: "a non-negative integer", 1: "a positive integer"}.get(low, f"an integer >= {low}")
        if high is not None:
            return f"an integer <= {high}"
        return "an integer"


class Options(Constraint):
    """One of ``options`` (compared by equality; the tuples live in :mod:`bayesmix._choices`).

    Examples
    --------
    >>> str(Options(("em", "nuts"))), Options(("em", "nuts")).is_satisfied_by("mcmc")
    ("one of ('em', 'nuts')", False)
    """

    def __init__(self, options, *, why=""):
        self.options, self.why = tuple(options), why

    def is_satisfied_by(self, value) -> bool:
        return any(_equal(value, option) for option in self.options)

    def __str__(self) -> str:
        return f"one of {self.options!r}"


class Boolean(Constraint):
    """True or False (a numpy boolean too)."""

    def __init__(self, *, why=""):
        self.why = why

    def is_satisfied_by(self, value) -> bool:
        return _is_bool(value)

    def __str__(self) -> str:
        return "True or False"


def _as_list(allowed) -> list:
    return list(allowed) if isinstance(allowed, (list, tuple)) else [allowed]


def is_satisfied(allowed, value) -> bool:
    """Whether ``value`` meets ``allowed`` (a constraint, None, or a list of them: any)."""
    return any(value is None if c is None else c.is_satisfied_by(value) for c in _as_list(allowed))


def describe(allowed) -> str:
    """What ``allowed`` accepts, completing "must be ...": ``"one of ('a', 'b') or None"``."""
    return " or ".join("None" if c is None else str(c) for c in _as_list(allowed))


def validate_params(constraints: Mapping, values: Mapping, where: str = "") -> None:
    """Check every value against its declared constraint; raise on the first that fails.

    Parameters
    ----------
    constraints : mapping of str to constraint
        Parameter name -> :class:`Constraint`, None (the value None) or a list of them
        (any of them). Parameters are checked in this mapping's order.
    values : mapping of str to object
        Parameter name -> value; every name in ``constraints`` must be present.
    where : str
        Who takes the parameters (``"fit_em"``, ``"DeconvolvedGaussianMixture"``); it
        starts the message. Empty: no prefix.

    Raises
    ------
    ValueError
        ``"<where>: <name> must be <what is allowed>; got <value>.<why>"``.
    """
    for name, allowed in constraints.items():
        value = values[name]
        if is_satisfied(allowed, value):
            continue
        why = "".join(c.why for c in _as_list(allowed) if c is not None)
        prefix = f"{where}: " if where else ""
        raise ValueError(f"{prefix}{name} must be {describe(allowed)}; got {_REPR.repr(value)}.{why}")

"""Run specifications as data: the ``models/*.toml`` files behind ``bayesmix fit`` and ``scan``.

A spec is a tree of frozen dataclasses (:class:`RunSpec` holding :class:`DataSpec`,
:class:`ModelSpec`, :class:`EMSpec`, :class:`SamplerSpec`, :class:`OutputSpec` and
:class:`ScanSpec`). :func:`load_spec` reads TOML and checks it key by key: an unknown
key, a wrong type or a value outside its allowed set is a :class:`SpecError` naming the
key (``[model] n_components``) and what is allowed. :meth:`RunSpec.to_dict` and
:meth:`RunSpec.from_dict` round-trip, so the spec written into every output's
provenance rebuilds the run.

A minimal spec::

    [data]
    path = "{shared_data}/baumgardt_gc_rv/appendix_combined_table.txt"
    values = ["RV"]
    errors = ["E_RV"]
    covariates = ["DCEN"]
    select = { Cluster = "NGC 288" }

    [model]
    kind = "cluster-field"
    radius_fraction = { covariate = "DCEN" }

Relative paths are relative to the spec file's folder; ``{shared_data}`` is
``$BAYESMIX_SHARED_DATA`` or else ``../shared/data`` beside the folder that holds the
spec's folder (the layout of this repository's ``models/``). TOML has no null: leave a
key out for "default".
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import os
import re
import reprlib
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# The allowed values of the spec's options live with bayesmix's others (one source); they are
# also importable from here (the CLI takes SIMULATIONS from config).
from bayesmix._choices import (
    BACKGROUND_KINDS,
    CHAIN_METHODS,
    DISPERSION_PROFILES,
    DUPLICATES,
    EM_INITS,
    FOOTPRINT_KINDS,
    GROUP_FIELDS,
    LIKELIHOOD_PRECISIONS,
    MISSING_FEATURES,
    MODEL_KINDS,
    ORDERINGS,
    OUTPUT_TABLE_FORMATS,
    RADIUS_LAWS,
    SELECT_OPERATORS,
    SIMULATIONS,
    SKY_UNITS,
    SPATIAL_PROFILES,
    TABLE_FORMATS,
)

__all__ = [
    "BackgroundSpec",
    "CheckSpec",
    "ComponentPriorSpec",
    "DataSpec",
    "DispersionProfileSpec",
    "EMSpec",
    "GroupsSpec",
    "ModelSpec",
    "OutputSpec",
    "PriorSpec",
    "RadiusFractionSpec",
    "RunSpec",
    "SamplerSpec",
    "ScanSpec",
    "SkySpec",
    "SpatialSpec",
    "SpecError",
    "VelocityGradientSpec",
    "load_spec",
    "parse_k_range",
]


# Bounds on settings whose memory grows with them (audit rows 106, 107). They live here, in
# the module without JAX, so that the estimator and the simulators enforce the same numbers.
MAX_EM_STARTS = 1000
MAX_SIMULATED_STARS = 100_000_000
# The membership intervals are the 16th and 84th percentiles over the draws: with 20 draws
# at least 3 lie beyond each (0.16 * 20 = 3.2); with fewer, one or two draws set an
# interval, and with one draw p16 = p84 = the mean (audit row 80).
MIN_MEMBERSHIP_DRAWS = 20
_STARTS_WHY = (": all EM starts run at once, each with its own per-star "
               "working arrays, so memory grows with their number (100000 starts passed 3 GB); a few to "
               "tens of starts find the optimum")
# A run's name is part of its default output folder, so it must not hold a path (rows 103, 157).
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
# Short reprs in messages: a value may be a huge or deeply nested array (row 96).
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxstring, _REPR.maxother = 3, 6, 60, 60


class SpecError(ValueError):
    """A run specification is invalid.

    Attributes
    ----------
    key : str
        Where, as ``[section] key`` (or the file).
    """

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


# --------------------------------------------------------------------------- value checks
# Each check takes (value, where) and returns the normalised value or raises SpecError.


def _show(value) -> str:
    """``repr(value)``, shortened (a spec value may be huge or nested thousands deep)."""
    return _REPR.repr(value)


def simulation_bytes(n_stars: int, n_features: int = 1) -> int:
    """Peak memory of a simulated catalogue, in bytes.

    Measured on :func:`bayesmix.simulate.simulate_named`: about 220 bytes per star with
    one feature and 500 with two (the disc's error covariances); the estimate grows with
    the square of the number of features, as the covariances do.
    """
    return int(n_stars) * (100 + 120 * int(n_features) ** 2)


def _bytes_text(n_bytes: int) -> str:
    """``22 TB``: three significant digits in the largest decimal unit that fits."""
    units = ("bytes", "kB", "MB", "GB", "TB", "PB")
    power = min(len(units) - 1, (len(str(max(int(n_bytes), 1))) - 1) // 3)
    return f"{n_bytes / 1000**power:.3g} {units[power]}"


def simulated_stars_problem(n_stars: int, n_features: int = 1) -> str | None:
    """Why ``n_stars`` is too many to simulate (a message fragment), or None when it is not.

    Above :data:`MAX_SIMULATED_STARS` the catalogue would not fit in memory, and JAX
    aborts the process (SIGABRT) instead of raising, so the bound is checked first.
    """
    if int(n_stars) <= MAX_SIMULATED_STARS:
        return None
    return (f"must be at most {MAX_SIMULATED_STARS} (1e8); got {int(n_stars)}, which would need about "
            f"{_bytes_text(simulation_bytes(n_stars, n_features))} of memory "
            f"(about {simulation_bytes(1, n_features)} bytes per star)")


def _type_name(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)


def _string(choices=None):
    def check(value, where):
        if not isinstance(value, str):
            raise SpecError(where, f"must be a string; got {_type_name(value)} ({_show(value)}).")
        if choices is not None and value not in choices:
            hint = difflib.get_close_matches(value, choices, n=1)
            raise SpecError(where, f"{_show(value)} is not allowed; use one of {list(choices)}"
                                   + (f" (did you mean {hint[0]!r}?)" if hint else "") + ".")
        return value
    return check


def _integer(minimum=None, maximum=None, why=""):
    """An integer in ``[minimum, maximum]``; ``why`` (": ...") is added to a bound's message."""
    def check(value, where):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(where, f"must be an integer; got {_type_name(value)} ({_show(value)}).")
        if minimum is not None and value < minimum:
            raise SpecError(where, f"must be at least {minimum}; got {value}{why}.")
        if maximum is not None and value > maximum:
            raise SpecError(where, f"must be at most {maximum}; got {value}{why}.")
        return value
    return check


def _number(low=None, high=None, open_low=False, open_high=False, finite=True):
    """A number in the given bounds; ``finite=False`` lets -inf / inf through (open sides)."""
    def check(value, where):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(where, f"must be a number; got {_type_name(value)} ({_show(value)}).")
        value = float(value)
        if math.isnan(value):
            raise SpecError(where, "must be a number, not nan.")
        if finite and math.isinf(value):
            # An infinite prior location, tolerance or scale is accepted by the arithmetic
            # but means nothing (NaN densities, EM stopping at once): refuse it here.
            raise SpecError(where, f"must be a finite number; got {value}.")
        if low is not None and (value <= low if open_low else value < low):
            raise SpecError(where, f"must be {'>' if open_low else '>='} {low}; got {value}.")
        if high is not None and (value >= high if open_high else value > high):
            raise SpecError(where, f"must be {'<' if open_high else '<='} {high}; got {value}.")
        return value
    return check


def _boolean(value, where):
    if not isinstance(value, bool):
        raise SpecError(where, f"must be true or false; got {_type_name(value)} ({_show(value)}).")
    return value


def _strings(min_length=0):
    def check(value, where):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SpecError(where, f"must be an array of strings; got {_show(value)}.")
        if len(value) < min_length:
            raise SpecError(where, f"needs at least {min_length} entr{'y' if min_length == 1 else 'ies'}.")
        if len(set(value)) != len(value):
            raise SpecError(where, f"lists a name twice: {value}.")
        return tuple(value)
    return check


def _numbers(value, where, finite=True):
    """A number or an array of numbers (per-feature settings)."""
    number = _number(finite=finite)
    if isinstance(value, list):
        return tuple(number(v, f"{where}[{i}]") for i, v in enumerate(value))
    return number(value, where)


def _numbers_or_infinite(value, where):
    """Like :func:`_numbers`, but -inf / inf pass (for keys that say what they mean themselves)."""
    return _numbers(value, where, finite=False)


def _positive_numbers(value, where):
    """A positive number or an array of positive numbers (per-feature scales)."""
    if isinstance(value, list):
        return tuple(_number(0.0, open_low=True)(v, f"{where}[{i}]") for i, v in enumerate(value))
    return _number(0.0, open_low=True)(value, where)


def _rows(positive=False):
    """One row of numbers per component: ``[[...], [...]]``, or a flat array for one feature."""
    def check(value, where):
        if not isinstance(value, list) or not value:
            raise SpecError(where, "must be an array with one entry per component, e.g. [[-45.0], [0.0]] "
                                   "(or [-45.0, 0.0] for one feature).")
        number = _number(0.0, open_low=True) if positive else _number()
        rows = []
        for i, row in enumerate(value):
            row = row if isinstance(row, list) else [row]
            rows.append(tuple(number(v, f"{where}[{i}]") for v in row))
        if len({len(r) for r in rows}) != 1:
            raise SpecError(where, "rows must have one value per feature each; got lengths "
                                   f"{[len(r) for r in rows]}.")
        return tuple(rows)
    return check


def _weights(value, where):
    if not isinstance(value, list) or not value:
        raise SpecError(where, "must be an array of weights, one per component, e.g. [0.2, 0.8].")
    weights = tuple(_number(0.0, open_low=True)(v, f"{where}[{i}]") for i, v in enumerate(value))
    return weights


def _matrix(value, where):
    if not isinstance(value, list) or not value or not all(isinstance(row, list) for row in value):
        raise SpecError(where, "must be a square array of arrays of numbers, e.g. [[1.0, 0.0], [0.0, 1.0]].")
    rows = tuple(tuple(_number()(v, f"{where}[{i}][{j}]") for j, v in enumerate(row))
                 for i, row in enumerate(value))
    if any(len(r) != len(rows) for r in rows):
        raise SpecError(where, f"must be square; got rows of lengths {[len(r) for r in rows]}.")
    return rows


def _plain_name(value, where):
    """A run name: it becomes part of a folder name, so no path and no leading dot."""
    value = _string()(value, where)
    if not _PLAIN_NAME.fullmatch(value):
        raise SpecError(where, f"{_show(value)} is not a plain name: use 1 to 100 letters, digits, '.', "
                               "'_' or '-', not starting with '.' (no '/' or '\\'). The name is part of the "
                               "default output folder bayesmix-output-<name>-seed<seed>; to write "
                               "elsewhere, set [output] directory.")
    return value


def _feature(value, where):
    """A feature given by name (a value column) or by index."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise SpecError(where, f"must be a value column name or a feature index; got {_show(value)}.")
    if isinstance(value, int) and value < 0:
        raise SpecError(where, f"a feature index must be >= 0; got {value}.")
    return value


def _scalar_mapping(value, where):
    """``{column: value, [values] or {operator = operand, ...}}`` (selections).

    The operators are :data:`~bayesmix._choices.SELECT_OPERATORS`: ``glob`` and ``regex``
    take a pattern (string), the comparisons a number (``==`` and ``!=`` also a string).
    """
    if not isinstance(value, dict):
        raise SpecError(where, f"must be a table {{column = value}}; got {_show(value)}.")
    out = {}
    for col, wanted in value.items():
        if isinstance(wanted, list):
            if not wanted or not all(isinstance(w, (str, int, float)) for w in wanted):
                raise SpecError(f"{where}.{col}", "must be a value or a non-empty array of values.")
            wanted = tuple(wanted)
        elif isinstance(wanted, dict):
            wanted = _select_condition(wanted, f"{where}.{col}")
        elif not isinstance(wanted, (str, int, float)):
            raise SpecError(f"{where}.{col}", "must be a string, a number, an array of them or a table "
                                              f"{{glob = ..., regex = ..., \">=\" = ...}}; got "
                                              f"{_show(wanted)}.")
        out[col] = wanted
    return out


def _select_condition(table: dict, where: str) -> dict:
    """One column's ``{operator = operand}`` selection, each operand checked (all are ANDed)."""
    if not table:
        raise SpecError(where, f"an empty table selects nothing; give one of {list(SELECT_OPERATORS)}.")
    out = {}
    for op, operand in table.items():
        at = f"{where}.{op}" if op.isidentifier() else f'{where}."{op}"'
        if op not in SELECT_OPERATORS:
            raise SpecError(at, f"unknown operator {op!r}; use one of {list(SELECT_OPERATORS)} "
                                "(quote the comparisons: { \">=\" = 0.5 }).")
        if op in ("glob", "regex"):
            operand = _string()(operand, at)
            if op == "regex":
                try:
                    re.compile(operand)
                except re.error as exc:
                    raise SpecError(at, f"{operand!r} is not a valid regular expression ({exc}).") from None
        elif op in ("==", "!=") and isinstance(operand, str):
            pass
        else:
            operand = _number(finite=False)(operand, at)
        out[op] = operand
    return out


def _centre(value, where):
    """``[ra_deg, dec_deg]`` or a position string astropy parses (kept verbatim, so it round-trips)."""
    if isinstance(value, str):
        from bayesmix.sky import parse_centre  # astropy, only for specs that give a string centre

        try:
            parse_centre(value)
        except ValueError as exc:
            raise SpecError(where, str(exc)) from None
        return value
    if not isinstance(value, list) or len(value) != 2:
        raise SpecError(where, f"must be [ra_deg, dec_deg] or a string such as \"00h52m45.2s -26d34m57s\"; "
                               f"got {_show(value)}.")
    ra = _number()(value[0], f"{where}[0]")
    dec = _number(-90.0, 90.0)(value[1], f"{where}[1]")
    return (ra, dec)


def _missing(value, where):
    # A catalogue may mark missing entries with inf, so the sentinels may be infinite.
    if isinstance(value, dict):
        return {col: _numbers_or_infinite(v, f"{where}.{col}") for col, v in value.items()}
    return _numbers_or_infinite(value, where)


def _error_floor(value, where):
    if isinstance(value, dict):
        return {col: _number(0.0, open_low=True)(v, f"{where}.{col}") for col, v in value.items()}
    return _number(0.0, open_low=True)(value, where)


def _ranges(value, where):
    if not isinstance(value, dict):
        raise SpecError(where, "must be a table {column = [low, high]} (use -inf / inf for an open side).")
    out = {}
    for col, pair in value.items():
        if not isinstance(pair, list) or len(pair) != 2:
            raise SpecError(f"{where}.{col}", f"must be [low, high] (use -inf / inf for an open side); "
                                              f"got {_show(pair)}.")
        low, high = (_number(finite=False)(v, f"{where}.{col}") for v in pair)
        if low > high:
            raise SpecError(f"{where}.{col}", f"low {low} is above high {high}.")
        out[col] = (low, high)
    return out


def _error_columns(value, where):
    """Error columns in the order of ``values``; "" marks an error-free feature (TOML has no null)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SpecError(where, "must be an array of column names (\"\" for an error-free feature); "
                               f"got {_show(value)}.")
    return tuple(value)


def _correlations(value, where):
    if not isinstance(value, list):
        raise SpecError(where, 'must be an array of [value_a, value_b, column] triples, e.g. '
                               '[["FeH", "MgFe", "rho_FeH_MgFe"]].')
    out = []
    for i, triple in enumerate(value):
        if not isinstance(triple, list) or len(triple) != 3 or not all(isinstance(t, str) for t in triple):
            raise SpecError(f"{where}[{i}]", f"must be [value_a, value_b, column]; got {_show(triple)}.")
        out.append(tuple(triple))
    return tuple(out)


def _k_range(value, where):
    if isinstance(value, str):
        try:
            return parse_k_range(value)
        except ValueError as exc:
            raise SpecError(where, str(exc)) from None
    if (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                            for v in value) and 1 <= value[0] <= value[1]):
        return tuple(value)
    raise SpecError(where, "must be [k_min, k_max] with 1 <= k_min <= k_max, or \"1..8\"; "
                           f"got {_show(value)}.")


def parse_k_range(text: str) -> tuple[int, int]:
    """``"1..8"`` (or ``"3"``) -> ``(1, 8)``; a ValueError says what is accepted."""
    parts = text.split("..")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or not 1 <= values[0] <= values[1]:
        raise ValueError(f"K range {text!r} must look like 1..8 (k_min..k_max, 1 <= k_min <= k_max) or 3.")
    return values[0], values[1]


def _field(default=dataclasses.MISSING, check=None, section=None, doc=""):
    metadata = {"check": check, "section": section, "doc": doc}
    if section is not None and default is dataclasses.MISSING:  # a section of defaults
        return dataclasses.field(default_factory=section, metadata=metadata)
    if default is dataclasses.MISSING:  # required key
        return dataclasses.field(metadata=metadata)
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# --------------------------------------------------------------------------- the spec tree


@dataclasses.dataclass(frozen=True)
class SkySpec:
    """``[data.sky]``: RA/Dec columns -> offsets and radii about a centre (:mod:`bayesmix.sky`).

    The catalogue gains the columns ``xi``, ``eta``, ``R``, ``R_ell`` (and ``R_over_Rh``
    with ``half_light_radius``), each with ``prefix`` in front, as covariates: name one in
    ``[model.radius_fraction] covariate``.
    """

    ra: str = _field(check=_string(), doc="RA column (degrees, hours with a unit, or sexagesimal text)")
    dec: str = _field(check=_string(), doc="Dec column")
    centre: Any = _field(check=_centre, doc="[ra_deg, dec_deg] or \"00h52m45.2s -26d34m57s\"")
    ellipticity: float = _field(0.0, _number(0.0, 1.0, open_high=True), doc="1 - b/a")
    position_angle: float = _field(0.0, _number(), doc="of the major axis, degrees east of north")
    unit: str = _field("arcmin", _string(SKY_UNITS), doc="unit of the added offsets and radii")
    half_light_radius: float | None = _field(None, _number(0.0, open_low=True), doc="in unit")
    prefix: str = _field("", _string(), doc="put before the added column names")

    def column_names(self) -> tuple[str, ...]:
        """The columns the reader adds."""
        names = ("xi", "eta", "R", "R_ell") + (("R_over_Rh",) if self.half_light_radius is not None else ())
        return tuple(self.prefix + n for n in names)


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """``[data]``: where the stars come from and which rows and columns are used.

    Either ``path`` (a catalogue file) or ``simulate`` (``"cluster-field"`` or
    ``"disc"``, with ``n_stars``). The other keys are the arguments of
    :func:`bayesmix.catalogue.read_catalogue` of the same names; they apply to a file
    only, so a simulated catalogue refuses them (they would be silently ignored).
    ``n_stars`` is at most :data:`MAX_SIMULATED_STARS` (1e8): a simulation is held in
    memory, about 220 bytes per star (500 for ``"disc"``), and beyond that JAX aborts
    the process instead of raising.
    """

    path: str | None = _field(None, _string(), doc="catalogue file")
    simulate: str | None = _field(None, _string(SIMULATIONS), doc="simulated catalogue instead of a file")
    n_stars: int | None = _field(None, _integer(1), doc="stars to simulate")
    format: str | None = _field(None, _string(TABLE_FORMATS),
                                doc="table format when the file name does not say (astropy's format names)")
    layout: str | None = _field(None, _string(),
                                doc="a known fixed-width layout (bayesmix.catalogue.LAYOUTS)")
    values: tuple = _field((), _strings(), doc="fitted value columns")
    errors: tuple | None = _field(None, _error_columns, doc="standard-error columns, in the order of values")
    correlations: tuple = _field((), _correlations, doc="error correlation columns between two value columns")
    error_cov_column: str | None = _field(None, _string(),
                                          doc="one column holding each star's whole error covariance matrix")
    id_column: str | None = _field(None, _string(),
                                   doc="star identifier column (repeat epochs, duplicates, outputs)")
    covariates: tuple = _field((), _strings(),
                               doc="extra columns carried to the model and outputs (e.g. a radius)")
    select: dict = _field({}, _scalar_mapping,
                          doc="keep rows whose columns match (equality, lists, glob, regex, comparisons)")
    zero_flags: tuple = _field((), _strings(), doc="flag columns that must be 0")
    missing: Any = _field(None, _missing,
                          doc="sentinel values that mean \"missing\" (compared in the column's precision)")
    ranges: dict = _field({}, _ranges, doc="keep rows with low <= column <= high")
    drop_nonfinite: bool = _field(False, _boolean,
                                  doc="drop rows with NaN, inf or blanks in used columns (else an error)")
    error_floor: Any = _field(None, _error_floor,
                              doc="raise errors below this floor to it (counted in the drop report)")
    duplicates: str = _field("error", _string(DUPLICATES),
                             doc="repeated ids: raise, keep the first / best-measured, or combine epochs")
    drop_variable_p: float | None = _field(None, _number(0.0, 1.0, open_low=True, open_high=True),
                                           doc="drop stars whose combined epochs disagree (p below this)")
    missing_features: str = _field("drop", _string(MISSING_FEATURES),
                                   doc="stars missing some features: drop them, or keep them and marginalise")
    sky: SkySpec | None = _field(None, section=SkySpec)

    def _validate(self, where):
        self._validate_epochs(where)
        if (self.path is None) == (self.simulate is None):
            raise SpecError(where, "give exactly one of path (a catalogue file) or simulate "
                                   f"(one of {list(SIMULATIONS)}).")
        if self.path is not None and not self.values:
            raise SpecError(f"{where} values", "name the value column(s) to fit, e.g. values = [\"RV\"].")
        if self.simulate is not None and self.values:
            raise SpecError(f"{where} values", "a simulated catalogue has its own columns; leave values out.")
        if self.n_stars is not None and self.simulate is None:
            raise SpecError(f"{where} n_stars", "only applies to simulate = ...; a file's rows are chosen "
                                                "with select / ranges.")
        if self.simulate is not None:
            self._validate_simulation(where)
        if self.errors is not None and len(self.errors) != len(self.values):
            raise SpecError(f"{where} errors", f"has {len(self.errors)} column(s) for {len(self.values)} "
                                               f"value column(s) {list(self.values)}; give one per value "
                                               "column (\"\" for an error-free one).")

    def _validate_epochs(self, where):
        if self.drop_variable_p is not None and self.duplicates != "combine":
            raise SpecError(f"{where} drop_variable_p", "applies to combined repeat epochs only; set "
                                                        "duplicates = \"combine\" or leave it out.")
        if self.duplicates == "combine" and self.path is not None and self.id_column is None:
            raise SpecError(f"{where} duplicates", "\"combine\" merges the rows of each star: name its "
                                                   "column with id_column = \"...\".")

    def _validate_simulation(self, where):
        for f in dataclasses.fields(self):
            if f.name in ("path", "simulate", "n_stars", "values"):
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if getattr(self, f.name) != default:
                raise SpecError(f"{where} {f.name}",
                                f"only applies to a catalogue file (path = ...); a simulated catalogue "
                                f"(simulate = {self.simulate!r}) has its own columns and rows, so leave it "
                                "out.")
        if self.n_stars is not None:
            problem = simulated_stars_problem(self.n_stars, 2 if self.simulate == "disc" else 1)
            if problem is not None:
                raise SpecError(f"{where} n_stars", f"{problem}; a simulation is held in memory.")


@dataclasses.dataclass(frozen=True)
class ComponentPriorSpec:
    """``[model.priors.<component>]``: one component's priors (:class:`bayesmix.models.ComponentPrior`).

    For example a literature systemic velocity and a cold dispersion for the cluster::

        [model.priors.cluster]
        mean_loc = -44.8
        mean_scale = 2.0
        scale_scale = 10.0
    """

    mean_loc: Any = _field(None, _numbers, doc="Normal prior mean of this component's mean (per feature)")
    mean_scale: Any = _field(None, _positive_numbers, doc="Normal prior sd of this component's mean")
    scale_scale: Any = _field(None, _positive_numbers,
                              doc="HalfNormal prior scale of this component's dispersion")


@dataclasses.dataclass(frozen=True)
class PriorSpec:
    """``[model.priors]``: the arguments of :class:`bayesmix.models.Priors`.

    A sub-table named after a component (``[model.priors.cluster]``) holds that
    component's own priors (:class:`ComponentPriorSpec`); the names are checked against
    the model's components when the spec is read.
    """

    weight_concentration: float = _field(1.0, _number(0.0, open_low=True),
                                         doc="Dirichlet concentration of the weights")
    mean_loc: Any = _field(None, _numbers,
                           doc="Normal prior mean of every component's mean (default: the data's centre)")
    mean_scale: Any = _field(None, _positive_numbers,
                             doc="Normal prior sd of the means (default: scaled to the data's spread)")
    scale_scale: Any = _field(None, _positive_numbers,
                              doc="HalfNormal prior scale of the dispersions (default: scaled to the data)")
    lkj_concentration: float = _field(2.0, _number(0.0, open_low=True),
                                      doc="LKJ concentration of the correlations (D > 1)")
    frac_loc: float = _field(0.0, _number(),
                             doc="Normal prior mean of the radius law's logit member fraction")
    frac_scale: float = _field(2.5, _number(0.0, open_low=True),
                               doc="Normal prior sd of the radius law's parameters")
    components: dict = _field({}, doc="per-component priors, from sub-tables", section=ComponentPriorSpec)

    # Sub-tables with names that are not keys are component priors (see _build).
    _EXTRA_TABLES = "components"


@dataclasses.dataclass(frozen=True)
class RadiusFractionSpec:
    """``[model.radius_fraction]``: a member fraction that follows projected radius (K = 2)."""

    covariate: str = _field(check=_string(),
                            doc="the radius covariate (listed in [data] covariates or a [data.sky] column)")
    kind: str = _field("logistic", _string(RADIUS_LAWS),
                       doc="logistic in log radius, or a Plummer member profile over a flat field")
    reference_radius: float | None = _field(None, _number(0.0, open_low=True),
                                            doc="radius the law is centred on (default: the median radius)")


def _vertices(value, where):
    """``[[xi, eta], ...]``: at least 3 finite pairs."""
    if not isinstance(value, list) or len(value) < 3 or not all(isinstance(v, list) and len(v) == 2
                                                                 for v in value):
        raise SpecError(where, f"must be at least 3 [xi, eta] pairs, e.g. [[-10, -10], [10, -10], [0, 12]]; "
                               f"got {_show(value)}.")
    return tuple(tuple(_number()(c, f"{where}[{i}][{j}]") for j, c in enumerate(v))
                 for i, v in enumerate(value))


def _pair(value, where):
    if not isinstance(value, list) or len(value) != 2:
        raise SpecError(where, f"must be [xi, eta]; got {_show(value)}.")
    return tuple(_number()(c, f"{where}[{j}]") for j, c in enumerate(value))


@dataclasses.dataclass(frozen=True)
class SpatialSpec:
    """``[model.spatial]``: member and field position densities (:class:`bayesmix.models.SpatialLaw`).

    Members follow a projected ``profile`` in the covariates ``xi``, ``eta`` (offsets from
    the cluster centre, e.g. from ``[data.sky]``), the field is uniform over the
    ``footprint``: a ``"circle"`` (``footprint_radius``, ``footprint_centre``), a
    ``"polygon"`` (``footprint_vertices``) or the convex ``"hull"`` of the positions.
    ``scale_radius`` fixes the scale radius (leave it out to sample it with a LogNormal
    prior of median ``scale_radius_loc`` and log sd ``scale_radius_log_sd``);
    ``fit_shape = true`` samples the ellipticity and position angle, otherwise they are
    fixed at ``ellipticity`` and ``position_angle`` (degrees north through east).
    """

    profile: str = _field("plummer", _string(SPATIAL_PROFILES),
                          doc="projected surface density of the members")
    xi: str = _field("xi", _string(), doc="covariate of the offset east of the centre")
    eta: str = _field("eta", _string(), doc="covariate of the offset north of the centre")
    footprint: str = _field("hull", _string(FOOTPRINT_KINDS),
                            doc="where the field is uniform: a circle, a polygon or the convex hull")
    footprint_radius: float | None = _field(None, _number(0.0, open_low=True),
                                            doc="circle footprint: radius (units of xi, eta)")
    footprint_centre: tuple = _field((0.0, 0.0), _pair, doc="circle footprint: centre")
    footprint_vertices: tuple | None = _field(None, _vertices, doc="polygon footprint: vertices")
    scale_radius: float | None = _field(None, _number(0.0, open_low=True),
                                        doc="fixes the profile's scale radius (else sampled)")
    scale_radius_loc: float | None = _field(None, _number(0.0, open_low=True),
                                            doc="median of the sampled scale radius' LogNormal prior")
    scale_radius_log_sd: float = _field(1.0, _number(0.0, open_low=True), doc="log sd of that prior")
    ellipticity: float = _field(0.0, _number(0.0, 0.95, open_high=True),
                                doc="1 - b/a of the member profile (fixed unless fit_shape)")
    position_angle: float = _field(0.0, _number(),
                                   doc="of the major axis, degrees north through east (unless fit_shape)")
    fit_shape: bool = _field(False, _boolean, doc="sample the ellipticity and position angle")

    def _validate(self, where):
        if self.footprint == "circle" and self.footprint_radius is None:
            raise SpecError(f"{where} footprint_radius", "a circular footprint needs its radius (in the "
                                                         "units of xi and eta).")
        if self.footprint == "polygon" and self.footprint_vertices is None:
            raise SpecError(f"{where} footprint_vertices", "a polygon footprint needs its vertices, "
                                                           "[[xi, eta], ...].")
        if self.footprint != "circle" and self.footprint_radius is not None:
            raise SpecError(f"{where} footprint_radius", f"applies to footprint = \"circle\" only (now "
                                                         f"{self.footprint!r}).")
        if self.footprint != "polygon" and self.footprint_vertices is not None:
            raise SpecError(f"{where} footprint_vertices", f"applies to footprint = \"polygon\" only (now "
                                                           f"{self.footprint!r}).")
        if self.scale_radius is not None and self.scale_radius_loc is not None:
            raise SpecError(f"{where} scale_radius_loc", "is the prior of a sampled scale radius; "
                                                         "scale_radius fixes it. Give one of them.")

    def covariate_names(self) -> tuple[str, ...]:
        return (self.xi, self.eta)


@dataclasses.dataclass(frozen=True)
class DispersionProfileSpec:
    """``[model.dispersion_profile]``: the cluster's dispersion against projected radius.

    ``kind = "power_law"``: ``sigma(R) = sigma_ref (R / R_ref)^gamma`` (``reference_radius``
    default the median radius, ``slope_scale`` the Normal prior sd of gamma);
    ``kind = "bins"``: one dispersion per radius bin (``bin_edges``, increasing), each with a
    HalfNormal prior of scale ``bin_scales`` (one number, or one per bin).
    """

    covariate: str = _field(check=_string(), doc="the radius covariate")
    kind: str = _field("power_law", _string(DISPERSION_PROFILES),
                       doc="a power law in radius, or one dispersion per radius bin")
    reference_radius: float | None = _field(None, _number(0.0, open_low=True),
                                            doc="power law: R_ref (default the median radius)")
    slope_scale: float = _field(1.0, _number(0.0, open_low=True),
                                doc="power law: Normal prior sd of the slope gamma")
    bin_edges: tuple | None = _field(None, _numbers, doc="bins: increasing radii")
    bin_scales: Any = _field(None, _positive_numbers,
                             doc="bins: HalfNormal prior scale (one, or one per bin)")

    def _validate(self, where):
        if self.kind == "bins":
            self._validate_bins(where)
        else:
            for name in ("bin_edges", "bin_scales"):
                if getattr(self, name) is not None:
                    raise SpecError(f"{where} {name}", "applies to kind = \"bins\" only.")

    def _validate_bins(self, where):
        edges = self.bin_edges if isinstance(self.bin_edges, tuple) else ()
        if len(edges) < 2 or any(b <= a for a, b in itertools.pairwise(edges)):
            raise SpecError(f"{where} bin_edges", "kind = \"bins\" needs at least 2 increasing radii; "
                                                  f"got {_show(self.bin_edges)}.")
        if isinstance(self.bin_scales, tuple) and len(self.bin_scales) != len(edges) - 1:
            raise SpecError(f"{where} bin_scales", f"has {len(self.bin_scales)} entries for {len(edges) - 1} "
                                                   "bins; give one number or one per bin.")
        if self.reference_radius is not None:
            raise SpecError(f"{where} reference_radius", "applies to kind = \"power_law\" only.")


@dataclasses.dataclass(frozen=True)
class VelocityGradientSpec:
    """``[model.velocity_gradient]``: the cluster's mean ``mu + k_xi xi + k_eta eta``.

    ``xi`` and ``eta`` name the offset covariates; ``scale`` is the Normal prior sd of
    ``k_xi`` and ``k_eta`` (velocity per unit offset; default the cluster's dispersion
    prior scale over the median radius).
    """

    xi: str = _field("xi", _string(), doc="covariate of the offset east of the centre")
    eta: str = _field("eta", _string(), doc="covariate of the offset north of the centre")
    scale: float | None = _field(None, _number(0.0, open_low=True),
                                 doc="Normal prior sd of the gradient (velocity per unit offset)")


@dataclasses.dataclass(frozen=True)
class BackgroundSpec:
    """``[model.background]``: a fixed-shape extra component (uniform box or broad Gaussian).

    A uniform box needs finite ``low`` and ``high`` (one number for every feature, or one
    per feature), each ``high`` above its ``low``: its density is 1 / volume, which is
    zero over an infinite range, so such a background would explain no star and its
    weight would follow only its prior.
    """

    kind: str = _field(check=_string(BACKGROUND_KINDS), doc="a uniform box or a broad fixed Gaussian")
    # inf passes the value check so that _validate can say why a uniform box must be finite.
    low: tuple | None = _field(None, _numbers_or_infinite,
                               doc="uniform box: lower edge (one number, or one per feature)")
    high: tuple | None = _field(None, _numbers_or_infinite, doc="uniform box: upper edge")
    mean: tuple | None = _field(None, _numbers, doc="Gaussian background: mean (one per feature)")
    covariance: tuple | None = _field(None, _matrix, doc="Gaussian background: covariance matrix")
    weight: float = _field(0.1, _number(0.0, 1.0, open_low=True, open_high=True),
                           doc="its weight (the start, when fit_weight is true)")
    fit_weight: bool = _field(True, _boolean, doc="sample the weight (else fixed at weight)")

    def _validate(self, where):
        needs = {"uniform": ("low", "high"), "gaussian": ("mean", "covariance")}[self.kind]
        other = {"uniform": ("mean", "covariance"), "gaussian": ("low", "high")}[self.kind]
        for name in needs:
            if getattr(self, name) is None:
                raise SpecError(f"{where} {name}", f"a {self.kind} background needs {' and '.join(needs)}.")
        for name in other:
            if getattr(self, name) is not None:
                raise SpecError(f"{where} {name}", f"does not apply to a {self.kind} background.")
        if self.kind == "uniform":
            self._validate_box(where)

    def _validate_box(self, where):
        low, high = (v if isinstance(v, tuple) else (v,) for v in (self.low, self.high))
        for name, bounds in (("low", low), ("high", high)):
            if not all(math.isfinite(b) for b in bounds):
                raise SpecError(f"{where} {name}", f"must be finite; got {list(bounds)}. A uniform density "
                                                   "over an infinite range is zero everywhere, so the "
                                                   "background would explain no star; give the finite "
                                                   "range the field covers (e.g. the catalogue's selection "
                                                   "limits).")
        n = max(len(low), len(high))
        if {len(low), len(high)} <= {1, n}:  # other lengths are checked against the data's features
            if any(h <= lo for lo, h in zip(low * (n // len(low)), high * (n // len(high)), strict=True)):
                raise SpecError(f"{where} high", f"every high must exceed its low; got low {list(low)}, "
                                                 f"high {list(high)}.")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """``[model]``: the mixture.

    ``kind = "cluster-field"`` is the 1-D velocity-membership model (K = 2, components
    named cluster and field, the tutorial's mean1 .. frac1 recorded); ``"mixture"`` is
    the general K-component model. ``ordering`` breaks label switching: component index
    increasing with the dispersion (``"scale"``) or mean (``"mean"``) of
    ``ordering_feature`` (a value column name or index), or with the weight (which
    refuses ``ordering_feature``, and a background). A cluster-field fit is always
    ordered by dispersion (cluster narrow, field broad); its ``ordering`` applies to the
    other K of ``bayesmix scan``.

    ``component_names`` names the Gaussian components: exactly ``n_components`` names, in
    component order. A ``[model.background]`` is not counted; it is named
    ``"background"`` by itself, so no Gaussian may take that name. A cluster-field
    model's components are always ``"cluster"`` and ``"field"`` (other names are
    refused; use ``kind = "mixture"`` to choose them). ``bayesmix scan`` fits other K
    (``[scan] k``) with the same ``[model]``: the names (like the component priors and a
    given EM start) apply at the spec's own K = ``n_components``, and the fits at other
    K name their components ``c0``, ``c1``, ... (a name means a component of this
    model, which another K does not have), so the names are not checked against
    ``[scan] k``.
    """

    kind: str = _field("mixture", _string(MODEL_KINDS),
                       doc="1-D cluster + field, or a general K-component mixture")
    n_components: int | None = _field(None, _integer(1),
                                      doc="K, the Gaussian components (required for kind = \"mixture\")")
    ordering: str = _field("scale", _string(ORDERINGS),
                           doc="what breaks label switching: increasing dispersion, mean or weight")
    ordering_feature: Any = _field(0, _feature, doc="the feature the ordering reads")
    component_names: tuple | None = _field(None, _strings(1),
                                           doc="one name per Gaussian component, in component order")
    priors: PriorSpec = _field(section=PriorSpec)
    radius_fraction: RadiusFractionSpec | None = _field(None, section=RadiusFractionSpec)
    background: BackgroundSpec | None = _field(None, section=BackgroundSpec)
    spatial: SpatialSpec | None = _field(None, section=SpatialSpec)
    dispersion_profile: DispersionProfileSpec | None = _field(None, section=DispersionProfileSpec)
    velocity_gradient: VelocityGradientSpec | None = _field(None, section=VelocityGradientSpec)

    def _validate(self, where):
        if self.kind == "cluster-field":
            if self.n_components not in (None, 2):
                raise SpecError(f"{where} n_components", "a cluster-field model has 2 components; leave "
                                                         "n_components out or use kind = \"mixture\".")
            if self.background is not None:
                raise SpecError(f"{where} background", "a cluster-field model has no background "
                                                       "(its field component is the broad Gaussian).")
        elif self.n_components is None:
            raise SpecError(f"{where} n_components", "is required for kind = \"mixture\" (e.g. 2).")
        if self.radius_fraction is not None:
            if self.k + (self.background is not None) < 2:
                raise SpecError(f"{where} radius_fraction", "needs a field: at least 2 components (the "
                                                            "cluster first), or 1 and a background.")
            if self.ordering == "weight":
                raise SpecError(f"{where} ordering", "\"weight\" cannot be combined with a radius law "
                                                     "(the law sets the weights); use \"scale\" or \"mean\".")
        self._validate_ordering(where)
        self._validate_cluster_terms(where)
        if self.component_names is not None:
            self._validate_names(where)

    def _validate_cluster_terms(self, where):
        """The spatial term and the member kinematics need a cluster (component 0) and a field."""
        if self.spatial is not None:
            if self.radius_fraction is not None:
                raise SpecError(f"{where} spatial", "and [model.radius_fraction] both set the member "
                                                    "fraction; keep one of them.")
            if self.k + (self.background is not None) < 2 or self.ordering == "weight":
                raise SpecError(f"{where} spatial", "needs a field (at least 2 components, the cluster "
                                                    "first) and ordering \"scale\" or \"mean\".")
        for name in ("dispersion_profile", "velocity_gradient"):
            if getattr(self, name) is not None and self.k < 2:
                raise SpecError(f"{where} {name}", "needs the cluster and at least one field Gaussian "
                                                   "(n_components >= 2).")

    def cluster_covariates(self) -> tuple[str, ...]:
        """Covariates the spatial term, dispersion profile and velocity gradient read."""
        names = []
        if self.spatial is not None:
            names += [self.spatial.xi, self.spatial.eta]
        if self.dispersion_profile is not None:
            names.append(self.dispersion_profile.covariate)
        if self.velocity_gradient is not None:
            names += [self.velocity_gradient.xi, self.velocity_gradient.eta]
        return tuple(dict.fromkeys(names))

    def _validate_ordering(self, where):
        if self.ordering == "weight" and self.ordering_feature != 0:
            raise SpecError(f"{where} ordering_feature", "does not apply: ordering = \"weight\" uses no "
                                                         "feature; leave it out.")
        if self.ordering == "weight" and self.background is not None:
            raise SpecError(f"{where} ordering",
                            "\"weight\" cannot be combined with a [model.background] (the model refuses it "
                            "when it is built); use \"scale\" or \"mean\".")

    def _validate_names(self, where):
        names = self.component_names
        if self.kind == "cluster-field":
            if names != ("cluster", "field"):
                raise SpecError(f"{where} component_names",
                                f"got {len(names)} names {list(names)}, but a cluster-field model's 2 "
                                "components are always named \"cluster\" and \"field\"; leave "
                                "component_names out, or use kind = \"mixture\" with n_components = 2 to "
                                "name them yourself.")
            return
        if len(names) != self.k:
            background = (" (the [model.background] component is not counted; it is named \"background\")"
                          if self.background is not None else "")
            raise SpecError(f"{where} component_names",
                            f"has {len(names)} names for {self.k} components (n_components = {self.k}); give "
                            f"exactly one name per Gaussian component{background}.")
        if self.background is not None and "background" in names:
            raise SpecError(f"{where} component_names",
                            "\"background\" is the name of the [model.background] component; give the "
                            "Gaussian components other names.")

    def names(self) -> tuple[str, ...]:
        """The Gaussian components' names, as the model will have them."""
        if self.kind == "cluster-field":
            return ("cluster", "field")
        return tuple(self.component_names) if self.component_names else tuple(f"c{k}" for k in range(self.k))

    @property
    def k(self) -> int:
        return 2 if self.kind == "cluster-field" else int(self.n_components)


@dataclasses.dataclass(frozen=True)
class EMSpec:
    """``[em]``: the extreme-deconvolution EM start (:class:`bayesmix.em.EMOptions`).

    ``init = "auto"`` (the default) runs ``n_init`` k-means++ starts, ``n_peaks``
    density-peak starts and, when ``init_means`` is given, that start too; ``"given"``
    runs only the given start. A given start is ``init_means`` (one row per component,
    one value per feature), optionally ``init_scales`` (intrinsic dispersions, same
    shape; default the data's spread shared out) and ``init_weights`` (default equal)::

        [em]
        init_means = [[-45.0], [0.0]]
        init_scales = [[3.0], [60.0]]

    ``n_init`` and ``n_peaks`` are each at most :data:`MAX_EM_STARTS` (1000): all starts
    run at once (vectorised), each with its own per-star working arrays, so memory
    grows in proportion to the number of starts (100000 starts passed 3 GB); a few to
    tens of starts find the optimum. ``n_peaks`` applies to ``init = "auto"`` only and
    ``kmeans_iter`` to the k-means++ starts (``"auto"`` and ``"kmeans++"``); other values
    of them with another ``init`` are refused, since they would be ignored.
    """

    n_init: int = _field(4, _integer(1, MAX_EM_STARTS, _STARTS_WHY), doc="k-means++ starts")
    n_peaks: int = _field(4, _integer(0, MAX_EM_STARTS, _STARTS_WHY),
                          doc="density-peak starts (init = \"auto\")")
    max_iter: int = _field(1000, _integer(1), doc="iterations per start")
    tol: float = _field(1e-3, _number(0.0, open_low=True),
                        doc="stop when the total log-likelihood changes by less (nats)")
    w: float | None = _field(None, _number(0.0),
                             doc="covariance regularisation (default 1e-6 of the data variance; 0: none)")
    init: str = _field("auto", _string(EM_INITS), doc="how the starts are made")
    kmeans_iter: int = _field(10, _integer(0), doc="k-means iterations refining each k-means++ start")
    init_means: tuple | None = _field(None, _rows(), doc="a given start: one row per component")
    init_scales: tuple | None = _field(None, _rows(positive=True), doc="the given start's dispersions")
    init_weights: tuple | None = _field(None, _weights, doc="the given start's weights (default equal)")

    def _validate(self, where):
        if self.init == "given" and self.init_means is None:
            raise SpecError(f"{where} init", "\"given\" needs init_means (one row per component).")
        if self.init_means is None and (self.init_scales is not None or self.init_weights is not None):
            raise SpecError(f"{where} init_means", "init_scales and init_weights complete a start given "
                                                    "by init_means; add init_means.")
        for name in ("init_scales", "init_weights"):
            value = getattr(self, name)
            if value is not None and len(value) != len(self.init_means):
                raise SpecError(f"{where} {name}", f"has {len(value)} entries; init_means has "
                                                   f"{len(self.init_means)} components.")
        if self.init_scales is not None and len(self.init_scales[0]) != len(self.init_means[0]):
            raise SpecError(f"{where} init_scales", "rows must have as many values as init_means' rows.")
        self._validate_ignored(where)

    def _validate_ignored(self, where):
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        if self.init != "auto" and self.n_peaks not in (0, defaults["n_peaks"]):
            raise SpecError(f"{where} n_peaks", f"density-peak starts are made by init = \"auto\" only; with "
                                                f"init = {self.init!r} n_peaks = {self.n_peaks} would be "
                                                "ignored. Leave it out or use init = \"auto\".")
        if self.init in ("random", "given") and self.kmeans_iter != defaults["kmeans_iter"]:
            raise SpecError(f"{where} kmeans_iter",
                            f"refines k-means++ starts only; with init = {self.init!r} kmeans_iter = "
                            f"{self.kmeans_iter} would be ignored. Leave it out or use init = \"auto\" or "
                            "\"kmeans++\".")


@dataclasses.dataclass(frozen=True)
class CheckSpec:
    """``[checks]``: what a run checks besides convergence.

    ``model_fit``: the posterior predictive goodness-of-fit check of
    :func:`bayesmix.diagnostics.check_model_fit` (``n_replicates`` mock catalogues,
    alarm below ``misfit_alpha``). ``mode_tolerance``: chains whose means differ by
    more than this many within-chain standard deviations are in different modes
    (:func:`bayesmix.diagnostics.check_modes`).
    """

    model_fit: bool = _field(True, _boolean, doc="run the posterior predictive model check")
    misfit_alpha: float = _field(0.01, _number(0.0, 1.0, open_low=True, open_high=True),
                                 doc="p-value below which the model check raises ModelMisfitWarning")
    n_replicates: int = _field(500, _integer(100), doc="mock catalogues of the model check")
    mode_tolerance: float = _field(3.0, _number(0.0, open_low=True),
                                   doc="chains further apart than this many sds are in different modes")


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """``[sampler]``: NUTS settings of :func:`bayesmix.sampling.sample_posterior`.

    ``checkpoint_every`` draws per chain between saved states (default a tenth of
    ``num_samples``); ``membership_draws`` bounds the posterior draws used for the
    membership probabilities and their intervals. It is at least
    :data:`MIN_MEMBERSHIP_DRAWS` (20): the intervals are the 16th and 84th percentiles
    over the draws, and 20 draws put at least 3 beyond each of them; with fewer, one or
    two draws set an interval, and with one, p16 = p84 = the mean.
    """

    num_chains: int = _field(4, _integer(1), doc="NUTS chains")
    num_warmup: int = _field(300, _integer(0), doc="warmup steps per chain (step size and mass matrix)")
    num_samples: int = _field(1000, _integer(1), doc="draws per chain kept (--num-samples overrides it)")
    target_accept: float = _field(0.8, _number(0.0, 1.0, open_low=True, open_high=True),
                                  doc="dual averaging's target acceptance probability")
    adapt_mass: bool = _field(True, _boolean, doc="adapt the mass matrix in warmup (else the Laplace one)")
    max_tree_depth: int = _field(10, _integer(1), doc="NUTS' largest tree depth (2^depth leapfrog steps)")
    chain_method: str = _field("auto", _string(CHAIN_METHODS),
                               doc="chains vectorised, over devices in parallel, or one after another")
    checkpoint_every: int | None = _field(None, _integer(1), doc="draws per chain between saved states")
    likelihood_precision: str = _field("auto", _string(LIKELIHOOD_PRECISIONS), doc=(
        "the potential's per-star arithmetic: float64, mixed (float32 per star, float64 sums), or auto "
        "(mixed from 10000 star-component terms)"))
    membership_draws: int = _field(1000, _integer(MIN_MEMBERSHIP_DRAWS, why=(
        ": the membership intervals are the 16th and 84th percentiles over these draws, and "
        f"{MIN_MEMBERSHIP_DRAWS} draws put at least 3 beyond each; with fewer, one or two draws set an "
        "interval, and with 1, p16 = p84 = the mean")),
                                   doc="posterior draws used for memberships and their intervals")


@dataclasses.dataclass(frozen=True)
class OutputSpec:
    """``[output]``: what a run writes.

    ``directory`` is the explicit choice of output folder (relative to where bayesmix
    runs, or absolute); left out, it is ``bayesmix-output-<name>-seed<seed>`` in the
    working folder (``bayesmix-scan-...`` for a scan). It may not be empty.
    """

    directory: str | None = _field(None, _string(),
                                   doc="output folder (default bayesmix-output-<name>-seed<seed>)")
    formats: tuple = _field(("fits", "csv"), _strings(1),
                            doc="membership table formats: any of fits, csv, ecsv, votable")
    figures: bool = _field(True, _boolean, doc="write the figures (--no-figures turns them off)")
    loo: bool = _field(False, _boolean, doc="add PSIS-LOO to the outputs")

    def _validate(self, where):
        if self.directory is not None and not self.directory.strip():
            raise SpecError(f"{where} directory", "is empty; leave it out for the default folder "
                                                  "(bayesmix-output-<name>-seed<seed>) or name a folder.")
        bad = [f for f in self.formats if f not in OUTPUT_TABLE_FORMATS]
        if bad:
            raise SpecError(f"{where} formats",
                            f"{bad} not allowed; use any of {list(OUTPUT_TABLE_FORMATS)}.")


@dataclasses.dataclass(frozen=True)
class ScanSpec:
    """``[scan]``: ``bayesmix scan`` defaults (K range; LOO from NUTS on request)."""

    k: tuple = _field((1, 6), _k_range, doc="the K range of bayesmix scan")
    loo: bool = _field(False, _boolean, doc="also sample every K and add PSIS-LOO")


@dataclasses.dataclass(frozen=True)
class GroupsSpec:
    """``[groups]``: many clusters in one hierarchical fit (:mod:`bayesmix.clusters`).

    The stars are grouped by the catalogue column ``column`` (e.g. ``"Cluster"``); every
    group gets its own members (mean, dispersion, fraction) and field, the dispersions and
    fractions partially pooled across groups (``pooling``). ``select`` keeps the named
    groups only (each name must be in the column); groups with fewer than ``min_stars``
    stars are dropped and reported by name. ``field``: a field per group (default) or one
    ``"shared"`` field. ``compare_alone`` also fits every group alone (pooling off, ``tau``
    fixed at ``alone_tau``) for the per-cluster shrinkage. ``reference``: a table of
    catalogue mean velocities (Baumgardt's ``orbits_table.txt``; ``{shared_data}`` and
    relative paths as for ``[data] path``) compared with each group's mean.

    ``radius`` (a ``[data] covariates`` or ``[data.sky]`` column of projected distances
    from each group's centre, e.g. Baumgardt's ``DCEN``) lets the member fraction fall
    with radius. With ``detect`` (default), every group's member peak is first found by
    :func:`bayesmix.clusters.scan_groups`; groups whose members are not detected
    (``min_delta_log_lik``, ``min_members``, a dispersion below ``sigma_max``, and with
    radii a central concentration) are left out and listed in ``skipped_groups.csv`` with
    the reason, their rows in the drop report.
    """

    column: str = _field(check=_string(), doc="catalogue column naming each star's group")
    radius: str | None = _field(None, _string(), doc="covariate column of projected radii (member "
                                                      "fraction falls with radius)")
    detect: bool = _field(True, _boolean, doc="leave out groups whose members are not detected")
    sigma_max: float = _field(25.0, _number(0.0, open_low=True),
                              doc="widest member dispersion searched (velocity units)")
    min_delta_log_lik: float = _field(15.0, _number(0.0), doc="detection: least log-likelihood gain of "
                                                               "members + field over a field alone")
    min_members: float = _field(3.0, _number(0.0), doc="detection: fewest expected members")
    select: tuple = _field((), _strings(), doc="groups to fit (all when empty)")
    min_stars: int = _field(5, _integer(2, why=": fewer stars cannot tell members from field"),
                            doc="groups with fewer stars are skipped (listed by name)")
    field: str = _field("per-group", _string(GROUP_FIELDS), doc="a field per group, or one shared field")
    pooling: bool = _field(True, _boolean, doc="partially pool the dispersions and member fractions")
    compare_alone: bool = _field(True, _boolean, doc="also fit every group alone, for the shrinkage")
    alone_tau: float = _field(2.0, _number(0.0, open_low=True),
                              doc="prior sd (log / logit units) of each group alone")
    reference: str | None = _field(None, _string(), doc="table of catalogue mean velocities to compare with")

    def _validate(self, where):
        if not self.column.strip():
            raise SpecError(f"{where} column", "is empty; name the catalogue column of the groups, e.g. "
                                               "column = \"Cluster\".")
        if self.compare_alone and not self.pooling:
            raise SpecError(f"{where} compare_alone", "compares the pooled fit with each group alone, so "
                                                      "it needs pooling = true; set compare_alone = false.")

    def check_run(self, spec) -> None:
        """Refuse the keys of other sections that a grouped run cannot honour (they would be ignored)."""
        if spec.data.path is None:
            raise SpecError("[groups]", "needs a catalogue file ([data] path) with the group column; a "
                                        "simulated catalogue has no groups.")
        if spec.n_features() != 1:
            raise SpecError("[groups]", f"fits one value column (velocities); [data] values has "
                                        f"{list(spec.data.values)}.")
        m = spec.model
        if m.kind != "cluster-field":
            raise SpecError("[model] kind", "a [groups] run fits members and field in every group; set "
                                            "kind = \"cluster-field\".")
        for key, value in (("radius_fraction", m.radius_fraction), ("background", m.background)):
            if value is not None:
                raise SpecError(f"[model.{key}]", "does not apply to a [groups] run (the member fraction "
                                                  "of each group is one number); leave it out.")
        if m.priors != PriorSpec():
            raise SpecError("[model.priors]", "does not apply to a [groups] run: its priors are the "
                                              "hierarchy's ([groups] alone_tau for the unpooled fit); leave "
                                              "[model.priors] out.")
        sky_columns = spec.data.sky.column_names() if spec.data.sky is not None else ()
        if self.radius is not None and self.radius not in (*spec.data.covariates, *sky_columns):
            raise SpecError("[groups] radius",
                            f"{self.radius!r} must also be listed in [data] covariates (now "
                            f"{list(spec.data.covariates)}) or be a [data.sky] column ("
                            f"{list(sky_columns) or 'none: no [data.sky]'}), so that stars without it are "
                            "dropped and reported.")

    def reference_path(self, spec) -> Path | None:
        """``reference`` resolved like ``[data] path`` (``{shared_data}``, relative to the spec file)."""
        if self.reference is None:
            return None
        data = dataclasses.replace(spec.data, path=self.reference)
        return dataclasses.replace(spec, data=data).catalogue_path()


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """A whole run: ``name``, ``description`` and ``seed`` at the top, then the sections.

    ``name`` is a plain name: 1 to 100 letters, digits, ``.``, ``_`` or ``-``, not
    starting with ``.``. It becomes part of the default output folder
    (``bayesmix-output-<name>-seed<seed>``), so a path in it (``../../x``) would write
    outside the working folder; ``[output] directory`` is where to choose a folder.

    Attributes
    ----------
    source : str or None
        The spec file (not part of the spec; used to resolve relative paths).
    """

    name: str = _field("bayesmix-run", _plain_name,
                       doc="the run's name, part of the default output folder (see above)")
    description: str = _field("", _string(), doc="free text, kept in every output's provenance")
    seed: int = _field(0, _integer(0), doc="PRNG seed of EM and the sampler (--seed overrides it)")
    data: DataSpec = _field(section=DataSpec)
    model: ModelSpec = _field(section=ModelSpec)
    em: EMSpec = _field(section=EMSpec)
    sampler: SamplerSpec = _field(section=SamplerSpec)
    output: OutputSpec = _field(section=OutputSpec)
    scan: ScanSpec = _field(section=ScanSpec)
    checks: CheckSpec = _field(section=CheckSpec)
    groups: GroupsSpec | None = _field(None, section=GroupsSpec)
    source: str | None = dataclasses.field(default=None, compare=False, repr=False)

    def _validate(self, where):
        if self.model.kind == "cluster-field":
            if self.n_features() != 1:
                raise SpecError("[model] kind", "\"cluster-field\" fits one value column (velocities); "
                                                "use kind = \"mixture\" for several features.")
        rf = self.model.radius_fraction
        self._validate_radius_covariate()
        if rf is not None and self.data.simulate is not None and rf.covariate != "R_proj":
            raise SpecError("[model.radius_fraction] covariate", "a simulated catalogue's radius column is "
                                                                 "\"R_proj\".")
        names = self.model.names()
        for name in self.model.priors.components:
            if name not in names:
                hint = difflib.get_close_matches(name, names, n=1)
                raise SpecError(f"[model.priors.{name}]", f"{name!r} is not a component of this model; its "
                                f"components are {list(names)}"
                                + (f" (did you mean {hint[0]!r}?)" if hint else "") + ".")
        if self.groups is not None:
            self.groups.check_run(self)
        self._validate_start()

    def _validate_radius_covariate(self):
        rf = self.model.radius_fraction
        self._validate_cluster_covariates()
        if rf is None or self.data.path is None:
            return
        sky_columns = self.data.sky.column_names() if self.data.sky is not None else ()
        if rf.covariate not in (*self.data.covariates, *sky_columns):
            raise SpecError("[model.radius_fraction] covariate",
                            f"{rf.covariate!r} must also be listed in [data] covariates "
                            f"(now {list(self.data.covariates)}) or be a [data.sky] column "
                            f"({list(sky_columns) or 'none: no [data.sky]'}).")

    def _validate_cluster_covariates(self):
        m = self.model
        names = m.cluster_covariates()
        if names and self.n_features() != 1:
            raise SpecError("[model]", "[model.spatial], [model.dispersion_profile] and "
                                       "[model.velocity_gradient] apply to 1-D (velocity) fits; the data "
                                       f"have {self.n_features()} value columns.")
        if not names or self.data.path is None:
            if names and self.data.simulate is not None:
                raise SpecError("[model]", "[model.spatial], [model.dispersion_profile] and "
                                           "[model.velocity_gradient] need positions: read a catalogue "
                                           "(path = ...) with them, not a simulation.")
            return
        sky_columns = self.data.sky.column_names() if self.data.sky is not None else ()
        for name in names:
            if name not in (*self.data.covariates, *sky_columns):
                raise SpecError("[model] covariates", f"{name!r} (read by [model.spatial], "
                                "[model.dispersion_profile] or [model.velocity_gradient]) must be listed in "
                                f"[data] covariates (now {list(self.data.covariates)}) or be a [data.sky] "
                                f"column ({list(sky_columns) or 'none: no [data.sky]'}).")

    def n_features(self) -> int:
        """Fitted features: the value columns, or the simulation's."""
        if self.data.simulate is not None:
            return 2 if self.data.simulate == "disc" else 1
        return len(self.data.values)

    def _validate_start(self):
        e = self.em
        if e.init_means is None:
            return
        k, d = self.model.k, self.n_features()
        if len(e.init_means) != k:
            raise SpecError("[em] init_means", f"has {len(e.init_means)} rows; the model has {k} components.")
        if len(e.init_means[0]) != d:
            raise SpecError("[em] init_means", f"rows have {len(e.init_means[0])} value(s); the data have "
                                               f"{d} feature(s).")

    # -- round trip ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists, no None), as TOML would hold it; ``from_dict`` inverts it."""
        return _to_plain(self)

    @classmethod
    def from_dict(cls, table: Mapping[str, Any], source: str | None = None) -> RunSpec:
        """Build and check a spec from a parsed TOML table."""
        try:
            spec = _build(cls, table, "")
        except RecursionError:  # a table nested thousands deep, built in Python (TOML fails earlier)
            raise SpecError("spec", _TOO_DEEP) from None
        return dataclasses.replace(spec, source=source)

    def with_overrides(self, **sections) -> RunSpec:
        """A copy with some fields replaced, e.g. ``with_overrides(sampler={"num_samples": 50})``."""
        table = self.to_dict()
        for section, values in sections.items():
            if isinstance(values, Mapping):
                table.setdefault(section, {}).update(_to_plain(values))
            else:
                table[section] = values
        return RunSpec.from_dict(table, source=self.source)

    # -- paths -------------------------------------------------------------------------

    def catalogue_path(self) -> Path | None:
        """``data.path`` resolved: ``{shared_data}`` expanded, relative to the spec file's folder."""
        if self.data.path is None:
            return None
        base = Path(self.source).resolve().parent if self.source else Path.cwd()
        text = self.data.path
        if "{shared_data}" in text:
            shared = os.environ.get("BAYESMIX_SHARED_DATA") or str(base.parent.parent / "shared" / "data")
            text = text.replace("{shared_data}", shared)
        path = Path(os.path.expanduser(text))
        return path if path.is_absolute() else base / path


def _to_plain(value):
    if dataclasses.is_dataclass(value):
        out = {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)
               if f.name != "source" and getattr(value, f.name) is not None}
        extra = getattr(type(value), "_EXTRA_TABLES", None)
        if extra is not None:  # sub-tables by name, as TOML holds them ([model.priors.cluster])
            out.update(out.pop(extra, {}))
        return out
    if isinstance(value, Mapping):
        return {k: _to_plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (tuple, list)):
        return [_to_plain(v) for v in value]
    return value


def _build(cls, table, where: str):
    """``cls`` built from a TOML ``table`` at ``where`` (``"[model]"``; ``""`` for the top), every
    key checked by its field's ``check`` and the whole by ``cls._validate``."""
    label = where or "spec"
    if not isinstance(table, Mapping):
        raise SpecError(label, f"must be a table; got {_type_name(table)} ({_show(table)}).")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    extra = getattr(cls, "_EXTRA_TABLES", None)
    table, named_tables = _split_named_tables(table, fields, extra)
    _check_keys(table, fields, where, label)
    values = {}
    if extra is not None:
        part = fields[extra].metadata["section"]
        values[extra] = {key: _build(part, value, f"[{where[1:-1]}.{key}]")
                         for key, value in named_tables.items()}
    for name, f in fields.items():
        if name != extra:
            values.update(_build_field(f, table, where))
    spec = cls(**values)
    if hasattr(spec, "_validate"):
        spec._validate(label)
    return spec


def _split_named_tables(table, fields, extra):
    """``(keys, named sub-tables)``: with ``extra`` (a field name), sub-tables that are not keys
    are named parts (component priors, ``[model.priors.cluster]``) collected into that field."""
    if extra is None:
        return table, {}
    named = {key: value for key, value in table.items()
             if isinstance(value, Mapping) and (key not in fields or key == extra)}
    return {key: value for key, value in table.items() if key not in named}, named


def _check_keys(table, fields, where: str, label: str) -> None:
    """Refuse a key that is no field, suggesting the closest one."""
    for key in table:
        if key not in fields:
            hint = difflib.get_close_matches(key, list(fields), n=1)
            raise SpecError(f"{label} {key}" if where else key,
                            "unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                            + f"; allowed keys{' in ' + where if where else ''}: {', '.join(fields)}.")


def _build_field(f: dataclasses.Field, table, where: str) -> dict:
    """``{name: checked value}`` of one field, or ``{}`` to leave it at its default."""
    name = f.name
    at = f"{where} {name}" if where else name
    section = f.metadata.get("section")
    if section is not None:
        sub = f"[{where[1:-1]}.{name}]" if where else f"[{name}]"
        if name in table:
            return {name: _build(section, table[name], sub)}
        if f.default_factory is dataclasses.MISSING:  # an optional section, left out
            return {}
        try:  # a section of defaults (or of required keys)
            return {name: _build(section, {}, sub)}
        except SpecError as exc:
            raise SpecError(sub, f"section is missing ({exc})") from None
    if name not in table:
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SpecError(at, "is required.")
        return {}
    check = f.metadata.get("check")
    return {name: check(table[name], at) if check else table[name]}


_TOO_DEEP = ("arrays or tables are nested too deeply to read (thousands of levels); a run specification "
             "needs at most a few levels, e.g. init_means = [[-45.0], [0.0]].")


def _spec_text(path: Path) -> str:
    """The file's text: UTF-8, with a leading byte-order mark dropped (some Windows editors write one)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise SpecError(str(path), f"must be UTF-8 text (TOML is); byte 0x{data[exc.start]:02x} on line "
                                   f"{line} is not UTF-8. Is it a binary file, or text saved as Latin-1 / "
                                   "Windows-1252? Save it as UTF-8.") from None


def load_spec(path) -> RunSpec:
    """Read and check a run specification (TOML).

    Parameters
    ----------
    path : str or Path
        A UTF-8 text file (a leading byte-order mark is allowed).

    Returns
    -------
    RunSpec

    Raises
    ------
    FileNotFoundError
    SpecError
        Text that is not UTF-8, a TOML syntax error, nesting too deep to read, an
        unknown key, a missing required key or a bad value; the message names the file
        and the key and says what is allowed.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from bayesmix.config import SpecError, load_spec
    >>> path = Path(tempfile.mkdtemp()) / "demo.toml"
    >>> _ = path.write_text('name = "demo"\\n[data]\\nsimulate = "cluster-field"\\n'
    ...                     '[model]\\nkind = "cluster-field"\\n[sampler]\\nnum_samples = 500\\n')
    >>> spec = load_spec(path)
    >>> spec.model.kind, spec.sampler.num_samples, spec.sampler.num_warmup
    ('cluster-field', 500, 300)
    >>> _ = path.write_text('[data]\\nsimulate = "cluster-field"\\n[model]\\nkind = "cluster-field"\\n'
    ...                     '[sampler]\\nnum_sample = 500\\n')
    >>> try:
    ...     load_spec(path)
    ... except SpecError as err:
    ...     print(err.key)
    demo.toml [sampler] num_sample
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    text = _spec_text(path)
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(str(path), f"not valid TOML ({exc}).") from None
    except RecursionError:  # tomllib reads nested arrays and inline tables recursively
        raise SpecError(str(path), _TOO_DEEP) from None
    try:
        return RunSpec.from_dict(table, source=str(path))
    except SpecError as exc:
        raise SpecError(f"{path.name} {exc.key}", str(exc).split(": ", 1)[1]) from None

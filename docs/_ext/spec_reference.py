"""``.. bayesmix-spec-reference::``: the TOML spec file reference, generated from ``bayesmix.config``.

It walks the dataclasses under :class:`bayesmix.config.RunSpec` the way
:func:`bayesmix.config.load_spec` reads a file: every field is a key, a field with a
``section`` is a ``[table]``. For each key it writes the type and the bounds or allowed
values read from the field's check (the closures of ``_string``, ``_integer``, ``_number``,
...), the default, and the field's ``doc`` metadata; the section's text is the class
docstring. So the page changes when ``config.py`` does. A check this module does not know
is an error (the build runs with ``-W``): add it to ``_KINDS``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math

# What each value check of bayesmix.config accepts, by the name of the function that makes it.
_KINDS = {
    "_string": "string",
    "_integer": "integer",
    "_number": "number",
    "_boolean": "boolean",
    "_strings": "array of strings (a single string is one entry)",
    "_numbers": "number, or array of numbers (one per feature)",
    "_numbers_or_infinite": "number, or array of numbers (one per feature); ``-inf`` / ``inf`` allowed",
    "_positive_numbers": "positive number, or array of them (one per feature)",
    "_rows": "array with one row of numbers per component (a flat array for one feature)",
    "_weights": "array of positive weights, one per component",
    "_matrix": "square array of arrays of numbers",
    "_plain_name": "plain name: 1 to 100 letters, digits, ``.``, ``_``, ``-`` (not starting with ``.``)",
    "_feature": "value column name, or feature index (>= 0)",
    "_scalar_mapping": ("table ``{column = value}``; a value may be an array (any of them) or a table "
                        "of operators ``{glob, regex, ==, !=, <, <=, >, >=}``"),
    "_centre": "``[ra_deg, dec_deg]`` or a position string astropy parses",
    "_missing": "number, array of numbers, or table ``{column = sentinel}``; ``inf`` allowed",
    "_error_floor": "positive number, or table ``{column = floor}``",
    "_ranges": "table ``{column = [low, high]}`` (``-inf`` / ``inf`` for an open side)",
    "_error_columns": "array of column names, one per value column (``\"\"`` for an error-free feature)",
    "_correlations": "array of ``[value_a, value_b, column]`` triples",
    "_k_range": "``[k_min, k_max]`` or ``\"k_min..k_max\"`` (1 <= k_min <= k_max)",
    "_vertices": "array of at least 3 ``[xi, eta]`` pairs",
    "_pair": "``[xi, eta]``",
}


def _check_name(check) -> str:
    """``_integer`` for the closure ``_integer.<locals>.check``; the function's own name otherwise."""
    return check.__qualname__.split(".<locals>", 1)[0]


def _bound(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _bounds(check) -> str:
    """``>= 1``, ``0 < x < 1``, or allowed values, from the closure's variables."""
    try:
        free = inspect.getclosurevars(check).nonlocals
    except TypeError:
        return ""
    if free.get("choices"):
        return "one of " + ", ".join(f'``"{c}"``' for c in free["choices"])
    if "minimum" in free:
        parts = ([f">= {free['minimum']}"] if free["minimum"] is not None else []) + (
            [f"<= {free['maximum']}"] if free.get("maximum") is not None else [])
        return ", ".join(parts)
    if "low" in free:
        low, high = free["low"], free["high"]
        parts = []
        if low is not None:
            parts.append(f"{'>' if free['open_low'] else '>='} {_bound(low)}")
        if high is not None:
            parts.append(f"{'<' if free['open_high'] else '<='} {_bound(high)}")
        if not free.get("finite", True):
            parts.append("``-inf`` / ``inf`` allowed")
        return ", ".join(parts)
    if free.get("min_length"):
        return f"at least {free['min_length']} entr{'y' if free['min_length'] == 1 else 'ies'}"
    return ""


def _toml(value) -> str:
    """A default as TOML spells it."""
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "``true``" if value else "``false``"
    if isinstance(value, str):
        return f'``"{value}"``'
    if isinstance(value, float) and math.isinf(value):
        return "``inf``" if value > 0 else "``-inf``"
    if isinstance(value, (tuple, list)):
        return "``[" + ", ".join(_toml(v).strip("`") for v in value) + "]``"
    if isinstance(value, dict):
        return "``{}``" if not value else f"``{value}``"
    return f"``{value}``"


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        return _toml(field.default)
    if field.default_factory is not dataclasses.MISSING:
        return _toml(field.default_factory())
    return "**required**"


def _key_rows(cls, where: str, problems: list[str]) -> list[str]:
    rows = []
    for field in dataclasses.fields(cls):
        if field.name == "source" or field.metadata.get("section") is not None:
            continue
        check = field.metadata.get("check")
        kind, bounds = "", ""
        if check is not None:
            name = _check_name(check)
            if name not in _KINDS:
                problems.append(f"{where} {field.name}: check {name} is not in spec_reference._KINDS")
            kind, bounds = _KINDS.get(name, name), _bounds(check)
        doc = field.metadata.get("doc", "")
        if not doc:
            problems.append(f"{where} {field.name}: no doc= in bayesmix/config.py")
        rows += [f"   * - ``{field.name}``",
                 f"     - {kind}" + (f"; {bounds}" if bounds else ""),
                 f"     - {_default(field)}",
                 f"     - {doc}"]
    return rows


def _prose(doc: str) -> list[str]:
    """A class docstring up to its first numpydoc section (``Attributes`` and its dashes)."""
    lines = doc.splitlines()
    for i in range(len(lines) - 1):
        if lines[i + 1].strip() and set(lines[i + 1].strip()) == {"-"} and lines[i].strip():
            return lines[:i]
    return lines


def _section(cls, where: str, problems: list[str]) -> list[str]:
    title = where or "Top level"
    slug = where.strip("[]").replace(".", "-").replace("<", "").replace(">", "") or "top"
    lines = [f".. _spec-section-{slug}:", "", title, "~" * max(len(title), 3), ""]
    lines += [*_prose(inspect.getdoc(cls) or ""), ""]
    rows = _key_rows(cls, where, problems)
    if rows:
        lines += [".. list-table::", "   :header-rows: 1", "   :widths: 18 30 14 38",
                  "   :class: spec-keys", "", "   * - key", "     - type and allowed values",
                  "     - default", "     - meaning", *rows, ""]
    for field in dataclasses.fields(cls):
        part = field.metadata.get("section")
        if part is None or field.name == "source":
            continue
        if field.name == getattr(cls, "_EXTRA_TABLES", None):
            sub = f"[{where.strip('[]')}.<component>]"
        else:
            sub = f"[{where.strip('[]')}.{field.name}]" if where else f"[{field.name}]"
        lines += _section(part, sub, problems)
    return lines


def spec_reference_rst() -> tuple[list[str], list[str]]:
    """The reference as reStructuredText lines, and the problems found (missing descriptions)."""
    from bayesmix.config import RunSpec

    problems: list[str] = []
    return _section(RunSpec, "", problems), problems


def setup(app):
    # Sphinx is imported here only: tests/test_project.py reads spec_reference_rst without it.
    from docutils import nodes
    from docutils.statemachine import StringList
    from sphinx.util.docutils import SphinxDirective
    from sphinx.util.nodes import nested_parse_with_titles

    class SpecReference(SphinxDirective):
        has_content = False

        def run(self):
            lines, problems = spec_reference_rst()
            for problem in problems:
                self.state.document.reporter.warning(f"spec reference: {problem}", line=self.lineno)
            container = nodes.section()
            container.document = self.state.document
            nested_parse_with_titles(self.state, StringList(lines, source="bayesmix.config"), container)
            return container.children

    app.add_directive("bayesmix-spec-reference", SpecReference)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

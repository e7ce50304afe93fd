"""Catalogue I/O on astropy Tables: read, select, cut, build error covariances, write back.

This layer is numpy + astropy only (no JAX), so reading a catalogue stays fast.

The path from a file to a fit::

    cat = read_catalogue("ngc288_rv.csv", values="RV", errors="E_RV",
                         covariates=["DCEN"], select={"Cluster": "NGC 288"})
    cat.values        # (n_stars, n_features)
    cat.error_covs    # (n_stars, n_features, n_features)
    cat.report        # every dropped row, by reason

Nothing is dropped silently: each cut records the source-table rows it removed
under a reason, the summary is logged, and ``Catalogue.report`` holds it as data.
Input that cannot be used as asked raises ``ValueError`` naming the column and the fix.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import logging
import os
import platform
import re
import warnings
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from astropy.table import Column, MaskedColumn, Table

from bayesmix import __version__
from bayesmix._choices import DUPLICATES, MISSING_FEATURES, SELECT_OPERATORS
from bayesmix._covariances import smallest_eigenvalues
from bayesmix._files import atomic_write  # also importable from here, as before it moved

logger = logging.getLogger(__name__)

__all__ = [
    "EPOCH_COLUMNS",
    "LAYOUTS",
    "MAGNITUDE_LIMIT",
    "TEXT_FLOAT_FLOOR",
    "Catalogue",
    "DropReport",
    "EpochCombination",
    "FixedWidthLayout",
    "check_output_names",
    "combine_epochs",
    "make_provenance",
    "provenance_sidecar",
    "read_catalogue",
    "read_provenance",
    "read_table",
    "write_table",
]

PROVENANCE_KEY = "bayesmix_provenance"
MALFORMED_KEY = "malformed_rows"
SIDECAR_SUFFIX = ".json"  # a CSV's provenance: membership.csv -> membership.csv.json

TEXT_FLOAT_FLOOR = float(np.finfo(np.float64).tiny)
"""Smallest normal float64 (about 2.2e-308). :func:`write_table` writes smaller nonzero
values of a CSV's float columns as 0: astropy's CSV reader warns of an overflow on such
subnormal numbers and pandas reads them with fewer digits."""

MAGNITUDE_LIMIT = 1e153
"""Largest ``|value|`` or error :func:`read_catalogue` accepts (errors down to its inverse).
Float64 squares overflow beyond about 1.3e154, and error covariances are squares; the
fit itself works in standardised units, so values of order 1e152 (velocities of hundreds
in units 1e150 times too small) are fitted like any others."""
_LIMIT_TEXT = f"{MAGNITUDE_LIMIT:.0e}".replace("e+", "e")  # "1e153"


# --------------------------------------------------------------------------- reading tables


@dataclass(frozen=True)
class FixedWidthLayout:
    """Column positions of a fixed-width ASCII table whose header cannot be parsed.

    Attributes
    ----------
    names : tuple of str
        Column names given to the fields, in order.
    spans : tuple of (int, int)
        ``(start, stop)`` character offsets of each field (0-based, stop exclusive).
    header_lines : int
        Lines before the first data row.
    signature : tuple of str
        Leading words of the first header line, used to recognise the file.
    text_columns : tuple of str
        Columns whose values may contain blanks (names); in any other column an
        inner blank means the row overflowed its fields and cannot be trusted.
    units : dict of str to str
        Units of some columns, as the header states them.
    description : str
    """

    names: tuple[str, ...]
    spans: tuple[tuple[int, int], ...]
    header_lines: int
    signature: tuple[str, ...] = ()
    text_columns: tuple[str, ...] = ("Cluster",)
    units: Mapping[str, str] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self):
        if len(self.names) != len(self.spans):
            raise ValueError(
                f"layout has {len(self.names)} names but {len(self.spans)} spans; give one span per name."
            )


def _spans(widths, start=0):
    out = []
    for w in widths:
        out.append((start, start + w))
        start += w
    return tuple(out)


# Baumgardt & Hilker's globular-cluster tables (people.smp.uq.edu.au/HolgerBaumgardt/globular/).
# Their headers have blank-separated names with blanks inside ("2MASS ID", "lg Trh") and
# unlabelled uncertainty columns, so the positions are spelled out here.
LAYOUTS: dict[str, FixedWidthLayout] = {
    "baumgardt_rv": FixedWidthLayout(
        names=("Cluster", "TWOMASS_ID", "RA", "DEC", "RV", "E_RV", "DCEN", "J_mag", "E_J_mag",
               "K_mag", "E_K_mag", "P_Mem", "NRV", "P_Single"),
        spans=_spans((9, 18, 13, 13, 10, 10, 9, 6, 6, 8, 6, 10, 3, 9)),
        header_lines=2,
        signature=("Cluster", "2MASS", "ID", "RA", "DEC", "RV"),
        text_columns=("Cluster", "TWOMASS_ID"),
        units={"RA": "deg", "DEC": "deg", "RV": "km/s", "E_RV": "km/s", "DCEN": "arcsec",
               "J_mag": "mag", "E_J_mag": "mag", "K_mag": "mag", "E_K_mag": "mag"},
        description="Baumgardt & Hilker individual-star line-of-sight velocities "
        "(appendix/combined_table.txt)",
    ),
    "baumgardt_orbits": FixedWidthLayout(
        names=("Cluster", "RA", "DEC", "l", "b", "Rsun", "ERsun", "R_GC", "RV", "ERV",
               "mualpha", "E_mualpha", "mu_delta", "E_mu_delta", "rhopmrade", "X", "DX", "Y",
               "DY", "Z", "DZ", "U", "DU", "V", "DV", "W", "DW", "RPERI", "E_RPERI", "RAPO",
               "E_RAPO"),
        spans=((0, 12), (12, 26), (26, 37), (37, 45), (45, 53), (53, 61), (61, 68), (68, 76),
               (76, 84), (84, 90), (90, 99), (99, 106), (106, 115), (115, 122), (122, 129),
               (129, 137), (137, 144), (144, 152), (152, 159), (159, 167), (167, 174),
               (174, 183), (183, 191), (191, 201), (201, 209), (209, 219), (219, 227),
               (227, 235), (235, 241), (241, 250), (250, 257)),
        header_lines=2,
        signature=("Cluster", "RA", "DEC", "l", "b", "Rsun"),
        units={"RA": "deg", "DEC": "deg", "l": "deg", "b": "deg", "Rsun": "kpc", "ERsun": "kpc",
               "R_GC": "kpc", "RV": "km/s", "ERV": "km/s", "mualpha": "mas/yr",
               "E_mualpha": "mas/yr", "mu_delta": "mas/yr", "E_mu_delta": "mas/yr",
               "RPERI": "kpc", "E_RPERI": "kpc", "RAPO": "kpc", "E_RAPO": "kpc"},
        description="Baumgardt globular-cluster mean velocities and orbits (orbits_table.txt); "
        "RV is the header's <RV>",
    ),
    "baumgardt_structure": FixedWidthLayout(
        names=("Cluster", "RA", "DEC", "R_Sun", "R_GC", "Mass", "DM", "V", "E_V", "M_L_V",
               "E_M_L_V", "rc", "rh_l", "rh_m", "rt", "rho_c", "rho_h_m", "sig_c", "sig_h_m",
               "lg_Trh", "MF_slope", "F_REM", "sig0", "vesc", "etac", "etah"),
        spans=((0, 12), (12, 23), (23, 34), (34, 42), (42, 51), (51, 62), (62, 73), (73, 81),
               (81, 88), (88, 95), (95, 102), (102, 109), (109, 117), (117, 126), (126, 135),
               (135, 143), (143, 151), (151, 159), (159, 167), (167, 175), (175, 182),
               (182, 189), (189, 196), (196, 203), (203, 211), (211, 219)),
        header_lines=2,
        signature=("Cluster", "RA", "DEC", "R_Sun", "R_GC", "Mass"),
        units={"RA": "deg", "DEC": "deg", "R_Sun": "kpc", "R_GC": "kpc", "Mass": "solMass",
               "DM": "solMass", "V": "mag", "rc": "pc", "rh_l": "pc", "rh_m": "pc", "rt": "pc",
               "sig0": "km/s", "vesc": "km/s"},
        description="Baumgardt globular-cluster structural parameters (combined_table.txt); "
        "E_V and E_M_L_V are the unlabelled columns after V and M/L_V",
    ),
    "baumgardt_rv_profiles": FixedWidthLayout(
        names=("Cluster", "radius", "sigma", "sigma_err_up", "sigma_err_low", "data_type"),
        spans=((0, 12), (12, 20), (20, 27), (27, 33), (33, 39), (39, 44)),
        header_lines=0,
        text_columns=("Cluster", "data_type"),
        units={"radius": "arcsec", "sigma": "km/s", "sigma_err_up": "km/s",
               "sigma_err_low": "km/s"},
        description="Baumgardt binned velocity-dispersion profiles (rv.dat)",
    ),
}

_FORMAT_ALIASES = {
    "fits": "fits",
    "csv": "ascii.csv",
    "ascii.csv": "ascii.csv",
    "ecsv": "ascii.ecsv",
    "ascii.ecsv": "ascii.ecsv",
    "votable": "votable",
    "vot": "votable",
    "fixed_width": "fixed_width",
    "ascii": "ascii",
}

_SUFFIX_FORMATS = {
    ".fits": "fits", ".fit": "fits", ".fts": "fits", ".fits.gz": "fits", ".fit.gz": "fits",
    ".csv": "ascii.csv", ".ecsv": "ascii.ecsv", ".vot": "votable", ".votable": "votable",
    ".xml": "votable", ".txt": "ascii", ".dat": "ascii",
}


def _infer_format(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(_SUFFIX_FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return _SUFFIX_FORMATS[suffix]
    raise ValueError(
        f"cannot tell the format of {path.name!r} from its extension; pass format= one of "
        f"{sorted(set(_FORMAT_ALIASES))}."
    )


def _detect_layout(path: Path) -> str | None:
    with open(path, encoding="utf-8-sig", errors="replace") as fh:  # -sig: a BOM is not a name
        first = fh.readline().split()
    for name, layout in LAYOUTS.items():
        sig = layout.signature
        if sig and tuple(first[: len(sig)]) == sig:
            return name
    return None


def _read_fixed_width(path: Path, layout: FixedWidthLayout) -> Table:
    from astropy.io import ascii as astropy_ascii

    lines = Path(path).read_text(errors="replace").splitlines()[layout.header_lines:]
    lines = [line for line in lines if line.strip()]
    number_spans = [span for name, span in zip(layout.names, layout.spans, strict=True)
                    if name not in layout.text_columns]
    end = layout.spans[-1][1]
    malformed = []
    for i, line in enumerate(lines):
        # An inner blank in a number field, or text past the last field, means a value
        # overflowed its columns and shifted its neighbours: nothing in the row can be trusted.
        if len(line.rstrip()) > end or any(" " in line[a:b].strip() for a, b in number_spans):
            malformed.append(i)
            blank = list(line[:end].ljust(end))
            for a, b in number_spans:
                blank[a:b] = " " * (b - a)
            lines[i] = "".join(blank)
    table = astropy_ascii.read(
        lines,
        format="fixed_width_no_header",
        names=layout.names,
        col_starts=[s for s, _ in layout.spans],
        col_ends=[e - 1 for _, e in layout.spans],  # astropy's col_ends are inclusive
        delimiter=" ",
        guess=False,
    )
    for name, unit in layout.units.items():
        table[name].unit = unit
    if malformed:
        table.meta[MALFORMED_KEY] = malformed
        logger.warning(
            "%s: %d row(s) overflow their fixed-width fields and were read as blanks: table rows %s "
            "(read_catalogue drops them under the reason 'malformed')",
            path, len(malformed), malformed[:10],
        )
    return table


def _starts_with_comment(path: Path) -> bool:
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        return fh.readline().lstrip().startswith("#")


def read_table(path, format: str | None = None, layout: str | FixedWidthLayout | None = None,
               **kwargs) -> Table:
    """Read a table file (FITS, CSV, ECSV, VOTable or fixed-width ASCII) as an astropy Table.

    Text tables are read as UTF-8 (a leading byte-order mark is skipped).

    Parameters
    ----------
    path : str or Path
    format : str, optional
        ``"fits"``, ``"csv"``, ``"ecsv"``, ``"votable"``, ``"fixed_width"`` or ``"ascii"``
        (astropy's guessing); inferred from the extension when omitted.
    layout : str or FixedWidthLayout, optional
        Column positions for fixed-width files: a name from :data:`LAYOUTS` or a
        layout. Files whose first line matches a known layout's header are
        recognised without it (Baumgardt's tables).
    **kwargs
        Passed on to :meth:`astropy.table.Table.read`. For a CSV whose first line starts
        with ``#`` (as those written by versions before the provenance sidecar do:
        ``# bayesmix_provenance: {...}``), ``comment="#"`` is the default.

    Returns
    -------
    astropy.table.Table
        With ``meta["source_path"]`` set.

    Raises
    ------
    FileNotFoundError
        When ``path`` is not a file (left to the caller: it is about the environment,
        not the file's content; so are ``PermissionError`` and ``IsADirectoryError``).
    ValueError
        When the file cannot be read as the format: corrupt or truncated, not UTF-8
        text, a header naming a column twice. The message names the file and the fix,
        and the exception astropy raised is chained as its cause.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"catalogue file not found: {path}")
    fmt, layout = _resolve_format(path, format, layout)
    from astropy.io.ascii import InconsistentTableError

    try:
        table = _read_format(path, fmt, layout, dict(kwargs))
    except _ENVIRONMENT_ERRORS:
        raise
    except UnicodeDecodeError as exc:  # before ValueError, of which it is a subclass
        raise ValueError(_undecodable_message(path, fmt, exc)) from exc
    except InconsistentTableError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ValueError(
            f"{path.name}: astropy could not parse it as {fmt!r} ({first}). For a fixed-width "
            f"file pass layout= (known: {sorted(LAYOUTS)}) or a FixedWidthLayout; otherwise "
            "pass format= explicitly."
        ) from exc
    except _read_errors() as exc:  # evaluated only when an exception is on its way
        raise ValueError(_unreadable_message(path, fmt, exc)) from exc
    if layout is None:
        _check_repeated_names(path, fmt, table)
    table.meta["source_path"] = str(path)
    return table


def _resolve_format(path: Path, format, layout) -> tuple[str, FixedWidthLayout | None]:
    """The astropy format name and the fixed-width layout (or None) to read ``path`` with."""
    if format is not None and format not in _FORMAT_ALIASES:
        raise ValueError(f"format={format!r} is not supported; use one of {sorted(_FORMAT_ALIASES)}.")
    fmt = _FORMAT_ALIASES[format] if format is not None else _infer_format(path)
    if isinstance(layout, str):
        if layout not in LAYOUTS:
            raise ValueError(f"layout={layout!r} is unknown; known layouts: {sorted(LAYOUTS)}.")
        layout = LAYOUTS[layout]
    if layout is None and fmt in ("ascii", "fixed_width"):
        detected = _detect_layout(path)
        layout = LAYOUTS[detected] if detected else None
    if layout is None and fmt == "fixed_width":
        raise ValueError(
            f"{path.name}: a fixed-width file needs layout= (one of {sorted(LAYOUTS)} or a "
            "FixedWidthLayout giving the column names and character spans)."
        )
    return fmt, layout


def _read_format(path: Path, fmt: str, layout: FixedWidthLayout | None, kwargs: dict) -> Table:
    """Call the reader of ``fmt``; every exception it raises goes to :func:`read_table`."""
    if layout is not None:
        return _read_fixed_width(path, layout)
    if fmt == "fits":
        from astropy.io.fits.verify import VerifyWarning

        with warnings.catch_warnings():
            # Survey files often carry names like '[Fe/H]_T13' or units like 'dex';
            # astropy's complaints about them are not actionable for the user.
            warnings.simplefilter("ignore", VerifyWarning)
            return Table.read(path, format="fits", unit_parse_strict="silent", **kwargs)
    if fmt == "votable":  # XML names its own encoding
        return Table.read(path, format=fmt, **kwargs)
    if fmt == "ascii.csv" and _starts_with_comment(path):
        # Versions before the sidecar wrote provenance as a first "# ..." line. Only then:
        # in a plain CSV, comment="#" would drop rows whose first value starts with "#".
        kwargs.setdefault("comment", "#")
    if _starts_with_bom(path):
        # Excel writes a byte-order mark, which would otherwise stick to the first column's
        # name ('\ufeffid'). Only then: an encoding= turns astropy's fast C reader off.
        kwargs.setdefault("encoding", "utf-8-sig")
    return Table.read(path, format=fmt, **kwargs)


def _starts_with_bom(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(len(_UTF8_BOM)) == _UTF8_BOM


# What astropy's readers raise on a corrupt file (the fuzzing of the 2026-12 audit hit all
# of OSError, KeyError, TypeError, IndexError and ValueError). Environment errors
# (missing file, no permission, a folder) are left alone: the caller reports those.
_ENVIRONMENT_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError)
_READ_ERRORS = (OSError, EOFError, KeyError, IndexError, TypeError, ValueError, AttributeError,
                OverflowError, zlib.error)
_FITS_BLOCK = 2880  # every FITS file is a whole number of 2880-byte blocks


def _read_errors() -> tuple[type[BaseException], ...]:
    """:data:`_READ_ERRORS` plus astropy's ``VerifyError`` (unparsable FITS cards), an Exception only."""
    from astropy.io.fits.verify import VerifyError

    return (*_READ_ERRORS, VerifyError)
_FORMAT_LABELS = {"fits": "a FITS table", "votable": "a VOTable (XML)", "ascii.csv": "a CSV table",
                  "ascii.ecsv": "an ECSV table", "ascii": "an ASCII table",
                  "fixed_width": "a fixed-width table"}


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    # astropy's advice for a missing SIMPLE card misleads for what is usually not FITS at all.
    text = text.split(" If this is really a FITS file")[0].rstrip(".")
    return f"{type(exc).__name__}: {text[:limit]}"


def _unreadable_message(path: Path, fmt: str, exc: BaseException) -> str:
    """What went wrong reading ``path`` (astropy's words, plus what the file's bytes tell)."""
    label = _FORMAT_LABELS.get(fmt, f"format {fmt!r}")
    if fmt != "fits":
        return (f"cannot read {path} as {label}: {_first_line(exc)}; check the file, or pass "
                f"format= if its extension does not match its content.")
    if "already used as a name" in str(exc):
        detail = "; two columns share a name (TTYPEn cards): rename one of them"
    else:
        detail = _fits_diagnosis(path)
    if not detail and isinstance(exc, KeyError):  # astropy looks up a card the header lacks
        detail = f"; the header card {exc.args[0]!r} that a table needs is missing or damaged"
    return (f"cannot read {path} as a FITS table (corrupt or truncated file?): {_first_line(exc)}"
            f"{detail}; check the file or download it again.")


def _fits_diagnosis(path: Path) -> str:
    """Why a FITS file does not read, as far as its size and header tell ("" if they don't)."""
    size = path.stat().st_size
    if size == 0:
        return "; the file is empty (0 bytes)"
    with open(path, "rb") as fh:
        head = fh.read(80)
    if path.name.lower().endswith(".gz"):
        return ""  # compressed: the size on disk says nothing about the header's
    if not head.startswith(b"SIMPLE"):
        if _looks_like_text(head):
            return (f"; it starts with text ({head[:40].decode('ascii')!r}), not a FITS header: is it "
                    "a CSV or text table with the wrong extension? Rename it, or give its real format "
                    "(format='csv' in Python, format = \"csv\" in [data])")
        return "; it does not start with a FITS header (the card 'SIMPLE  =')"
    problem = _fits_header_problem(path, size)
    if problem:
        return problem
    if size % _FITS_BLOCK:
        return (f"; its size ({size} bytes) is not a multiple of {_FITS_BLOCK} bytes, as every "
                "FITS file's is: it is truncated")
    return ""


def _looks_like_text(head: bytes) -> bool:
    return bool(head) and all(32 <= b < 127 or b in (9, 10, 13) for b in head)


def _fits_header_problem(path: Path, size: int) -> str:
    """A header card that does not parse, or an HDU whose header (NAXIS1 x NAXIS2) promises
    more bytes than the file has; "" when the headers are too damaged to tell."""
    from astropy.io import fits

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # astropy's own truncation warnings say less
            for k, header in enumerate(_raw_headers(path)):
                bad_card = _unparsable_card(header)
                if bad_card:
                    return f"; HDU {k}'s header card {bad_card} cannot be parsed (damaged)"
            with fits.open(path, memmap=False) as hdul:
                for k, hdu in enumerate(hdul):
                    end = hdu.fileinfo()["datLoc"] + hdu.size
                    if end > size:
                        h = hdu.header
                        return (f"; HDU {k}'s header (NAXIS1 = {h.get('NAXIS1')}, NAXIS2 = "
                                f"{h.get('NAXIS2')}) describes data up to byte {end}, but the file has "
                                f"only {size} bytes: it is truncated (or those cards are damaged)")
    except Exception:  # a header too damaged to parse: nothing more to tell
        return ""
    return ""


def _raw_headers(path: Path, limit: int = 8):
    """The first headers of a FITS file, read one after the other without interpreting them
    (``fits.open`` stops at the first HDU whose cards do not parse, and hides it)."""
    from astropy.io import fits

    with open(path, "rb") as fh:
        for _ in range(limit):
            try:
                header = fits.Header.fromfile(fh)  # leaves fh at the block after the header
            except Exception:  # the end of the file, or no header there
                return
            yield header
            try:  # skip the data, as far as the header can tell its size
                axes = [int(header[f"NAXIS{i}"]) for i in range(1, int(header["NAXIS"]) + 1)]
                size = abs(int(header["BITPIX"])) // 8 * int(header.get("GCOUNT", 1)) * (
                    int(header.get("PCOUNT", 0)) + (int(np.prod(axes)) if axes else 0))
            except Exception:  # a card it needs is damaged: no later header can be found
                return
            fh.seek(-(-size // _FITS_BLOCK) * _FITS_BLOCK, os.SEEK_CUR)


def _unparsable_card(header) -> str:
    for card in header.cards:
        try:
            card.value  # noqa: B018 - parsing the value is the check
        except Exception:  # astropy raises VerifyError, ValueError... on a damaged card
            return repr(card.image.strip()[:40])
    return ""


def _undecodable_message(path: Path, fmt: str, exc: UnicodeDecodeError) -> str:
    """Name the file, the offending byte and its offset; astropy's text names neither the file nor a fix."""
    if fmt == "fits":  # a header card that is not ASCII: a corrupt FITS file, not a text problem
        return _unreadable_message(path, fmt, exc)
    data = path.read_bytes()
    bom = len(_UTF8_BOM) if data.startswith(_UTF8_BOM) else 0
    try:
        data[bom:].decode("utf-8")
        offset = exc.start  # decoded in another encoding (an encoding= argument): its own offset
    except UnicodeDecodeError as mine:
        offset = bom + mine.start
    byte = data[offset] if offset < len(data) else exc.object[exc.start]
    line = data.count(b"\n", 0, offset) + 1
    fits_hint = (" It starts like a FITS file: rename it to .fits or pass format='fits'."
                 if data.startswith(b"SIMPLE  =") else "")
    return (f"cannot read {path} as {_FORMAT_LABELS.get(fmt, fmt)}: byte 0x{byte:02x} at byte offset "
            f"{offset} (line {line}) is not UTF-8. Is it a binary (e.g. FITS) file with the wrong "
            "extension? Text tables must be UTF-8 (or ASCII): re-save it as UTF-8 (a Latin-1 or "
            f"Windows-1252 file fails like this).{fits_hint}")


_UTF8_BOM = b"\xef\xbb\xbf"
_RENAMED = re.compile(r"(.+)_(\d+)$")  # how astropy renames a repeated column: RV, RV_1 (VOTable: RV_2)


def _check_repeated_names(path: Path, fmt: str, table: Table) -> None:
    """Refuse a header that names a column twice, which astropy renames silently (``RV``, ``RV_1``).

    Only tables holding both ``X`` and ``X_<n>`` are looked at again, so the check costs
    nothing on ordinary files. FITS needs no check: astropy refuses repeated TTYPEs.
    """
    colnames = set(table.colnames)
    bases = {m.group(1) for c in table.colnames if (m := _RENAMED.match(c)) and m.group(1) in colnames}
    if not bases or fmt == "fits":
        return
    counts = _votable_name_counts(path) if fmt == "votable" else _header_name_counts(path, bases)
    repeated = sorted(b for b in bases if counts.get(b, 0) > 1)
    if repeated:
        raise ValueError(
            f"{path}: the header names the column(s) {repeated} more than once; astropy would "
            f"rename the repeats ({', '.join(repr(b + '_1') for b in repeated)} ...) and the "
            "wrong column could be used without a word. Rename one of each repeated column in the "
            "file's header."
        )


def _header_name_counts(path: Path, names) -> dict[str, int]:
    """Most times each name occurs as a whole word in one line of a text table's header.

    The header is the leading comment lines and the first other line (the column names
    of a CSV, or of an ECSV after its YAML). Counting within one line, not over the
    whole header, keeps an ECSV's YAML (one name a line) from counting a name twice.
    """
    patterns = {n: re.compile(rf"(?<!\w){re.escape(n)}(?!\w)") for n in names}
    counts = dict.fromkeys(names, 0)
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        for _, line in zip(range(100_000), fh, strict=False):
            for name, pattern in patterns.items():
                counts[name] = max(counts[name], len(pattern.findall(line)))
            if line.strip() and not line.lstrip().startswith("#"):
                break
    return counts


def _votable_name_counts(path: Path) -> dict[str, int]:
    """Times each FIELD's ID (its name when it has none) occurs: astropy names columns by ID."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        head = fh.read(4_000_000)
    head = head.split("<DATA", 1)[0]
    counts: dict[str, int] = {}
    for tag in re.findall(r"<FIELD\b[^>]*>", head):
        key = re.search(r'\bID="([^"]*)"', tag) or re.search(r'\bname="([^"]*)"', tag)
        if key:
            counts[key.group(1)] = counts.get(key.group(1), 0) + 1
    return counts


# --------------------------------------------------------------------------- drop bookkeeping


@dataclass
class DropReport:
    """Which source rows were removed, and why; and which errors were raised to a floor.

    Attributes
    ----------
    n_input : int
        Rows in the source table.
    dropped : dict of str to ndarray
        Reason -> indices (into the source table) of the rows it removed, in the
        order the cuts ran. A row is attributed to the first cut that removed it.
    floored : dict of str to int
        Error column -> number of errors raised to the floor (rows kept).
    kept : dict of str to int
        Notes on stars kept with something missing, e.g. ``{"with SigMg missing": 501}``
        (``missing_features="marginalise"``).
    """

    n_input: int
    dropped: dict[str, np.ndarray] = field(default_factory=dict)
    floored: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)

    @property
    def n_dropped(self) -> int:
        return int(sum(len(v) for v in self.dropped.values()))

    @property
    def n_kept(self) -> int:
        return self.n_input - self.n_dropped

    def counts(self) -> dict[str, int]:
        """Reason -> number of rows dropped for it."""
        return {reason: len(rows) for reason, rows in self.dropped.items()}

    def as_table(self) -> Table:
        """One row per reason: ``reason``, ``n_rows``."""
        counts = self.counts()
        return Table({"reason": list(counts), "n_rows": list(counts.values())},
                     dtype=[str, int])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (counts only) for provenance."""
        return {"n_input": self.n_input, "n_kept": self.n_kept, "dropped": self.counts(),
                "floored": dict(self.floored), "kept": dict(self.kept)}

    def __str__(self) -> str:
        lines = [f"kept {self.n_kept} of {self.n_input} rows"]
        lines += [f"  dropped {n:>7d}: {reason}" for reason, n in self.counts().items()]
        lines += [f"  floored {n:>7d}: errors in {col!r}" for col, n in self.floored.items()]
        lines += [f"  kept    {n:>7d}: {note}" for note, n in self.kept.items()]
        return "\n".join(lines)


@dataclass(frozen=True)
class _Cut:
    """One step of :func:`read_catalogue`'s cut sequence.

    Attributes
    ----------
    name : str
        The step, as the docstring of :func:`read_catalogue` orders them.
    masks : callable
        ``masks(selection)`` yields ``(mask, reason)`` pairs: the source rows to drop
        (bool, n_rows) and why. Read one pair at a time, so each mask sees the rows the
        pairs before it left. It may raise ``ValueError`` for input it cannot cut (a
        selection matching nothing, NaN without ``drop_nonfinite``).
    """

    name: str
    masks: Callable[[_Selection], Iterable[tuple[np.ndarray, str]]]


class _Selection:
    """Rows still in play, and the bookkeeping of those removed."""

    def __init__(self, n_rows: int):
        self.keep = np.ones(n_rows, dtype=bool)
        self.report = DropReport(n_input=n_rows)
        # missing_features="marginalise": (n_rows, n_features) entries kept as missing, and for each
        # value/error/correlation column the rows whose entry belongs to a missing feature.
        self.feature_missing: np.ndarray | None = None
        self.missing_entries: dict[str, np.ndarray] = {}
        self.combined: _Combined | None = None  # duplicates="combine": the merged epochs

    def observed(self, col: str) -> np.ndarray:
        """Rows in play whose ``col`` entry is used (not part of a feature kept as missing)."""
        exempt = self.missing_entries.get(col)
        return self.keep if exempt is None else self.keep & ~exempt

    def drop(self, mask: np.ndarray, reason: str) -> None:
        hit = mask & self.keep
        if hit.any():
            previous = self.report.dropped.get(reason, np.empty(0, dtype=int))
            self.report.dropped[reason] = np.concatenate([previous, np.flatnonzero(hit)])
            self.keep &= ~hit

    def apply(self, cuts: Sequence[_Cut]) -> None:
        """Run ``cuts`` in order; a row is attributed to the first cut that removes it."""
        for cut in cuts:
            for mask, reason in cut.masks(self):
                self.drop(mask, reason)


# --------------------------------------------------------------------------- the catalogue


@dataclass(frozen=True, eq=False)
class Catalogue:
    """Stars ready for a mixture fit, with the table they came from.

    Attributes
    ----------
    values : ndarray, shape (n_stars, n_features)
    error_covs : ndarray, shape (n_stars, n_features, n_features)
        Measurement-error covariance of each star.
    ids : ndarray, shape (n_stars,)
        The id column, or the source row index when none was named.
    feature_names : tuple of str, length n_features
    units : tuple of (str or None), length n_features
    covariates : dict of str to ndarray, each shape (n_stars,)
        Extra per-star quantities (e.g. projected radius) that are not fitted.
    table : astropy.table.Table
        The kept rows of the source table, all columns, in catalogue order.
    source_rows : ndarray of int, shape (n_stars,)
        Index of each star in the source table.
    report : DropReport
    source : str or None
        Path of the source file.
    observed : ndarray of bool, shape (n_stars, n_features), or None
        Which values were measured (``missing_features="marginalise"``); None when all
        were. Missing entries of ``values`` hold the observed column mean, and of
        ``error_covs`` zero off the diagonal and the column's median observed variance on
        it: placeholders for the likelihood to mask, never data. ``table`` shows them masked.
    """

    values: np.ndarray
    error_covs: np.ndarray
    ids: np.ndarray
    feature_names: tuple[str, ...]
    units: tuple[str | None, ...]
    covariates: dict[str, np.ndarray]
    table: Table
    source_rows: np.ndarray
    report: DropReport
    source: str | None = None
    observed: np.ndarray | None = None

    @property
    def n_stars(self) -> int:
        return int(self.values.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.values.shape[1])

    @property
    def errors(self) -> np.ndarray:
        """Standard errors, the square root of the error-covariance diagonal, (n_stars, n_features)."""
        return np.sqrt(np.diagonal(self.error_covs, axis1=1, axis2=2))

    def __repr__(self) -> str:
        return (f"Catalogue(n_stars={self.n_stars}, features={list(self.feature_names)}, "
                f"covariates={list(self.covariates)}, source={self.source!r}, "
                f"dropped={self.report.n_dropped})")

    @classmethod
    def from_arrays(cls, values, errors=None, *, feature_names=None, ids=None,
                    covariates: Mapping[str, Any] | None = None,
                    missing_features: str = "drop") -> Catalogue:
        """Build a catalogue from arrays (checked like a file's columns).

        Parameters
        ----------
        values : array_like, shape (n_stars, n_features) or (n_stars,)
        errors : array_like, optional
            Standard errors (n_stars, n_features) or covariances
            (n_stars, n_features, n_features); None for error-free values.
        feature_names : sequence of str, optional
            Defaults to ``x0, x1, ...``.
        ids : array_like, shape (n_stars,), optional
        covariates : mapping of str to array_like (n_stars,), optional
        missing_features : {"drop", "marginalise"}, default "drop"
            With ``"marginalise"``, NaN values (and their errors) mark features not
            measured (see :func:`read_catalogue`); otherwise NaN is refused.
        """
        x = np.asarray(values)
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2:
            raise ValueError(f"values must have shape (n_stars, n_features); got {x.shape}.")
        n_features = x.shape[1]
        names = list(feature_names) if feature_names is not None else [f"x{j}" for j in range(n_features)]
        if len(names) != n_features:
            raise ValueError(f"feature_names has {len(names)} names for {n_features} features.")
        table = Table()
        if ids is not None:
            table["id"] = np.asarray(ids)
        for j, name in enumerate(names):
            table[name] = x[:, j]
        error_kwargs = {} if errors is None else _add_error_columns(table, np.asarray(errors), x, names)
        for name, col in (covariates or {}).items():
            table[name] = np.asarray(col)
        return read_catalogue(table, values=names, id_column="id" if ids is not None else None,
                              covariates=list(covariates or {}), missing_features=missing_features,
                              **error_kwargs)

    def subset(self, keep, reasons: Mapping[str, np.ndarray] | None = None) -> Catalogue:
        """The stars of ``keep`` only, every per-star array (``observed`` included) cut alike.

        Parameters
        ----------
        keep : array_like of bool, shape (n_stars,)
        reasons : mapping of str to bool array (n_stars,), optional
            Why the others leave: recorded in a copy of the report (by source row), so that
            nothing is dropped silently.

        Returns
        -------
        Catalogue

        Examples
        --------
        >>> cat = Catalogue.from_arrays([1.0, 2.0, 3.0], [0.1, 0.1, 0.1])
        >>> cat.subset([True, False, True], {"example": [False, True, False]}).n_stars
        2
        """
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (self.n_stars,):
            raise ValueError(f"keep has shape {keep.shape}; it must be ({self.n_stars},) booleans.")
        dropped = dict(self.report.dropped)
        for reason, mask in (reasons or {}).items():
            mask = np.asarray(mask, dtype=bool)
            if mask.any():
                dropped[reason] = np.concatenate([dropped.get(reason, np.empty(0, int)),
                                                  np.asarray(self.source_rows)[mask]])
        report = replace(self.report, dropped=dropped, floored=dict(self.report.floored),
                         kept=dict(self.report.kept))
        return replace(self, values=self.values[keep], error_covs=self.error_covs[keep],
                       ids=np.asarray(self.ids)[keep], table=self.table[keep],
                       covariates={k: np.asarray(v)[keep] for k, v in self.covariates.items()},
                       source_rows=np.asarray(self.source_rows)[keep], report=report,
                       observed=None if self.observed is None else self.observed[keep])

    def with_columns(self, columns: Mapping[str, Any], provenance: Mapping | None = None) -> Table:
        """The kept source rows with result columns appended (e.g. membership probabilities).

        Parameters
        ----------
        columns : mapping of str to array_like, each with leading dimension n_stars
        provenance : mapping, optional
            Stored in ``meta`` under ``"bayesmix_provenance"``.

        Returns
        -------
        astropy.table.Table
        """
        out = self.table.copy(copy_data=True)
        for name, col in columns.items():
            if name in out.colnames:
                raise ValueError(f"result column {name!r} would overwrite an input column of the "
                                 "same name; choose another name or prefix.")
            arr = np.asarray(col)
            if arr.shape[:1] != (self.n_stars,):
                raise ValueError(f"result column {name!r} has shape {arr.shape}; its first "
                                 f"dimension must be n_stars={self.n_stars}.")
            out[name] = arr
        if provenance is not None:
            out.meta[PROVENANCE_KEY] = dict(provenance)
        return out


def _add_error_columns(table: Table, err: np.ndarray, x: np.ndarray, names) -> dict[str, Any]:
    """Put :meth:`Catalogue.from_arrays`'s errors in ``table``; return the matching read_catalogue keywords.

    Standard errors (n_stars, n_features) become one ``<name>_err`` column per feature,
    covariances (n_stars, n_features, n_features) one ``error_cov`` column.
    """
    if err.ndim == 1 and x.shape[1] == 1:
        err = err[:, None]
    if err.ndim != 2:
        table["error_cov"] = err
        return {"error_cov_column": "error_cov"}
    if err.shape != x.shape:
        raise ValueError(f"errors has shape {err.shape}; values has {x.shape}: "
                         "give one standard error per value.")
    error_names = [f"{name}_err" for name in names]
    for j, name in enumerate(error_names):
        table[name] = err[:, j]
    return {"errors": error_names}


def _as_list(name, value) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence):
        return list(value)
    raise ValueError(f"{name} must be a column name or a list of column names; got {value!r}.")


def _check_columns(table: Table, columns: Sequence[str], role: str) -> None:
    for col in columns:
        if col not in table.colnames:
            close = difflib.get_close_matches(col, table.colnames, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(
                f"{role} column {col!r} is not in the table.{hint} "
                f"Available columns: {', '.join(table.colnames[:30])}"
                f"{' ...' if len(table.colnames) > 30 else ''}"
            )


def _numeric(table: Table, col: str, role: str) -> tuple[np.ndarray, np.ndarray]:
    """Column as float64 values plus a mask of blank/masked entries."""
    column = table[col]
    kind = column.dtype.kind
    if kind not in "biuf":
        raise ValueError(
            f"{role} column {col!r} is not numeric (dtype {column.dtype}); pick a numeric column "
            "or convert it before reading (e.g. strip units or text flags)."
        )
    masked = np.asarray(column.mask) if isinstance(column, MaskedColumn) else np.zeros(len(column), bool)
    data = np.asarray(column.data if isinstance(column, MaskedColumn) else column, dtype=np.float64)
    if data.ndim != 1:
        raise ValueError(f"{role} column {col!r} holds arrays of shape {data.shape[1:]} per row; "
                         "a scalar column is needed here.")
    return data, masked


def _missing_spec(missing, columns: Sequence[str]) -> dict[str, list[float]]:
    if missing is None:
        return {}
    if isinstance(missing, Mapping):
        spec = {}
        for col, vals in missing.items():
            spec[col] = [float(v) for v in (vals if isinstance(vals, Sequence) else [vals])]
        return spec
    vals = [float(v) for v in (missing if isinstance(missing, Sequence) else [missing])]
    return {col: vals for col in columns}


def _floor_spec(error_floor, error_cols: Sequence[str]) -> dict[str, float]:
    if error_floor is None:
        return {}
    if isinstance(error_floor, Mapping):
        unknown = set(error_floor) - set(error_cols)
        if unknown:
            raise ValueError(f"error_floor names {sorted(unknown)}, which are not error columns "
                             f"({list(error_cols)}).")
        spec = {col: float(v) for col, v in error_floor.items()}
    else:
        spec = {col: float(error_floor) for col in error_cols}
    for col, v in spec.items():
        if not np.isfinite(v) or v <= 0:
            raise ValueError(f"error_floor for {col!r} must be a positive number; got {v}.")
    return spec


def _equal_mask(column, wanted) -> np.ndarray:
    wanted_list = list(wanted) if isinstance(wanted, (list, tuple, set)) else [wanted]
    col = np.asarray(column.filled() if isinstance(column, MaskedColumn) else column)
    if col.dtype.kind in "USO":
        col = np.char.strip(col.astype(str))
        wanted_list = [str(w).strip() for w in wanted_list]
    return np.isin(col, wanted_list)


def read_catalogue(
    source,
    values: str | Sequence[str],
    errors: str | Sequence[str | None] | None = None,
    *,
    correlations: Mapping[tuple[str, str], str] | None = None,
    error_cov_column: str | None = None,
    id_column: str | None = None,
    covariates: str | Sequence[str] | None = None,
    select: Mapping[str, Any] | None = None,
    zero_flags: str | Sequence[str] | None = None,
    missing: float | Sequence[float] | Mapping[str, Any] | None = None,
    ranges: Mapping[str, tuple[float | None, float | None]] | None = None,
    drop_nonfinite: bool = False,
    error_floor: float | Mapping[str, float] | None = None,
    duplicates: str = "error",
    format: str | None = None,
    layout: str | FixedWidthLayout | None = None,
    sky: Mapping[str, Any] | Any | None = None,
    drop_variable_p: float | None = None,
    missing_features: str = "drop",
) -> Catalogue:
    """Read stars from a table file (or Table), apply selections and cuts, build error covariances.

    Cuts run in this order, each row attributed to the first that removes it:
    ``select`` -> malformed fixed-width rows -> ``zero_flags`` -> no feature observed
    (``missing_features="marginalise"``) -> ``missing`` -> sky positions checked (``sky``)
    -> non-finite (``drop_nonfinite``) -> ``ranges`` -> ``duplicates`` (and
    ``drop_variable_p``).

    Parameters
    ----------
    source : str, Path or astropy.table.Table
    values : str or sequence of str
        Columns of the fitted features (n_features of them).
    errors : str or sequence of (str or None), optional
        Standard-error column for each value column, in the same order (None for an
        error-free feature). Omit for error-free data.
    correlations : mapping of (str, str) to str, optional
        ``{(value_a, value_b): column}`` of error-correlation coefficients.
    error_cov_column : str, optional
        A column holding each star's whole (n_features, n_features) error
        covariance; exclusive with ``errors``.
    id_column : str, optional
        Star identifier; the source row index when omitted.
    covariates : str or sequence of str, optional
        Extra numeric per-star columns (e.g. projected radius ``"DCEN"``).
    select : mapping, optional
        ``{column: value}`` keeps rows equal to it (text compared stripped), ``{column:
        [values]}`` rows equal to any; ``{column: {operator: operand, ...}}`` rows meeting
        every condition, the operators being ``"glob"`` (shell pattern, ``"NGC 6*"``),
        ``"regex"`` (:func:`re.search`; anchor with ``^``), and ``"=="``, ``"!="``, ``"<"``,
        ``"<="``, ``">"``, ``">="`` (numbers, on numeric columns; ``==``/``!=`` also take
        text). Patterns match a numeric column's values as text (``str(1234)``). Masked
        and NaN entries meet no condition (not even ``!=``). Each condition is its own drop reason (``"select:
        P_Mem >= 0.5"``).
    zero_flags : str or sequence of str, optional
        Flag columns that must equal zero.
    missing : float, sequence of float, or mapping, optional
        Sentinel values meaning "missing" (e.g. ``9.99``, ``-9999.99``) in any used
        column, or ``{column: sentinel(s)}``; rows holding one are dropped.
    ranges : mapping of str to (low, high), optional
        Keep rows with ``low <= column <= high``; None leaves a side open.
    drop_nonfinite : bool, default False
        Drop (and report) rows with NaN, inf or blank entries in used columns.
        When False such rows raise ``ValueError``.
    error_floor : float or mapping of str to float, optional
        Raise errors below this to it (all error columns, or per column). Without
        a floor, a zero error raises ``ValueError``.
    duplicates : {"error", "first", "best", "combine"}, default "error"
        What to do with repeated ids: raise, keep the first row, keep the row with the
        smallest total error variance, or combine the rows as repeat epochs of one star
        (see :func:`combine_epochs`): the inverse-variance (generalised least squares)
        mean and its covariance become the star's values and errors, and the table
        gains ``n_epochs``, ``epoch_chi2``, ``epoch_dof`` and ``epoch_p``. A combined
        star's numeric covariates are the mean over its epochs; its other columns are
        its first row's. Blank or masked ids are no ids: such rows are never merged.
    format, layout
        Passed to :func:`read_table` when ``source`` is a path.
    sky : mapping or bayesmix.config.SkySpec, optional
        ``{"ra": column, "dec": column, "centre": (ra_deg, dec_deg) or "00h52m45.2s
        -26d34m57s", "ellipticity": 0, "position_angle": 0, "unit": "arcmin",
        "half_light_radius": None, "prefix": ""}``: adds the columns ``xi``, ``eta``,
        ``R``, ``R_ell`` (and ``R_over_Rh``) of :func:`bayesmix.sky.sky_offsets`, with
        units, to the table and as covariates. Non-finite positions are non-finite
        values (``drop_nonfinite``); selected stars 90 degrees or more from the centre,
        or with abs(Dec) > 90, raise ``ValueError``.
    drop_variable_p : float, optional
        With ``duplicates="combine"``: drop stars whose ``epoch_p`` is below this
        (reason ``"variable: epoch_p < <p>"``), e.g. 0.001 against binaries.
    missing_features : {"drop", "marginalise"}, default "drop"
        ``"marginalise"`` keeps a star whose value (or its error) is blank, NaN or a
        ``missing`` sentinel in some features: :attr:`Catalogue.observed` marks them
        and the report counts them (``"with <column> missing"``). Stars with no feature
        observed are dropped (``"no feature observed"``). Checks of values and errors
        look at the observed entries only.

    Returns
    -------
    Catalogue

    Raises
    ------
    ValueError
        Missing or non-numeric column, NaN/inf (without ``drop_nonfinite``),
        negative errors, zero errors without a floor, non-positive-definite error
        covariances, an empty selection, or inconsistent numbers of columns; the
        message names the column and the fix.

    Examples
    --------
    >>> from astropy.table import Table
    >>> from bayesmix.catalogue import read_catalogue
    >>> stars = Table({"ID": ["a", "b", "c", "d"], "RV": [-45.1, -43.9, 12.0, 99.0],
    ...                "E_RV": [0.5, 0.7, 1.2, 0.0], "Cluster": ["N288", "N288", "N288", "N104"]})
    >>> cat = read_catalogue(stars, values="RV", errors="E_RV", id_column="ID",
    ...                      select={"Cluster": "N288"})
    >>> cat.n_stars, cat.values.shape, cat.error_covs.shape
    (3, (3, 1), (3, 1, 1))
    >>> cat.report.n_input  # rows read; the report lists every dropped row by reason
    4
    """
    table, path = _source_table(source, format, layout)
    table, frame = _with_sky_columns(table, sky)
    request = _Request.check(table, values, errors, correlations=correlations,
                             error_cov_column=error_cov_column, id_column=id_column,
                             covariates=_with_sky_covariates(covariates, frame), select=select,
                             zero_flags=zero_flags, missing=missing, ranges=ranges, error_floor=error_floor,
                             duplicates=duplicates, sky_frame=frame, drop_variable_p=drop_variable_p,
                             missing_features=missing_features)
    numeric = {col: _numeric_input(table, col, request) for col in dict.fromkeys(request.numeric_cols)}
    sel = _Selection(len(table))
    sel.apply(_cut_sequence(table, numeric, request, drop_nonfinite))
    if not sel.keep.any():
        raise ValueError(f"no rows left after the cuts:\n{sel.report}\nloosen the cuts above.")
    catalogue = _kept_catalogue(table, path, numeric, request, sel)
    report = sel.report
    selection_only = all(r.startswith("select:") for r in report.dropped)
    if report.n_dropped or report.floored:
        log = logger.info if selection_only and not report.floored else logger.warning
        log("%s: %s", path or "table", report)
    return catalogue


def _source_table(source, format, layout) -> tuple[Table, str | None]:
    """The table to read stars from, and its path (None for a Table made in memory)."""
    if isinstance(source, Table):
        table, path = source, source.meta.get("source_path")
    else:
        table, path = read_table(source, format=format, layout=layout), str(source)
    if len(table) == 0:
        raise ValueError(f"the table {path or ''} has no rows.".replace("  ", " "))
    return table, path


def _with_sky_covariates(covariates, frame) -> list[str]:
    """The covariates asked for, then the sky columns not among them."""
    names = _as_list("covariates", covariates)
    return names + [c for c in frame.columns if c not in names] if frame is not None else names


def _numeric_input(table, col, request) -> tuple[np.ndarray, np.ndarray]:
    """``col`` as float64 values and a blank mask (RA/Dec of ``sky=`` in degrees, as parsed)."""
    frame = request.sky_frame
    if frame is not None and col in frame.degrees:
        return frame.degrees[col]
    return _numeric(table, col, "value" if col in request.value_cols else "input")


@dataclass(frozen=True)
class _SkyFrame:
    """The ``sky=`` request: RA/Dec in degrees (as ``numeric`` holds columns), the centre, the
    names of the columns added."""

    degrees: dict[str, tuple[np.ndarray, np.ndarray]]  # {ra column: (deg, masked), dec column: ...}
    centre_deg: tuple[float, float]
    columns: tuple[str, ...]


def _with_sky_columns(table: Table, sky) -> tuple[Table, _SkyFrame | None]:
    """A shallow copy of ``table`` with the sky offsets of every row added (NaN where RA or Dec is
    missing, and xi/eta NaN at 90 degrees or more: the sky cut refuses such selected rows)."""
    if sky is None:
        return table, None
    from bayesmix.sky import coordinate_degrees, project, sky_column_names, sky_settings

    try:
        opts = sky_settings(sky)
    except ValueError as exc:
        raise ValueError(f"sky: {exc}") from None
    names = sky_column_names(opts["prefix"], opts["half_light_radius"] is not None)
    _check_columns(table, [opts["ra"], opts["dec"]], "sky position")
    clash = [n for n in names if n in table.colnames]
    if clash:
        raise ValueError(
            f"sky: the table already has column(s) {clash}, which the sky offsets would overwrite; give a "
            "prefix (sky={'prefix': 'sky_', ...} in Python, prefix = \"sky_\" in [data.sky])."
        )
    degrees = {}
    for axis in ("ra", "dec"):
        col = opts[axis]
        try:
            deg = coordinate_degrees(table[col], axis)
        except ValueError as exc:
            raise ValueError(f"sky {axis} column {col!r}: {exc}") from None
        degrees[col] = (deg, np.zeros(deg.size, dtype=bool))
    (ra, _), (dec, _) = degrees.values()
    with np.errstate(invalid="ignore"):
        off = project(ra, dec, opts["centre_deg"], ellipticity=opts["ellipticity"],
                      position_angle=opts["position_angle"], unit=opts["unit"],
                      half_light_radius=opts["half_light_radius"])
    out = table.copy(copy_data=False)
    for name, data in zip(names, off, strict=False):
        out[name] = Column(data, name=name, unit=None if name.endswith("R_over_Rh") else opts["unit"])
    return out, _SkyFrame(degrees=degrees, centre_deg=opts["centre_deg"], columns=names)


@dataclass(frozen=True)
class _Request:
    """The columns and cuts :func:`read_catalogue` was asked for, checked against the table."""

    value_cols: list[str]
    error_cols: list[str | None]  # one per value column; None for an error-free feature
    corr_spec: dict[tuple[str, str], str]
    error_cov_column: str | None
    id_column: str | None
    covariate_cols: list[str]
    flag_cols: list[str]
    select: Mapping[str, Any]
    missing_spec: dict[str, list[float]]
    ranges: Mapping[str, Any]
    floor_spec: dict[str, float]
    duplicates: str
    sky_frame: _SkyFrame | None = None
    drop_variable_p: float | None = None
    missing_features: str = "drop"

    @property
    def used_error_cols(self) -> list[str]:
        return [c for c in self.error_cols if c is not None]

    @property
    def numeric_cols(self) -> list[str]:
        """Every column read as numbers, values first (it may name a column twice); RA and Dec
        before the sky covariates, so a blank position is reported under its own column."""
        sky = list(self.sky_frame.degrees) if self.sky_frame is not None else []
        return (self.value_cols + self.used_error_cols + list(self.corr_spec.values()) + sky
                + self.covariate_cols)

    @classmethod
    def check(cls, table, values, errors, *, correlations, error_cov_column, id_column, covariates, select,
              zero_flags, missing, ranges, error_floor, duplicates, sky_frame=None, drop_variable_p=None,
              missing_features="drop") -> _Request:
        """Check every named column exists and the options are valid, in :func:`read_catalogue`'s order."""
        value_cols = _as_list("values", values)
        error_cols, corr_spec = _check_request(table, value_cols, errors, correlations, error_cov_column)
        covariate_cols = _as_list("covariates", covariates)
        flag_cols = _as_list("zero_flags", zero_flags)
        _check_columns(table, covariate_cols, "covariate")
        _check_columns(table, flag_cols, "flag")
        _check_columns(table, list(select or {}), "select")
        _check_select(table, select or {})
        _check_columns(table, list(ranges or {}), "range")
        if id_column is not None:
            _check_columns(table, [id_column], "id")
        _check_epoch_options(table, duplicates, drop_variable_p, id_column, error_cols, error_cov_column)
        if missing_features not in MISSING_FEATURES:
            raise ValueError(f"missing_features={missing_features!r}; use one of {MISSING_FEATURES}.")
        # missing and error_floor name columns of the request itself: checked against it, once built.
        request = cls(value_cols=value_cols, error_cols=error_cols, corr_spec=corr_spec,
                      error_cov_column=error_cov_column, id_column=id_column, covariate_cols=covariate_cols,
                      flag_cols=flag_cols, select=select or {}, missing_spec={}, ranges=ranges or {},
                      floor_spec={}, duplicates=duplicates, sky_frame=sky_frame,
                      drop_variable_p=drop_variable_p, missing_features=missing_features)
        missing_spec = _missing_spec(missing, request.numeric_cols)
        _check_columns(table, list(missing_spec), "missing-value")
        floor_spec = _floor_spec(error_floor, request.used_error_cols)
        return replace(request, missing_spec=missing_spec, floor_spec=floor_spec)


def _kept_catalogue(table, path, numeric, request: _Request, sel: _Selection) -> Catalogue:
    """The :class:`Catalogue` of the rows the cuts kept, with their error covariances."""
    rows = np.flatnonzero(sel.keep)
    value_cols = request.value_cols
    x, covs, missing, cov_data = _kept_arrays(table, numeric, request, sel, rows)
    observed = None if missing is None or not missing.any() else ~missing
    if observed is not None:
        x, covs = _placeholders(x, covs, observed)
        lost = (~observed).sum(axis=0)
        sel.report.kept.update({f"with {name} missing": int(n)
                                for name, n in zip(value_cols, lost, strict=True) if n})
    ids = np.asarray(table[request.id_column])[rows] if request.id_column is not None else rows.copy()
    units = tuple(str(table[c].unit) if table[c].unit is not None else None for c in value_cols)
    kept = _kept_table(table, request, sel, rows, (x, covs, cov_data), observed)
    return Catalogue(values=x, error_covs=covs, ids=ids, feature_names=tuple(value_cols),
                     units=units, covariates=cov_data, table=kept, source_rows=rows,
                     report=sel.report, source=path, observed=observed)


def _kept_table(table, request: _Request, sel: _Selection, rows, arrays, observed) -> Table:
    """The kept source rows; combined epochs written in, missing entries masked."""
    kept = table[rows]
    kept.meta = {k: v for k, v in table.meta.items() if k != MALFORMED_KEY}
    if sel.combined is not None:
        _write_combined_columns(kept, request, sel.combined, rows, *arrays)
    if observed is not None:
        _mask_missing_entries(kept, request, observed)
    return kept


def _kept_arrays(table, numeric, request: _Request, sel: _Selection, rows):
    """Values, error covariances, missing-feature mask (or None) and covariates of the kept ``rows``."""
    if sel.combined is not None:
        x, covs, missing = (a[rows] for a in (sel.combined.values, sel.combined.covs, sel.combined.missing))
        return x, covs, missing, {c: sel.combined.covariates[c][rows] for c in request.covariate_cols}
    missing = sel.feature_missing[rows] if sel.feature_missing is not None else None
    x = np.column_stack([numeric[c][0][rows] for c in request.value_cols])
    covs = _request_covs(table, numeric, request, rows, missing)
    return x, covs, missing, {c: numeric[c][0][rows] for c in request.covariate_cols}


def _request_covs(table, numeric, request: _Request, rows, missing=None) -> np.ndarray:
    """Error covariances of ``rows``; entries of features in ``missing`` (n_rows, D) are 0."""
    if request.error_cov_column is not None:
        return _whole_error_covs(table, request.error_cov_column, rows, len(request.value_cols), missing)
    return _error_covs(numeric, request.error_cols, request.value_cols, request.corr_spec,
                       request.floor_spec, rows, missing)


def _placeholders(x, covs, observed):
    """Fill missing values with the observed column mean, and missing variances with the column's
    median observed variance (off-diagonal 0): finite placeholders that the likelihood masks."""
    x, covs = x.copy(), covs.copy()
    for j in range(x.shape[1]):
        seen = observed[:, j]
        lost = ~seen
        if not lost.any():
            continue
        x[lost, j] = float(np.mean(x[seen, j])) if seen.any() else 0.0
        covs[lost, j, :] = 0.0
        covs[lost, :, j] = 0.0
        variances = covs[seen, j, j]
        covs[lost, j, j] = float(np.median(variances)) if variances.size and np.median(variances) > 0 else 1.0
    return x, covs


def _mask_missing_entries(kept: Table, request: _Request, observed) -> None:
    """Show the missing values (and their errors) of ``kept`` as masked, not as fill or sentinel."""
    for j, (value_col, error_col) in enumerate(zip(request.value_cols, request.error_cols, strict=True)):
        lost = ~observed[:, j]
        for col in (value_col, error_col):
            if col is None or not lost.any():
                continue
            column = MaskedColumn(kept[col], copy=True)
            column.mask = np.ma.getmaskarray(column) | lost
            kept[col] = column


def _cut_sequence(table, numeric, request: _Request, drop_nonfinite: bool) -> list[_Cut]:
    """:func:`read_catalogue`'s cuts, in the order its docstring gives."""
    return [
        _Cut("select", functools.partial(_select_masks, table, request.select)),
        _Cut("malformed", functools.partial(_malformed_masks, table)),
        _Cut("zero_flags", functools.partial(_flag_masks, table, request.flag_cols)),
        _Cut("features", functools.partial(_feature_masks, table, numeric, request)),
        _Cut("missing", functools.partial(_missing_masks, table, numeric, request.missing_spec)),
        _Cut("sky", functools.partial(_sky_masks, request.sky_frame)),
        _Cut("nonfinite", functools.partial(_nonfinite_masks, numeric, drop_nonfinite)),
        _Cut("ranges", functools.partial(_range_masks, table, numeric, request.ranges)),
        # After the cuts, so that a sentinel declared missing (or cut by a range) is no error.
        _Cut("checks", functools.partial(_check_rows_left, numeric, request)),
        _Cut("duplicates", functools.partial(_duplicate_masks, table, numeric, request)),
    ]


def _check_rows_left(numeric, request: _Request, sel) -> tuple:
    """Refuse unusable values and errors among the rows left; record the errors raised to a floor.

    A step of the cut sequence that removes no row.
    """
    _check_magnitudes(numeric, request.value_cols, request.used_error_cols, sel)
    _check_errors(numeric, request.used_error_cols, request.floor_spec, sel)
    return ()


def _feature_masks(table, numeric, request: _Request, sel):
    """``missing_features="marginalise"``: mark the features each row lacks; drop rows lacking all.

    A feature is missing where its value or its error is blank, NaN, infinite or a declared
    sentinel. Its entries (and those of correlation columns pairing it) are then left out
    of the later cuts and checks, which look at observed entries only.
    """
    if request.missing_features != "marginalise":
        return
    n_features = len(request.value_cols)
    lost = np.column_stack([_entry_missing(table, numeric, request, j) for j in range(n_features)])
    sel.feature_missing = lost
    none = np.zeros(len(lost), dtype=bool)
    for j, (value_col, error_col) in enumerate(zip(request.value_cols, request.error_cols, strict=True)):
        for col in (value_col, error_col):
            if col is not None:
                sel.missing_entries[col] = sel.missing_entries.get(col, none) | lost[:, j]
    for (a, b), col in request.corr_spec.items():
        pair = lost[:, request.value_cols.index(a)] | lost[:, request.value_cols.index(b)]
        sel.missing_entries[col] = sel.missing_entries.get(col, none) | pair
    yield lost.all(axis=1), "no feature observed"


def _entry_missing(table, numeric, request: _Request, j: int) -> np.ndarray:
    """Rows whose feature ``j`` is not measured: value or error blank, non-finite or a sentinel."""
    cols = [request.value_cols[j], request.error_cols[j]]
    lost = np.zeros(len(table), dtype=bool)
    for col in (c for c in cols if c is not None):
        data, masked = numeric[col]
        lost |= masked | ~np.isfinite(data)
        for s in request.missing_spec.get(col, []):
            lost |= _sentinel_hit(table, numeric, col, s)
    if request.error_cov_column is not None:
        cov = np.asarray(table[request.error_cov_column], dtype=np.float64)
        if cov.ndim == 3 and j < cov.shape[1]:
            lost |= ~np.isfinite(cov[:, j, j])
    return lost


def _sentinel_hit(table, numeric, col, s) -> np.ndarray:
    """Rows of ``col`` equal to the sentinel ``s``, compared in the column's own precision."""
    data, _ = numeric[col] if col in numeric else _numeric(table, col, "missing-value")
    native = np.asarray(table[col]).dtype
    # 9.99 stored as float32 is not float64 9.99.
    raw = np.asarray(table[col].data if isinstance(table[col], MaskedColumn) else table[col])
    return np.asarray(raw == np.asarray(s, dtype=native) if native.kind == "f" else data == s)


def _sky_masks(frame, sel) -> tuple:
    """Refuse selected stars whose positions cannot be projected about the centre (removes no row)."""
    if frame is None:
        return ()
    from bayesmix.sky import sky_problem

    rows = np.flatnonzero(sel.keep)
    (ra, _), (dec, _) = frame.degrees.values()
    problem = sky_problem(ra[rows], dec[rows], *frame.centre_deg, rows=rows, what="source row")
    if problem:
        raise ValueError(f"sky: {problem}")
    return ()


def _check_request(table, value_cols, errors, correlations, error_cov_column):
    """Check the value, error and correlation columns asked for; return the error columns and correlations."""
    if not value_cols:
        raise ValueError("values must name at least one column to fit.")
    if len(set(value_cols)) != len(value_cols):
        raise ValueError(f"values lists a column twice: {value_cols}.")
    n_features = len(value_cols)
    if errors is not None and error_cov_column is not None:
        raise ValueError("give either errors (standard-error columns) or error_cov_column, not both.")
    error_cols = _as_list("errors", errors) if errors is not None else [None] * n_features
    if len(error_cols) != n_features:
        raise ValueError(
            f"errors names {len(error_cols)} column(s) for {n_features} value column(s) "
            f"{value_cols}; give one error column per value column (None for an error-free one)."
        )
    corr_spec = dict(correlations or {})
    _check_correlations(corr_spec, value_cols, error_cols, error_cov_column)
    _check_columns(table, value_cols, "value")
    _check_columns(table, [c for c in error_cols if c is not None], "error")
    _check_columns(table, list(corr_spec.values()), "correlation")
    if error_cov_column is not None:
        _check_columns(table, [error_cov_column], "error covariance")
    return error_cols, corr_spec


def _check_correlations(corr_spec, value_cols, error_cols, error_cov_column) -> None:
    for pair, col in corr_spec.items():
        if len(pair) != 2 or not set(pair) <= set(value_cols) or pair[0] == pair[1]:
            raise ValueError(f"correlations key {pair!r} must be a pair of distinct value columns "
                             f"from {value_cols}.")
        if error_cov_column is not None:
            raise ValueError("correlations cannot be combined with error_cov_column (it is whole).")
        if error_cols[value_cols.index(pair[0])] is None or error_cols[value_cols.index(pair[1])] is None:
            raise ValueError(f"correlation column {col!r} pairs a feature that has no error column.")


# The cuts: generators of (mask, reason) pairs, the last argument the _Selection. Lazy, so that
# every mask meets the rows the earlier ones left (a NaN in a row already cut by a sentinel is no error).


def _select_masks(table, select, sel):
    for col, wanted in select.items():
        if isinstance(wanted, Mapping):
            for op, operand in wanted.items():
                mask = _condition_mask(table[col], col, op, operand)
                _require_match(table, col, mask, f"{op} {operand!r}")
                yield ~mask, f"select: {col} {op} {operand!r}"
            continue
        mask = _equal_mask(table[col], wanted)
        _require_match(table, col, mask, f"== {wanted!r}")
        yield ~mask, (f"select: {col} not in {wanted!r}" if isinstance(wanted, (list, tuple))
                      else f"select: {col} != {wanted!r}")


def _require_match(table, col, mask, condition: str) -> None:
    if not mask.any():
        sample = np.unique(np.char.strip(np.asarray(table[col]).astype(str)))[:8].tolist()
        raise ValueError(
            f"select {col} {condition} matches no row; values in {col!r} include "
            f"{', '.join(repr(s) for s in sample)}."
        )


_COMPARISONS = {"==": np.equal, "!=": np.not_equal, "<": np.less, "<=": np.less_equal,
                ">": np.greater, ">=": np.greater_equal}


def _check_select(table, select) -> None:
    """Refuse unknown operators, bad regular expressions and comparisons on text, before any cut."""
    for col, wanted in select.items():
        if not isinstance(wanted, Mapping):
            continue
        if not wanted:
            raise ValueError(f"select[{col!r}] is an empty table; give one of {list(SELECT_OPERATORS)}.")
        for op, operand in wanted.items():
            _check_condition(table[col], col, op, operand)


def _check_condition(column, col, op, operand) -> None:
    if op not in SELECT_OPERATORS:
        raise ValueError(f"select[{col!r}] has the unknown operator {op!r}; use one of "
                         f"{list(SELECT_OPERATORS)}.")
    if op in ("glob", "regex"):
        _check_pattern(col, op, operand)
    elif op in _COMPARISONS and not (op in ("==", "!=") and isinstance(operand, str)):
        if column.dtype.kind not in "biuf" or not _is_number(operand):
            raise ValueError(
                f"select[{col!r}] {op} {operand!r}: a comparison needs a numeric column and a number; "
                f"column {col!r} has dtype {column.dtype}. Use {{glob = ...}}, {{regex = ...}} or "
                "a plain value (equality) for text."
            )


def _check_pattern(col, op, operand) -> None:
    if not isinstance(operand, str):
        raise ValueError(f"select[{col!r}]: {op} needs a pattern (a string); got {operand!r}.")
    if op == "regex":
        try:
            re.compile(operand)
        except re.error as exc:
            raise ValueError(f"select[{col!r}]: regex {operand!r} is not a valid regular expression "
                             f"({exc}).") from None


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _condition_mask(column, col: str, op: str, operand) -> np.ndarray:
    """Rows of ``column`` meeting one ``{op: operand}`` condition; masked or NaN entries never do.

    ``glob`` and ``regex`` match the whole stripped text of each entry (a numeric column's
    entries as ``str`` writes them, e.g. ``1234`` or ``0.5``): ``regex`` with
    :func:`re.search`, so anchor it (``^Car-``) to match a prefix only.
    """
    masked = np.ma.getmaskarray(column)
    data = np.asarray(column.data if isinstance(column, MaskedColumn) else column)
    if op in ("glob", "regex"):
        text = np.char.strip(data.astype(str)).ravel()
        if op == "glob":
            import fnmatch

            hit = np.array([fnmatch.fnmatchcase(t, operand) for t in text], dtype=bool)
        else:
            pattern = re.compile(operand)
            hit = np.array([pattern.search(t) is not None for t in text], dtype=bool)
    elif isinstance(operand, str):  # == / != on text
        hit = _equal_mask(column, operand)
        hit = hit if op == "==" else ~hit
    else:  # NaN, like a masked entry, meets no condition ("!=" included)
        numbers = data.astype(np.float64)
        with np.errstate(invalid="ignore"):
            hit = _COMPARISONS[op](numbers, float(operand)) & ~np.isnan(numbers)
    return np.asarray(hit, dtype=bool) & ~masked


def _malformed_masks(table, sel):
    malformed = np.zeros(len(table), dtype=bool)
    malformed[np.asarray(table.meta.get(MALFORMED_KEY, []), dtype=int)] = True
    yield malformed, "malformed: row overflows its fixed-width fields"


def _flag_masks(table, flag_cols, sel):
    for col in flag_cols:
        data, masked = _numeric(table, col, "flag")
        yield masked | (data != 0), f"flag: {col} != 0"


def _missing_masks(table, numeric, missing_spec, sel):
    for col, sentinels in missing_spec.items():
        for s in sentinels:
            hit = _sentinel_hit(table, numeric, col, s)
            yield hit & sel.observed(col), f"missing: {col} == {s:g}"


def _rows_text(rows: np.ndarray, n: int = 5) -> str:
    return f"{', '.join(map(str, rows[:n]))}{', ...' if rows.size > n else ''}"


def _nonfinite_masks(numeric, drop_nonfinite: bool, sel):
    for col, (data, masked) in numeric.items():
        bad = (masked | ~np.isfinite(data)) & sel.observed(col)
        if bad.any():
            if not drop_nonfinite:
                rows = np.flatnonzero(bad)
                raise ValueError(
                    f"column {col!r} has {rows.size} NaN, infinite or blank value(s) among the "
                    f"selected rows (source rows {_rows_text(rows)}); pass drop_nonfinite=True "
                    "(drop_nonfinite = true in [data]) to drop and report them, or "
                    "missing=<sentinel> (missing = <sentinel> in [data]) if they encode a missing value."
                )
            yield bad, f"nonfinite: {col}"


def _range_masks(table, numeric, ranges, sel):
    for col, bounds in ranges.items():
        if len(bounds) != 2:
            raise ValueError(f"ranges[{col!r}] must be (low, high); got {bounds!r}.")
        low, high = bounds
        data, masked = numeric[col] if col in numeric else _numeric(table, col, "range")
        with np.errstate(invalid="ignore"):
            outside = masked | ~np.isfinite(data)
            if low is not None:
                outside |= data < low
            if high is not None:
                outside |= data > high
        yield outside & sel.observed(col), f"range: {col} outside [{low}, {high}]"


def _check_magnitudes(numeric, value_cols, error_cols, sel) -> None:
    """Refuse values and errors beyond :data:`MAGNITUDE_LIMIT` among the rows still in play.

    Squares of such numbers overflow float64 (beyond about 1.3e154) in the error variances
    and the likelihood; left in, they surface later as "NaN or infinite" covariances or
    as a non-finite prior scale, far from the number that caused them.
    """
    for col in dict.fromkeys([*value_cols, *error_cols]):
        data, _ = numeric[col]
        with np.errstate(invalid="ignore"):
            huge = sel.observed(col) & (np.abs(data) > MAGNITUDE_LIMIT)
        if not huge.any():
            continue
        rows = np.flatnonzero(huge)
        v = float(data[rows[0]])
        role = "value" if col in value_cols else "error"
        units = "give the column in other units (e.g. km/s, not cm/s)"
        if np.unique(data[rows]).size == 1:  # one repeated number: more likely a sentinel
            fix = (f"If {v!r} is a sentinel for a missing value, declare it: missing = {{\"{col}\" = "
                   f"{v!r}}} in [data] (missing={{'{col}': {v!r}}} in Python), or cut it with ranges; "
                   f"otherwise {units}.")
        else:
            fix = f"{units[0].upper()}{units[1:]}, or cut those rows with ranges."
        raise ValueError(
            f"{role} column {col!r} has {rows.size} value(s) beyond +-{_LIMIT_TEXT} (source rows "
            f"{_rows_text(rows)}; row {rows[0]} holds {v!r}): their squares overflow, and bayesmix "
            f"handles |values| and errors up to about {_LIMIT_TEXT}. {fix}"
        )


def _check_errors(numeric, error_cols, floor_spec, sel) -> None:
    """Negative errors are data errors; zero ones, or ones whose squares underflow, need a floor."""
    for col in error_cols:
        data, _ = numeric[col]
        live = sel.observed(col)
        negative = live & (data < 0)
        if negative.any():
            rows = np.flatnonzero(negative)
            raise ValueError(
                f"error column {col!r} has {rows.size} negative value(s) (source rows "
                f"{_rows_text(rows)}); if they encode 'missing', pass missing=<value> "
                "(missing = <value> in [data])."
            )
        floor = floor_spec.get(col)
        if floor is None:
            _refuse_zero_variance(col, data, live)
        else:
            # A float32 0.01 reads as 0.0099999998: within float32 precision it is at the floor.
            low = live & (data < floor) & ~np.isclose(data, floor, rtol=1e-6, atol=0.0)
            if low.any():
                sel.report.floored[col] = int(low.sum())


def _refuse_zero_variance(col, data, live) -> None:
    floor_hint = ("pass error_floor=<smallest credible error> (error_floor = <number> in [data], "
                  "for all error columns or as {column = number})")
    zero = live & (data == 0)
    if zero.any():
        rows = np.flatnonzero(zero)
        raise ValueError(
            f"error column {col!r} has {rows.size} zero value(s) (source rows {_rows_text(rows)}); "
            f"a star cannot be measured perfectly: {floor_hint}."
        )
    with np.errstate(under="ignore"):
        underflow = live & (data**2 == 0)
    if underflow.any():
        rows = np.flatnonzero(underflow)
        raise ValueError(
            f"error column {col!r} has {rows.size} nonzero value(s) so small that their squares "
            f"underflow to zero (source rows {_rows_text(rows)}; row {rows[0]} holds "
            f"{float(data[rows[0]])!r}): bayesmix handles errors down to about "
            f"{1 / MAGNITUDE_LIMIT:.0e}. Give the column in other units, or {floor_hint}."
        )


def _error_covs(numeric, error_cols, value_cols, corr_spec, floor_spec, rows, missing=None) -> np.ndarray:
    """Covariances of ``rows`` from standard errors and correlations; the entries of features
    marked in ``missing`` (rows, n_features) are 0 (the caller puts placeholders there)."""
    n_features = len(value_cols)
    lost = np.zeros((rows.size, n_features), bool) if missing is None else missing
    sig = np.zeros((rows.size, n_features))
    for j, col in enumerate(error_cols):
        if col is not None:
            e = numeric[col][0][rows]
            e = np.maximum(e, floor_spec[col]) if col in floor_spec else e
            sig[:, j] = np.where(lost[:, j], 0.0, e)
    covs = np.zeros((rows.size, n_features, n_features))
    idx = np.arange(n_features)
    covs[:, idx, idx] = sig**2
    for (a, b), col in corr_spec.items():
        rho = numeric[col][0][rows]
        rho = np.where(lost[:, value_cols.index(a)] | lost[:, value_cols.index(b)], 0.0, rho)
        bad = np.abs(rho) >= 1
        if bad.any():
            raise ValueError(
                f"correlation column {col!r} has {int(bad.sum())} value(s) with |rho| >= 1 "
                f"(catalogue rows {', '.join(map(str, rows[bad][:5]))}): the error covariance "
                "would be singular; correlations must lie strictly in (-1, 1)."
            )
        i, j = value_cols.index(a), value_cols.index(b)
        covs[:, i, j] = covs[:, j, i] = rho * sig[:, i] * sig[:, j]
    if corr_spec:
        _require_pd(covs, rows, f"error covariances built from correlations {list(corr_spec.values())}",
                    allow_singular_diag=any(c is None for c in error_cols) or bool(lost.any()))
    return covs


def _whole_error_covs(table, col, rows, n_features, missing=None) -> np.ndarray:
    covs = np.asarray(table[col], dtype=np.float64)[rows]
    if covs.shape[1:] != (n_features, n_features):
        raise ValueError(f"error covariance column {col!r} holds {covs.shape[1:]} arrays per row; "
                         f"{n_features} value columns need ({n_features}, {n_features}).")
    if missing is not None and missing.any():
        # A feature not measured has no error either: its rows and columns are placeholders.
        covs = covs.copy()
        lost_pair = missing[:, :, None] | missing[:, None, :]
        covs[lost_pair] = 0.0
        idx = np.arange(n_features)
        diag = covs[:, idx, idx]
        diag[missing] = 1.0
        covs[:, idx, idx] = diag
    bad = ~np.isfinite(covs).all(axis=(1, 2))
    if bad.any():
        raise ValueError(f"error covariance column {col!r} has NaN or inf in source rows "
                         f"{', '.join(map(str, rows[bad][:5]))}.")
    huge = (np.abs(covs) > MAGNITUDE_LIMIT**2).any(axis=(1, 2))
    if huge.any():
        raise ValueError(
            f"error covariance column {col!r} has entries beyond +-({_LIMIT_TEXT})**2 in "
            f"source rows {_rows_text(rows[huge])}: bayesmix handles errors up to about "
            f"{_LIMIT_TEXT} (variances up to its square); give the data in other units."
        )
    if not np.allclose(covs, np.swapaxes(covs, 1, 2), rtol=1e-10, atol=0):
        raise ValueError(f"error covariance column {col!r} is not symmetric in every row.")
    _require_pd(covs, rows, f"error covariance column {col!r}", allow_singular_diag=False)
    return covs


def _require_pd(covs, rows, what, allow_singular_diag) -> None:
    scale = np.max(np.abs(covs), axis=(1, 2))
    tol = 1e-12 * scale
    eig_min = smallest_eigenvalues(covs, tol)
    bad = eig_min < -tol if allow_singular_diag else eig_min <= tol
    if bad.any():
        raise ValueError(
            f"{what}: {int(bad.sum())} row(s) are not positive definite (source rows "
            f"{', '.join(map(str, rows[bad][:5]))}, smallest eigenvalue {eig_min[bad].min():.3g}); "
            "check the correlation coefficients and errors of those stars."
        )


def _duplicate_masks(table, numeric, request: _Request, sel):
    """Rows repeating an id (``request.duplicates``: refuse, keep the first, keep the best-measured,
    or combine them as epochs). A blank or masked id is no id: such rows never repeat one."""
    if request.id_column is None:
        return
    name, how = request.id_column, request.duplicates
    live = np.flatnonzero(sel.keep)
    labels, first = _id_groups(table[name], live)
    if how == "combine":
        yield from _combine_masks(table, numeric, request, sel, live, labels, first)
        return
    counts = np.bincount(labels)
    if (counts == 1).all():
        return
    if how == "error":
        repeated = np.asarray(table[name])[live[first[counts > 1]]]
        raise ValueError(
            f"id column {name!r} repeats {repeated.size} id(s) (e.g. "
            f"{', '.join(repr(i) for i in repeated[:5].tolist())}); pass duplicates='first', 'best' or "
            "'combine' (duplicates = \"first\", \"best\" or \"combine\" in [data]) to keep one row per id."
        )
    full = np.full(sel.keep.size, -1)
    full[live] = labels
    keep_rows = live[first] if how == "first" else _best_measured(full, live, numeric, request)
    mask = np.ones(sel.keep.size, dtype=bool)
    mask[keep_rows] = False
    yield mask, f"duplicates: repeated {name} (kept the {'first' if how == 'first' else 'best-measured'})"


def _id_groups(id_col, live) -> tuple[np.ndarray, np.ndarray]:
    """Group labels (0, 1, ... in order of first appearance) of the ``live`` rows by id, and the
    index into ``live`` of each group's first row. Blank (after stripping) or masked ids each
    get a group of their own: an empty 2MASS designation says nothing about which star it is."""
    blank = np.ma.getmaskarray(id_col)[live]
    ids = np.asarray(id_col.filled() if isinstance(id_col, MaskedColumn) else id_col)[live]
    if ids.dtype.kind in "USO":
        ids = np.char.strip(ids.astype(str))
        blank = blank | (ids == "")
    _, labels = np.unique(ids, return_inverse=True)
    labels = labels.reshape(-1).astype(np.int64)
    if blank.any():
        labels[blank] = labels.max() + 1 + np.arange(int(blank.sum()))
    _, first, labels = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # relabel by first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[labels.reshape(-1)], first[order]


def _combine_masks(table, numeric, request: _Request, sel, live, labels, first):
    """``duplicates="combine"``: merge each id's rows into its first (kept) row; optionally drop
    variable stars. The combined values are kept in ``sel.combined`` for :func:`_kept_catalogue`."""
    missing = sel.feature_missing[live] if sel.feature_missing is not None else None
    x = np.column_stack([numeric[c][0][live] for c in request.value_cols])
    covs = _request_covs(table, numeric, request, live, missing)
    comb = combine_epochs(x, covs, labels, observed=None if missing is None else ~missing)
    sel.combined = _Combined.scatter(sel.keep.size, live[first], comb, {
        c: np.bincount(labels, weights=numeric[c][0][live]) / comb.n_epochs for c in request.covariate_cols})
    absorbed = np.zeros(sel.keep.size, dtype=bool)
    absorbed[live] = True
    absorbed[live[first]] = False
    multi = comb.n_epochs > 1
    differs = ~(np.all(np.isclose(x, x[first[labels]], rtol=0, atol=0, equal_nan=True), axis=1)
                & np.all(covs == covs[first[labels]], axis=(1, 2)))
    copies = multi & (np.bincount(labels, weights=differs, minlength=first.size) == 0)
    if copies.any():
        # Identical epochs are more likely one measurement listed twice (Baumgardt's table lists
        # stars between two clusters under both) than a perfect repeat; combining shrinks the error.
        logger.warning("duplicates='combine': %d star(s) with repeated %s have identical values in every "
                       "epoch (e.g. %r): is one measurement listed twice? Combining such copies shrinks "
                       "the error by sqrt(n_epochs); select one copy instead (e.g. by cluster) if so.",
                       int(copies.sum()), request.id_column,
                       np.asarray(table[request.id_column])[live[first[copies]]][0])
    yield absorbed, f"combined: {int(comb.n_epochs[multi].sum())} rows into {int(multi.sum())} stars"
    if request.drop_variable_p is not None:
        variable = np.zeros(sel.keep.size, dtype=bool)
        variable[live[first]] = comb.p < request.drop_variable_p
        yield variable, f"variable: epoch_p < {request.drop_variable_p:g}"


EPOCH_COLUMNS = ("n_epochs", "epoch_chi2", "epoch_dof", "epoch_p")
"""Columns ``read_catalogue(duplicates="combine")`` adds to the table."""


class EpochCombination(NamedTuple):
    """Repeat epochs combined per star (:func:`combine_epochs`); M stars, D features.

    Attributes
    ----------
    values : ndarray, shape (M, D)
        Generalised-least-squares mean (NaN for a feature no epoch measured).
    covs : ndarray, shape (M, D, D)
        Its covariance, the inverse of the summed epoch precisions (0 in the rows and
        columns of unmeasured features).
    observed : ndarray of bool, shape (M, D)
        Features measured in at least one epoch.
    n_epochs : ndarray of int, shape (M,)
    chi2 : ndarray, shape (M,)
        Sum over epochs of the Mahalanobis distance of each epoch from the mean.
    dof : ndarray of int, shape (M,)
        Measured entries minus measured features: ``(n_epochs - 1) * D`` when complete.
    p : ndarray, shape (M,)
        ``scipy.stats.chi2.sf(chi2, dof)``; 1.0 where ``dof`` is 0 (a single epoch
        cannot show variability).
    """

    values: np.ndarray
    covs: np.ndarray
    observed: np.ndarray
    n_epochs: np.ndarray
    chi2: np.ndarray
    dof: np.ndarray
    p: np.ndarray


def combine_epochs(values, error_covs, groups, observed=None) -> EpochCombination:
    """Combine repeat measurements of stars: GLS mean, its covariance and a variability chi-square.

    For star ``m`` with epochs ``i`` (precisions ``P_i = C_i^-1``, restricted to the features
    each epoch measured), the mean is ``(sum P_i)^-1 sum P_i x_i``, its covariance
    ``(sum P_i)^-1``, and ``chi2 = sum_i (x_i - mean)^T P_i (x_i - mean)``, which for a
    constant star with correct errors follows a chi-square with ``dof`` degrees of freedom.

    Parameters
    ----------
    values : array_like, shape (n_rows, D)
    error_covs : array_like, shape (n_rows, D, D)
        Each epoch's error covariance (positive definite on its measured features).
    groups : array_like of int, shape (n_rows,)
        Star label of each row, ``0 .. M-1``, every label used.
    observed : array_like of bool, shape (n_rows, D), optional
        Measured entries (default: all). Unmeasured entries of ``values`` are ignored.

    Returns
    -------
    EpochCombination

    Examples
    --------
    >>> import numpy as np
    >>> c = combine_epochs([[1.0], [3.0], [5.0]], [[[1.0]], [[1.0]], [[4.0]]], [0, 0, 1])
    >>> c.values[:, 0].tolist(), c.covs[:, 0, 0].tolist(), c.chi2.tolist(), c.dof.tolist()
    ([2.0, 5.0], [0.5, 4.0], [2.0, 0.0], [1, 0])
    """
    from scipy.stats import chi2 as chi2_dist

    x = np.asarray(values, dtype=np.float64)
    covs = np.asarray(error_covs, dtype=np.float64)
    groups = np.asarray(groups, dtype=np.int64)
    obs = np.ones(x.shape, bool) if observed is None else np.asarray(observed, bool)
    n_stars = int(groups.max()) + 1
    prec = _masked_inverse(covs, obs)
    x0 = np.where(obs, x, 0.0)
    total = np.zeros((n_stars, *covs.shape[1:]))
    np.add.at(total, groups, prec)
    rhs = np.zeros((n_stars, x.shape[1]))
    np.add.at(rhs, groups, np.einsum("nij,nj->ni", prec, x0))
    star_obs = np.zeros(rhs.shape, np.int64)
    np.add.at(star_obs, groups, obs.astype(np.int64))
    star_obs = star_obs > 0
    cov = _masked_inverse(total, star_obs)
    mean = np.einsum("mij,mj->mi", cov, rhs)
    resid = np.where(obs, x0 - mean[groups], 0.0)
    chi2 = np.bincount(groups, weights=np.einsum("ni,nij,nj->n", resid, prec, resid), minlength=n_stars)
    dof = np.bincount(groups, weights=obs.sum(axis=1), minlength=n_stars).astype(np.int64) - star_obs.sum(1)
    with np.errstate(invalid="ignore"):
        p = np.where(dof > 0, chi2_dist.sf(chi2, np.maximum(dof, 1)), 1.0)
    return EpochCombination(values=np.where(star_obs, mean, np.nan), covs=cov, observed=star_obs,
                            n_epochs=np.bincount(groups, minlength=n_stars), chi2=chi2, dof=dof, p=p)


def _masked_inverse(covs: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Inverse of each matrix restricted to its observed features, 0 elsewhere (one inverse per
    pattern of observed features)."""
    out = np.zeros_like(covs)
    patterns, which = np.unique(observed, axis=0, return_inverse=True)
    for k, pattern in enumerate(patterns):
        idx = np.flatnonzero(pattern)
        rows = np.flatnonzero(which.reshape(-1) == k)
        if idx.size:
            out[np.ix_(rows, idx, idx)] = np.linalg.inv(covs[np.ix_(rows, idx, idx)])
    return out


@dataclass(frozen=True)
class _Combined:
    """:func:`combine_epochs` scattered to source-row size (filled at each star's kept row)."""

    values: np.ndarray
    covs: np.ndarray
    missing: np.ndarray
    stats: dict[str, np.ndarray]
    covariates: dict[str, np.ndarray]

    @classmethod
    def scatter(cls, n_rows, rows, comb: EpochCombination, covariates) -> _Combined:
        def full(a, fill=0.0):
            out = np.full((n_rows, *a.shape[1:]), fill, dtype=a.dtype)
            out[rows] = a
            return out

        stats = dict(zip(EPOCH_COLUMNS, (comb.n_epochs, comb.chi2, comb.dof, comb.p), strict=True))
        return cls(values=full(comb.values), covs=full(comb.covs), missing=full(~comb.observed, True),
                   stats={k: full(v) for k, v in stats.items()},
                   covariates={k: full(v) for k, v in covariates.items()})


def _write_combined_columns(kept: Table, request: _Request, combined: _Combined, rows, x, covs,
                            cov_data) -> None:
    """Put the combined values, errors and averaged covariates in ``kept``; add the epoch statistics."""
    sig = np.sqrt(np.diagonal(covs, axis1=1, axis2=2))
    for j, col in enumerate(request.value_cols):
        _replace_column(kept, col, x[:, j])
        if request.error_cols[j] is not None:
            _replace_column(kept, request.error_cols[j], sig[:, j])
    for (a, b), col in request.corr_spec.items():
        i, j = request.value_cols.index(a), request.value_cols.index(b)
        _replace_column(kept, col, covs[:, i, j] / (sig[:, i] * sig[:, j]))
    if request.error_cov_column is not None:
        _replace_column(kept, request.error_cov_column, covs)
    for col, data in cov_data.items():
        _replace_column(kept, col, data)
    for name in EPOCH_COLUMNS:
        kept[name] = combined.stats[name][rows]


def _replace_column(table: Table, name: str, data) -> None:
    """Replace ``table[name]`` by float ``data``, keeping its unit and description."""
    old = table[name]
    table[name] = Column(np.asarray(data, dtype=np.float64), name=name, unit=old.unit,
                         description=old.description)


def _check_drop_variable_p(duplicates, drop_variable_p) -> None:
    if drop_variable_p is None:
        return
    if duplicates != "combine":
        raise ValueError("drop_variable_p applies to combined repeat epochs only; pass "
                         "duplicates='combine' (duplicates = \"combine\" in [data]) or leave it out.")
    if not (_is_number(drop_variable_p) and 0 < drop_variable_p < 1):
        raise ValueError(f"drop_variable_p must be a probability in (0, 1), e.g. 0.001; got "
                         f"{drop_variable_p!r}.")


def _check_epoch_options(table, duplicates, drop_variable_p, id_column, error_cols, error_cov_column) -> None:
    """``duplicates`` and ``drop_variable_p`` make sense together and with the columns asked for."""
    if duplicates not in DUPLICATES:
        raise ValueError(f"duplicates={duplicates!r}; use one of {DUPLICATES}.")
    _check_drop_variable_p(duplicates, drop_variable_p)
    if duplicates != "combine":
        return
    if id_column is None:
        raise ValueError("duplicates='combine' needs id_column= (id_column in [data]): the column that "
                         "names each star, whose repeated rows are its epochs.")
    if error_cov_column is None and any(c is None for c in error_cols):
        raise ValueError("duplicates='combine' weights epochs by their errors, so every value column needs "
                         f"an error column; got errors {error_cols}.")
    clash = [c for c in EPOCH_COLUMNS if c in table.colnames]
    if clash:
        raise ValueError(f"duplicates='combine' adds the column(s) {clash}, which the table already has; "
                         "rename them in the table first.")


def _best_measured(ids, live, numeric, request: _Request) -> np.ndarray:
    """Of the ``live`` rows, the one per id with the smallest total error variance (the first on ties)."""
    total_var = np.zeros(live.size)
    for col in request.used_error_cols:
        e = numeric[col][0][live]
        e = np.maximum(e, request.floor_spec[col]) if col in request.floor_spec else e
        total_var += e**2
    order = np.lexsort((np.arange(live.size), total_var, ids[live]))
    sorted_ids = ids[live][order]
    is_first = np.r_[True, sorted_ids[1:] != sorted_ids[:-1]]
    return live[order[is_first]]


# --------------------------------------------------------------------------- writing


def make_provenance(**extra) -> dict[str, Any]:
    """Version, time and environment of a run, plus ``extra`` (config, seed, drop counts...).

    Returns
    -------
    dict
        JSON-serialisable.
    """
    info: dict[str, Any] = {
        "bayesmix_version": __version__,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    info.update(extra)
    json.dumps(info, default=str)  # fail here, not half-way through a write
    return info


def provenance_sidecar(path) -> Path:
    """Where :func:`write_table` keeps a CSV's provenance: ``<path>.json`` beside it.

    ``membership.csv`` -> ``membership.csv.json``. The sidecar holds
    ``{"bayesmix_provenance": {...}, "table": "<csv file name>", "sha256": "<hex digest
    of the CSV's bytes>"}``; the digest tells whether it describes the CSV beside it.
    """
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _flush_subnormals(table: Table, path: Path) -> None:
    """Replace the table's float columns holding subnormal values by copies with those set to 0.

    Subnormals (``0 < |x| < TEXT_FLOAT_FLOOR``) make astropy's CSV reader warn of an
    overflow and lose digits in pandas; masked entries are left alone.
    """
    flushed = {}
    for name in table.colnames:
        col = table[name]
        if col.dtype.kind != "f":
            continue
        data = np.asarray(col)
        tiny = (data != 0) & (np.abs(data) < TEXT_FLOAT_FLOOR) & ~np.ma.getmaskarray(col)
        if tiny.any():
            fixed = col.copy()  # ``table`` shares its data with the caller's table
            fixed[tiny] = 0.0
            table[name] = fixed
            flushed[name] = int(tiny.sum())
    if flushed:
        logger.info("%s: wrote %s subnormal value(s) (|x| < %.4g) as 0, by column, so that text "
                    "readers parse them", path.name, flushed, TEXT_FLOAT_FLOOR)


def _csv_writer(out: Table, path: Path, prov_json: str | None):
    """The ``write(tmp)`` of a CSV for :func:`atomic_write`: plain CSV, provenance in the sidecar."""
    sidecar = provenance_sidecar(path)

    def write(tmp):
        out.write(tmp, format="ascii.csv", overwrite=True)
        # The sidecar is settled before the CSV is renamed into place, so a new CSV never
        # appears without the sidecar that describes it. A kill between the two renames
        # leaves the old CSV beside the new sidecar; the digest in it no longer matches, and
        # read_provenance says so instead of attributing the new provenance to the old data.
        if prov_json is None:
            sidecar.unlink(missing_ok=True)  # a stale sidecar would describe other data
            return
        text = json.dumps({PROVENANCE_KEY: json.loads(prov_json), "table": path.name,
                           "sha256": _sha256(Path(tmp))}, indent=1)
        atomic_write(sidecar, lambda side_tmp: Path(side_tmp).write_text(text + "\n"))

    return write


def _check_fits_text(table: Table) -> None:
    """Text columns whose values a FITS table cannot hold (it stores ASCII bytes)."""
    for name in table.colnames:
        column = np.asarray(table[name])
        if column.dtype.kind != "U":
            continue
        flat = column.ravel()
        bad = np.flatnonzero([not str(v).isascii() for v in flat])
        if bad.size:
            raise ValueError(
                f"text column {name!r} holds non-ASCII values ({bad.size} row(s), e.g. row {int(bad[0])}: "
                f"{str(flat[bad[0]])!r}), which a FITS table cannot store, so membership.fits could not be "
                "written after the fit. Choose [output] formats = [\"csv\"] or [\"ecsv\"], or drop or "
                "transliterate the column."
            )


def check_output_names(column_names: Sequence[str], formats: Sequence[str],
                       table: Table | None = None) -> None:
    """Refuse column names that an output format cannot hold, before any fitting is done.

    A FITS header holds printable ASCII only, so a name such as ``v_лос`` or ``σ_v``
    makes writing ``membership.fits`` fail, which is only reached after the whole fit.
    CSV and ECSV keep UTF-8 names. A VOTable keeps them in its ``name`` attributes, but
    astropy reads its columns back by their ``ID``, which it writes with ``_`` for each
    non-ASCII character (``v_лос`` -> ``v____``): that is logged as a warning.

    Parameters
    ----------
    column_names : sequence of str
        The columns of the table to be written (e.g. ``catalogue.table.colnames``).
    formats : sequence of str
        Output formats, as in ``[output] formats`` (``"fits"``, ``"csv"``, ``"ecsv"``,
        ``"votable"``) or as :func:`write_table` takes them.
    table : astropy.table.Table, optional
        Also check its text columns' values (FITS stores ASCII bytes only).

    Raises
    ------
    ValueError
        When ``formats`` includes FITS and some names are not printable ASCII; the
        message names those columns and the fix.
    """
    fmts = {_FORMAT_ALIASES.get(str(f).lower().lstrip("."), str(f).lower().lstrip(".")) for f in formats}
    if table is not None and "fits" in fmts:
        _check_fits_text(table)
    bad = [name for name in column_names if not (name.isascii() and name.isprintable())]
    if not bad:
        return
    if "fits" in fmts:
        raise ValueError(
            f"column name(s) {bad} are not printable ASCII, which a FITS header must be, so the "
            "FITS output (membership.fits) could not be written after the fit. Rename them in the "
            "catalogue, or choose [output] formats = [\"csv\"] or [\"ecsv\"] (formats that keep "
            "UTF-8 names)."
        )
    if "votable" in fmts:
        logger.warning("column name(s) %s are not ASCII: the VOTable output keeps them as names, but "
                       "astropy reads VOTable columns back by ID, where each non-ASCII character "
                       "becomes '_'", bad)


def write_table(table: Table, path, format: str | None = None,
                provenance: Mapping[str, Any] | None = None) -> Path:
    """Write a table atomically (temporary file, then rename), provenance included.

    Provenance goes where each format keeps metadata: the FITS header (``BMXPROV``,
    JSON), the ECSV or VOTable metadata. A CSV stays plain CSV (one header line, then
    the rows) that ``pandas.read_csv(path)`` and ``astropy.table.Table.read(path)`` read
    with no options; its provenance goes to the sidecar ``<path>.json`` (see
    :func:`provenance_sidecar`), with the SHA-256 of the CSV so a reader can tell that
    it belongs to this CSV. Writing a CSV without provenance removes a sidecar left by
    an earlier write of the same path. In a CSV, float values too small for a normal
    float64 (``0 < |x| <`` :data:`TEXT_FLOAT_FLOOR`) are written as 0, because text
    readers overflow on them. Read the provenance back with :func:`read_provenance`.

    Parameters
    ----------
    table : astropy.table.Table
    path : str or Path
    format : str, optional
        As for :func:`read_table`; inferred from the extension when omitted.
    provenance : mapping, optional
        Defaults to ``table.meta["bayesmix_provenance"]`` when present.

    Returns
    -------
    Path
        The table written (for a CSV, the sidecar is ``provenance_sidecar(path)``).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from astropy.table import Table
    >>> from bayesmix.catalogue import read_provenance, write_table
    >>> path = Path(tempfile.mkdtemp()) / "members.fits"
    >>> _ = write_table(Table({"RV": [-45.1, 12.0], "p_cluster": [0.98, 0.01]}), path,
    ...                 provenance={"note": "by hand"})
    >>> read_provenance(path)["note"]
    'by hand'
    """
    path = Path(path)
    fmt = _FORMAT_ALIASES.get(format, format) if format else _infer_format(path)
    if provenance is None:
        provenance = table.meta.get(PROVENANCE_KEY)
    out = table.copy(copy_data=False)
    out.meta = {k: v for k, v in table.meta.items() if k != PROVENANCE_KEY}
    prov_json = json.dumps(provenance, default=str) if provenance is not None else None
    atomic_write(path, _format_writer(out, fmt, path, prov_json))
    return path


def _format_writer(out: Table, fmt: str, path: Path, prov_json: str | None):
    """:func:`write_table`'s ``write(tmp)`` for ``fmt``: ``out``, provenance where the format keeps it."""
    if fmt == "fits":
        out.meta = {}
        if prov_json is not None:
            out.meta["BMXPROV"] = prov_json

        def write(tmp):
            out.write(tmp, format="fits", overwrite=True)
    elif fmt == "ascii.csv":
        multidim = [c for c in out.colnames if out[c].ndim > 1]
        if multidim:
            raise ValueError(f"CSV cannot hold the multidimensional column(s) {multidim}; write "
                             ".fits or .ecsv instead, or split them into scalar columns.")
        out.meta = {}  # astropy would write it as comment lines, which plain readers misread
        _flush_subnormals(out, path)
        write = _csv_writer(out, path, prov_json)
    elif fmt in ("ascii.ecsv", "votable"):
        if prov_json is not None and fmt == "ascii.ecsv":
            out.meta[PROVENANCE_KEY] = json.loads(prov_json)
        elif prov_json is not None:
            # astropy's VOTable writer keeps only the table DESCRIPTION of all the metadata.
            out.meta = {"description": f"{PROVENANCE_KEY}: {prov_json}"}

        def write(tmp):
            out.write(tmp, format=fmt, overwrite=True)
    else:
        raise ValueError(f"cannot write format {fmt!r}; use .fits, .csv, .ecsv or .vot.")
    return write


def _read_sidecar(path: Path, sidecar: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(sidecar.read_text())
        provenance, digest = record[PROVENANCE_KEY], record["sha256"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{sidecar}: not a bayesmix provenance sidecar ({exc!r}); it should hold "
                         f"the keys {PROVENANCE_KEY!r}, 'table' and 'sha256'. Delete it, or rewrite "
                         f"{path.name} with write_table.") from exc
    actual = _sha256(path)
    if digest != actual:
        raise ValueError(
            f"the provenance sidecar {sidecar} does not match {path}: the sidecar belongs to other "
            f"data (it was written for a CSV with SHA-256 {str(digest)[:16]}..., this one has "
            f"{actual[:16]}...), so {path.name} was changed or replaced after it was written. "
            f"Rewrite {path.name} with write_table, or delete {sidecar.name} if its provenance "
            "is not needed."
        )
    return provenance


def _read_comment_provenance(path: Path) -> dict[str, Any] | None:
    """The ``# bayesmix_provenance: {...}`` line that earlier versions wrote at the top of a CSV."""
    prefix = f"# {PROVENANCE_KEY}: "
    with open(path) as fh:
        for line in fh:
            if not line.startswith("#"):
                break
            if line.startswith(prefix):
                return json.loads(line[len(prefix):])
    return None


def read_provenance(path) -> dict[str, Any] | None:
    """The provenance written by :func:`write_table`, or None if the file has none.

    For a CSV it comes from the sidecar ``<path>.json`` (:func:`provenance_sidecar`), or,
    without one, from the ``# bayesmix_provenance:`` first line that versions before the
    sidecar wrote.

    Raises
    ------
    ValueError
        When a CSV's sidecar belongs to other data (its SHA-256 differs from the CSV's),
        or is not a provenance sidecar.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from astropy.table import Table
    >>> from bayesmix.catalogue import read_provenance, write_table
    >>> path = Path(tempfile.mkdtemp()) / "members.csv"
    >>> _ = write_table(Table({"RV": [-45.1, 12.0]}), path, provenance={"seed": 3})
    >>> prov = read_provenance(path)  # from members.csv.json, after checking the CSV's SHA-256
    >>> prov["seed"]
    3
    """
    path = Path(path)
    fmt = _infer_format(path)
    if fmt == "ascii.csv":
        sidecar = provenance_sidecar(path)
        if sidecar.is_file():
            return _read_sidecar(path, sidecar)
        return _read_comment_provenance(path)
    meta = read_table(path, format=fmt.replace("ascii.", "")).meta
    if "BMXPROV" in meta:
        return json.loads(meta["BMXPROV"])
    description = meta.get("description", "")
    if isinstance(description, str) and description.strip().startswith(f"{PROVENANCE_KEY}: "):
        return json.loads(description.strip()[len(PROVENANCE_KEY) + 2:])
    value = meta.get(PROVENANCE_KEY)
    return json.loads(value) if isinstance(value, str) else value

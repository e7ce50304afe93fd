"""Bad catalogue files (reliability audit 2026-12-01): each gives a ValueError naming the file and the fix.

The cases are the audit's table rows; each id starts with its row number. The files are
built from one small generated table, written by astropy and then damaged byte by byte.
Environment errors (a missing or unreadable file) are not turned into ValueError: the
caller reports those.
"""

import io
import os
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bayesmix.catalogue import (
    MAGNITUDE_LIMIT,
    check_output_names,
    read_catalogue,
    read_table,
    write_table,
)

N_ROWS = 40
KWARGS = {"values": "RV", "errors": "E_RV", "id_column": "id", "covariates": ["DCEN"]}


def make_table(rv_scale=1.0, err_scale=1.0) -> Table:
    rng = np.random.default_rng(3)
    return Table({
        "id": np.arange(N_ROWS),
        "RV": rng.normal(-45.0, 10.0, N_ROWS) * rv_scale,
        "E_RV": rng.uniform(0.1, 2.0, N_ROWS) * err_scale,
        "DCEN": rng.uniform(1.0, 100.0, N_ROWS),
    })


def fits_bytes(table=None) -> bytes:
    """A valid FITS table file: 2880-byte primary header, 2880-byte table header, then the data."""
    buffer = io.BytesIO()
    (table if table is not None else make_table()).write(buffer, format="fits")
    return buffer.getvalue()


def csv_bytes(table=None) -> bytes:
    buffer = io.StringIO()
    (table if table is not None else make_table()).write(buffer, format="ascii.csv")
    return buffer.getvalue().encode()


def replace_card(data: bytes, keyword: bytes, card: bytes) -> bytes:
    """Overwrite the 80-byte header card starting with ``keyword`` by ``card`` (padded)."""
    at = data.index(keyword.ljust(8))
    return data[:at] + card.ljust(80) + data[at + 80:]


def data_start(data: bytes) -> int:
    """Offset of the table data: after the second header's END card, rounded up to 2880."""
    end = data.index(b"END".ljust(80), 2880) + 80
    return -(-end // 2880) * 2880


def with_column(table: Table, column: str, rows, value) -> Table:
    table[column][rows] = value
    return table


def ecsv_with_repeated_name() -> bytes:
    buffer = io.StringIO()
    make_table().write(buffer, format="ascii.ecsv")
    return buffer.getvalue().replace("DCEN", "RV").encode()  # in the YAML and the names line


def votable_with_repeated_id(tmp_path: Path) -> bytes:
    path = tmp_path / "base.vot"
    make_table().write(path, format="votable")
    return path.read_bytes().replace(b'ID="DCEN"', b'ID="RV"').replace(b'name="DCEN"', b'name="RV"')


def fits_with_repeated_name() -> bytes:
    return replace_card(fits_bytes(), b"TTYPE4", b"TTYPE4  = 'RV      '")


# (case id, file name, bytes of the file (a function of tmp_path), read_catalogue kwargs,
#  outcome: the exception expected, or the number of stars read; words the message must contain)
CASES = [
    ("row39-csv-text-as-fits", "cat.fits", lambda tmp: csv_bytes(), {}, ValueError,
     ["cannot read", "cat.fits", "as a FITS table", "corrupt or truncated", "starts with text",
      "wrong extension", "download it again"]),
    ("row40-fits-bytes-as-csv", "cat.csv", lambda tmp: fits_bytes(), {}, ValueError,
     ["cat.csv", "byte offset", "not UTF-8", "binary (e.g. FITS) file with the wrong extension",
      "must be UTF-8 (or ASCII)", "format='fits'"]),
    ("row44-fits-cut-in-half", "cat.fits", lambda tmp: fits_bytes()[: len(fits_bytes()) // 2], {},
     ValueError, ["cat.fits", "as a FITS table", "not a multiple of 2880", "truncated",
                  "download it again"]),
    ("row44-fits-cut-inside-the-data", "cat.fits",
     lambda tmp: fits_bytes()[: data_start(fits_bytes()) + 300], {}, ValueError,
     ["cat.fits", "cannot reshape", "NAXIS2 = 40", "truncated", "download it again"]),
    ("row45-fits-cut-inside-the-header", "cat.fits", lambda tmp: fits_bytes()[:1000], {}, ValueError,
     ["cat.fits", "corrupt or truncated", "1000 bytes", "truncated"]),
    ("row47-random-bytes-as-fits", "cat.fits",
     lambda tmp: np.random.default_rng(47).bytes(5000), {}, ValueError,
     ["cat.fits", "corrupt or truncated", "does not start with a FITS header"]),
    ("row48-fits-naxis2-keyword-damaged", "cat.fits",
     lambda tmp: replace_card(fits_bytes(), b"NAXIS2", b"NAXXS2  =                   40"), {},
     ValueError, ["cat.fits", "as a FITS table", "header card 'NAXIS2'", "missing or damaged",
                  "download it again"]),
    ("row48-fits-naxis2-value-unparsable", "cat.fits",
     lambda tmp: replace_card(fits_bytes(), b"NAXIS2", b"NAXIS2  = 4O"), {}, ValueError,
     ["cat.fits", "as a FITS table", "header card", "NAXIS2", "cannot be parsed", "download it again"]),
    ("row48-fits-naxis2-too-large", "cat.fits",
     lambda tmp: replace_card(fits_bytes(), b"NAXIS2", b"NAXIS2  =               999999"), {},
     ValueError, ["cat.fits", "NAXIS2 = 999999", "truncated (or those cards are damaged)"]),
    ("row49-empty-fits", "cat.fits", lambda tmp: b"", {}, ValueError,
     ["cat.fits", "corrupt or truncated", "empty (0 bytes)"]),
    ("row53-latin1-byte-in-header", "cat.csv",
     lambda tmp: csv_bytes().replace(b"DCEN", b"D\xe9CEN", 1), {"covariates": None}, ValueError,
     ["cat.csv", "byte 0xe9", "byte offset 12", "line 1", "must be UTF-8 (or ASCII)"]),
    ("row53-latin1-byte-after-a-bom", "cat.csv",
     lambda tmp: b"\xef\xbb\xbf" + csv_bytes().replace(b"DCEN", b"D\xe9CEN", 1),
     {"covariates": None}, ValueError, ["cat.csv", "byte 0xe9", "byte offset 15"]),
    ("row50-csv-with-utf8-bom", "cat.csv", lambda tmp: b"\xef\xbb\xbf" + csv_bytes(), {}, N_ROWS, []),
    ("row61-csv-repeated-column", "cat.csv",
     lambda tmp: csv_bytes().replace(b"id,RV,E_RV,DCEN", b"id,RV,E_RV,RV"), {"covariates": None},
     ValueError, ["cat.csv", "['RV']", "more than once", "Rename one"]),
    ("row61-ecsv-repeated-column", "cat.ecsv", lambda tmp: ecsv_with_repeated_name(),
     {"covariates": None}, ValueError, ["['RV']", "more than once"]),
    ("row61-votable-repeated-column", "cat.vot", votable_with_repeated_id, {"covariates": None},
     ValueError, ["cat.vot", "['RV']", "more than once"]),
    ("row61-fits-repeated-column", "cat.fits", lambda tmp: fits_with_repeated_name(),
     {"covariates": None}, ValueError, ["cat.fits", "two columns share a name", "rename one"]),
    ("row24-values-and-errors-x1e298", "cat.fits",
     lambda tmp: fits_bytes(make_table(1e298, 1e298)), {}, ValueError,
     ["value column 'RV'", "40 value(s) beyond", "source rows 0, 1, 2, 3, 4, ...",
      "squares overflow", "up to about 1e153", "other units"]),
    ("row25-one-rv-of-1e300", "cat.fits",
     lambda tmp: fits_bytes(with_column(make_table(), "RV", 4, 1e300)), {}, ValueError,
     ["value column 'RV'", "source rows 4", "1e+300", "sentinel", 'missing = {"RV" = 1e+300} in [data]',
      "missing={'RV': 1e+300}"]),
    ("row25-one-rv-of-1e300-declared-missing", "cat.fits",
     lambda tmp: fits_bytes(with_column(make_table(), "RV", 4, 1e300)), {"missing": {"RV": 1e300}},
     N_ROWS - 1, []),
    ("row26-one-error-of-1e300", "cat.csv",
     lambda tmp: csv_bytes(with_column(make_table(), "E_RV", 4, 1e300)), {}, ValueError,
     ["error column 'E_RV'", "source rows 4", "1e+300"]),
    ("row26-errors-whose-squares-underflow", "cat.csv",
     lambda tmp: csv_bytes(with_column(make_table(), "E_RV", [3, 7], 1e-170)), {}, ValueError,
     ["error column 'E_RV'", "2 nonzero value(s)", "underflow to zero", "source rows 3, 7",
      "error_floor = <number> in [data]"]),
    ("row24-scale-1e150-is-read", "cat.fits", lambda tmp: fits_bytes(make_table(1e150, 1e150)), {},
     N_ROWS, []),
    ("row24-scale-1e-150-is-read", "cat.fits", lambda tmp: fits_bytes(make_table(1e-150, 1e-150)), {},
     N_ROWS, []),
    ("row3-hint-in-both-spellings", "cat.csv",
     lambda tmp: csv_bytes(with_column(make_table(), "RV", 5, np.nan)), {}, ValueError,
     ["'RV'", "source rows 5", "drop_nonfinite=True", "drop_nonfinite = true in [data]"]),
]


@pytest.mark.parametrize(("name", "content", "kwargs", "outcome", "words"),
                         [pytest.param(*case[1:], id=case[0]) for case in CASES])
def test_bad_catalogue_gives_a_named_error(tmp_path, name, content, kwargs, outcome, words):
    path = tmp_path / name
    path.write_bytes(content(tmp_path))
    if isinstance(outcome, int):
        cat = read_catalogue(path, **{**KWARGS, **kwargs})
        assert cat.n_stars == outcome and cat.feature_names == ("RV",)
        assert list(cat.covariates) == ["DCEN"] and np.isfinite(cat.error_covs).all()
        return
    with pytest.raises(outcome) as info:
        read_catalogue(path, **{**KWARGS, **kwargs})
    message = str(info.value)
    missing = [w for w in words if w not in message]
    assert not missing, f"{missing} not in: {message}"


def test_reading_errors_chain_what_astropy_raised(tmp_path):
    path = tmp_path / "cat.fits"
    path.write_bytes(fits_bytes()[:1000])
    with pytest.raises(ValueError, match="corrupt or truncated") as info:
        read_table(path)
    assert isinstance(info.value.__cause__, OSError)


def test_values_and_errors_at_the_limit_are_accepted():
    # The limit itself is in range; its square (1e306) is finite.
    table = Table({"RV": [MAGNITUDE_LIMIT, -MAGNITUDE_LIMIT, 0.0],
                   "E_RV": [MAGNITUDE_LIMIT, 1 / MAGNITUDE_LIMIT, 1.0]})
    cat = read_catalogue(table, values="RV", errors="E_RV")
    assert np.isfinite(cat.error_covs).all() and (cat.error_covs[:, 0, 0] > 0).all()


def test_environment_errors_are_not_turned_into_value_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_catalogue(tmp_path / "absent.fits", **KWARGS)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return  # root reads a file whatever its mode
    path = tmp_path / "locked.csv"
    path.write_bytes(csv_bytes())
    path.chmod(0)
    try:
        with pytest.raises(PermissionError):
            read_catalogue(path, **KWARGS)
    finally:
        path.chmod(0o600)


# --------------------------------------------------------------------------- row 54: output names

UNICODE_NAMES = ["id", "v_лос", "σ_v"]


def test_unicode_names_are_refused_for_fits_output_before_the_fit():
    with pytest.raises(ValueError) as info:
        check_output_names(UNICODE_NAMES, ("fits", "csv"))
    message = str(info.value)
    for words in ("'v_лос'", "'σ_v'", "FITS header", "Rename them", 'formats = ["csv"] or ["ecsv"]'):
        assert words in message
    check_output_names(UNICODE_NAMES, ("csv", "ecsv"))
    check_output_names(["id", "RV"], ("fits",))


def test_non_ascii_text_values_are_refused_for_fits_output_before_the_fit():
    table = Table({"id": ["a", "b", "Ωmega"], "RV": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match=r"text column 'id' holds non-ASCII values \(1 row\(s\), e.g. row 2"):
        check_output_names(table.colnames, ("fits",), table=table)
    check_output_names(table.colnames, ("csv", "ecsv"), table=table)


@pytest.mark.parametrize("suffix", [".csv", ".ecsv"])
def test_formats_named_in_the_message_keep_unicode_names(tmp_path, suffix):
    table = Table({name: [1.0, 2.0] for name in UNICODE_NAMES})
    back = read_table(write_table(table, tmp_path / f"membership{suffix}"))
    assert back.colnames == UNICODE_NAMES


def test_load_catalogue_refuses_unicode_names_with_fits_output(tmp_path):
    from bayesmix.config import load_spec
    from bayesmix.workflow import load_catalogue

    table = Table({"v_лос": make_table()["RV"], "σ_v": make_table()["E_RV"]})
    write_table(table, tmp_path / "stars.csv")
    spec_text = ('[data]\npath = "stars.csv"\nvalues = ["v_лос"]\nerrors = ["σ_v"]\n'
                 '[model]\nn_components = 2\n')
    (tmp_path / "run.toml").write_text(spec_text, encoding="utf-8")
    with pytest.raises(ValueError, match="v_лос"):
        load_catalogue(load_spec(tmp_path / "run.toml"))
    (tmp_path / "run.toml").write_text(spec_text + '[output]\nformats = ["csv"]\n', encoding="utf-8")
    catalogue, truth = load_catalogue(load_spec(tmp_path / "run.toml"))
    assert catalogue.n_stars == N_ROWS and truth is None


# --------------------------------------------------------------------------- row 66: fuzzing

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# astropy warns about each damaged card it meets; the outcome is what is tested.
QUIET = pytest.mark.filterwarnings("ignore::astropy.utils.exceptions.AstropyWarning")
VALID_FITS = fits_bytes()


def read_or_value_error(path: Path) -> None:
    """Read the file as a catalogue; a ValueError is an allowed outcome, any other exception is not."""
    try:
        read_catalogue(path, **KWARGS)
    except ValueError:
        pass


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@QUIET
@FUZZ
@given(content=st.binary(max_size=6000), suffix=st.sampled_from([".fits", ".csv"]))
def test_random_bytes_read_or_give_value_error(fuzz_dir, content, suffix):
    path = fuzz_dir / f"random{suffix}"
    path.write_bytes(content)
    read_or_value_error(path)


@QUIET
@FUZZ
@given(position=st.integers(0, data_start(VALID_FITS) + 1280 - 1), byte=st.integers(0, 255))
def test_one_byte_changed_in_a_fits_file_reads_or_gives_value_error(fuzz_dir, position, byte):
    # Positions up to the end of the data: the padding after it is never read.
    damaged = bytearray(VALID_FITS)
    damaged[position] = byte
    path = fuzz_dir / "mutated.fits"
    path.write_bytes(bytes(damaged))
    read_or_value_error(path)


@QUIET
@FUZZ
@given(length=st.integers(0, len(VALID_FITS)))
def test_truncated_fits_reads_or_gives_value_error(fuzz_dir, length):
    path = fuzz_dir / "truncated.fits"
    path.write_bytes(VALID_FITS[:length])
    read_or_value_error(path)


def test_fits_fixture_layout():
    # The cases above cut at offsets computed from this layout: one primary header
    # block, one table header block, then 40 rows of 32 bytes.
    assert data_start(VALID_FITS) == 5760 and len(VALID_FITS) == 8640
    with fits.open(io.BytesIO(VALID_FITS)) as hdul:
        assert hdul[1].header["NAXIS1"] * hdul[1].header["NAXIS2"] == 1280

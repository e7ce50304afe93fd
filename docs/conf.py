"""Sphinx configuration of the bayesmix documentation.

Build: ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (``pip install -e ".[docs]"``).

The notebooks in ``notebooks/`` are rendered with their outputs. They are executed once, by
``tests/test_notebooks.py`` (quick mode), which writes the executed copies to
``$BAYESMIX_EXECUTED_NOTEBOOKS`` when it is set (``.ci/run`` does); this build renders those
copies and executes nothing (myst-nb ``nb_execution_mode = "off"``). Without that folder (a
local build) the notebooks are executed here, in quick mode, by the same nbclient call the tests
use, and the results are kept in ``docs/_build/executed_notebooks`` until a notebook changes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(REPO))
os.environ.setdefault("MPLBACKEND", "Agg")

import bayesmix  # noqa: E402

project = "bayesmix"
author = "bayesmix developers"
copyright = "bayesmix developers, BSD-3-Clause"
release = bayesmix.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_nb",
    "sphinx_design",
    "notebooks_in_docs",
    "spec_reference",
    "api_pages",
    "cli_help",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
html_static_path = ["_static"]

# -- API reference ---------------------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = False
autodoc_typehints = "none"          # numpydoc's Parameters sections carry the types
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": False}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_validation_checks: set[str] = set()

# -- Markdown and notebooks ------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist", "substitution"]
myst_heading_anchors = 3
nb_execution_mode = "off"           # executed copies come from the tests (see the module docstring)
nb_merge_streams = True
nb_output_stderr = "remove"         # JAX / ArviZ progress chatter; errors would have failed the tests

# -- Cross references: checked offline ------------------------------------------------
# No intersphinx: CI has no internet, and a build must not fetch inventories.
nitpicky = False
linkcheck_ignore = [r"https?://.*"]  # external URLs cannot be checked offline; internal links are
linkcheck_anchors = True

# MathJax comes from its CDN; BAYESMIX_DOCS_MATHJAX points at a local copy for offline viewing
# (e.g. Debian's libjs-mathjax: file:///usr/share/javascript/mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML).
if os.environ.get("BAYESMIX_DOCS_MATHJAX"):
    mathjax_path = os.environ["BAYESMIX_DOCS_MATHJAX"]

# -- HTML ----------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"bayesmix {release}"
html_logo = None
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "header_links_before_dropdown": 6,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_context = {"default_mode": "light"}
# Pages without children, and the wide reference tables: no "Section Navigation" column beside them.
html_sidebars = {page: [] for page in ("index", "getting-started", "changelog", "reference/spec",
                                       "reference/cli")}
html_show_sourcelink = False
html_css_files = ["bayesmix.css"]
smartquotes = False                 # "--seed" stays two hyphens, quotes stay as typed


def _skip_scikit_learn_routing(app, what, name, obj, skip, options):
    """scikit-learn's generated ``set_*_request`` methods: their docstrings cite its own glossary."""
    if name.startswith("set_") and name.endswith("_request"):
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_scikit_learn_routing)

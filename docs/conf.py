"""Sphinx configuration of the ltdpt_jax documentation (Markdown pages through MyST).

Build it from the repository root (tests/test_docs.py builds it the same way):

  python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

import os
import pathlib
import sys

# The API pages import the package: on a CPU, whatever accelerator plugin is installed.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ltdpt_jax  # noqa: E402  (after JAX_PLATFORMS)

project = 'ltdpt_jax'
author = 'the ltdpt_jax authors'
release = version = ltdpt_jax.__version__

extensions = [
    'myst_parser',
    'sphinx.ext.autodoc',
    'sphinx.ext.napoleon',  # Google-style docstrings (Args:, Returns:, Attributes:)
]
source_suffix = {'.md': 'markdown'}
root_doc = 'index'
exclude_patterns = ['_build', 'Thumbs.db', '.DS_Store']

# MyST: `[text](page.md#a-heading)` links to headings down to level 3.
myst_heading_anchors = 3
# Single backticks in docstrings (reStructuredText) are code, as in Markdown.
default_role = 'literal'

# autodoc: members in source order, type hints in the signature only.
autodoc_member_order = 'bysource'
autodoc_typehints = 'signature'
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = 'sphinx_book_theme'
html_title = 'ltdpt_jax'
html_theme_options = {
    'show_toc_level': 2,
    'use_download_button': False,
}

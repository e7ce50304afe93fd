"""``.. bayesmix-cli-help::``: the ``bayesmix`` command's own ``--help`` texts, one per command.

Read from the parser the command builds (``bayesmix.cli._parser``), so the page shows exactly
what ``bayesmix COMMAND --help`` prints.
"""

from __future__ import annotations

import argparse
import os

from docutils import nodes
from sphinx.util.docutils import SphinxDirective


def help_texts() -> list[tuple[str, str]]:
    from bayesmix.cli import _parser

    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "76"  # argparse wraps at the terminal width: the page's code block
    try:
        parser = _parser()
        texts = [("bayesmix", parser.format_help())]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                texts += [(f"bayesmix {name}", sub.format_help()) for name, sub in action.choices.items()]
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved
    return texts


class CLIHelp(SphinxDirective):
    has_content = False

    def run(self):
        out = []
        for title, text in help_texts():
            section = nodes.section(ids=[nodes.make_id(f"cli-{title}")])
            section += nodes.title(text=title)
            section += nodes.literal_block(text, text, language="text")
            out.append(section)
        return out


def setup(app):
    app.add_directive("bayesmix-cli-help", CLIHelp)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

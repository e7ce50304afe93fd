"""Check every internal link of the built site: the page exists and so does the anchor.

    python docs/check_internal_links.py docs/_build/html

Sphinx's ``-b linkcheck`` leaves local links unchecked and CI has no internet for the
external ones, so this reads the HTML the build wrote instead: for each ``<a href>`` that is
not an external URL, the target file must exist and, for ``#anchor``, hold an element with
that ``id``. Exit status 1 lists the broken links by page.
"""

from __future__ import annotations

import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("name"):
            self.ids.add(attrs["name"])
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def broken_links(root: Path) -> list[str]:
    pages = {path.resolve(): _parse(path) for path in root.rglob("*.html")}
    broken = []
    for path, page in sorted(pages.items()):
        for href in page.links:
            parts = urlsplit(href)
            if parts.scheme or parts.netloc or href.startswith("mailto:"):
                continue  # external: not checkable offline
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            if target.is_dir():
                target = target / "index.html"
            where = f"{path.relative_to(root.resolve())}: {href}"
            if not target.exists():
                broken.append(f"{where} (no such file)")
            elif parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else _parse(target).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{where} (no anchor #{parts.fragment})")
    return broken


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0] if args else "docs/_build/html")
    if not (root / "index.html").is_file():
        print(f"{root} holds no built site (index.html); build it first", file=sys.stderr)
        return 2
    broken = broken_links(root)
    n_pages = sum(1 for _ in root.rglob("*.html"))
    for line in broken:
        print(line)
    print(f"{len(broken)} broken internal link(s) in {n_pages} pages")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())

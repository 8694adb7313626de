"""mkdocs hook: resolve the links and cross-references of the rendered examples.

mkdocs rewrites `[text](page.md#anchor)` links in Markdown pages, and mkdocs-autorefs
resolves `[`node_flow.name`][]` cross-references, but the examples are rendered by
mkdocs-jupyter (nbconvert), whose HTML keeps both as written. In those pages only, this hook

- rewrites every relative link to a `.md` or `.py` source of the site to the URL of its
  built page, keeping the anchor;
- turns `[`node_flow.name`][]` into a link to the entry of `name` in the API reference
  (the page of docs/api/ holding `::: name`, or the entry of its longest documented prefix
  for a member such as a method).

A link to a missing page or an undocumented name is an error, as it is in Markdown pages
under `mkdocs build --strict`.
"""

import posixpath
import re
from pathlib import Path

from mkdocs.exceptions import PluginError


_HREF = re.compile(r'href="(?![a-z]+:|/|#)([^"#]+\.(?:md|py))(#[^"]*)?"')
_CROSSREF = re.compile(r"\[<code>(node_flow[\w.]*)</code>\]\[\]")
_ENTRY = re.compile(r"^::: *(node_flow[\w.]*)\s*$", re.M)


def _api_pages(docs_dir: str) -> dict[str, str]:
    """name ↦ source path (relative to docs/) of the API page documenting it."""
    return {
        name: f"api/{page.name}"
        for page in sorted(Path(docs_dir, "api").glob("*.md"))
        for name in _ENTRY.findall(page.read_text(encoding="utf-8"))
    }


def on_page_content(html, page, config, files):
    if not page.file.src_uri.endswith(".py"):
        return html

    def url(src: str, what: str) -> str:
        target = files.get_file_from_path(src)
        if target is None:
            raise PluginError(f"{page.file.src_uri}: {what} points to {src!r}, not a page")
        return target.url_relative_to(page.file)

    def link(match):
        src = posixpath.normpath(posixpath.join(posixpath.dirname(page.file.src_uri), match[1]))
        return f'href="{url(src, "a link")}{match[2] or ""}"'

    api = _api_pages(config["docs_dir"])

    def crossref(match):
        name = match[1]
        parts = name.split(".")
        owners = [".".join(parts[:k]) for k in range(len(parts), 0, -1)]
        owner = next((o for o in owners if o in api), None)
        if owner is None:
            raise PluginError(f"{page.file.src_uri}: cross-reference to undocumented {name!r}")
        href = f"{url(api[owner], f'[`{name}`][]')}#{name}"
        return f'<a href="{href}"><code>{name}</code></a>'

    return _CROSSREF.sub(crossref, _HREF.sub(link, html))

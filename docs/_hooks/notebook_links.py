"""mkdocs hook: resolve the Markdown links of the rendered examples.

mkdocs rewrites `[text](page.md#anchor)` links in Markdown pages to the built URLs, but the
examples are rendered by mkdocs-jupyter (nbconvert), whose HTML keeps the source paths.
This hook rewrites, in those pages only, every relative link to a `.md` or `.py` source of
the site to the URL of its built page, keeping the anchor. A link to a missing source is an
error, as mkdocs' own link validation makes it under `--strict`.
"""

import posixpath
import re

from mkdocs.exceptions import PluginError


_HREF = re.compile(r'href="(?![a-z]+:|/|#)([^"#]+\.(?:md|py))(#[^"]*)?"')


def on_page_content(html, page, config, files):
    if not page.file.src_uri.endswith(".py"):
        return html

    def resolve(match):
        src = posixpath.normpath(posixpath.join(posixpath.dirname(page.file.src_uri), match[1]))
        target = files.get_file_from_path(src)
        if target is None:
            raise PluginError(f"{page.file.src_uri}: link to {match[1]!r}, which is not a page")
        return f'href="{target.url_relative_to(page.file)}{match[2] or ""}"'

    return _HREF.sub(resolve, html)

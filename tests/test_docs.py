"""The documentation site: every public name has a docstring and an API entry, and the
strict build renders a page for each of them and the formulas of the Concepts pages.

The site is built once per module with `mkdocs build --strict` into a temporary folder,
with the examples rendered but not executed (`NODE_FLOW_DOCS_EXECUTE=false`;
`tests/test_examples.py` runs them). Strict mode turns every unresolved cross-reference
(`[`node_flow.name`][]` in a docstring), every broken link and every object mkdocstrings
cannot find into an error. mkdocs and BeautifulSoup are imported at module level: without
the docs extra (`make install` installs it with `dev`) these tests error, they do not skip.
"""

import ast
import inspect
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import bs4
import mkdocs  # noqa: F401  (the docs extra must be installed)
import pytest

import node_flow


ROOT = Path(__file__).resolve().parents[1]
API_PAGES = sorted((ROOT / "docs" / "api").glob("*.md"))
ENTRY = re.compile(r"^::: *(node_flow[\w.]*)\s*$", re.M)
CONCEPT_PAGES = ("concepts", "THEORY")
_REF = re.compile(r'<(a|img)\b[^>]*?\b(?:href|src)="([^"]*)"')
_ID = re.compile(r'\bid="([^"]+)"')


def public_api(module=node_flow, prefix="node_flow") -> dict[str, object]:
    """Every public name of node_flow and of its public submodules, recursively: the
    attributes not starting with `_` that a package re-exports from node_flow, or that a
    plain module defines itself (`node_flow.plot`'s imports of `Any` or `LinearNetwork` are
    not its names); submodules are walked into. A module's `__all__`, when present, decides."""
    names = {}
    exported = getattr(module, "__all__", None)
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or (exported is not None and name not in exported):
            continue
        if isinstance(obj, types.ModuleType):
            if obj.__name__ == f"{prefix}.{name}":  # a submodule, not an imported module
                names.update(public_api(obj, f"{prefix}.{name}"))
            continue
        home = getattr(obj, "__module__", None)
        if exported is None and isinstance(home, str):
            # A package (`__init__.py`) re-exports names of node_flow's private modules; a
            # plain module (`plot.py`) owns only what it defines.
            package = hasattr(module, "__path__")
            if not (home.startswith("node_flow") if package else home == module.__name__):
                continue  # imported for internal use
        names[f"{prefix}.{name}"] = obj
    return names


def has_docstring(obj) -> bool:
    """A docstring written for `obj` itself: not inherited, not a dataclass's generated
    signature."""
    if isinstance(obj, type):
        doc = vars(obj).get("__doc__")
        if doc and re.fullmatch(rf"{re.escape(obj.__name__)}\(.*\)", doc.strip(), re.S):
            return False
    else:
        doc = inspect.getdoc(obj)
    return bool(doc and doc.strip())


def api_entries() -> dict[str, str]:
    """`::: node_flow.X` entries of the API pages, name ↦ page."""
    return {name: page.name for page in API_PAGES for name in ENTRY.findall(page.read_text())}


def test_public_api_walk_finds_the_known_names():
    """The walk itself: names of every subpackage, no private or foreign objects."""
    api = public_api()
    for name in ("gradient_flow", "kernels.neural_ode", "criterion.liftings.rank_one",
                 "relu.train", "init.relaxed_balanced", "neural_ode.relaxed_balanced"):  # fmt: skip
        assert f"node_flow.{name}" in api
    assert not [n for n in api if "._" in n or n.endswith("__version__")]


def test_every_public_name_has_a_docstring():
    missing = [name for name, obj in public_api().items() if not has_docstring(obj)]
    assert not missing, f"public names without a docstring: {missing}"


# A docstring that is not a raw string turns `\rho`, `\theta`, `\nabla`, `\frac` into a
# carriage return, tab, newline or form feed followed by the rest of the command.
_LOST_ESCAPE = re.compile(r"(?<!\\)\\[abfnrtv][A-Za-z]")


@pytest.mark.parametrize("folder", ["node_flow", "experiments", "benchmarks"])
def test_no_docstring_turns_a_latex_command_into_an_escape(folder):
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            body = getattr(node, "body", None)
            if not (isinstance(body, list) and body and isinstance(body[0], ast.Expr)):
                continue
            if not isinstance(getattr(body[0].value, "value", None), str):
                continue
            literal = ast.get_source_segment(source, body[0].value) or ""
            prefix = re.match(r"[A-Za-z]*", literal).group(0).lower()
            if literal[len(prefix) : len(prefix) + 1] in "\"'" and "r" not in prefix:
                if _LOST_ESCAPE.search(literal):
                    bad.append(f"{path.relative_to(ROOT)}:{body[0].lineno}")
    assert not bad, f'docstrings with LaTeX escapes that are not raw strings (use r"""): {bad}'


def test_every_public_name_has_an_api_entry():
    entries = api_entries()
    missing = sorted(set(public_api()) - set(entries))
    assert not missing, (
        f"public names without an API entry: {missing}. Add `::: <name>` to the page of "
        f"docs/api/ where users would look for it ({[p.name for p in API_PAGES]})."
    )


def test_api_entries_name_public_objects():
    """No entry documents a private or removed name (modules may be documented whole)."""
    api = public_api()
    stale = []
    for name in api_entries():
        obj = node_flow
        try:
            for part in name.split(".")[1:]:
                obj = getattr(obj, part)
        except AttributeError:
            stale.append(name)
            continue
        if name not in api and not isinstance(obj, types.ModuleType):
            stale.append(name)
    assert not stale, f"API entries that are not public names: {stale}"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NODE_FLOW_DOCS_EXECUTE="false", NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stderr[-6000:]}"
    return out


def _soup(path: Path) -> bs4.BeautifulSoup:
    return bs4.BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")


def test_site_has_a_rendered_entry_for_every_public_name(site):
    """mkdocstrings gives each documented object a heading whose id is its path."""
    ids = set()
    for page in (site / "api").rglob("index.html"):
        ids |= set(_ID.findall(page.read_text(encoding="utf-8")))
    missing = sorted(set(public_api()) - ids)
    assert not missing, f"public names with no rendered entry on the site: {missing}"


@pytest.mark.parametrize("page", CONCEPT_PAGES)
def test_concepts_pages_render_math(site, page):
    """arithmatex wraps $…$ in span.arithmatex and $$…$$ in div.arithmatex, for MathJax."""
    soup = _soup(site / page / "index.html")
    inline = soup.select("span.arithmatex")
    display = soup.select("div.arithmatex")
    if page == "concepts":
        assert len(inline) > 20 and len(display) > 3, (len(inline), len(display))
    else:  # THEORY.md writes its formulas as code: the page must render, with its sections
        assert soup.find(id="5-claims-the-implementation-must-demonstrate-numerically")
    for tag in inline + display:
        assert re.fullmatch(r"\\\(.*\\\)|\\\[.*\\\]", tag.get_text().strip(), re.S)


def test_site_renders_every_example_and_the_quickstart(site):
    examples = sorted(p.stem for p in (ROOT / "docs" / "examples").glob("*.py"))
    missing = [e for e in examples if not (site / "examples" / e / "index.html").exists()]
    assert not missing, f"examples missing from the nav of mkdocs.yml: {missing}"
    text = _soup(site / "getting-started" / "index.html").get_text()
    assert "nf.gradient_flow(net, loss" in text  # the README quick-start, included


def test_cross_references_render_as_links(site):
    """`[`node_flow.gradient_flow`][]` becomes a link to its entry: in docstrings
    (mkdocs-autorefs) and in the examples (docs/_hooks/notebook_links.py); none is left
    as text on any page."""
    soup = _soup(site / "api" / "flows" / "index.html")
    links = {a["href"] for a in soup.select("a.autorefs")}
    assert any(href.endswith("#node_flow.RESULTS") for href in links), sorted(links)[:10]
    example = (site / "examples" / "quickstart" / "index.html").read_text(encoding="utf-8")
    assert 'flows/#node_flow.gradient_flow"><code>node_flow.gradient_flow</code></a>' in example
    left = [
        str(page.relative_to(site))
        for page in site.rglob("*.html")
        if re.search(r"(</code>|`)\]\[\]", page.read_text(encoding="utf-8"))
    ]
    assert not left, f"unresolved cross-references on {left}"


def test_internal_links_and_images_resolve(site):
    """Every relative link and image of every page points to a built file and, with a
    `#fragment`, to an element with that id (mkdocs validates Markdown pages; this also
    covers the examples, which mkdocs-jupyter renders outside mkdocs' link checks).
    Regular expressions rather than a parser: the 30-odd pages take 0.3 s instead of 8 s."""
    broken, ids_of = [], {}
    pages = [p for p in site.rglob("*.html") if "assets" not in p.parts and p.name != "404.html"]
    for page in pages:
        for tag, ref in _REF.findall(page.read_text(encoding="utf-8")):
            if not ref or re.match(r"^[a-z]+:|^//", ref):
                continue
            path, _, fragment = ref.partition("#")
            target = (page.parent / path).resolve() if path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(site)} → {ref}")
            elif fragment and tag == "a" and target.suffix == ".html":
                if target not in ids_of:
                    ids_of[target] = set(_ID.findall(target.read_text(encoding="utf-8")))
                if fragment not in ids_of[target]:
                    broken.append(f"{page.relative_to(site)} → {ref} (no such anchor)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_no_formula_is_left_unrendered(site):
    """Outside code, every `$` of a docstring or page was turned into math by arithmatex:
    a leftover `$` is a formula that will show as source (typically `$$…$$` inside a
    paragraph, which needs blank lines around it). The examples are skipped: MathJax
    typesets their `$…$` directly (docs/_static/mathjax.js)."""
    leftover = []
    for page in site.rglob("index.html"):
        if "examples" in page.parts:
            continue
        html = page.read_text(encoding="utf-8")
        article = re.search(r"<article\b.*?</article>", html, re.S)  # the page's content
        soup = bs4.BeautifulSoup(article[0] if article else html, "html.parser")
        for tag in soup.select(".arithmatex, pre, code, script, style"):
            tag.decompose()
        text = soup.get_text()
        where = page.parent.relative_to(site)
        for m in re.finditer(r"\$", text):
            leftover.append(f"{where}: {text[max(0, m.start() - 60) : m.start() + 20]!r}")
    assert not leftover, "unrendered formulas:\n" + "\n".join(leftover)


def test_readme_links_resolve():
    """The front door's relative links and images point to files of the repository."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\((?![a-z]+:)([^)#\s]+)", text)
    assert targets, "README.md links into the documentation"
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"

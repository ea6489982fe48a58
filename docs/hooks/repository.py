r"""MkDocs hook: the site's pages as the repository has them.

- The home page is ``README.md`` itself: ``index.md`` is added to the site from it when the site is built, so the
  README is never copied by hand (``docs/index.md`` must not exist).
- Relative links are resolved from where their file lives in the repository: the README at its top, the pages in
  ``docs/``.  So the same Markdown works on GitHub and on the site.  A link to a page in ``docs/`` (or to the
  README) stays a link between pages, which MkDocs checks as usual (its anchors too); a link to any other file or
  directory of the repository (``SECURITY.md``, ``examples/django``) becomes a link to it on GitHub.  A link to a
  path that does not exist is a warning, which fails ``mkdocs build --strict``.
- In a table row, GitHub reads ``\|`` inside a code span as a pipe (``--lifespan auto\|on\|off``); Python-Markdown
  keeps the backslash but needs no escape there, since a pipe inside a code span does not split cells.  The escapes
  are taken out of such code spans before the page is converted.
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit
from xml.etree.ElementTree import Element

from markdown import Markdown
from markdown.extensions import Extension
from markdown.treeprocessors import Treeprocessor
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

log = logging.getLogger(f"mkdocs.plugins.{__name__}")

README = "README.md"
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
#: the branch links to repository files point at
BRANCH = "main"


class _Page:
    """The page being rendered: its path in the repository and among the site's sources."""

    source = README
    uri = "index.md"


class _Links(Treeprocessor):
    """Rewrite the relative links of the page being rendered (before MkDocs's own link check, which runs last)."""

    def __init__(self, md: Markdown, root: Path, repo_url: str) -> None:
        super().__init__(md)
        self.root = root
        self.repo_url = repo_url.rstrip("/")

    def run(self, root: Element) -> None:
        for element in root.iter():
            attribute = {"a": "href", "img": "src"}.get(element.tag)
            value = element.get(attribute) if attribute else None
            if attribute and value:
                element.set(attribute, self.rewrite(value))

    def rewrite(self, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme or parts.netloc or not parts.path or parts.path.startswith("/"):
            return url  # elsewhere, an anchor on this page, or site-absolute
        fragment = f"#{parts.fragment}" if parts.fragment else ""
        target = posixpath.normpath(posixpath.join(posixpath.dirname(_Page.source), unquote(parts.path)))
        if target == README or target.startswith("docs/"):
            page = "index.md" if target == README else target.removeprefix("docs/")
            return posixpath.relpath(page, posixpath.dirname(_Page.uri) or ".") + fragment
        path = self.root / target
        if target.startswith("../") or not path.exists():
            log.warning("%s links to %r, which is not in the repository", _Page.source, url)
            return url
        kind = "tree" if path.is_dir() else "blob"
        return f"{self.repo_url}/{kind}/{BRANCH}/{target}{fragment}"


class _LinksExtension(Extension):
    def __init__(self, root: Path, repo_url: str) -> None:
        super().__init__()
        self.root = root
        self.repo_url = repo_url

    def extendMarkdown(self, md: Markdown) -> None:
        # MkDocs's own link check ("relpath", priority 0) runs after this one
        md.treeprocessors.register(_Links(md, self.root, self.repo_url), "repository_links", 2)


def _root(config: MkDocsConfig) -> Path:
    return Path(config.config_file_path).resolve().parent


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    # MkDocs passes this list to Markdown, which takes extension instances beside names
    config.markdown_extensions.append(_LinksExtension(_root(config), config.repo_url or ""))
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    if files.get_file_from_path("index.md") is not None:
        log.warning("docs/index.md exists: the home page is README.md (see docs/hooks/repository.py)")
        return files
    files.append(File.generated(config, "index.md", abs_src_path=str(_root(config) / README)))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    # each page is converted to HTML right after this event: the links read then are this page's
    if page.file.abs_src_path is not None:
        _Page.source = Path(page.file.abs_src_path).resolve().relative_to(_root(config)).as_posix()
        _Page.uri = page.file.src_uri
    return "\n".join(_table_row(line) if line.lstrip().startswith("|") else line for line in markdown.split("\n"))


def _table_row(line: str) -> str:
    return _CODE_SPAN.sub(lambda code: code.group(0).replace("\\|", "|"), line)

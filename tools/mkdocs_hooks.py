"""MkDocs hooks of the documentation site (`make docs`, configured in mkdocs.yml).

The Markdown files are written to be read on a repository host: README.md links `docs/behaviour.md`, the pages in
docs/ link `../benchmarks/README.md` and `../examples/...`. MkDocs only knows the files under docs/, so this hook

- adds the repository's own Markdown pages (README.md, DEVELOPERS.md, benchmarks/README.md) to the site as generated
  pages (`REPO_PAGES`), read from where they lie, so they are written once;
- rewrites every relative link of every page from "relative to the file in the repository" to "relative to the page
  on the site": a link to a file in docs/ or to one of `REPO_PAGES` becomes a link to that page; a link to another
  file of the repository (a source file, a folder) becomes a link to it on the repository host when mkdocs.yml sets
  `repo_url`, and otherwise plain text (the link text stays; there is no page to link to);
- reports a relative link whose target does not exist in the repository as a warning, which `mkdocs build --strict`
  turns into a failure: a broken link is never dropped silently.

Links inside fenced code blocks and inline code are left alone. Absolute URLs, `#anchors` and `mailto:` are not
touched (MkDocs itself checks anchors into other pages).
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import get_plugin_logger
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

log = get_plugin_logger("trl_soft_docs")

ROOT = Path(__file__).resolve().parents[1]
DOCS = "docs"
# site page (under docs/, not a file there) -> the repository file it shows
REPO_PAGES = {
    "index.md": "README.md",
    "benchmarks.md": "benchmarks/README.md",
    "developers.md": "DEVELOPERS.md",
}
SITE_PAGE_OF = {repo: page for page, repo in REPO_PAGES.items()}

FENCE = re.compile(r"^([ \t]*)(`{3,}|~{3,}).*?^\1\2[ \t]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`).+?(?<!`)\1(?!`)", re.DOTALL)
# [text](target "title") and ![alt](target); the text may hold inline code but no brackets
LINK = re.compile(r"(?P<image>!?)\[(?P<text>[^\[\]]*)\]\((?P<target><[^>]*>|[^)\s]+)(?P<title>\s+\"[^\"]*\")?\)")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    # `mkdocs serve` rebuilds when the pages shown from outside docs/ change
    config.watch.extend(str(ROOT / repo) for repo in REPO_PAGES.values())
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for page, repo in REPO_PAGES.items():
        if files.get_file_from_path(page) is not None:
            log.warning("docs/%s exists, but the site builds that page from %s (tools/mkdocs_hooks.py)", page, repo)
            continue
        files.append(File.generated(config, page, abs_src_path=str(ROOT / repo)))
    return files


def repo_path_of(page: Page) -> str:
    """The page's Markdown file, relative to the repository root."""
    uri = page.file.src_uri
    return REPO_PAGES.get(uri, f"{DOCS}/{uri}")


def site_link(target: str, source: str, page_uri: str, config: MkDocsConfig) -> str | None:
    """`target` (a link in the repository file `source`) as a link from the site page `page_uri`; None for no link."""
    path, hash_, fragment = target.partition("#")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(source), path))
    if resolved.startswith("../") or not (ROOT / resolved).exists():
        log.warning("%s links to %r, which is not in the repository (%s)", source, target, resolved)
        return target
    if resolved in SITE_PAGE_OF:
        site_path = SITE_PAGE_OF[resolved]
    elif resolved == DOCS or resolved.startswith(f"{DOCS}/"):
        site_path = resolved[len(DOCS) + 1:]
    else:
        repo_url = (config.repo_url or "").rstrip("/")
        if not repo_url:
            return None
        kind = "tree" if (ROOT / resolved).is_dir() else "blob"
        return f"{repo_url}/{kind}/{config.extra.get('repo_branch', 'main')}/{resolved}{hash_}{fragment}"
    return posixpath.relpath(site_path, posixpath.dirname(page_uri) or ".") + hash_ + fragment


def rewrite_links(markdown: str, source: str, page_uri: str, config: MkDocsConfig) -> str:
    def link(match: re.Match) -> str:
        target = match["target"]
        bare = target[1:-1] if target.startswith("<") else target
        if not bare or bare.startswith(("#", "/")) or SCHEME.match(bare):
            return match[0]
        new = site_link(bare, source, page_uri, config)
        if new is None:
            if match["image"]:
                log.warning("%s shows the image %r, which is not in docs/", source, bare)
                return match[0]
            return match["text"]
        return f"{match['image']}[{match['text']}]({new}{match['title'] or ''})"

    def outside_code_spans(text: str) -> str:
        spans = [code.span() for code in CODE_SPAN.finditer(text)]

        def unless_in_code(match: re.Match) -> str:
            # a code span inside a link's text is part of the link; a link written inside a code span is code
            inside = any(start < match.start() and match.end() <= end for start, end in spans)
            return match[0] if inside else link(match)

        return LINK.sub(unless_in_code, text)

    pieces, last = [], 0
    for fence in FENCE.finditer(markdown):
        pieces.append(outside_code_spans(markdown[last:fence.start()]))
        pieces.append(fence[0])
        last = fence.end()
    pieces.append(outside_code_spans(markdown[last:]))
    return "".join(pieces)


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    return rewrite_links(markdown, repo_path_of(page), page.file.src_uri, config)

"""MkDocs hooks for the documentation site (mkdocs.yml ``hooks:``).

- ``<!-- bench: NAME -->`` in a page is replaced by ``bench/results/NAME.md`` (headings moved one level down,
  picture links pointed at the copied results), so the benchmark tables in the docs are the committed ones.
- ``bench/results/*.png`` are published under ``results/``.
- ``<!-- cli-help -->`` is replaced by the ``--help`` text of every ``diffusio`` sub-command.
- Every ``docs/*.md`` page that the nav does not list is appended to it (pages other contributors add appear
  without editing mkdocs.yml).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def on_config(config, **kwargs):
    listed = set()

    def walk(items):
        for it in items or []:
            if isinstance(it, str):
                listed.add(it)
            elif isinstance(it, dict):
                for v in it.values():
                    walk(v) if isinstance(v, list) else listed.add(v)

    walk(config["nav"])
    extra = []
    for f in sorted(Path(config["docs_dir"]).glob("*.md")):
        if f.name not in listed:
            first = next((ln[2:].strip() for ln in f.read_text().splitlines() if ln.startswith("# ")), f.stem)
            extra.append({first: f.name})
    if extra:
        config["nav"].append({"More": extra})
    return config


def on_files(files, config, **kwargs):
    from mkdocs.structure.files import File

    for png in sorted(RESULTS.glob("*.png")):
        files.append(File(f"results/{png.name}", str(ROOT / "bench"), config["site_dir"], config["use_directory_urls"]))
    return files


def _bench(name: str) -> str:
    f = RESULTS / f"{name}.md"
    if not f.is_file():
        raise FileNotFoundError(f"docs include bench/results/{name}.md, which does not exist")
    text = f.read_text()
    text = re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", text, flags=re.M)
    return re.sub(r"\]\(([\w.-]+\.png)\)", r"](results/\1)", text)


def _cli_help() -> str:
    import argparse

    from diffusio.app.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    parts = ["```text\n" + parser.format_help().replace("usage: ", "usage: ", 1) + "```"]
    for name, p in sub.choices.items():
        parts.append(f"### diffusio {name}\n\n```text\n{p.format_help()}```")
    return "\n\n".join(parts)


def on_page_markdown(markdown, page, config, files, **kwargs):
    markdown = re.sub(r"<!-- bench: ([\w-]+) -->", lambda m: _bench(m.group(1)), markdown)
    if "<!-- cli-help -->" in markdown:
        markdown = markdown.replace("<!-- cli-help -->", _cli_help())
    return markdown

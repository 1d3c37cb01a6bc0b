"""A `Document` as Markdown, with its figures as PNG files next to it."""

from __future__ import annotations

from ._document import Bullets, Document, Figure, Heading, Paragraph, Table

__all__ = ["render_markdown"]

_PREFIX = {"note": "> **Note:** ", "missing": "> *", "pass": "> ✅ **", "fail": "> ❌ **"}
_SUFFIX = {"missing": "*", "pass": "**", "fail": "**"}


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _table(block: Table) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in block.header) + " |",
             "|" + "|".join("---" for _ in block.header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in block.rows]
    if block.caption:
        lines += ["", f"*{block.caption}*"]
    return lines


def render_markdown(doc: Document, *, image_prefix: str = "") -> str:
    """The Markdown text; figures are linked as `image_prefix + name` (write `doc.images` there)."""
    out = [f"# {doc.title}", ""]
    for block in doc.blocks:
        if isinstance(block, Heading):
            out += ["#" * min(max(block.level, 2), 4) + " " + block.text, ""]
        elif isinstance(block, Paragraph):
            out += [_PREFIX.get(block.kind, "") + block.text + _SUFFIX.get(block.kind, ""), ""]
        elif isinstance(block, Table):
            out += _table(block) + [""]
        elif isinstance(block, Bullets):
            out += [f"- {item}" for item in block.items] + [""]
        elif isinstance(block, Figure):
            out += [f"![{block.alt}]({image_prefix}{block.name})", ""]
            if block.caption:
                out += [f"*{block.caption}*", ""]
        else:  # pragma: no cover - programming error
            raise TypeError(f"Unknown block {block!r}")
    if doc.footer:
        out += ["---", "", doc.footer, ""]
    return "\n".join(out)

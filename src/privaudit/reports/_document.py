"""A report as a list of blocks (headings, paragraphs, tables, figures), rendered twice.

`_html.render_html` and `_markdown.render_markdown` turn the same `Document`
into the two twins, so the HTML and the Markdown always say the same thing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
__all__ = ["Bullets", "Document", "Figure", "Heading", "Paragraph", "Table"]


@dataclasses.dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclasses.dataclass(frozen=True)
class Paragraph:
    """Plain text. `kind`: "text", "note" (an aside), "missing" (a section not run),
    "pass" or "fail" (an audit verdict)."""

    text: str
    kind: str = "text"


@dataclasses.dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str = ""


@dataclasses.dataclass(frozen=True)
class Figure:
    """A PNG from `Document.images[name]`, with alternative text and a caption."""

    name: str
    alt: str
    caption: str = ""


@dataclasses.dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


Block = Heading | Paragraph | Table | Figure | Bullets


@dataclasses.dataclass(frozen=True)
class Document:
    """Title, blocks in order, and the PNG bytes of every `Figure` by file name."""

    title: str
    blocks: tuple[Block, ...]
    images: Mapping[str, bytes]
    footer: str = ""

    def __post_init__(self) -> None:
        for block in self.blocks:
            if isinstance(block, Figure) and block.name not in self.images:
                raise ValueError(f"Figure {block.name!r} has no image in the document.")

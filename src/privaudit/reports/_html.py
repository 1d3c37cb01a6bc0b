"""A `Document` as one self-contained HTML file.

Figures are embedded as base64 PNG data URIs, the style sheet is inline, and
there is no script, web font or link to anything outside the file: the page
renders offline and fetches nothing.
"""

from __future__ import annotations

import base64
import html

from ._document import Bullets, Document, Figure, Heading, Paragraph, Table

__all__ = ["render_html"]

_CSS = """
body { font-family: Georgia, "Times New Roman", serif; color: #111; background: #fff; max-width: 60rem;
       margin: 2rem auto; padding: 0 1rem; line-height: 1.45; }
h1 { font-size: 1.6rem; border-bottom: 2px solid #111; padding-bottom: .3rem; }
h2 { font-size: 1.3rem; margin-top: 2.2rem; border-bottom: 1px solid #999; }
h3 { font-size: 1.1rem; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .9rem; }
th, td { border: 1px solid #999; padding: .25rem .55rem; text-align: left; vertical-align: top; }
th { background: #eee; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
caption { caption-side: bottom; font-size: .85rem; color: #444; text-align: left; padding-top: .3rem; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: .85rem; color: #444; }
p.note { border-left: 4px solid #0072B2; padding: .3rem .7rem; background: #f2f7fb; }
p.missing { border-left: 4px solid #777; padding: .3rem .7rem; background: #f4f4f4; font-style: italic; }
p.pass { border: 2px solid #009E73; padding: .5rem .8rem; font-weight: bold; }
p.fail { border: 3px double #D55E00; padding: .5rem .8rem; font-weight: bold; }
footer { margin-top: 3rem; font-size: .8rem; color: #555; border-top: 1px solid #999; padding-top: .5rem; }
@media print { body { max-width: none; margin: 0; } h2 { break-after: avoid; } figure, table { break-inside: avoid; } }
"""


def _is_number(text: str) -> bool:
    t = text.replace(",", "").replace("%", "").replace("∞", "1").strip()
    try:
        float(t)
    except ValueError:
        return False
    return True


def _table(block: Table) -> str:
    e = html.escape
    head = "".join(f"<th scope=\"col\">{e(h)}</th>" for h in block.header)
    body = []
    for row in block.rows:
        cells = "".join(f"<td class=\"num\">{e(c)}</td>" if _is_number(c) else f"<td>{e(c)}</td>" for c in row)
        body.append(f"<tr>{cells}</tr>")
    caption = f"<caption>{e(block.caption)}</caption>" if block.caption else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(doc: Document) -> str:
    """The whole page as a string (UTF-8, no external resources)."""
    e = html.escape
    parts = [f"<h1>{e(doc.title)}</h1>"]
    for block in doc.blocks:
        if isinstance(block, Heading):
            level = min(max(block.level, 2), 4)
            parts.append(f"<h{level}>{e(block.text)}</h{level}>")
        elif isinstance(block, Paragraph):
            parts.append(f"<p class=\"{e(block.kind)}\">{e(block.text)}</p>")
        elif isinstance(block, Table):
            parts.append(_table(block))
        elif isinstance(block, Bullets):
            parts.append("<ul>" + "".join(f"<li>{e(item)}</li>" for item in block.items) + "</ul>")
        elif isinstance(block, Figure):
            data = base64.b64encode(doc.images[block.name]).decode("ascii")
            caption = f"<figcaption>{e(block.caption)}</figcaption>" if block.caption else ""
            parts.append(f"<figure><img alt=\"{e(block.alt)}\" src=\"data:image/png;base64,{data}\">"
                         f"{caption}</figure>")
        else:  # pragma: no cover - programming error
            raise TypeError(f"Unknown block {block!r}")
    footer = f"<footer>{e(doc.footer)}</footer>" if doc.footer else ""
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{e(doc.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(parts) + f"\n{footer}\n</body>\n</html>\n")

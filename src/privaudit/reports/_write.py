"""Writing a report: HTML, Markdown (PNGs next to it) and JSON, each file atomically."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import _io
from ._collect import RunReport, collect_run
from ._document import Document
from ._html import render_html
from ._markdown import render_markdown

__all__ = ["ReportFiles", "write_document", "write_report"]

#: Every figure name a report may write; stale ones from an earlier report are removed.
_KNOWN_FIGURES = ("privacy.png", "utility.png", "roc.png", "attack_roc.png", "audit_bound.png", "audit_scores.png",
                  "sweep.png")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReportFiles:
    """The files a report wrote."""

    html: Path
    markdown: Path
    json: Path
    images: tuple[Path, ...]


def write_document(doc: Document, out_dir: str | os.PathLike[str], *, stem: str,
                   data: Mapping[str, Any]) -> ReportFiles:
    """Writes `<stem>.html`, `<stem>.md`, `<stem>.json` (`data` plus the file list) and the figures."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = []
    for name, png in doc.images.items():
        _io.atomic_write_bytes(out / name, png)
        images.append(out / name)
    for name in _KNOWN_FIGURES:
        if name not in doc.images and (out / name).is_file() and stem == "report":
            (out / name).unlink()
    files = ReportFiles(html=out / f"{stem}.html", markdown=out / f"{stem}.md", json=out / f"{stem}.json",
                        images=tuple(images))
    _io.atomic_write_text(files.markdown, render_markdown(doc))
    _io.atomic_write_text(files.html, render_html(doc))
    payload = dict(data)
    payload["files"] = {"html": files.html.name, "markdown": files.markdown.name,
                        "images": [p.name for p in files.images]}
    _io.atomic_write_json(files.json, payload)
    return files


def write_report(run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None
                 ) -> tuple[RunReport, ReportFiles]:
    """Reads `run_dir` and writes report.html, report.md, report.json and the figures.

    Args:
        run_dir: a privaudit run directory.
        out_dir: where to write (default: `run_dir/report/`).

    Raises:
        ValueError: `run_dir` is not a run directory.
    """
    from ._run_document import run_document

    report = collect_run(run_dir)
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "report"
    files = write_document(run_document(report), out, stem="report", data=report.to_dict())
    return report, files

"""`privaudit report`: one self-contained HTML report of a run (plus its Markdown and JSON twins)."""

from __future__ import annotations

import click

from ._errors import BadInput, bad_input_as_exit_2

__all__ = ["report"]


@click.command()
@click.argument("run_dir")
@click.option("--out", "out_dir",
              help="Folder for report.html, report.md, report.json and the figures (default: RUN_DIR/report).")
def report(run_dir: str, out_dir: str | None) -> None:
    """Write RUN_DIR's report: setting, privacy, utility, attacks and audit.

    The HTML file embeds its figures and style and fetches nothing from the
    network; report.md is the same content with its PNGs next to it;
    report.json is the machine-readable twin. A section whose artefact is
    missing (no attack.json, no audit.json) says so instead.

    \b
    Examples:
      privaudit report runs/digits-mlp-eps2-seed0
      privaudit report runs/digits-mlp-eps2-seed0 --out /tmp/report
    """
    from ..reports import write_report

    with bad_input_as_exit_2():
        try:
            result, files = write_report(run_dir, out_dir)
        except OSError as exc:
            raise BadInput(f"Cannot write the report to {exc.filename or out_dir!s}: {exc.strerror or exc}.") from None
    for section, why in result.missing.items():
        click.echo(f"{section}: {why}", err=True)
    click.echo(f"wrote {files.markdown}, {files.json} and {len(files.images)} figure(s)")
    click.echo(str(files.html))

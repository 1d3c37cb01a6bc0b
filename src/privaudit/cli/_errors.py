"""Maps library errors to CLI exit codes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import IO, Any

import click

__all__ = ["BadInput", "bad_input_as_exit_2"]


class BadInput(click.ClickException):
    """Bad input: one line on stderr, exit code 2, no traceback."""

    exit_code = 2

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True, file=file)


@contextlib.contextmanager
def bad_input_as_exit_2() -> Iterator[None]:
    """Turns `ValueError` (the library's bad-input error) into `BadInput`."""
    try:
        yield
    except ValueError as exc:
        raise BadInput(" ".join(str(exc).split())) from None

"""The top-level command group with lazily loaded subcommands (torch is imported only where needed)."""

from __future__ import annotations

import importlib
import importlib.util

import click

from .. import __version__

__all__ = ["main"]

_LAZY = {
    "account": ("privaudit.cli.account", "account"),
    "train": ("privaudit.cli.train", "train"),
    "attack": ("privaudit.cli.attack", "attack"),
    "audit": ("privaudit.cli.audit", "audit"),
    "report": ("privaudit.cli.report", "report"),
    "run": ("privaudit.cli.run", "run"),
    "sweep": ("privaudit.cli.sweep", "sweep"),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use (Click docs, "Lazily Loading Subcommands")."""

    def _available(self) -> dict[str, tuple[str, str]]:
        out = {}
        for name, (module, attr) in _LAZY.items():
            if importlib.util.find_spec(module) is not None:
                out[name] = (module, attr)
        return out

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._available()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None:
            return cmd
        target = self._available().get(cmd_name)
        if target is None:
            return None
        module = importlib.import_module(target[0])
        cmd = getattr(module, target[1])
        if not isinstance(cmd, click.Command):  # pragma: no cover - programming error
            raise TypeError(f"{target} is not a click command")
        return cmd


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="privaudit")
def main() -> None:
    """privaudit: differential-privacy accounting, DP training, attacks and audits."""

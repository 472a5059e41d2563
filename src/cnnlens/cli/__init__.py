"""The ``cnnlens`` command. Each subcommand lives in its own module and is imported only when used,
so ``cnnlens --help`` stays fast.

An output folder cnnlens refuses to write (:class:`cnnlens._atomic.OutputRefused`) or cannot write
(:class:`cnnlens._atomic.CannotWrite`: permissions, a read-only file system, a full disk) ends any
subcommand with its message, here in one place, never with a traceback."""

from __future__ import annotations

import importlib
import importlib.util

import click

#: subcommand name -> module defining a click command called ``command``.
COMMANDS: dict[str, str] = {
    "data": "cnnlens.cli.data_cmd",
    "summary": "cnnlens.cli.summary_cmd",
    "train": "cnnlens.cli.train_cmd",
    "import": "cnnlens.cli.import_cmd",
    "evaluate": "cnnlens.cli.evaluate_cmd",
    "explain": "cnnlens.cli.explain_cmd",
    "methods": "cnnlens.cli.methods_cmd",
    "faithfulness": "cnnlens.cli.faithfulness_cmd",
    "report": "cnnlens.cli.report_cmd",
    "demo": "cnnlens.cli.demo_cmd",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if importlib.util.find_spec(COMMANDS[name]) is not None]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS or importlib.util.find_spec(COMMANDS[cmd_name]) is None:
            return None
        return importlib.import_module(COMMANDS[cmd_name]).command

    def invoke(self, ctx: click.Context) -> object:
        from cnnlens._atomic import CannotWrite, OutputRefused

        try:
            return super().invoke(ctx)
        except (OutputRefused, CannotWrite) as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="cnnlens")
def main() -> None:
    """See what an image-classifying CNN looks at, and why it gets things wrong.

    \b
    Start here:  cnnlens demo --out demo-run
    Your data:   cnnlens train --data fer:path/to/train.csv --out runs/fer
                 cnnlens report runs/fer --out runs/fer/report
    Your model:  cnnlens import --model mynet:build --weights net.pt --classes a,b --input-shape 1,48,48 --out runs/mine
                 cnnlens report runs/mine --data folder:photos
    Methods:     cnnlens methods [NAME]   (every explanation method: kind, paper, options)
    """
    from cnnlens._allocator import retain_freed_memory

    # cnnlens's own process: keep freed heap memory between batches (20-40% faster perturbation methods
    # on CPU; cnnlens._allocator says why). Runs before any subcommand (not for `cnnlens --help` / `--version`).
    retain_freed_memory()

"""Adds `movie nano-train`: the nano family's whole training chain (movie_plugins.nano.chain), resumable."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import click

from movie_core.errors import UsageError
from movie_core.hookspecs import hookimpl


@hookimpl
def movie_register_commands(cli):
    @cli.command("nano-train")
    @click.option("--out", required=True, type=click.Path(file_okay=False),
                  help="Work folder (every stage's output; resumable).")
    @click.option("--device", default="auto", show_default=True, help="cpu, cuda or auto.")
    @click.option("--scale", type=click.FloatRange(min=1e-4), default=1.0, show_default=True,
                  help="Multiply every step count and the dataset size (e.g. 0.01 for a smoke run).")
    @click.option("--ship", "ship_to", type=click.Path(file_okay=False),
                  help="Also lay the result out as built-in models in this folder (the package's is plugins/nano).")
    @click.option("--budget", "-B", "overrides", multiple=True, metavar="KEY=VALUE",
                  help="Override one budget entry (e.g. -B ip2p_steps=3000 -B batch_size=64); see ChainBudget.")
    @click.option("--preset", type=click.Choice(("shipped", "paper")), default=None,
                  help="A named budget before --budget: 'shipped' repeats the shipped family's training (teacher "
                  "sampler = the vpred model, shared time-embedding guidance); 'paper' keeps the step counts and "
                  "takes the paper's values everywhere else, Sec. 4's stage order included (a text-to-image stage "
                  "first; docs/paper_fidelity.md).")
    @click.option("--reuse-from", "reuse_from", metavar="WORK|nano",
                  help="Copy every stage whose budget entries (its upstream stages' included) equal this budget's "
                  "from another chain's work folder or a shipped family ('nano': the package's); an ablation of "
                  "one entry retrains only what depends on it.")
    @click.option("--retrain", multiple=True, metavar="STAGE",
                  help="With --reuse-from: train this stage (e.g. mobile-pix2pix-1step) and every stage that reads "
                  "its output here even where they could be copied.")
    @click.option("--progress/--no-progress", default=True, help="Show progress bars.")
    def nano_train(out: str, device: str, scale: float, ship_to: str | None, overrides: tuple[str, ...],
                   preset: str | None, progress: bool, reuse_from: str | None, retrain: tuple[str, ...]) -> None:
        """Train the nano model family from scratch: autoencoders, text tower and the four denoiser stages."""
        from movie_core.extras import require

        require("accelerate", "nano-train")  # before the work folder is made: a missing extra leaves nothing
        from movie_plugins.nano.chain import PRESETS, ChainBudget, train_chain

        fields = {f.name: f.type for f in attrs.fields(ChainBudget)}
        changes = dict(PRESETS[preset]) if preset else {}
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep or key not in fields:
                raise UsageError(f"--budget expects KEY=VALUE with KEY one of {', '.join(fields)}; got '{item}'")
            if fields[key] in (str, "str"):
                changes[key] = value
                continue
            try:
                changes[key] = (float if fields[key] in (float, "float") else int)(value)
            except ValueError:
                raise UsageError(f"--budget {key}: '{value}' is not a number") from None
        try:
            budget = ChainBudget(**changes)
        except ValueError as e:
            raise UsageError(f"--budget: {e.args[0]}") from None
        if scale != 1.0:
            budget = budget.scaled(scale)
        source = None
        if reuse_from is not None:
            from movie_core.weights import builtin_root

            source = builtin_root() if reuse_from == "nano" else Path(reuse_from)
            if not source.is_dir():
                raise UsageError(f"--reuse-from: no folder {reuse_from}")
        record = train_chain(Path(out), budget, device=device, ship_to=Path(ship_to) if ship_to else None,
                             progress=progress, log=lambda m: click.echo(m, err=True), reuse_from=source,
                             retrain=retrain)
        click.echo(json.dumps(record["seconds"]))

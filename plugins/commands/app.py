"""Adds `movie app`: a web page (Gradio) to edit a video with an instruction: upload or the demo clip, known edits as
examples, model/preset and guidance sliders, a preview of a few frames, a progress bar, the result to play and
download with its audio. Needs the `app` extra (gradio)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import click

from movie_core.errors import MovieError, UsageError
from movie_core.hookspecs import hookimpl


@hookimpl
def movie_register_commands(cli):
    @cli.command()
    @click.option("--host", default="127.0.0.1", show_default=True,
                  help="Address to serve on (0.0.0.0: every interface; anyone who reaches it can edit).")
    @click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True)
    @click.option("--model", help="A model folder (or nano:<stage>) offered first, beside the built-in presets.")
    @click.option("--preset", default="movie", show_default=True,
                  help="The built-in preset offered first (movie, mmg, mobile, base).")
    @click.option("--device", help="Device of the models (cpu, cuda, auto; default: the recipe's).")
    @click.option("--work-dir", type=click.Path(file_okay=False),
                  help="Folder for uploads, previews and results (default: a temporary one, removed at exit).")
    @click.option("--share/--no-share", default=False, show_default=True,
                  help="Also serve through a public gradio.live link.")
    def app(host: str, port: int, model: str | None, preset: str, device: str | None, work_dir: str | None,
            share: bool) -> None:
        """Serve a web page to edit videos: upload one (or use the demo clip), type an instruction, preview a few
        frames, edit, then play and download the result with its audio."""
        from movie_core.extras import require

        require("gradio", "app")
        from movie_plugins.commands._app import CSS, EditService, build_page, make_demo_clip, model_choices

        choices = model_choices(model, preset, device)  # a bad --model or --preset fails here, before any folder
        work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="movie-app-"))
        if work.exists() and not work.is_dir():
            raise UsageError(f"--work-dir {work} is not a folder")
        try:
            work.mkdir(parents=True, exist_ok=True)
            # gradio keeps uploads and served copies in GRADIO_TEMP_DIR: inside the folder the app owns
            os.environ.setdefault("GRADIO_TEMP_DIR", str(work / "gradio"))
            os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
            service = EditService(work, choices)
            page = build_page(service, make_demo_clip(work / "demo.mp4"))
            try:
                _, url, share_url = page.launch(server_name=host, server_port=port, share=share, quiet=True,
                                                prevent_thread_lock=True, allowed_paths=[str(work.resolve())],
                                                ssr_mode=False, footer_links=[], css=CSS)
            except OSError as exc:
                raise MovieError(f"cannot serve on {host}:{port}: {' '.join(str(exc).split())}") from None
            click.echo(f"movie app: serving on {url} (work folder {work}); Ctrl-C stops it", err=True)
            if share_url:
                click.echo(f"movie app: public link {share_url}", err=True)
            try:
                page.block_thread()
            finally:
                page.close()
        finally:
            if not work_dir:
                shutil.rmtree(work, ignore_errors=True)

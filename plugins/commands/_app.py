"""The work of `movie app`: an edit service (no web code: a model choice, a preview of a few frames, the whole edit,
one-line errors) and the Gradio page over it.

The service edits through the same pieces as `movie edit` and `movie batch`: the loading layer builds the pipeline
(movie_core.loading), `Editor` (the batch worker) plans the size and batch and writes the output atomically through
movie_core.video and movie_core.edit.edit_video. Gradio is imported only in `build_page`.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from movie_core.errors import MovieError, UsageError

PREVIEW_FRAMES = 4  # frames edited for the preview, spread over the video
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")


class AppError(MovieError):
    """A user-facing failure of the page, one line."""


@attrs.frozen
class Choice:
    """One entry of the page's model menu: its label and the recipe flags it stands for (as `movie edit` takes)."""

    label: str
    flags: dict[str, Any]


# the presets offered on the built-in nano weights (paper Table 1's four rows)
PRESET_LABELS = {
    "movie": "movie: 1-step MoViE (built-in nano)",
    "mmg": "mmg: guidance-distilled, 10 steps (built-in nano)",
    "mobile": "mobile: Mobile-Pix2Pix, 10 steps x 3 passes (built-in nano)",
    "base": "base: InstructPix2Pix with the SD VAE (built-in nano)",
}


def model_choices(model: str | None = None, preset: str = "movie", device: str | None = None) -> list[Choice]:
    """The model menu: `model` (a folder or nano:<stage>) first when given, then the presets on the built-in weights
    with `preset` first. Each one resolves here, so a bad --model or --preset is one line before the page starts."""
    from movie_core.loading import resolve_recipe

    if preset not in PRESET_LABELS:
        raise UsageError(f"--preset {preset}: the page offers {', '.join(PRESET_LABELS)}")
    extra = {"device": device} if device else {}
    choices = [Choice(f"{model} (--model)", {"model": model, **extra})] if model else []
    order = [preset, *(p for p in PRESET_LABELS if p != preset)]
    choices += [Choice(PRESET_LABELS[p], {"preset": p, **extra}) for p in order]
    for choice in choices:
        resolve_recipe(choice.flags, builtin=True)
    return choices


def one_line(exc: BaseException) -> str:
    """An exception as the one line the page shows."""
    text = " ".join(str(exc).split())
    return text if isinstance(exc, MovieError) else f"{type(exc).__name__}: {text}"[:300]


class EditService:
    """Loads each chosen model once and edits uploaded videos into its own work folder; safe to call from several
    threads (one edit at a time)."""

    def __init__(self, work: Path, choices: list[Choice]) -> None:
        if not choices:
            raise UsageError("no model to offer")
        self.work = Path(work)
        self.choices = {c.label: c for c in choices}
        self.default = choices[0].label
        self._editors: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    # --- what the page shows before anything runs -------------------------------------------------

    def resolve(self, label: str | None) -> tuple[Any, Path | None]:
        """(recipe, model folder) of a menu entry."""
        from movie_core.loading import resolve_recipe

        choice = self.choices.get(label or self.default)
        if choice is None:
            raise AppError(f"unknown model '{label}': pick one of the menu")
        recipe, model, _ = resolve_recipe(choice.flags, builtin=True)
        return recipe, model

    def known_edits(self, label: str | None = None) -> dict[str, list[str]]:
        """The edits the model's manifest lists ({name: training phrasings}); empty when it lists none."""
        from movie_core.known_edits import read_edits

        return read_edits(self.resolve(label)[1]) or {}

    def examples(self, label: str | None = None) -> list[str]:
        """The shortest training phrasing of each known edit: the page's example instructions."""
        return [min(phrasings, key=len) for phrasings in self.known_edits(label).values() if phrasings]

    def guidance(self, label: str | None = None) -> tuple[float, float]:
        """The recipe's default (text, image) guidance, s_T and s_I."""
        recipe = self.resolve(label)[0]
        return float(recipe.text_guidance), float(recipe.image_guidance)

    def warning(self, prompt: str, label: str | None = None) -> str | None:
        """`movie edit`'s warning for an instruction far from every edit the model knows (None when near)."""
        from movie_core.known_edits import far_warning

        known = self.known_edits(label)
        return far_warning(prompt, known) if known and prompt.strip() else None

    # --- running -----------------------------------------------------------------------------------

    def editor(self, label: str | None) -> Any:
        """The menu entry's pipeline, loaded on first use (the batch worker's Editor: one pipeline, many files)."""
        from movie_plugins.commands._batch import Editor

        key = label or self.default
        if key not in self._editors:
            recipe, model = self.resolve(key)
            self._editors[key] = Editor(recipe, model)
        return self._editors[key]

    def _folder(self) -> Path:
        """A fresh result folder in the work folder."""
        folder = self.work / "results" / f"{next(self._ids):04d}"
        folder.mkdir(parents=True)
        return folder

    def _job(self, video: str | None, prompt: str | None, s_t: float | None, s_i: float | None,
             suffix: str | None) -> Any:
        """The batch worker's Job for one request (checked first); with a suffix, its output in a fresh folder."""
        from movie_plugins.commands._batch import Job

        if not video:
            raise AppError("no video: upload one (or press 'Use the demo clip')")
        if not Path(video).is_file():
            raise AppError(f"the uploaded video is gone: {Path(video).name}; upload it again")
        if not prompt or not prompt.strip():
            raise AppError("the instruction is empty: say what the edit should do, e.g. 'make it sepia'")
        overrides = {k: float(v) for k, v in (("text_guidance", s_t), ("image_guidance", s_i)) if v is not None}
        output = str(self._folder() / f"{Path(video).stem or 'video'}-edited{suffix}") if suffix else ""
        return Job(video, prompt.strip(), output, overrides)

    def preview_frames(self, video: str | None, prompt: str | None, label: str | None = None,
                       s_t: float | None = None, s_i: float | None = None,
                       count: int = PREVIEW_FRAMES) -> list[tuple[int, Any, Any]]:
        """`count` frames spread over the video, edited as the whole run edits them (the same anchor frame's
        keys/values, the same noise): [(frame index, source uint8 HxWx3, edited uint8 HxWx3)]."""
        import numpy as np

        from movie_core import edit as edit_mod
        from movie_core import video as video_mod

        job = self._job(video, prompt, s_t, s_i, None)
        try:
            with self._lock:
                editor = self.editor(label)
                editor._recipe(job)  # this job's guidance on the loaded pipeline (restored below)
                frames = None
                try:
                    with video_mod.open_source(job.input) as source:
                        plan = editor.plan(source)
                        frames = edit_mod.FrameEditor(editor.pipe, job.prompt, size=plan["size"],
                                                      padded=plan["padded"])
                        total = source.frame_count or 1
                        anchor = edit_mod.anchor_index(editor.pipe.recipe.anchor, source.frame_count,
                                                       source.is_seekable)
                        if anchor is not None:
                            frames.record_anchor(source.frame(anchor), anchor)
                        picks = sorted(set(np.linspace(0, total - 1, min(count, total)).round().astype(int).tolist()))
                        out = []
                        for index in picks:
                            src = source.frame(index)
                            frames.next_frame = index  # the frame clock counts video indices
                            out.append((index, src, frames.edit([src], (source.height, source.width))[0]))
                        return out
                finally:
                    if frames is not None:
                        frames.close()
                    editor.pipe.recipe = editor.base
        except MovieError as exc:
            raise AppError(one_line(exc)) from None
        except (IndexError, StopIteration) as exc:
            raise AppError(f"cannot read the frames of {Path(job.input).name}: {one_line(exc)}") from None

    def preview(self, video: str | None, prompt: str | None, label: str | None = None, s_t: float | None = None,
                s_i: float | None = None, count: int = PREVIEW_FRAMES) -> Path:
        """A contact sheet PNG (source above edited) of `preview_frames`, in a fresh folder of the work folder."""
        from movie_core.edit import contact_sheet

        frames = self.preview_frames(video, prompt, label, s_t, s_i, count)
        sheet = self._folder() / f"{Path(str(video)).stem or 'video'}-preview.png"
        contact_sheet([(src, out) for _, src, out in frames], sheet)
        return sheet

    def edit(self, video: str | None, prompt: str | None, label: str | None = None, s_t: float | None = None,
             s_i: float | None = None, on_progress: Callable[[int, int | None], None] | None = None) -> Path:
        """Edit the whole video as `movie edit` does (size, batch, audio and timestamps kept, written atomically)
        into a fresh folder of the work folder; returns the output's path."""
        job = self._job(video, prompt, s_t, s_i, ".mp4")
        with self._lock:
            try:
                editor = self.editor(label)
            except MovieError as exc:
                raise AppError(one_line(exc)) from None
            row = editor.edit(job, on_progress=on_progress)
        if row["status"] != "done":
            _drop_empty(Path(job.output).parent)
            raise AppError(row["error"])
        return Path(job.output)


def _drop_empty(folder: Path) -> None:
    """Remove a result folder that a failed run left empty (a failure leaves nothing behind)."""
    try:
        folder.rmdir()
    except OSError:
        pass


def make_demo_clip(path: Path) -> Path:
    """The page's demo clip: 2 s at 8 frames/s, 128x96, a moving square over a panning gradient, with a tone."""
    from movie_core.video import make_test_video

    if not path.is_file():
        tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
        make_test_video(tmp, seconds=2, fps=8, width=128, height=96, audio=True)
        tmp.replace(path)
    return path


INTRO = """# movie: edit a video with a text instruction
Upload a video (or use the demo clip), type an instruction, preview a few frames, then edit the whole video.
The result keeps the input's length, frame rate and audio. The built-in nano models know twelve global edits
(the examples below), not open-ended instructions; `--model DIR` serves your own model."""

GUIDANCE_INFO = ("s_T: how strongly the edit follows the instruction; s_I: how closely it keeps the input "
                 "(paper Fig. 4; the guidance-distilled models were trained on s_T 2-14, s_I 1-3)")


CSS = "#preview img { object-fit: contain !important; }"  # the whole contact sheet, not a crop of it


def build_page(service: EditService, demo_clip: Path | None = None) -> Any:
    """The Gradio Blocks page over `service`."""
    import gradio as gr

    def fail(exc: BaseException) -> gr.Error:
        return gr.Error(one_line(exc), duration=None, print_exception=False)  # stays until closed

    def edits_line(label: str | None) -> str:
        try:
            known = service.known_edits(label)
        except MovieError as exc:
            return f"**Model:** {one_line(exc)}"
        if not known:
            return "This model lists no known edits: any instruction is tried."
        return "Known edits: " + ", ".join(known)

    def on_model(label: str) -> tuple[Any, Any, str]:
        try:
            s_t, s_i = service.guidance(label)
        except MovieError as exc:
            raise fail(exc) from None
        return gr.update(value=s_t), gr.update(value=s_i), edits_line(label)

    def on_preview(video: str | None, prompt: str, label: str, s_t: float, s_i: float) -> str:
        try:
            far = service.warning(prompt or "", label)
            if far:
                gr.Warning(far)
            return str(service.preview(video, prompt, label, s_t, s_i))
        except MovieError as exc:
            raise fail(exc) from None
        except Exception as exc:  # a bug or a library failure: still one line on the page
            raise fail(exc) from None

    def on_edit(video: str | None, prompt: str, label: str, s_t: float, s_i: float,
                progress: gr.Progress = gr.Progress()) -> tuple[str, str, str]:  # noqa: B008 (gradio's way)
        def step(done: int, total: int | None) -> None:
            progress((done, total), desc="editing", unit="frames")

        try:
            progress(0, desc="loading the model")
            out = service.edit(video, prompt, label, s_t, s_i, on_progress=step)
        except MovieError as exc:
            raise fail(exc) from None
        except Exception as exc:
            raise fail(exc) from None
        from movie_core.video import probe

        info = probe(out)
        audio = f", audio {info['audio_codec']}" if info["audio_codec"] else ", no audio"
        line = (f"Edited {info['frame_count']} frames, {info['width']}x{info['height']} at "
                f"{float(info['fps']):g} frames/s{audio}: {out.name}")
        return str(out), str(out), line

    first = service.default
    s_t0, s_i0 = service.guidance(first)
    with gr.Blocks(title="movie app") as page:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column():
                video_in = gr.Video(label="Input video", sources=["upload"], height=240, elem_id="input-video")
                demo_button = gr.Button("Use the demo clip", elem_id="demo-button", size="sm",
                                        visible=demo_clip is not None)
                prompt = gr.Textbox(label="Instruction", placeholder="make it sepia", elem_id="instruction")
                examples = service.examples(first)
                if examples:
                    gr.Examples(examples=[[e] for e in examples], inputs=[prompt], label="Edits the model knows",
                                examples_per_page=len(examples))
                model = gr.Dropdown(list(service.choices), value=first, label="Model / preset", elem_id="model")
                known = gr.Markdown(edits_line(first))
                with gr.Row():
                    s_t = gr.Slider(0.0, 15.0, value=s_t0, step=0.5, label="Text guidance s_T", elem_id="s-t")
                    s_i = gr.Slider(0.0, 5.0, value=s_i0, step=0.1, label="Image guidance s_I", elem_id="s-i")
                gr.Markdown(GUIDANCE_INFO)
                with gr.Row():
                    preview_button = gr.Button("Preview frames", elem_id="preview-button")
                    edit_button = gr.Button("Edit the whole video", variant="primary", elem_id="edit-button")
            with gr.Column():
                preview = gr.Image(label="Preview: source above, edited below", type="filepath",
                                   interactive=False, elem_id="preview")
                video_out = gr.Video(label="Result", interactive=False, height=240, elem_id="result-video")
                file_out = gr.File(label="Download the result", interactive=False, elem_id="result-file")
                status = gr.Markdown(elem_id="status")
        if demo_clip is not None:
            demo_button.click(lambda: str(demo_clip), outputs=[video_in], queue=False)
        model.change(on_model, inputs=[model], outputs=[s_t, s_i, known])
        inputs = [video_in, prompt, model, s_t, s_i]
        preview_button.click(on_preview, inputs=inputs, outputs=[preview], concurrency_id="model")
        edit_button.click(on_edit, inputs=inputs, outputs=[video_out, file_out, status], concurrency_id="model")
    page.queue(default_concurrency_limit=1)
    return page

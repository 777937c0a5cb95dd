"""Ablations: a grid of settings measured one cell at a time, resumable, into a table (CSV, JSON, markdown) and charts.

Two layers. `run_grid(cells, measure)` is generic: each cell is a dict of settings, `measure(settings)` returns
its numbers, and every finished cell is saved to OUT/cells/<key>.json (atomically) together with the
configuration it depends on; a later run with the same configuration reuses it instead of measuring again.
`ablate(base, vary)` builds the cells from a recipe: recipe slots and options (plus `vae` and `preset`) varied
as a full grid or one at a time, measured with FLOPs, `movie bench` and `movie eval`; a combination that
does not compose (an unknown component, autoencoders from two latent spaces) is a skipped row with the reason.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from movie_core.errors import MovieError, UsageError
from movie_core.recipe import PRESETS, SLOTS, Recipe, tomllib

MEASURES = ("flops", "bench", "eval")
SPECIAL_KEYS = ("vae", "preset")  # vae sets encoder and decoder; preset replaces the starting recipe
CELLS = "cells"
TABLE = "ablation"
FORMAT = "movie-ablation/1"

COLUMN_HELP = {
    "tflops_full": "per-frame TFLOPs of the full-size architecture at {height}x{width}, paper convention "
                   "(what `movie flops` reports)",
    "tflops_full_all": "the same, counting every op torch sees",
    "tflops_full_ae": "encoder + decoder share of tflops_full",
    "tflops_nano": "per-frame TFLOPs of the nano model at {nano} (the evaluated size), paper convention",
    "unet_calls": "UNet evaluations per frame (steps x passes per step)",
    "ms_per_frame": "CPU milliseconds per frame, `movie bench` loop at {bench}",
    "frames_per_s": "frames per second, same run",
    "psnr": "PSNR (dB) against the ground truth of the held-out split (`movie eval`)",
    "ssim": "SSIM against the same ground truth",
}


class SkipCell(MovieError):
    """Raised by a measure function: the cell cannot run; the message is the reason shown in the table."""


# ------------------------------------------------------------------------------------------------ the grid


def parse_vary(text: str) -> tuple[str, list[Any]]:
    """'KEY=V1,V2,...' -> (key, values); option values are read as TOML scalars (2 -> int, 7.5 -> float)."""
    key, sep, raw = text.partition("=")
    key = key.strip().replace("-", "_")
    values = [v.strip() for v in raw.split(",")]
    if not sep or not key or not raw.strip() or any(not v for v in values):
        raise UsageError(f"--vary takes KEY=VALUE[,VALUE...], got {text!r}")
    if key in SLOTS or key in SPECIAL_KEYS:
        return key, values
    return key, [_scalar(v) for v in values]


def _scalar(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def cell_key(settings: Mapping[str, Any]) -> str:
    """'k1=v1,k2=v2' in the order of the factors."""
    return ",".join(f"{k}={_text(v)}" for k, v in settings.items())


def _file_name(key: str) -> str:
    if re.fullmatch(r"[\w.=,+-]{1,120}", key):
        return key
    safe = re.sub(r"[^\w.=,+-]", "_", key)[:80]
    return f"{safe}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def grid_cells(vary: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the varied values (the first key changes slowest)."""
    keys = list(vary)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(vary[k] for k in keys))]


def one_at_a_time_cells(vary: Mapping[str, Sequence[Any]], base: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The base cell, then one cell per varied value with every other factor at its base value."""
    cells = [dict(base)]
    for key, values in vary.items():
        for value in values:
            if value != base[key]:
                cells.append(dict(base) | {key: value})
    return cells


# ------------------------------------------------------------------------------------- running and saving


@attrs.frozen
class Planned:
    """One cell before it runs: its settings, what its result depends on, and how to measure it (or why not)."""

    settings: dict[str, Any]
    config: dict[str, Any]
    measure: Callable[[], Mapping[str, Any]] | None = None
    skip: str | None = None


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _split(result: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Scalars become table columns; anything nested is kept as details in the cell file."""
    metrics, details = {}, {}
    for k, v in result.items():
        if v is None or isinstance(v, (bool, int, float, str)):
            metrics[k] = v
        else:
            details[k] = v
    return metrics, _jsonable(details)


def _load_cell(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # unreadable: measured again


def _skipped(row: dict[str, Any], reason: str) -> dict[str, Any]:
    return row | {"status": "skipped", "reason": reason, "metrics": {}, "details": {}, "seconds": 0.0, "reused": False}


def execute(plan: Sequence[Planned], out: Path | None,
            log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Run the planned cells in order, reusing finished ones from out/cells; returns one row per cell."""
    say = log or (lambda message: None)
    folder = out / CELLS if out is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, cell in enumerate(plan, 1):
        key = cell_key(cell.settings)
        head = f"[{i}/{len(plan)}] {key}"
        row: dict[str, Any] = {"key": key, "settings": _jsonable(cell.settings)}
        if cell.skip is not None:
            say(f"{head}: skipped: {cell.skip}")
            rows.append(_skipped(row, cell.skip))
            continue
        config = _jsonable(cell.config)
        path = folder / f"{_file_name(key)}.json" if folder is not None else None
        saved = _load_cell(path) if path is not None and path.is_file() else None
        if saved is not None and saved.get("key") == key and saved.get("config") == config:
            say(f"{head}: done earlier ({saved['seconds']:.1f} s), reused")
            rows.append(row | {k: saved[k] for k in ("status", "reason", "metrics", "details", "seconds")}
                        | {"reused": True})
            continue
        if saved is not None:
            say(f"{head}: settings changed since it was measured, measuring again")
        started = time.perf_counter()
        try:
            assert cell.measure is not None, "a planned cell has a measure or a reason to skip"
            result = cell.measure()
        except SkipCell as exc:
            say(f"{head}: skipped: {exc}")
            rows.append(_skipped(row, str(exc)))
            continue
        seconds = time.perf_counter() - started
        metrics, details = _split(result)
        done = row | {"status": "ok", "reason": None, "metrics": _jsonable(metrics), "details": details,
                      "seconds": seconds}
        if path is not None:
            _write_text(path, json.dumps({"format": FORMAT, **done, "config": config}, indent=2) + "\n")
        say(f"{head}: {seconds:.1f} s")
        rows.append(done | {"reused": False})
    return rows


def columns(rows: Sequence[Mapping[str, Any]], factors: Sequence[str]) -> list[str]:
    """Factors, status, every metric in order of first appearance, reason."""
    metrics: list[str] = []
    for r in rows:
        metrics += [k for k in r["metrics"] if k not in metrics and k not in factors]
    return [*factors, "status", *metrics, "reason"]


def flat_rows(rows: Sequence[Mapping[str, Any]], cols: Sequence[str]) -> list[dict[str, Any]]:
    """One flat dict per row, keyed by the table's columns."""
    out = []
    for r in rows:
        merged = r["settings"] | r["metrics"] | {"status": r["status"], "reason": r["reason"]}
        out.append({c: merged.get(c) for c in cols})
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return _text(value).replace("|", "\\|")


def markdown_table(flat: Sequence[Mapping[str, Any]], cols: Sequence[str]) -> str:
    """A GitHub markdown table (numbers to 4 significant digits)."""
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in flat]
    return "\n".join(lines)


def _csv(flat: Sequence[Mapping[str, Any]], cols: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(cols), lineterminator="\n")
    writer.writeheader()
    for r in flat:
        writer.writerow({c: "" if r[c] is None else r[c] for c in cols})
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------- charts


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(settings: Mapping[str, Any], factors: Sequence[str]) -> str:
    return ", ".join(f"{k}={_text(settings[k])}" for k in factors) or "base"


def _save(fig: Any, path: Path, plt: Any, top: float = 1.0) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fig.tight_layout(rect=(0, 0, 1, top))
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def chart_cost_quality(rows: Sequence[Mapping[str, Any]], factors: Sequence[str], costs: Sequence[str],
                       quality: str, path: Path, title: str, plt: Any) -> bool:
    """One scatter per cost column: cost (log x) against quality, each point labelled by its settings."""
    ok = [r for r in rows if r["status"] == "ok" and r["metrics"].get(quality) is not None]
    costs = [c for c in costs if any(r["metrics"].get(c) for r in ok)]
    if not ok or not costs:
        return False
    from matplotlib import ticker

    fig, axes = plt.subplots(1, len(costs), figsize=(6.4 * len(costs), 4.4), dpi=120, squeeze=False)
    for ax, cost in zip(axes[0], costs):
        for k, r in enumerate(ok):
            x, y = r["metrics"].get(cost), r["metrics"][quality]
            if not x:
                continue
            ax.scatter(x, y, color=f"C{k % 10}", s=40)
            ax.annotate(_label(r["settings"], factors), (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set(xlabel=f"{cost} (log)", ylabel=quality, title=f"{quality} vs {cost}")
        ax.margins(x=0.3, y=0.15)
    fig.suptitle(title, fontsize=10)
    _save(fig, path, plt)
    return True


def chart_bars(rows: Sequence[Mapping[str, Any]], factors: Sequence[str], metrics: Sequence[str], path: Path,
               title: str, plt: Any) -> bool:
    """One panel per metric. A full grid of two or more factors groups the bars by the first factor;
    otherwise one bar per cell."""
    import numpy as np

    ok = [r for r in rows if r["status"] == "ok"]
    metrics = [m for m in metrics if any(isinstance(r["metrics"].get(m), (int, float)) for r in ok)]
    if not ok or not metrics:
        return False
    groups = list(dict.fromkeys(_text(r["settings"][factors[0]]) for r in ok)) if factors else []
    series = list(dict.fromkeys(tuple(_text(r["settings"][f]) for f in factors[1:]) for r in ok))
    full = len(factors) >= 2 and len(ok) == len(groups) * len(series)
    ncols = 2 if len(metrics) == 4 else min(3, len(metrics))
    nrows = -(-len(metrics) // ncols)
    panel = max(4.0, 0.8 * len(ok) + 1.5)
    fig, axes = plt.subplots(nrows, ncols, figsize=(min(20.0, panel * ncols), 3.6 * nrows), dpi=120, squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    for ax, metric in zip(axes.flat, metrics):
        if full:
            width = 0.8 / len(series)
            x = np.arange(len(groups))
            for k, s in enumerate(series):
                values = []
                for g in groups:
                    match = [r for r in ok if _text(r["settings"][factors[0]]) == g
                             and tuple(_text(r["settings"][f]) for f in factors[1:]) == s]
                    values.append(match[0]["metrics"].get(metric) or 0.0)
                bars = ax.bar(x + (k - (len(series) - 1) / 2) * width, values, width, color=f"C{k % 10}",
                              label=", ".join(f"{f}={v}" for f, v in zip(factors[1:], s)))
                ax.bar_label(bars, fmt="%.3g", fontsize=6)
            ax.set_xticks(x, [f"{factors[0]}={g}" for g in groups], fontsize=8)
        else:
            values = [r["metrics"].get(metric) or 0.0 for r in ok]
            bars = ax.bar(np.arange(len(ok)), values, color=[f"C{k % 10}" for k in range(len(ok))])
            ax.bar_label(bars, fmt="%.3g", fontsize=6)
            ticks = ["\n".join(_text(r["settings"][f]) for f in factors) or "base" for r in ok]
            ax.set_xticks(np.arange(len(ok)), ticks, fontsize=7)
            ax.set_xlabel(" / ".join(factors), fontsize=8)
        ax.set(ylabel=metric, title=metric)
        ax.margins(y=0.12)
    fig.suptitle(title, fontsize=10)
    top = 1.0
    if full:
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper center", ncol=min(len(series), 4), fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5, 0.96))
        top = 0.92 if nrows > 1 else 0.86
    _save(fig, path, plt, top)
    return True


# ------------------------------------------------------------------------------------------------ outputs


def write_outputs(rows: Sequence[Mapping[str, Any]], factors: Sequence[str], out: Path | None, *, title: str,
                  notes: Sequence[str] = (), cost: Sequence[str] = (), quality: str | None = None,
                  bars: Sequence[str] | None = None, help: Mapping[str, str] | None = None,
                  meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The table as plain data; with `out`, also OUT/ablation.csv, .json, .md and the charts (when matplotlib
    is importable)."""
    cols = columns(rows, factors)
    flat = flat_rows(rows, cols)
    notes = list(notes)
    charts: list[str] = []
    plt = _pyplot() if out is not None else None
    if out is not None and plt is None:
        notes.append("charts skipped: matplotlib is not installed (pip install 'movie[plot]')")
    elif out is not None:
        if quality and chart_cost_quality(rows, factors, cost, quality, out / "cost_vs_quality.png", title, plt):
            charts.append("cost_vs_quality.png")
        metric_cols = [c for c in cols if c not in factors and c not in ("status", "reason")]
        if chart_bars(rows, factors, bars if bars is not None else metric_cols, out / "bars.png", title, plt):
            charts.append("bars.png")
    ok = [r for r in rows if r["status"] == "ok"]
    result = {
        "format": FORMAT,
        "title": title,
        "factors": list(factors),
        "columns": cols,
        "rows": flat,
        "cells": [{k: r[k] for k in ("key", "settings", "status", "reason", "metrics", "details", "seconds", "reused")}
                  for r in rows],
        "notes": notes,
        "column_help": {c: h for c, h in (help or {}).items() if c in cols},
        "charts": charts,
        "run": {"cells": len(rows), "ok": len(ok), "skipped": len(rows) - len(ok),
                "computed": sum(1 for r in ok if not r["reused"]), "reused": sum(1 for r in ok if r["reused"]),
                "cell_seconds": sum(r["seconds"] for r in ok)},
    } | dict(meta or {})
    result = _jsonable(result)
    if out is None:
        return result
    md = [f"# {title}", "", markdown_table(flat, cols), ""]
    if result["column_help"]:
        md += [f"- `{c}`: {h}" for c, h in result["column_help"].items()] + [""]
    md += [f"Note: {n}" for n in notes] + ([""] if notes else [])
    md += [f"![{c}]({c})" for c in charts]
    _write_text(out / f"{TABLE}.csv", _csv(flat, cols))
    _write_text(out / f"{TABLE}.json", json.dumps(result, indent=2) + "\n")
    _write_text(out / f"{TABLE}.md", "\n".join(md).rstrip() + "\n")
    result["files"] = {"csv": str(out / f"{TABLE}.csv"), "json": str(out / f"{TABLE}.json"),
                       "markdown": str(out / f"{TABLE}.md"), "charts": [str(out / c) for c in charts]}
    return result


def _check_out(out: str | Path | None) -> Path | None:
    if out is None:
        return None
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    if not out.parent.exists():
        raise UsageError(f"--out {out}: folder {out.parent} does not exist")
    return out


def run_grid(cells: Sequence[Mapping[str, Any]], measure: Callable[[dict[str, Any]], Mapping[str, Any]], *,
             out: str | Path | None = None, config: Mapping[str, Any] | None = None, title: str = "Ablation",
             cost: Sequence[str] | str = (), quality: str | None = None, bars: Sequence[str] | None = None,
             notes: Sequence[str] = (), log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure each cell (a dict of settings) with `measure(settings) -> {column: number, ...}`.

    With `out`, finished cells are saved to out/cells/ and reused by a later run whose `config` (anything
    the results depend on besides the settings, JSON-able) is the same; the table and charts are written
    to out/. `measure` raises SkipCell(reason) for a cell that cannot run. Returns the table as plain data.
    """
    if not cells:
        raise UsageError("an ablation needs at least one cell")
    factors = list(dict.fromkeys(k for c in cells for k in c))
    settings = [{k: c.get(k) for k in factors} for c in cells]
    keys = [cell_key(s) for s in settings]
    if len(set(keys)) != len(keys):
        raise UsageError(f"two cells have the same settings: {next(k for k in keys if keys.count(k) > 1)}")
    target = _check_out(out)
    def measure_cell(settings: dict[str, Any]) -> Callable[[], Mapping[str, Any]]:
        return lambda: measure(dict(settings))

    plan = [Planned(s, {"config": dict(config or {})}, measure=measure_cell(s)) for s in settings]
    rows = execute(plan, target, log)
    return write_outputs(rows, factors, target, title=title, notes=notes,
                         cost=[cost] if isinstance(cost, str) else cost,
                         quality=quality, bars=bars, meta={"config": dict(config or {})})


# -------------------------------------------------------------------------------------- recipe ablations


def _fingerprint(paths: Sequence[Path], cap: int = 256 * 2**20) -> str:
    """A content hash of files (paths are files or folders); past `cap` bytes, sizes and mtimes stand in."""
    files: list[tuple[str, Path]] = []
    for root in paths:
        root = Path(root)
        if root.is_file():
            files.append((root.name, root))
        elif root.is_dir():
            files += [(f"{root.name}/{p.relative_to(root).as_posix()}", p) for p in sorted(root.rglob("*"))
                      if p.is_file()]
    total = sum(p.stat().st_size for _, p in files)
    h = hashlib.sha256()
    for name, p in sorted(files):
        h.update(name.encode())
        if total <= cap:
            h.update(p.read_bytes())
        else:
            st = p.stat()
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def data_fingerprint(data: Path, split: str | None = None) -> str:
    """A hash of a dataset's files (only the split's folder when it has one: other splits may change freely)."""
    data = Path(data)
    return _fingerprint([data / split if split and (data / split).is_dir() else data])


def model_fingerprint(folder: Path) -> str:
    """A hash of a model folder's files and the shared component folders its movie.json points to."""
    from movie_core.weights import component_folder, read_manifest

    names = (read_manifest(folder) or {}).get("components") or {}
    shared = [component_folder(folder, name) for name in names if not (folder / name).is_dir()]
    return _fingerprint([folder, *[p for p in shared if p is not None]])


@attrs.define
class _Cell:
    """A composed cell recipe, its weights, and the pipeline built once for bench and eval."""

    composition: Any
    model: Path | None
    _pipe: Any = None

    @property
    def recipe(self) -> Recipe:
        return self.composition.recipe

    def pipeline(self):
        if self._pipe is None:
            from movie_core.loading import load_pipeline

            self._pipe = load_pipeline(self.composition, self.model)
        return self._pipe


def _measure_flops(cell: _Cell, opts: dict[str, Any]) -> dict[str, Any]:
    from movie_core import flops
    from movie_core.composer import compose

    full = flops.count(compose(cell.recipe.replace(size="full")), height=opts["height"], width=opts["width"])
    c = full["components"]
    out = {"tflops_full": full["tflops_paper"], "tflops_full_all": full["tflops_all"],
           "tflops_full_ae": c["encoder"]["tflops_paper"] + c["decoder"]["tflops_paper"],
           "unet_calls": full["steps"] * full["unet_passes_per_step"], "flops_full": full}
    if cell.recipe.size == "nano":
        h, w = opts["nano_hw"]
        nano = flops.count(compose(cell.recipe), height=h, width=w)
        out |= {"tflops_nano": nano["tflops_paper"], "flops_nano": nano}
    return out


def _measure_bench(cell: _Cell, opts: dict[str, Any]) -> dict[str, Any]:
    from movie_core.bench import bench_pipeline

    pipe = cell.pipeline()
    size = opts["bench_size"]
    r = bench_pipeline(pipe, height=size, width=size, frames=opts["bench_frames"], batch_size=opts["bench_frames"],
                       repeats=opts["bench_repeats"])
    return {"ms_per_frame": r["ms_per_frame"], "frames_per_s": r["frames_per_s"], "bench": r}


def _measure_eval(cell: _Cell, opts: dict[str, Any]) -> dict[str, Any]:
    from movie_core import evaluate as ev

    r = ev.evaluate(ev.PipelinePredictor(cell.pipeline()), opts["data"], split=opts["split"], limit=opts["limit"],
                    batch_size=opts["batch_size"])
    return {"psnr": r["psnr"], "ssim": r["ssim"],
            "eval": {k: r[k] for k in ("count", "psnr", "ssim", "identity", "per_edit", "split", "seconds")}}


MEASURE_FUNCTIONS: dict[str, Callable[[_Cell, dict[str, Any]], dict[str, Any]]] = {
    "flops": _measure_flops, "bench": _measure_bench, "eval": _measure_eval,
}


def _start(base: str | Path | Recipe) -> tuple[Recipe, str]:
    """The starting recipe and the name its cells call it by (a preset's name, a file's stem, or 'base')."""
    from movie_core.recipe import load_recipe

    recipe = load_recipe(base)
    if isinstance(base, Recipe):
        return recipe, "base"
    return recipe, str(base) if str(base) in PRESETS else Path(str(base)).stem


def _cell_recipe(start: Recipe, name: str, settings: Mapping[str, Any], size: str | None) -> Recipe:
    from movie_core.recipe import preset

    wanted = settings.get("preset", name)
    recipe = start if wanted == name else preset(wanted).replace(component_options=start.component_options)
    changes = {k: v for k, v in settings.items() if k != "preset"}
    if size is not None:
        changes["size"] = size
    return recipe.replace(**changes)


def _check_vary(vary: Mapping[str, Sequence[Any]], start: Recipe, name: str, size: str | None) -> dict[str, list[Any]]:
    fields = [a.name for a in attrs.fields(Recipe)]
    allowed = list(SLOTS) + list(SPECIAL_KEYS) + [f for f in fields if f not in SLOTS]
    checked: dict[str, list[Any]] = {}
    for key, values in vary.items():
        if key not in allowed:
            raise UsageError(f"cannot vary '{key}': not a recipe slot or option; slots: {', '.join(SLOTS)}, vae, "
                             f"preset; options: {', '.join(f for f in fields if f not in SLOTS)}")
        values = [values] if isinstance(values, (str, int, float)) else list(values)
        if not values:
            raise UsageError(f"--vary {key}: no values")
        texts = [_text(v) for v in values]
        if len(set(texts)) != len(texts):
            raise UsageError(f"--vary {key}: a value is listed twice ({', '.join(texts)})")
        if key == "preset":
            unknown = [v for v in values if v not in PRESETS and v != name]
            if unknown:
                raise UsageError(f"--vary preset: unknown preset '{unknown[0]}'; presets: {', '.join(PRESETS)} "
                                 f"(and '{name}', the base)")
        for v in values:
            try:
                _cell_recipe(start, name, {key: v}, size)
            except UsageError as exc:
                raise UsageError(f"--vary {key}={_text(v)}: {exc}") from None
        checked[key] = values
    if "vae" in checked and ({"encoder", "decoder"} & set(checked)):
        raise UsageError("--vary vae sets both encoder and decoder; vary either vae or encoder/decoder")
    return checked


def _base_values(start: Recipe, name: str, keys: Sequence[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key in keys:
        if key == "preset":
            values[key] = name
        elif key == "vae":
            values[key] = start.encoder if start.encoder == start.decoder else None
        else:
            values[key] = getattr(start, key)
    return values


def _data_resolution(data: Path, split: str) -> tuple[int, int]:
    from movie_core.data.datasets import open_dataset

    first = open_dataset(data, split)[0]["source"]
    return int(first.shape[-3]), int(first.shape[-2])


def _measures(measure: Sequence[str] | str) -> list[str]:
    names = [m.strip() for m in measure.split(",")] if isinstance(measure, str) else list(measure)
    unknown = [m for m in names if m not in MEASURES]
    if not names or unknown:
        raise UsageError(f"--measure: unknown measure '{unknown[0] if unknown else ''}'; "
                         f"choose from {', '.join(MEASURES)}")
    return [m for m in MEASURES if m in names]


def _plan(cells: Sequence[dict[str, Any]], start: Recipe, name: str, size: str | None, model: str | Path | None,
          measures: list[str], depends: dict[str, Any], opts: dict[str, Any]) -> list[Planned]:
    """Compose every cell; one that does not compose (or has no weights) is planned as skipped, with the reason."""
    from movie_core.composer import compose
    from movie_core.loading import resolve_weights

    needs_weights = bool({"bench", "eval"} & set(measures))
    fingerprints: dict[Path, str] = {}
    plan = []
    for settings in cells:
        try:
            recipe = _cell_recipe(start, name, settings, size)
            comp = compose(recipe)
            weights = resolve_weights(recipe, model) if needs_weights else None
        except UsageError as exc:
            plan.append(Planned(settings, {}, skip=str(exc)))
            continue
        if weights is not None and weights not in fingerprints:
            fingerprints[weights] = model_fingerprint(weights)
        model_id = fingerprints[weights] if weights is not None else ("random" if needs_weights else None)
        cell = _Cell(comp, weights)

        def run(cell: _Cell = cell) -> dict[str, Any]:
            result: dict[str, Any] = {}
            for m in measures:
                result |= MEASURE_FUNCTIONS[m](cell, opts)
            return result

        # each component's plugin and version belong to the cell's identity: a plugin update measures it again
        plugins = {slot: {"plugin": spec.plugin, "version": spec.version} for slot, spec in comp.specs.items()}
        plan.append(Planned(settings, depends | {"recipe": attrs.asdict(recipe), "model": model_id, "plugins": plugins},
                            measure=run))
    return plan


def _notes(rows: Sequence[Mapping[str, Any]], opts: dict[str, Any], data_id: str | None, model: str | Path | None,
           measures: list[str]) -> list[str]:
    notes = []
    evals = [r["details"]["eval"] for r in rows if r["status"] == "ok" and "eval" in r["details"]]
    if evals:
        ident = evals[0]["identity"]
        notes.append(f"eval: {evals[0]['count']} samples of the '{opts['split']}' split of dataset "
                     f"{Path(opts['data']).name}/ (files hash {data_id}); the source left unchanged scores PSNR "
                     f"{ident['psnr']:.2f} dB, SSIM {ident['ssim']:.3f}")
    if {"bench", "eval"} & set(measures):
        notes.append("weights: " + (str(model) if model is not None else
                                    "the built-in nano model of each cell's denoiser stage (`nano:<stage>`)"))
    return notes


def ablate(base: str | Path | Recipe, vary: Mapping[str, Sequence[Any]] | None = None, *,
           one_at_a_time: bool = False, measure: Sequence[str] | str = ("flops",), data: str | Path | None = None,
           out: str | Path | None = None, size: str | None = None, model: str | Path | None = None,
           split: str = "test", limit: int | None = None, batch_size: int = 8, height: int = 480, width: int = 480,
           bench_size: int = 128, bench_frames: int = 4, bench_repeats: int = 2, title: str | None = None,
           log: Callable[[str], None] | None = None,
           options: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Vary recipe slots/options of `base` (a preset name, recipe TOML or Recipe) and measure every cell.

    movie_core.api.ablate documents the arguments; everything is checked before anything is measured or written.
    """
    measures = _measures(measure)
    if size is not None and size not in ("full", "nano"):
        raise UsageError(f"size must be full or nano, got {size!r}")
    start, name = _start(base)
    if options:  # every cell's component options, over the base recipe's own
        start = start.replace(component_options={
            slot: dict(start.component_options.get(slot, {})) | dict(options.get(slot, {}))
            for slot in {*start.component_options, *options}})
    if {"bench", "eval"} & set(measures) and model is None and (size or start.size) != "nano":
        raise UsageError("bench and eval need weights: there are no built-in full-size ones; pass --size nano "
                         "(the built-in nano models), --model DIR or --model random")
    checked = _check_vary(vary or {}, start, name, size)
    if one_at_a_time and not checked:
        raise UsageError("--one-at-a-time needs at least one --vary")
    factors = list(checked)
    if one_at_a_time:
        cells = one_at_a_time_cells(checked, _base_values(start, name, factors))
    else:
        cells = grid_cells(checked) if checked else [{}]
    nano_hw, data_id = (bench_size, bench_size), None
    if "eval" in measures:
        if data is None:
            raise UsageError("--measure eval needs --data DIR (a dataset with ground truth, e.g. `movie data nano`)")
        data = Path(data)
        if not data.exists():
            raise UsageError(f"no such dataset: {data}")
        nano_hw, data_id = _data_resolution(data, split), data_fingerprint(data, split)
    target = _check_out(out)
    opts = {"height": height, "width": width, "nano_hw": nano_hw, "bench_size": bench_size,
            "bench_frames": bench_frames, "bench_repeats": bench_repeats, "data": data, "split": split,
            "limit": limit, "batch_size": batch_size}
    depends: dict[str, Any] = {"measure": measures, "height": height, "width": width}
    if "flops" in measures:
        depends |= {"nano_hw": list(nano_hw)}
    if "bench" in measures:
        depends |= {"bench_size": bench_size, "bench_frames": bench_frames, "bench_repeats": bench_repeats}
    if "eval" in measures:
        depends |= {"data": data_id, "split": split, "limit": limit}
    plan = _plan(cells, start, name, size, model, measures, depends, opts)
    if target is not None:
        target.mkdir(exist_ok=True)
    rows = execute(plan, target, log)
    bench = (f"{bench_size}x{bench_size}, {bench_frames} frames per batch, "
             f"median of {bench_repeats} repeats after a warm-up")
    help_ = {c: h.format(height=height, width=width, nano=f"{nano_hw[0]}x{nano_hw[1]}", bench=bench)
             for c, h in COLUMN_HELP.items()}
    meta = {"base": name, "base_recipe": attrs.asdict(start), "measure": measures,
            "mode": "one-at-a-time" if one_at_a_time else "grid", "config": depends,
            "data": str(data) if data is not None else None}
    cost = (["tflops_full"] if "flops" in measures else []) + (["ms_per_frame"] if "bench" in measures else [])
    return write_outputs(rows, factors, target, title=title or f"Ablation of {name}: {', '.join(factors) or 'base'}",
                         notes=_notes(rows, opts, data_id, model, measures), cost=cost,
                         quality="psnr" if "eval" in measures else None,
                         bars=["tflops_full", "tflops_nano", "ms_per_frame", "psnr", "ssim"], help=help_, meta=meta)

"""Issue 27: an export an app can ship.

The reference app loop (examples/app_loop.py) runs in a subprocess where torch, diffusers and transformers cannot
be imported, on nothing but the files `movie export --backend onnx` wrote, and reproduces `movie edit` of the same
frames within one grey level; exports made with other settings record exactly those settings.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "make it look like a watercolor painting"
HEIGHT, WIDTH = 192, 256  # the acceptance's 256x192

pytest.importorskip("onnxruntime", reason="the app loop and the onnx export need onnxruntime (pip install '.[onnx]')")

# run a script with torch, diffusers, transformers and tokenizers unimportable (a meta-path finder refusing them)
BLOCKED = """
import runpy, sys
NAMES = ("torch", "diffusers", "transformers", "tokenizers")
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in NAMES:
            raise ImportError(f"{name} is blocked: the app loop must not need it")
sys.meta_path.insert(0, Block())
script, *sys.argv = sys.argv[1:]
sys.argv.insert(0, script)
runpy.run_path(script, run_name="__main__")
assert not set(NAMES) & {m.split(".")[0] for m in sys.modules}, "a blocked module was imported"
"""
PROMPTS = [
    PROMPT,
    "",
    "   Make   it\tSEPIA,\nplease!!  ",
    "don't; it's 'quoted' -- you'll we're I'm they've he'd ''s ?'s",
    "add 3 cats, 42 dogs and 1,000.5 birds (x2) @ 10:30pm #tag $5 50% a+b=c",
    "café naïve Ünïcödé straße İstanbul ÉCOLE",
    "日本語のテキスト 中文 한국어 Ελληνικά русский عربى",
    "emoji 🎨🖌️ ✨ and symbols ½ ² ³ ⅷ ١٢٣ — “smart quotes” …",
    "e\u0301 composed (NFC) vs é; tabs\t\tand\u00a0nbsp; under_score snake_case_name",
    "<|startoftext|>special<|endoftext|> inside",
    " ".join(f"word{i} painting watercolor" for i in range(40)),  # far past 77 tokens: truncated
    "watercolor" * 30,  # one long word
]


def app_loop_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("app_loop", ROOT / "examples" / "app_loop.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exported_tokenizers(folder: Path):
    """tokenizer.json as `movie export` writes it, for the built-in nano tokenizer and one with many merges
    learned from text with punctuation, numbers and non-Latin scripts."""
    from transformers import CLIPTokenizer

    from movie_plugins.denoisers._pix2pix import export_tokenizer
    from movie_plugins.nano.train import learn_bpe, write_bpe_tokenizer

    corpus = [p for p in PROMPTS if "<|" not in p] * 3
    learned = write_bpe_tokenizer(folder / "learned-src", learn_bpe(corpus, min_frequency=2, max_merges=400))
    for name, source in [("nano", ROOT / "plugins" / "nano" / "text" / "tokenizer"), ("learned", learned)]:
        tok = CLIPTokenizer.from_pretrained(source)
        (folder / name).mkdir()
        yield name, folder / name / "tokenizer.json", export_tokenizer(tok, 77, folder / name), tok


def test_app_loop_tokenizer_gives_the_ids_of_tokenizers(tmp_path):
    """The app loop's standard-library reader of tokenizer.json: the same ids as Hugging Face `tokenizers` (and
    transformers' CLIP tokenizer) for punctuation, numbers, unicode, specials and prompts past 77 tokens."""
    tokenizers = pytest.importorskip("tokenizers", reason="the reference ids come from tokenizers")
    app = app_loop_module()
    for name, path, info, tok in exported_tokenizers(tmp_path):
        merges = json.loads(path.read_text())["model"]["merges"]
        assert name == "nano" or len(merges) >= 100, (name, len(merges))  # the BPE merges are exercised
        reference = tokenizers.Tokenizer.from_file(str(path))
        ours = app.ClipTokenizer(path, info)
        for prompt in PROMPTS:
            want = reference.encode(prompt).ids
            assert len(want) == 77 and want[0] == info["bos_id"]
            assert ours(prompt) == want, (name, prompt)
            if "<|" not in prompt:  # transformers' tokenizer splits specials differently from tokenizer.json
                assert want == tok(prompt, padding="max_length", max_length=77, truncation=True).input_ids
        reference.no_truncation()
        assert len(reference.encode(PROMPTS[-2]).ids) > 77  # the long prompt was truncated above


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return {"MOVIE_CACHE_DIR": str(tmp_path_factory.mktemp("artifacts"))}


def write_frames(folder: Path, n: int) -> list[Path]:
    from PIL import Image

    from movie_core.bench import synthetic_frames

    folder.mkdir()
    paths = []
    for i, f in enumerate(synthetic_frames(n, HEIGHT, WIDTH)):
        paths.append(folder / f"frame_{i + 1:06d}.png")
        Image.fromarray(f).save(paths[-1])
    return paths


def read_frames(folder: Path) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("frame_*.png"))]).astype(int)


@pytest.mark.slow  # seven ONNX graphs at 256x192 and a movie edit per case: minutes on two cores
@pytest.mark.parametrize("anchor,count", [("none", 1), ("middle", 3)])
def test_torch_free_app_loop_matches_movie_edit(run_movie, tmp_path, cache, anchor, count):
    export = tmp_path / "export"
    result = run_movie("export", "--backend", "onnx", "--preset", "movie", "--size", "nano", "--anchor", anchor,
                       "--height", str(HEIGHT), "--width", str(WIDTH), "--out", str(export), env=cache, timeout=900)
    assert result.returncode == 0, result.stderr
    paths = write_frames(tmp_path / "src", count)
    result = run_movie("edit", str(tmp_path / "src"), "-p", PROMPT, "-o", str(tmp_path / "edit"), "--preset", "movie",
                       "--size", "nano", "--anchor", anchor, "--height", str(HEIGHT), "--width", str(WIDTH),
                       "--fps", "10", "--no-progress", timeout=600)
    assert result.returncode == 0, result.stderr
    app = subprocess.run(
        [
            sys.executable,
            "-c",
            BLOCKED,
            str(ROOT / "examples" / "app_loop.py"),
            str(export),
            PROMPT,
            *map(str, paths),
            "--out",
            str(tmp_path / "app"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert app.returncode == 0, app.stderr
    got, expected = read_frames(tmp_path / "app"), read_frames(tmp_path / "edit")
    assert got.shape == expected.shape == (count, HEIGHT, WIDTH, 3)
    diff = np.abs(got - expected)
    print(f"app loop vs movie edit, anchor {anchor}, {count} frame(s): max {diff.max()} mean {diff.mean():.6f}")
    assert diff.max() <= 1, (diff.max(), diff.mean())
    assert (
        np.abs(got - np.stack([np.asarray(__import__("PIL.Image").Image.open(p)) for p in paths])).mean() > 2
    )  # it edited


def flat(d, prefix=""):
    """{'a.b.c': leaf} of a nested manifest."""
    if isinstance(d, dict):
        return {k: v for key, val in d.items() for k, v in flat(val, f"{prefix}{key}.").items()}
    return {prefix[:-1]: d}


@pytest.mark.slow  # four exports
def test_manifests_differ_in_exactly_the_export_settings(tmp_path, cache, monkeypatch):
    from movie_core.recipe import preset
    from movie_plugins.backends._export import export_recipe

    monkeypatch.setenv("MOVIE_CACHE_DIR", cache["MOVIE_CACHE_DIR"])
    base = preset("movie").replace(size="nano", backend="onnx", anchor="none")

    def manifest(name, h=32, w=32, **changes):
        m = export_recipe(base.replace(**changes), None, tmp_path / name, height=h, width=w)
        for c in m["components"].values():
            c.pop("key")  # the cache key: a hash of everything
        return flat(m), tmp_path / name

    ref, ref_dir = manifest("ref")
    assert ref["format"] == "movie-export/2" and ref["host.steps"] == 1 and ref["settings.seed"] == 0
    assert ref["host.sampler.per_step"][0]["timestep"] == 999 and ref["host.sampler.fused_in_unet"]
    changed = {}
    for name, kw, expect in [
        ("seed", {"seed": 3}, {"settings.seed"}),
        ("guidance", {"text_guidance": 5.0}, {"settings.text_guidance", "host.guidance.s_T"}),
        ("steps", {"steps": 2}, {"settings.steps", "host.steps", "host.sampler.steps"}),
        ("size", {"h": 40, "w": 48}, {"settings.height", "settings.width", "frame.height", "frame.width"}),
    ]:
        other, folder = manifest(name, **kw)
        diff = {k for k in ref.keys() | other.keys() if ref.get(k) != other.get(k)}
        assert expect <= diff, (name, expect - diff)
        changed[name] = (diff, folder)
    # seed and guidance change only their fields (and the constant they determine, not in the manifest)
    assert changed["seed"][0] == {"settings.seed"}
    assert changed["guidance"][0] == {"settings.text_guidance", "host.guidance.s_T"}
    assert not np.array_equal(np.load(ref_dir / "initial_noise.npy"), np.load(changed["seed"][1] / "initial_noise.npy"))
    assert not np.array_equal(
        np.load(ref_dir / "guidance_features.npy"), np.load(changed["guidance"][1] / "guidance_features.npy")
    )
    # steps: the sampler's schedule and the unet graph (2 steps are not fused: the app runs the listed update)
    assert all(k.startswith(("settings.", "host.", "components.unet.", "latent_scaling.")) for k in changed["steps"][0])
    two = json.loads((changed["steps"][1] / "manifest.json").read_text())["host"]["sampler"]
    assert [r["timestep"] for r in two["per_step"]] == [999, 499] and not two["fused_in_unet"]
    assert (changed["steps"][1] / "step_noise_0.npy").is_file()
    # size: shapes only
    assert all(k.startswith(("settings.", "frame.", "components.", "host.tensors.")) for k in changed["size"][0])

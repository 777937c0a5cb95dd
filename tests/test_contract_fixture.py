"""A denoiser that is not a diffusers UNet, from a real third-party distribution, through every command.

tests/fixtures/handwritten_denoiser is pip-installed into a temporary folder and put on sys.path: movie finds it
through the `movie` entry point like any installed plugin. Its `tiny-convattn` is a few convs, one self-attention
layer, a byte text encoder and a hand-written DDIM sampler that implement only the documented DenoiserContract;
`mobile-pix2pix-2step` derives from mobile-pix2pix-1step (ComponentSpec base/defaults) and runs on its built-in
nano weights. The commands run in this process (one in a fresh interpreter) at 32x32 with 2-4 frames.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

# Import the model libraries while pytest's session-wide capture is in place, so their logging
# handlers bind to a stream that outlives any one test's capture (as tests/test_edit.py does).
import diffusers  # noqa: F401
import numpy as np
import pytest
import transformers  # noqa: F401
from PIL import Image

from movie_core import crossframe, plugins

from cli_helpers import pip_install_fixture, run_cli

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "handwritten_denoiser"
TINY = ["--denoiser", "tiny-convattn", "--size", "nano", "--init", "random"]
PACKAGE = "movie_tiny_denoiser"


@pytest.fixture(scope="module")
def tiny_site(tmp_path_factory) -> Path:
    """The fixture package pip-installed (a real distribution with its entry point) into a --target folder."""
    target = pip_install_fixture(FIXTURE, tmp_path_factory)
    assert (target / PACKAGE / "denoiser.py").is_file()
    assert list(target.glob("movie_plugin_tiny_denoiser-0.1.0.dist-info"))
    return target


def contract_names() -> set[str]:
    """What DenoiserContract lists: its methods and its annotated attributes."""
    from movie_core.components import DenoiserContract

    methods = {n for n, v in vars(DenoiserContract).items() if callable(v) and not n.startswith("_")}
    return methods | set(DenoiserContract.__annotations__)


class ContractOnly:
    """A built denoiser seen only through DenoiserContract: any other attribute the core reaches for fails loudly."""

    def __init__(self, denoiser) -> None:
        object.__setattr__(self, "_denoiser", denoiser)
        object.__setattr__(self, "_names", contract_names())

    def __getattr__(self, name: str):
        if name not in self._names:
            raise AttributeError(f"the core used {name!r}, which is not in DenoiserContract")
        return getattr(self._denoiser, name)

    def __setattr__(self, name: str, value) -> None:
        raise AttributeError(f"the core set {name!r} on a denoiser")


@pytest.fixture(autouse=True)
def tiny_on_path(tiny_site, tmp_path, monkeypatch, clean_plugins):
    """The installed plugin visible to this process's entry-point scan, for one test; gone afterwards.

    In this process the `tiny-convattn` factory returns its denoiser wrapped in ContractOnly, so every command
    below fails if the core touches anything outside the contract (the fresh-interpreter run uses it as is)."""
    monkeypatch.syspath_prepend(str(tiny_site))
    monkeypatch.setenv("MOVIE_CACHE_DIR", str(tmp_path / "artifact-cache"))
    plugins.reset()
    import movie_tiny_denoiser.denoiser as module

    build = module.build
    monkeypatch.setattr(module, "build", lambda ctx, config: ContractOnly(build(ctx, config)))
    yield tiny_site
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory) -> Path:
    """Four 32x32 frames of distinct flat colours: each frame's self-attention keys/values differ from the anchor's."""
    folder = tmp_path_factory.mktemp("frames") / "src"
    folder.mkdir()
    for i, colour in enumerate([(230, 40, 40), (40, 200, 60), (40, 60, 230), (240, 240, 240)]):
        Image.fromarray(np.full((32, 32, 3), colour, dtype=np.uint8)).save(folder / f"frame_{i:03d}.png")
    return folder


@pytest.fixture
def tiny_model(tmp_path, capsys) -> Path:
    """A saved random-init `tiny-convattn` model folder whose TAESD is the trained built-in nano one (a random
    decoder maps every latent to nearly the same image, hiding what the denoiser does)."""
    from movie_core.weights import builtin_model, component_folder

    model = tmp_path / "tiny-model"
    code, _, err = run_cli(capsys, "compose", *TINY, "--save-model", str(model))
    assert code == 0, err
    assert (model / "tiny_denoiser" / "model.safetensors").is_file() and (model / "taesd").is_dir()
    shutil.rmtree(model / "taesd")
    shutil.copytree(component_folder(builtin_model("mobile-pix2pix-1step"), "taesd"), model / "taesd")
    return model


def read_frames(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p), dtype=np.int16) for p in sorted(folder.glob("*.png"))]


def test_registered_by_the_installed_distribution(capsys):
    code, out, err = run_cli(capsys, "list", "denoiser", "--json")
    assert code == 0, err
    rows = {row["name"]: row for row in json.loads(out)}
    assert {k: rows["tiny-convattn"][k] for k in ("plugin", "version")} == {"plugin": "tiny", "version": "0.1.0"}
    assert rows["mobile-pix2pix-2step"]["plugin"] == "tiny"
    spec = plugins.get_registry().get("denoiser", "mobile-pix2pix-2step")
    assert spec.base == "mobile-pix2pix-1step" and spec.defaults["steps"] == 2
    assert spec.extra["stage"] == "mobile-pix2pix-1step"  # built-in weights resolve through the base


def test_implements_the_contract_and_nothing_diffusers():
    import torch

    from movie_core.components import BuildContext, DenoiserContract

    spec = plugins.get_registry().get("denoiser", "tiny-convattn")
    wrapped = spec.load_factory()(BuildContext(seed=1), spec.make_config())
    assert isinstance(wrapped, ContractOnly) and isinstance(wrapped, DenoiserContract)
    with pytest.raises(AttributeError, match="'net', which is not in DenoiserContract"):
        wrapped.net  # noqa: B018
    den = wrapped._denoiser
    assert isinstance(den, DenoiserContract)
    for attr in ("unet", "text_encoder", "tokenizer", "make_scheduler", "predict", "unet_forward"):
        assert not hasattr(den, attr), attr  # the core cannot be leaning on the built-in family's surface
    assert not any("diffusers" in type(m).__module__ or "transformers" in type(m).__module__ for m in den.modules())

    ids, truncated = den.tokenize(["make it red", "x" * 40])
    assert ids.shape == (2, 16) and truncated == [False, True]
    lat = torch.randn(2, 4, 4, 4)
    emb = den.encode_prompt(["make it red", "make it blue"])
    out = den.sample(lat, emb, steps=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == lat.shape and torch.isfinite(out).all()


def test_edit_with_anchor_attention(frames_dir, tiny_model, tmp_path, capsys, monkeypatch):
    calls: list[tuple[str, str, int]] = []
    kv = crossframe.AnchorController.kv

    def spy(self, name, key, value):
        calls.append((self.mode, name, key.shape[0]))
        return kv(self, name, key, value)

    monkeypatch.setattr(crossframe.AnchorController, "kv", spy)
    outs = {}
    for anchor in ("first", "none"):
        out = tmp_path / anchor
        code, stdout, err = run_cli(capsys, "edit", str(frames_dir), "-p", "make it red", "-o", str(out),
                                    "--fps", "4", "--anchor", anchor, "--batch-size", "2", "--no-progress",
                                    "--model", str(tiny_model))
        assert code == 0, err
        assert "edited 4 frames" in stdout
        outs[anchor] = read_frames(out)
    # 4 steps: the anchor frame records once per step, then all 4 frames replay at every step; on the CPU (eager) the
    # model sees one frame per call whatever --batch-size says (movie_core.edit: batch-independent output)
    assert [c for c in calls if c[0] == "record"] == [("record", "mid.attn", 1)] * 4
    assert [c for c in calls if c[0] == "replay"] == [("replay", "mid.attn", 1)] * 16
    assert len(calls) == 20  # and none with --anchor none
    anchored, plain = outs["first"], outs["none"]
    assert len(anchored) == len(plain) == 4
    assert np.array_equal(anchored[0], plain[0])  # the anchor attends to itself either way
    for a, p in zip(anchored[1:], plain[1:]):
        assert np.abs(a - p).mean() > 0.5  # other frames attend to the anchor's keys and values


def test_a_denoiser_that_ignores_the_kv_hook_is_one_line(frames_dir, tmp_path, capsys, monkeypatch):
    from movie_tiny_denoiser.denoiser import TinyDenoiser

    from movie_core.components import Denoiser

    monkeypatch.setattr(TinyDenoiser, "set_kv_hook", Denoiser.set_kv_hook)  # stores the hook, no layer calls it
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "edit", str(frames_dir), "-p", "make it red", "-o", str(out), "--fps", "4",
                           "--no-progress", *TINY)
    assert code == 1
    assert [line for line in err.splitlines() if line.strip()] == [
        ("movie: error: denoiser 'tiny-convattn' recorded no anchor keys/values: its anchor layers never called the "
         "KV hook (set_kv_hook); run with --anchor none")]
    assert not out.exists() and not [p.name for p in tmp_path.iterdir() if ".movie-tmp" in p.name]


def test_saved_model_reloads(frames_dir, tmp_path, capsys):
    model = tmp_path / "tiny-model"
    code, _, err = run_cli(capsys, "compose", *TINY, "--save-model", str(model))
    assert code == 0, err
    outs = []
    for flags in (TINY, ["--model", str(model)]):
        out = tmp_path / f"out{len(outs)}"
        code, _, err = run_cli(capsys, "edit", str(frames_dir), "-p", "make it look like a red painting", "-o",
                               str(out), "--fps", "4", "--no-progress", *flags)
        assert code == 0, err
        assert "warning: prompt truncated to the text encoder's 16 tokens" in err  # the denoiser's tokenize says so
        outs.append(read_frames(out))
    assert all(np.array_equal(a, b) for a, b in zip(*outs))


def test_bench_json(capsys):
    code, out, err = run_cli(capsys, "bench", *TINY, "--height", "32", "--width", "32", "--frames", "2",
                             "--batch-size", "2", "--repeats", "1", "--json")
    assert code == 0, err
    result = json.loads(out)
    row = result[0] if isinstance(result, list) else result
    assert row["steps"] == 4 and row["unet_passes_per_step"] == 1  # the denoiser's own default, one embedded pass
    assert row["recipe"]["denoiser"] == "tiny-convattn"


def test_flops_json_in_a_fresh_interpreter(tiny_site, run_movie, capsys):
    proc = run_movie("flops", *TINY, "--height", "64", "--width", "64", "--json", pythonpath=tiny_site)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["recipe"]["denoiser"] == "tiny-convattn" and result["steps"] == 4
    unet = result["components"]["unet"]
    assert unet["calls"] == 4 and unet["tflops_paper"] > 0 and unet["tflops_all"] >= unet["tflops_paper"]

    # a component option reaches the factory: wider features, more FLOPs per UNet pass
    code, out, err = run_cli(capsys, "flops", *TINY, "--height", "64", "--width", "64", "--json",
                             "-O", "denoiser.channels=32")
    assert code == 0, err
    assert json.loads(out)["components"]["unet"]["tflops_paper"] > 2 * unet["tflops_paper"]


def test_eval_json(tmp_path, capsys):
    data = tmp_path / "data"
    code, _, err = run_cli(capsys, "data", "nano", "--out", str(data), "--count", "8", "--videos", "0",
                           "--size", "32", "--test-fraction", "0.5")
    assert code == 0, err
    code, out, err = run_cli(capsys, "eval", "random", "--data", str(data), "--limit", "2", "--json", "--no-progress",
                             *TINY[:-2])
    assert code == 0, err
    result = json.loads(out)
    assert result["count"] == 2 and result["recipe"]["denoiser"] == "tiny-convattn"
    assert 0 < result["psnr"] < 100 and -1 <= result["ssim"] <= 1


def test_ablate_flops_and_bench(tmp_path, capsys):
    code, out, err = run_cli(capsys, "ablate", "movie", "--vary", "denoiser=tiny-convattn", "--vary", "steps=1,2",
                             "--measure", "flops,bench", "--model", "random", "--size", "nano", "--height", "64",
                             "--width", "64", "--bench-size", "32", "--bench-frames", "1", "--bench-repeats", "1",
                             "--out", str(tmp_path / "abl"), "--json", "--no-progress")
    assert code == 0, err
    rows = json.loads(out)["rows"]
    assert [(r["denoiser"], r["steps"], r["status"]) for r in rows] == [("tiny-convattn", 1, "ok"),
                                                                        ("tiny-convattn", 2, "ok")], rows
    one, two = rows
    assert (one["unet_calls"], two["unet_calls"]) == (1, 2)  # one embedded pass per step
    assert two["tflops_full"] > one["tflops_full"] > one["tflops_full_ae"] > 0  # the second step adds a UNet pass
    assert one["ms_per_frame"] > 0 and two["ms_per_frame"] > 0


def test_export_onnx_has_anchor_kv_and_runs_like_eager(frames_dir, tiny_model, tmp_path, capsys, monkeypatch):
    onnx = pytest.importorskip("onnx",
                               reason="export --backend onnx needs the onnx package (pip install 'movie[onnx]')")
    pytest.importorskip("onnxruntime", reason="the onnx backend runs on onnxruntime (pip install 'movie[onnx]')")
    out = tmp_path / "export"
    code, stdout, err = run_cli(capsys, "export", "--backend", "onnx", "--model", str(tiny_model), "--height", "32",
                                "--width", "32", "--out", str(out), "--json")
    assert code == 0, err
    manifest = json.loads(stdout)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert {"text_encoder", "encoder", "unet", "unet_replay", "decoder"} <= set(manifest["components"])
    assert manifest["host"]["guidance"] == "embedded" and manifest["host"]["steps"] == 4
    io = {}
    for name in ("unet", "unet_replay"):
        files = [out / name / f for f in manifest["components"][name]["files"] if f.endswith(".onnx")]
        assert files, manifest["components"][name]
        graph = onnx.load(str(files[0]), load_external_data=False).graph
        io[name] = ([i.name for i in graph.input], [o.name for o in graph.output])
    kv = ["anchor_k_0", "anchor_v_0"]
    sample_inputs = ["sample", "time_features", "text_emb", "guidance_features"]
    # the network's own output name (the fixture predicts x0), then the anchor frame's K/V
    assert io["unet"] == (sample_inputs, ["x0", *kv])
    assert io["unet_replay"] == (sample_inputs + kv, ["x0"])  # the other frames' pass takes them

    # the same graphs edit a video with anchor attention as the torch modules do (record on the anchor, replay)
    ort = pytest.importorskip("onnxruntime")
    runs: list[tuple[tuple[str, ...], tuple[str, ...]]] = []  # (output names, input names) of each onnx run
    run = ort.InferenceSession.run

    def spy(self, output_names, feeds, *args, **kwargs):
        runs.append((tuple(output_names or ()), tuple(feeds)))
        return run(self, output_names, feeds, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "run", spy)
    edits = {}
    for backend in ("onnx", "eager"):
        code, _, err = run_cli(capsys, "edit", str(frames_dir), "-p", "make it red", "-o", str(tmp_path / backend),
                               "--fps", "4", "--anchor", "first", "--batch-size", "2", "--no-progress",
                               "--model", str(tiny_model), "--backend", backend)
        assert code == 0, err
        edits[backend] = read_frames(tmp_path / backend)
    # onnx ran every step of the anchor (4 steps, returning K/V) and of the 2 batches (4 steps each, taking K/V)
    assert sum(outputs == ("x0", *kv) for outputs, _ in runs) == 4
    assert sum(outputs == ("x0",) and inputs == (*sample_inputs, *kv) for outputs, inputs in runs) == 8
    for a, b in zip(edits["onnx"], edits["eager"]):
        assert np.abs(a - b).max() <= 2


def test_derived_denoiser_runs_on_its_base_builtin_weights(frames_dir, tmp_path, capsys, monkeypatch):
    from movie_plugins.denoisers import mobile_pix2pix_1step as base

    build, built = base.build, []  # the base's factory builds the derived denoiser: seen through the contract only

    def contract_only(ctx, config):
        built.append(ContractOnly(build(ctx, config)))
        return built[-1]

    monkeypatch.setattr(base, "build", contract_only)
    out = tmp_path / "derived"
    code, stdout, err = run_cli(capsys, "edit", str(frames_dir), "-p", "make it sepia", "-o", str(out), "--fps", "4",
                                "--denoiser", "mobile-pix2pix-2step", "--no-progress")
    assert code == 0, err
    assert "built-in nano model nano:mobile-pix2pix-1step" in err
    assert len(read_frames(out)) == 4 and built
    for flags, steps in (([], 2), (["--steps", "1"], 1)):
        code, stdout, err = run_cli(capsys, "bench", "--denoiser", "mobile-pix2pix-2step", "--height", "32", "--width",
                                    "32", "--frames", "1", "--batch-size", "1", "--repeats", "1", "--json", *flags)
        assert code == 0, err
        result = json.loads(stdout)
        row = result[0] if isinstance(result, list) else result
        assert row["steps"] == steps, flags  # the derived default, unless the user sets steps
        assert row["recipe"]["denoiser"] == "mobile-pix2pix-2step"

"""Execution backends: the graph components, the artifact cache, onnx parity, hexagon (QNN HTP emulation),
aihub (through a stand-in client), tensorrt's availability, compile, and `movie export` / `movie bench`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from movie_core import backends
from movie_core.composer import compose
from movie_core.edit import FrameEditor, SizePolicy, to_tensor
from movie_core.errors import MovieError, UsageError
from movie_core.loading import build
from movie_core.recipe import preset

SIZE = (64, 64)
# the Hexagon check runs at 128x128: at 64x64 the nano UNet's mid block is 1x1 with two channels per
# GroupNorm group, a normalisation of two numbers that fp16 cannot reproduce (relative error ~6e-2)
HEX_SIZE = (128, 128)
PROMPT = "make it look like a watercolor painting"


def has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


needs_onnx = pytest.mark.skipif(not (has("onnx") and has("onnxruntime") and has("onnxscript")),
                                reason="onnx, onnxruntime and onnxscript are not installed (pip install '.[onnx]')")
needs_qnn = pytest.mark.skipif(not (has("onnxruntime_qnn") and has("onnxscript")),
                               reason="onnxruntime-qnn is not installed (pip install '.[hexagon]')")


@pytest.fixture(scope="module", autouse=True)
def artifact_cache(tmp_path_factory):
    """One artifact cache for this module (subprocesses inherit it), so tests at the same shapes share exports."""
    old = os.environ.get("MOVIE_CACHE_DIR")
    root = tmp_path_factory.mktemp("artifacts")
    os.environ["MOVIE_CACHE_DIR"] = str(root)
    yield root
    if old is None:
        del os.environ["MOVIE_CACHE_DIR"]
    else:
        os.environ["MOVIE_CACHE_DIR"] = old


def nano(backend: str = "eager", **changes):
    """The nano `movie` recipe (random init, seed 0) built on the CPU."""
    recipe = preset("movie").replace(size="nano", backend=backend, **changes)
    return build(compose(recipe))


def frames(n: int = 3) -> list[np.ndarray]:
    from movie_core.bench import synthetic_frames

    return synthetic_frames(n, *SIZE)


def edit_floats(pipe, batch: list[np.ndarray]) -> torch.Tensor:
    """Anchor (the middle frame) then one batch, as `movie edit` runs them; returns the decoded frames."""
    editor = FrameEditor(pipe, PROMPT, size=SIZE, padded=SizePolicy(*SIZE).padded(*SIZE))
    try:
        editor.record_anchor(batch[len(batch) // 2])
        return editor.edit_tensor(editor.tensor(batch))
    finally:
        editor.close()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


class CountingBackend:
    """An exporting backend whose 'artifact' is the module's state saved with torch; counts builds."""

    name = "counting"
    exports = True
    version = "1"

    def __init__(self):
        self.builds = 0

    def toolchain(self, options):
        return {"counting": self.version}

    def prepare(self, module, example_inputs=(), options=None):
        path = Path(options["artifact_dir"]) / "state.pt"
        if not options["reuse"]:
            self.builds += 1
            torch.save(module.state_dict(), path)
        state = torch.load(path)
        frozen = torch.nn.Linear(4, 2)
        frozen.load_state_dict(state)
        return frozen


# --- the graph components ---------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["mobile-pix2pix-1step", "mobile-pix2pix"])
def test_unet_graph_with_host_features_matches_unet_forward(stage):
    """The static UNet graph fed with host-computed time/guidance sinusoids computes what unet_forward does."""
    pipe = nano(denoiser=stage)
    den = pipe.denoiser
    g = torch.Generator().manual_seed(1)
    x, img = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    text = den.encode_prompt([PROMPT]).expand(2, -1, -1)
    t = torch.tensor(700)
    expected = den.unet_forward(x, t, img, text, 1.5, 7.5)
    graph = backends.AnchoredNetwork(den, "none")
    inputs = den.graph_inputs(x, t, img, text, 1.5, 7.5)
    assert len(inputs) == (4 if den.guidance == "embedded" else 3)
    with backends.active(graph), torch.no_grad():
        got = graph(*inputs)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not hasattr(den.unet.__dict__, "get_time_embed") and "get_time_embed" not in den.unet.__dict__


def test_unet_record_then_replay_reproduces_crossframe_attention():
    """record returns each self-attention's K/V; replay with them equals the eager cross-frame processors."""
    from movie_core import crossframe

    pipe = nano()
    den = pipe.denoiser
    g = torch.Generator().manual_seed(2)
    anchor, others = torch.randn(1, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    img = torch.randn(1, 4, 8, 8, generator=g)
    text = den.encode_prompt([PROMPT])
    t = torch.tensor(999)
    ctrl = crossframe.AnchorController()
    prev = den.set_kv_hook(ctrl.kv)
    ctrl.record()
    ref_anchor = den.unet_forward(anchor, t, img, text, 1.5, 7.5)
    ctrl.replay()
    ref_others = den.unet_forward(others, t, img.expand(2, -1, -1, -1), text.expand(2, -1, -1), 1.5, 7.5)
    den.set_kv_hook(prev)

    record = backends.AnchoredNetwork(den, "record")
    replay = backends.AnchoredNetwork(den, "replay")
    with torch.no_grad():
        with backends.active(record):
            out, *kv = record(*den.graph_inputs(anchor, t, img, text, 1.5, 7.5))
        with backends.active(replay):
            got = replay(*den.graph_inputs(others, t, img.expand(2, -1, -1, -1), text.expand(2, -1, -1),
                                           1.5, 7.5), *kv)
    assert len(kv) == 2 * len(record.layers) > 0
    torch.testing.assert_close(out, ref_anchor, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, ref_others, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got[0], got[1])  # frames differ: replay did not collapse the batch


# --- cache keys and staleness -------------------------------------------------------------------


def test_cache_key_covers_model_shapes_precision_and_toolchain():
    m = torch.nn.Linear(4, 2)
    x = (torch.zeros(3, 4),)
    def key(module, inputs=x, precision="float32", toolchain=None):
        return backends.cache_key("b", backends.model_hash(module), backends.describe_inputs(inputs), precision,
                                  toolchain or {"v": "1"})[0]

    base = key(m)
    assert base == key(m)
    same = torch.nn.Linear(4, 2)
    same.load_state_dict(m.state_dict())
    assert key(same) == base  # the key is the content, not the object
    changed = [key(m, inputs=(torch.zeros(5, 4),)), key(m, precision="float16"), key(m, toolchain={"v": "2"})]
    with torch.no_grad():
        m.weight[0, 0] += 1e-3
    changed.append(key(m))
    assert base not in changed and len(set(changed)) == 4


def test_stale_artifact_is_never_reused(tmp_path):
    backend, cache = CountingBackend(), backends.ArtifactCache(tmp_path)
    m = torch.nn.Linear(4, 2)
    x = torch.randn(3, 4)
    names = (("x",), ("y",))

    def run():
        p = backends.prepare_component(backend, "lin", m, (x,), names, {}, cache)
        return p.fn(x), p.info

    y1, info1 = run()
    y2, info2 = run()
    assert backend.builds == 1 and info1["key"] == info2["key"]  # same model, shapes, toolchain: reused
    torch.testing.assert_close(y2, m(x))
    with torch.no_grad():
        m.weight.mul_(2)  # new weights: a new key, a new build, the new numbers
    y3, info3 = run()
    assert backend.builds == 2 and info3["key"] != info1["key"]
    torch.testing.assert_close(y3, m(x))
    backend.version = "2"  # a new toolchain version
    run()
    assert backend.builds == 3
    # a folder whose record does not match its key (tampered, or an older format) is rebuilt, not trusted
    meta = Path(info3["artifact_dir"]) / "artifact.json"
    data = json.loads(meta.read_text())
    data["record"]["toolchain"] = {"counting": "0"}
    meta.write_text(json.dumps(data))
    backend.version = "1"
    run()
    assert backend.builds == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left behind


@needs_onnx
def test_onnx_artifact_rebuilt_when_weights_change(tmp_path):
    from movie_plugins.backends.onnx import OnnxBackend

    cache = backends.ArtifactCache(tmp_path)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.GELU()).eval()
    x = torch.randn(1, 3, 8, 8)
    names = (("images",), ("out",))
    first = backends.prepare_component(OnnxBackend(), "conv", m, (x,), names, {}, cache)
    with torch.no_grad():
        m[0].bias.add_(1.0)
    second = backends.prepare_component(OnnxBackend(), "conv", m, (x,), names, {}, cache)
    assert first.info["key"] != second.info["key"]
    torch.testing.assert_close(second.fn(x), m(x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(first.fn(x), m(x), atol=1e-3)


@needs_onnx
def test_onnx_dynamic_batch_serves_every_batch_size(tmp_path):
    from movie_plugins.backends.onnx import OnnxBackend

    pipe = nano()
    runner = backends.Runner(OnnxBackend(), "encoder", backends.EncodeGraph(pipe.encoder), (("images",), ("latents",)),
                             {"dynamic_batch": True}, backends.ArtifactCache(tmp_path))
    for n in (1, 3):
        x = torch.rand(n, 3, 32, 32) * 2 - 1
        torch.testing.assert_close(runner(x), pipe.encoder.encode(x), rtol=1e-4, atol=1e-5)
    (info,) = [p.info for p in runner.prepared.values()]
    assert info["inputs"]["images"]["shape"] == ["batch", 3, 32, 32]


# --- onnx ------------------------------------------------------------------------------------------


# the whole nano recipe through onnxruntime (~3 min); onnx parity stays in the fast lane through
# test_onnx_dynamic_batch_serves_every_batch_size and test_contract_fixture's export test
@pytest.mark.slow
@needs_onnx
def test_onnx_backend_matches_eager_end_to_end():
    """The nano movie recipe through onnx: every component exported, the edited frames equal eager's."""
    batch = frames(3)
    expected = edit_floats(nano(), batch)
    pipe = nano("onnx")
    bound = pipe.runtime  # built already running through onnxruntime
    got = edit_floats(pipe, batch)
    assert rel_err(got, expected) < 1e-4, rel_err(got, expected)
    prepared = {info["component"] for info in bound.artifacts()}
    assert prepared == {"text_encoder", "encoder", "unet", "unet_replay", "decoder"}
    for info in bound.artifacts():
        assert (Path(info["artifact_dir"]) / "model.onnx").is_file()
        assert info["toolchain"]["opset"] >= 17


# --- hexagon ---------------------------------------------------------------------------------------


def qnn_session(path: Path, arch: str = "75", soc: str = "57"):
    """An onnxruntime session on the QNN HTP backend with CPU fallback disabled (built here, not by the backend)."""
    import onnxruntime as ort
    import onnxruntime_qnn

    if "QNNExecutionProvider" not in {d.ep_name for d in ort.get_ep_devices()}:
        ort.register_execution_provider_library("QNNExecutionProvider", onnxruntime_qnn.get_library_path())
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    so.add_provider_for_devices([d for d in ort.get_ep_devices() if d.ep_name == "QNNExecutionProvider"], {
        "backend_path": onnxruntime_qnn.get_qnn_htp_path(), "htp_arch": arch, "soc_model": soc,
        "enable_htp_fp16_precision": "1"})
    return ort.InferenceSession(str(path), sess_options=so)


@pytest.mark.slow  # end to end through the HTP emulator (~1 min); test_compose_with_hexagon_backend stays fast
@needs_qnn
def test_export_hexagon_writes_context_binaries_that_match_eager(run_movie, tmp_path):
    """Acceptance: `movie export --backend hexagon --preset movie --size nano` -> QNN context binaries for the
    encoder, UNet and decoder; run in the HTP emulator with CPU fallback disabled they match eager (fp16)."""
    import onnx

    out = tmp_path / "hx"
    result = run_movie("export", "--backend", "hexagon", "--preset", "movie", "--size", "nano", "--init", "random",
                       "--height", str(HEX_SIZE[0]), "--width", str(HEX_SIZE[1]), "--out", str(out), "--json",
                       timeout=600)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert json.loads(result.stdout) == manifest  # stdout is the manifest alone (QNN's load-time note kept off it)
    assert manifest["versions"]["onnxruntime_qnn"] and manifest["versions"]["target"]["htp_arch"] == "v75"
    assert manifest["versions"]["target"]["soc_model"] == "57"
    assert {"encoder", "unet", "unet_replay", "decoder", "text_encoder"} <= set(manifest["components"])

    pipe = nano()
    den = pipe.denoiser
    from movie_core.bench import synthetic_frames

    x = to_tensor(synthetic_frames(1, *HEX_SIZE), HEX_SIZE, HEX_SIZE, "cpu", torch.float32)
    latents = pipe.encoder.encode(x)
    text = den.encode_prompt([PROMPT])
    x_t = torch.randn_like(latents)
    # the export ships the 1-step sampler fused into the unet graphs: (initial_noise, image_latents, ...) -> latents
    unet_in = [x_t, latents, *den.graph_inputs(x_t, torch.tensor(999), latents, text, 1.5, 7.5)[1:]]
    fused = den.fused_step(1)
    unet_graph = backends.AnchoredNetwork(den, "record", fused)
    with backends.active(unet_graph), torch.no_grad():
        noise, *kv = unet_graph(*unet_in)
    replay_graph = backends.AnchoredNetwork(den, "replay", fused)
    with backends.active(replay_graph), torch.no_grad():
        replayed = replay_graph(*unet_in, *kv)
    checks = {
        "encoder": ([x], [latents]),
        "decoder": ([latents], [pipe.decoder.decode(latents)]),
        "unet": (unet_in, [noise, *kv]),
        "unet_replay": (unet_in + kv, [replayed]),
    }
    for name, (inputs, expected) in checks.items():
        c = manifest["components"][name]
        binaries = [f for f in c["files"] if f.endswith(".bin")]
        assert binaries, f"{name}: no QNN context binary in {c['files']}"
        context = out / name / f"{name}.onnx"
        assert "EPContext" in {n.op_type for n in onnx.load(str(context)).graph.node}, name
        assert [v["shape"] for v in c["inputs"].values()] == [list(t.shape) for t in inputs]
        session = qnn_session(context)
        feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
        outs = session.run(None, feeds)
        for got, want in zip(outs, expected):
            err = rel_err(torch.from_numpy(got), want)
            assert err <= 1e-2, f"{name}: relative error {err:.2e}"


@needs_qnn
def test_hexagon_unsupported_operator_is_an_error_naming_it():
    from movie_plugins.backends.hexagon import HexagonBackend

    class Det(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.det(x) + 1

    with pytest.raises(MovieError, match=r"does not support .*Det"):
        HexagonBackend().prepare(Det(), (torch.rand(2, 3, 3),), {"name": "det"})


@needs_qnn
@pytest.mark.parametrize("arch,soc", [("v73", "43"), ("v79", "69")])
def test_hexagon_targets(arch, soc, tmp_path):
    """v73 and v79 compile with their own soc_model; the target is part of the cache key."""
    from movie_plugins.backends.hexagon import HexagonBackend

    m = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.SiLU()).eval()
    x = torch.randn(1, 4, 8, 8)
    backend = HexagonBackend()
    assert backend.target({"htp_arch": arch})["soc_model"] == soc
    p = backends.prepare_component(backend, "conv", m, (x,), (("x",), ("y",)), {"htp_arch": arch},
                                   backends.ArtifactCache(tmp_path))
    assert p.info["toolchain"]["target"]["htp_arch"] == arch
    assert rel_err(p.fn(x), m(x)) <= 1e-2
    default = backends.prepare_component(backend, "conv", m, (x,), (("x",), ("y",)), {},
                                         backends.ArtifactCache(tmp_path))
    assert default.info["key"] != p.info["key"]
    with pytest.raises(UsageError, match="unknown Hexagon target 'v42'"):
        backend.target({"htp_arch": "v42"})


@needs_qnn
def test_compose_with_hexagon_backend(run_movie):
    result = run_movie("compose", "--vae", "taesd", "--denoiser", "mobile-pix2pix-1step", "--backend", "hexagon",
                       "--json")
    assert result.returncode == 0, result.stderr
    desc = json.loads(result.stdout)
    assert desc["backend"]["name"] == "hexagon" and desc["backend_available"]["ok"] is True
    assert "onnxruntime-qnn" in desc["backend_available"]["reason"]


# --- aihub (through the stand-in client) ----------------------------------------------------------


@pytest.fixture
def standin_hub(monkeypatch, tmp_path):
    """qai_hub replaced by tests/aihub_standin.py (a stand-in, not the real client) and a dummy API token."""
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        import aihub_standin
    finally:
        sys.path.pop(0)
    aihub_standin.reset()
    monkeypatch.setitem(sys.modules, "qai_hub", aihub_standin)
    ini = tmp_path / "client.ini"
    ini.write_text("[api]\napi_token = test-token\napi_url = https://example.invalid\n")
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(ini))
    return aihub_standin


def test_aihub_standin_matches_the_real_client_signatures(standin_hub):
    """When qai-hub is installed, the stand-in's functions take the same parameters as the real ones."""
    import importlib
    import inspect

    sys.modules.pop("qai_hub")
    try:
        real = importlib.import_module("qai_hub")
    except ImportError:
        pytest.skip("qai-hub is not installed (pip install '.[aihub]')")
    for name in ("upload_model", "get_devices", "get_model", "submit_compile_job", "submit_profile_job",
                 "submit_inference_job"):
        want = list(inspect.signature(getattr(real, name)).parameters)
        assert list(inspect.signature(getattr(standin_hub, name)).parameters) == want, name
    for cls, method in (("CompileJob", "get_target_model"), ("CompileJob", "download_target_model"),
                        ("ProfileJob", "download_profile"), ("InferenceJob", "download_output_data")):
        want = list(inspect.signature(getattr(getattr(real, cls), method)).parameters)
        assert list(inspect.signature(getattr(getattr(standin_hub, cls), method)).parameters) == want


@pytest.mark.slow  # end to end through the qai-hub stand-in (~25 s); the stand-in's signatures are checked fast
@needs_onnx
def test_aihub_export_compiles_profiles_and_runs_each_component(standin_hub, tmp_path):
    from movie_plugins.backends._export import export_recipe

    recipe = preset("movie").replace(size="nano", backend="aihub", anchor="none")
    manifest = export_recipe(recipe, None, tmp_path / "hub", height=SIZE[0], width=SIZE[1])
    assert set(manifest["components"]) == {"text_encoder", "encoder", "unet", "decoder"}
    for name in manifest["components"]:
        record = json.loads((tmp_path / "hub" / name / "aihub.json").read_text())
        assert record["device"] == "Samsung Galaxy S24 (Family)" and record["latency_ms"] == pytest.approx(1.234)
        assert (tmp_path / "hub" / name / f"{name}.bin").is_file()
        assert json.loads((tmp_path / "hub" / name / "profile.json").read_text())["execution_summary"]
    latency = json.loads((tmp_path / "hub" / "latency.json").read_text())
    assert latency["device"] == "Samsung Galaxy S24 (Family)"
    assert latency["ms_per_call"] == {name: pytest.approx(1.234) for name in manifest["components"]}
    order = [c for c, _ in standin_hub.calls if c.startswith(("upload", "submit"))]
    assert order[:3] == ["upload_model", "submit_compile_job", "submit_profile_job"]
    # 4 components, and the unet twice: the run's bare graph, then the shipped one with the 1-step update fused in
    assert order.count("submit_compile_job") == 5
    # every component ran on the device; the export's own check of the shipped unet adds encoder and unet runs
    inference = [kw.get("name") for c, kw in standin_hub.calls if c == "submit_inference_job"]
    assert {f"movie-{name}-inference" for name in manifest["components"]} == set(inference)
    compile_calls = [kw for c, kw in standin_hub.calls if c == "submit_compile_job"]
    assert all(kw["options"] == "--target_runtime qnn_context_binary" for kw in compile_calls)
    unet = next(kw for kw in compile_calls if kw["name"] == "movie-unet")
    assert unet["input_specs"]["sample"] == ((1, 8, 8, 8), "float32")
    shipped = [kw for kw in compile_calls if kw["name"] == "movie-unet"][-1]
    assert shipped["input_specs"]["initial_noise"] == ((1, 4, 8, 8), "float32")


def test_aihub_without_token_says_so(standin_hub, monkeypatch, tmp_path):
    from movie_plugins.backends.aihub import AIHubBackend

    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(tmp_path / "missing.ini"))
    ok, reason = AIHubBackend.available()
    assert not ok and "API token" in reason and "qai-hub configure" in reason
    with pytest.raises(MovieError, match="API token"):
        AIHubBackend().prepare(torch.nn.Identity(), (torch.zeros(1),), {})


def test_aihub_unknown_device(standin_hub):
    from movie_plugins.backends.aihub import AIHubBackend

    with pytest.raises(UsageError, match="no device named 'Nokia 3310'"):
        AIHubBackend().prepare(torch.nn.Identity(), (torch.zeros(1),), {"device": "Nokia 3310"})


# --- tensorrt ------------------------------------------------------------------------------------


def test_tensorrt_available_or_says_why():
    from movie_plugins.backends.tensorrt import TensorRTBackend

    ok, reason = TensorRTBackend.available()
    assert reason
    if not ok:
        assert "TensorRT" in reason
        pytest.skip(reason)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.SiLU()).eval().cuda().half()
    x = torch.randn(2, 3, 16, 16, device="cuda", dtype=torch.float16)
    fn = TensorRTBackend().prepare(m, (x,), {"input_names": ["x"], "output_names": ["y"]})
    assert rel_err(fn(x), m(x)) < 1e-2


# --- compile ----------------------------------------------------------------------------------------


@pytest.mark.slow  # torch.compile on CPU builds C++ kernels (~20 s)
def test_compile_backend_matches_eager():
    from movie_plugins.backends.compile import CompileBackend

    ok, reason = CompileBackend.available()
    if not ok:
        pytest.skip(reason)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GroupNorm(4, 8), torch.nn.SiLU()).eval()
    x = torch.randn(2, 3, 16, 16)
    fn = CompileBackend().prepare(m, (x,), {})
    with torch.no_grad():
        torch.testing.assert_close(fn(x), m(x), rtol=1e-4, atol=1e-4)


# --- the command line -------------------------------------------------------------------------------


def one_error_line(result) -> str:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("movie: error:"), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_export_unknown_backend(run_movie, tmp_path):
    line = one_error_line(run_movie("export", "--backend", "onnxx", "--size", "nano", "--init", "random",
                                    "--out", str(tmp_path / "x")))
    assert "unknown backend 'onnxx'" in line and "did you mean 'onnx'" in line
    assert not (tmp_path / "x").exists()


def test_export_unavailable_backend_is_one_line(run_movie, tmp_path):
    from movie_plugins.backends.tensorrt import TensorRTBackend

    ok, reason = TensorRTBackend.available()
    if ok:
        pytest.skip("TensorRT is available here")
    line = one_error_line(run_movie("export", "--backend", "tensorrt", "--preset", "movie", "--size", "nano",
                                    "--init", "random", "--out", str(tmp_path / "trt")))
    assert "backend 'tensorrt' is not available here" in line and reason in line
    assert not list(tmp_path.iterdir())


def test_export_refusals(run_movie, tmp_path):
    args = ("--preset", "movie", "--size", "nano", "--init", "random")
    line = one_error_line(run_movie("export", "--backend", "eager", *args, "--out", str(tmp_path / "e")))
    assert "writes no deployable artifacts" in line
    line = one_error_line(run_movie("export", "--backend", "hexagon", "-O", "htp_arch=v42", *args,
                                    "--out", str(tmp_path / "h")))
    assert "htp_arch" in line
    line = one_error_line(run_movie("export", "--backend", "onnx", "-O", "colour=blue", *args,
                                    "--out", str(tmp_path / "o")))
    assert "takes no options" in line or "unknown option 'colour'" in line
    (tmp_path / "taken").mkdir()
    line = one_error_line(run_movie("export", "--backend", "onnx", *args, "--out", str(tmp_path / "taken")))
    assert "exists" in line and "--overwrite" in line
    line = one_error_line(run_movie("export", "--backend", "onnx", "--size", "full", "--out", str(tmp_path / "n")))
    assert "no built-in full-size weights" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_edit_with_unavailable_backend_is_one_line(run_movie, tmp_path):
    from PIL import Image

    from movie_plugins.backends.tensorrt import TensorRTBackend

    if TensorRTBackend.available()[0]:
        pytest.skip("TensorRT is available here")
    src = tmp_path / "in.png"
    Image.fromarray(frames(1)[0]).save(src)
    line = one_error_line(run_movie("edit", str(src), "-p", "sepia", "-o", str(tmp_path / "out.png"),
                                    "--size", "nano", "--init", "random", "--backend", "tensorrt"))
    assert "backend 'tensorrt' is not available here" in line
    assert not (tmp_path / "out.png").exists()


# shares the onnx parity test's artifacts (cache hits); alone it exports every component (~80 s)
@pytest.mark.slow
@needs_onnx
def test_bench_compares_backends(tmp_path):
    """`movie bench --backend eager,onnx` times both in one run (same shapes as the parity test: cache hits)."""
    from click.testing import CliRunner

    from movie_core.cli import cli

    save = tmp_path / "bench.json"
    result = CliRunner().invoke(cli, ["bench", "--preset", "movie", "--size", "nano", "--init", "random",
                                      "--height", str(SIZE[0]), "--width", str(SIZE[1]), "--frames", "3",
                                      "--batch-size", "3", "--repeats", "1", "--backend", "eager,onnx",
                                      "--save", str(save)])
    assert result.exit_code == 0, result.output
    data = json.loads(save.read_text())
    assert list(data["backends"]) == ["eager", "onnx"]
    assert data["backends"]["onnx"]["recipe"]["backend"] == "onnx"
    assert data["backends"]["eager"]["speedup_vs_eager"] == 1.0
    assert "onnx" in result.output and "frames/s" in result.output

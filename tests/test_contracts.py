"""The component contracts: the core reaches components only through them, and the docs match the code.

The first tests build the nano `movie` recipe with its autoencoder and denoiser wrapped in proxies that expose
exactly the members of AutoencoderContract / DenoiserContract and raise on anything else; edit, bench, eval,
flops and export then run on them. A core change that reaches into a component (say `denoiser.unet`) fails
here. The last test checks docs/plugin_hooks.md's contract section against the Protocols' signatures.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from movie_core import components, plugins
from movie_core.hookspecs import hookimpl
from movie_core.recipe import preset
from movie_core.registry import ComponentSpec

DOCS = Path(__file__).resolve().parent.parent / "docs" / "plugin_hooks.md"
PROMPT = "make it sepia"


def contract_members(protocol: type) -> set[str]:
    """What a Protocol lists: its annotated attributes and its methods."""
    names = set(getattr(protocol, "__annotations__", {}))
    names |= {n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")}
    return names


class ContractOnly:
    """Forwards the contract's members to a real component; anything else is an error naming the member."""

    def __init__(self, target, protocol: type, touched: set[str]):
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_allowed", contract_members(protocol))
        object.__setattr__(self, "_protocol", protocol.__name__)
        object.__setattr__(self, "_touched", touched)

    def __getattr__(self, name: str):
        if name not in self._allowed:
            raise AssertionError(f"the core used '{name}', which {self._protocol} does not list")
        self._touched.add(name)
        return getattr(self._target, name)

    def __setattr__(self, name: str, value) -> None:
        raise AssertionError(f"the core set '{name}' on a component; the contracts have no setters")


TOUCHED: dict[str, set[str]] = {"autoencoder": set(), "denoiser": set()}


def _taesd(ctx, config):
    spec = plugins.get_registry().get("autoencoder", "taesd")
    return spec.load_factory()(ctx, config)


def contract_denoiser(ctx, config):
    spec = plugins.get_registry().get("denoiser", "mobile-pix2pix-1step")
    return ContractOnly(spec.load_factory()(ctx, config), components.DenoiserContract, TOUCHED["denoiser"])


class ContractPlugin:
    @hookimpl
    def movie_register_autoencoders(self, registry):
        registry.register(ComponentSpec(family="autoencoder", name="contract-taesd",
                                        summary="TAESD behind its contract",
                                        factory=f"{__name__}:_taesd_proxy", latent_space="sd1"))

    @hookimpl
    def movie_register_denoisers(self, registry):
        registry.register(ComponentSpec(family="denoiser", name="contract-1step",
                                        summary="1-step denoiser behind its contract",
                                        factory=f"{__name__}:contract_denoiser", extra={"latent_space": "sd1"}))


def _taesd_proxy(ctx, config):
    return ContractOnly(_taesd(ctx, config), components.AutoencoderContract, TOUCHED["autoencoder"])


@pytest.fixture
def contract_pipe(clean_plugins):
    """The nano movie recipe (random init) whose autoencoder and denoiser show only their contracts."""
    from movie_core.composer import compose
    from movie_core.loading import build

    pm = plugins.get_plugin_manager()
    pm.register(ContractPlugin(), name="contract-only")  # before the registry is first built (clean_plugins)

    def make(backend: str = "eager", **changes):
        recipe = preset("movie").replace(size="nano", vae="contract-taesd", denoiser="contract-1step",
                                         backend=backend, **changes)
        return build(compose(recipe))

    return make


def frames(n: int, h: int = 32, w: int = 48) -> list[np.ndarray]:
    from movie_core.bench import synthetic_frames

    return synthetic_frames(n, h, w)


def test_edit_bench_eval_flops_use_only_the_contracts(contract_pipe, tmp_path):
    from movie_core import evaluate as ev
    from movie_core import flops
    from movie_core.bench import bench_pipeline
    from movie_core.composer import compose
    from movie_core.edit import FrameEditor

    pipe = contract_pipe()
    editor = FrameEditor(pipe, PROMPT, size=(32, 48), padded=(32, 48))
    src = frames(3)
    editor.record_anchor(src[1])
    out = editor.edit(src, (32, 48))
    editor.close()
    assert len(out) == 3 and out[0].shape == (32, 48, 3)
    result = bench_pipeline(pipe, height=32, width=32, frames=2, batch_size=2, repeats=1)
    assert result["steps"] == 1  # the denoiser's own default: the preset leaves steps unset
    predictor = ev.PipelinePredictor(pipe)
    edited = predictor(src[:2], ["make it sepia", "invert the colours"])
    assert [e.shape for e in edited] == [(32, 48, 3)] * 2
    assert predictor.round_trip(src[:1])[0].shape == (32, 48, 3)
    count = flops.count(compose(pipe.recipe), height=64, width=64)
    assert count["tflops_paper"] > 0 and count["components"]["unet"]["calls"] == 1
    # the contracts are what was used, and no narrower: these members really were reached
    assert {"encode", "decode"} <= TOUCHED["autoencoder"]
    assert {"sample", "encode_prompt", "set_kv_hook", "networks", "graph_inputs"} <= TOUCHED["denoiser"]


# exports and runs every component through onnx (~80 s); test_edit_bench_eval_flops_use_only_the_contracts
# is the fast check of the same proxy
@pytest.mark.slow
def test_onnx_backend_uses_only_the_contracts(contract_pipe, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="the onnx backend needs onnxruntime (the test extra installs it)")
    from movie_core.edit import FrameEditor

    monkeypatch.setenv("MOVIE_CACHE_DIR", str(tmp_path / "cache"))
    pipe = contract_pipe("onnx")
    editor = FrameEditor(pipe, PROMPT, size=(32, 32), padded=(32, 32))
    src = frames(2, 32, 32)
    editor.record_anchor(src[0])
    editor.edit(src, (32, 32))
    editor.close()
    info = pipe.backend_info()
    assert info["routed"] and set(info["prepared"]) == {"text_encoder", "encoder", "unet", "unet_replay", "decoder"}
    assert "CPUExecutionProvider" in {p for ps in info["providers"].values() for p in ps}


def test_proxy_catches_a_reach_into_internals(contract_pipe):
    """The guard itself: a member outside the contract raises, naming it."""
    pipe = contract_pipe()
    with pytest.raises(AssertionError, match="'unet'"):
        pipe.denoiser.unet  # noqa: B018


# --- the documented signatures -------------------------------------------------------------------------


def documented_signatures() -> dict[str, dict[str, str]]:
    """docs/plugin_hooks.md's contract blocks: {Protocol: {member: signature or annotation}}."""
    text = DOCS.read_text()
    out: dict[str, dict[str, str]] = {}
    for protocol, body in re.findall(r"```python\nclass (\w+Contract)\(Protocol\):\n(.*?)```", text, re.S):
        members: dict[str, str] = {}
        for line in body.splitlines():
            line = line.strip()
            if m := re.match(r"def (\w+)(\(.*\)) -> (.*?):?\s*(\.\.\.)?$", line):
                members[m.group(1)] = f"{m.group(2)} -> {m.group(3)}"
            elif m := re.match(r"(\w+): (.+)$", line):
                members[m.group(1)] = m.group(2)
        out[protocol] = members
    return out


def code_signatures(protocol: type) -> dict[str, str]:
    members: dict[str, str] = dict(getattr(protocol, "__annotations__", {}))
    for name, value in vars(protocol).items():
        if callable(value) and not name.startswith("_") or isinstance(value, staticmethod):
            fn = value.__func__ if isinstance(value, staticmethod) else value
            sig = inspect.signature(fn)
            members[name] = f"{str(sig).split(' -> ')[0]} -> {sig.return_annotation}"
    return {k: str(v).replace("'", "") for k, v in members.items()}


@pytest.mark.parametrize("family", sorted(components.CONTRACTS))
def test_docs_list_every_contract_member_with_its_signature(family):
    protocol = components.CONTRACTS[family]
    documented = documented_signatures().get(protocol.__name__)
    assert documented is not None, f"docs/plugin_hooks.md has no ```python class {protocol.__name__}(Protocol): block"
    assert documented == code_signatures(protocol)


def test_denoiser_base_class_satisfies_its_protocol():
    """The built-ins' base class has every member the Protocol lists (so subclasses only fill them in)."""
    missing = contract_members(components.DenoiserContract) - set(dir(components.Denoiser))
    assert not missing - {"guidance", "prediction_type", "default_steps", "stage"}, missing
    assert not contract_members(components.AutoencoderContract) - set(dir(components.Autoencoder))
    den = torch.nn.Module()
    assert not isinstance(den, components.DenoiserContract)  # runtime_checkable: a bare module is not one

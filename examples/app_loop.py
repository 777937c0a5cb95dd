"""Edit frames with the files `movie export --backend onnx` wrote: numpy, PIL, onnxruntime and tokenizers only.

    python examples/app_loop.py EXPORT_DIR "make it sepia" frame1.png [frame2.png ...] --out OUT_DIR

Every constant comes from EXPORT_DIR (manifest.json, tokenizer.json, *.npy); with an anchor in the manifest the
anchor frame (manifest "anchor.index") is run first and its keys/values replayed for every frame.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image
from tokenizers import Tokenizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("export")
    ap.add_argument("prompt")
    ap.add_argument("frames", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--provider-options", default="", help="JSON: {provider: options} for the sessions")
    a = ap.parse_args()
    root = Path(a.export)
    m = json.loads((root / "manifest.json").read_text())
    host, frame = m["host"], m["frame"]
    assert host["sampler"]["fused_in_unet"], "this loop runs exports whose unet holds the sampler (1 step)"
    providers = json.loads(a.provider_options) if a.provider_options else {"CPUExecutionProvider": {}}

    def session(name: str) -> ort.InferenceSession:
        files = m["components"][name]["files"]
        model = next(f for f in files if f.endswith(".onnx"))
        return ort.InferenceSession(str(root / name / model), providers=list(providers.items()))

    def run(name: str, **feeds: np.ndarray) -> list[np.ndarray]:
        return sessions[name].run(None, feeds)

    sessions = {n: session(n) for n in m["components"]}
    const = {n: np.load(root / t["file"]) for n, t in host["tensors"].items()}
    ids = Tokenizer.from_file(str(root / host["tokenizer"]["file"])).encode(a.prompt).ids
    text_emb = run("text_encoder", input_ids=np.array([ids], dtype=np.int64))[0]

    h, w = frame["height"], frame["width"]
    ph, pw = frame["padded"]
    sources = [np.asarray(Image.open(p).convert("RGB")) for p in a.frames]

    def to_input(img: np.ndarray) -> np.ndarray:  # uint8 HxWx3 -> 1x3xPHxPW in [-1, 1]
        if img.shape[:2] != (h, w):
            img = np.asarray(Image.fromarray(img).resize((w, h), Image.BICUBIC))
        x = img.astype(np.float32) / 127.5 - 1.0
        x = np.pad(x, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")
        return x.transpose(2, 0, 1)[None]

    def unet(name: str, image: np.ndarray, kv: list[np.ndarray]) -> list[np.ndarray]:
        lat = run("encoder", images=image)[0]
        feeds = {
            "initial_noise": const["initial_noise"],
            "image_latents": lat,
            "time_features": const["time_features"][:1],
            "text_emb": text_emb,
            "guidance_features": const["guidance_features"],
        }
        names = [i.name for i in sessions[name].get_inputs()]
        feeds.update(zip([n for n in names if n.startswith("anchor_")], kv))
        return run(name, **{n: feeds[n] for n in names})

    kv: list[np.ndarray] = []
    if "unet_replay" in sessions:  # record the anchor frame's self-attention keys/values
        policy = m["anchor"]["policy"]  # middle: frame_count // 2, first: 0, or a frame index
        index = len(sources) // 2 if policy == "middle" else 0 if policy == "first" else int(policy)
        kv = unet("unet", to_input(sources[index]), [])[1:]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, src in enumerate(sources):
        edited = unet("unet_replay" if kv else "unet", to_input(src), kv)[0]
        y = run("decoder", latents=edited)[0][0, :, :h, :w].transpose(1, 2, 0)
        y = np.round((np.clip(y, -1, 1) + 1) * 127.5).astype(np.uint8)
        if y.shape[:2] != src.shape[:2]:
            y = np.asarray(Image.fromarray(y).resize((src.shape[1], src.shape[0]), Image.BICUBIC))
        Image.fromarray(y).save(out / f"frame_{i + 1:06d}.png")


if __name__ == "__main__":
    main()

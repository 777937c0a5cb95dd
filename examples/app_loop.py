"""Edit frames with what `movie export --backend onnx` (or `hexagon`) wrote, using numpy, PIL and onnxruntime only.

    python examples/app_loop.py EXPORT_DIR "make it sepia" frame1.png [frame2.png ...] --out OUT_DIR

Constants come from EXPORT_DIR (manifest.json, tokenizer.json, *.npy); the execution provider and its options
from the manifest's "runtime" (--runtime '{"options": {"htp_arch": "79"}}' overrides keys).
"""

import argparse
import json
import re
import unicodedata
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image


class ClipTokenizer:
    """A Hugging Face tokenizer.json of CLIP's BPE, read with the standard library: the ids `tokenizers` gives."""

    def __init__(self, path: Path, info: dict):  # info: the manifest's bos_id, eos_id, pad_id, max_length
        t, self.info = json.loads(path.read_text(encoding="utf-8")), info
        self.vocab, self.suffix = t["model"]["vocab"], t["model"]["end_of_word_suffix"]
        self.ranks = {tuple(m.split(" ") if isinstance(m, str) else m): i for i, m in enumerate(t["model"]["merges"])}
        self.special = {a["content"]: a["id"] for a in t["added_tokens"] if a["special"]}
        keep = [*range(33, 127), *range(161, 173), *range(174, 256)]  # GPT-2's bytes-to-characters table
        self.byte = [chr(b) if b in keep else chr(256 + sum(c not in keep for c in range(b))) for b in range(256)]

    def words(self, text: str):  # 's 't 're 've 'm 'll 'd, a letter run, one number, a run of other non-spaces
        kind = [" " if c.isspace() else unicodedata.category(c)[0] if unicodedata.category(c)[0] in "LN" else "o"
                for c in text]
        i = 0
        while i < len(text):
            j = i + (len(m.group()) if (m := re.match(r"'(s|t|re|ve|m|ll|d)", text[i:])) else 1)
            while not m and kind[i] in "Lo" and j < len(text) and kind[j] == kind[i]:
                j += 1
            if m or kind[i] != " ":
                yield text[i:j]
            i = j

    def bpe(self, word: str) -> list[int]:  # UTF-8 bytes as characters, the last ending in </w>, merged by rank
        parts = [self.byte[b] for b in word.encode("utf-8")]
        parts[-1] += self.suffix
        while len(parts) > 1:
            rank, i = min((self.ranks.get(p, len(self.ranks)), i) for i, p in enumerate(zip(parts, parts[1:])))
            if rank == len(self.ranks):
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        return [self.vocab[p] for p in parts]

    def __call__(self, prompt: str) -> list[int]:  # bos, ids (truncated), eos, padded to max_length
        ids: list[int] = []
        for piece in re.split("(" + "|".join(map(re.escape, self.special)) + ")", prompt):
            text = re.sub(r"\s+", " ", unicodedata.normalize("NFC", piece)).lower()
            ids += [self.special[piece]] if piece in self.special else sum(map(self.bpe, self.words(text)), [])
        n = self.info["max_length"]
        ids = [self.info["bos_id"], *ids[:n - 2], self.info["eos_id"]]
        return ids + [self.info["pad_id"]] * (n - len(ids))


def box(x: np.ndarray, r: int) -> np.ndarray:  # mean over each pixel's (2r+1)^2 window (H x W x ...), clipped
    for axis in (0, 1):
        n = x.shape[axis]
        c = np.concatenate([np.zeros_like(x.take([0], axis)), x.cumsum(axis)], axis)
        lo, hi = np.maximum(np.arange(n) - r, 0), np.minimum(np.arange(n) + r, n - 1) + 1
        x = (c.take(hi, axis) - c.take(lo, axis)) / (hi - lo).reshape((-1,) + (1,) * (x.ndim - 1 - axis))
    return x


def bilinear(x: np.ndarray, h: int, w: int) -> np.ndarray:  # H x W x ... resized, half-pixel centres, no antialias
    for axis, n in ((0, h), (1, w)):
        src = np.maximum((np.arange(n) + 0.5) * x.shape[axis] / n - 0.5, 0)
        i0 = src.astype(int)
        i1, f = np.minimum(i0 + 1, x.shape[axis] - 1), (src - i0).reshape((-1,) + (1,) * (x.ndim - 1 - axis))
        x = x.take(i0, axis) * (1 - f) + x.take(i1, axis) * f
    return x


def colour_map(rule: dict, guide: np.ndarray, out: np.ndarray, full: np.ndarray) -> np.ndarray:
    """The manifest's detail rule: the ridge affine colour map guide -> out (H x W x 3, [0, 1]) applied to full."""
    g, o = guide.astype(np.float64), out.astype(np.float64)
    if rule["mode"] == "global":
        g, o = g.reshape(1, 1, -1, 3), o.reshape(1, 1, -1, 3)
        mean = lambda t: t.mean(2)  # noqa: E731
    else:
        mean = lambda t: box(t, rule["radius"])  # noqa: E731
    mg, mo = mean(g), mean(o)
    var = mean(g[..., :, None] * g[..., None, :]) - mg[..., :, None] * mg[..., None, :] + rule["eps"] * np.eye(3)
    cov = mean(o[..., :, None] * g[..., None, :]) - mo[..., :, None] * mg[..., None, :]
    a = np.linalg.solve(var, cov.swapaxes(-1, -2)).swapaxes(-1, -2)  # A var = cov
    b = mo - (a @ mg[..., None])[..., 0]
    if rule["mode"] == "local":
        a, b = (bilinear(box(t, rule["radius"]), *full.shape[:2]) for t in (a, b))
    return (a @ full[..., None])[..., 0] + b


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("export")
    ap.add_argument("prompt")
    ap.add_argument("frames", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--runtime", help="JSON over the manifest's runtime")
    ap.add_argument("--lib-dir", help="the provider's libraries (default: its Python package's folder)")
    a = ap.parse_args()
    root = Path(a.export)
    m = json.loads((root / "manifest.json").read_text())
    host, frame, rt = m["host"], m["frame"], m["runtime"]
    rt |= {k: rt.get(k, {}) | v if isinstance(v, dict) else v for k, v in json.loads(a.runtime or "{}").items()}
    assert host["sampler"]["fused_in_unet"], "this loop runs exports whose unet holds the sampler (1 step)"
    so, providers = ort.SessionOptions(), [(rt["provider"], rt["options"])]
    for key, value in rt["session_config"].items():
        so.add_session_config_entry(key, value)
    if rt["library"]:  # a plugin execution provider (QNN): register its library; some options name its files
        lib = Path(a.lib_dir or __import__(rt["library_package"]).__path__[0])
        ort.register_execution_provider_library(rt["provider"], str(lib / rt["library"]))
        so.add_provider_for_devices([d for d in ort.get_ep_devices() if d.ep_name == rt["provider"]],
                                    rt["options"] | {k: str(lib / v) for k, v in rt["library_options"].items()})
        providers = None
    sessions = {n: ort.InferenceSession(str(root / n / rt["model"].format(component=n)), sess_options=so,
                                        providers=providers) for n in m["components"]}
    const = {n: np.load(root / t["file"]) for n, t in host["tensors"].items()}
    ids = ClipTokenizer(root / host["tokenizer"]["file"], host["tokenizer"])(a.prompt)
    text_emb = sessions["text_encoder"].run(None, {"input_ids": np.array([ids], dtype=np.int64)})[0]
    h, w, (ph, pw) = frame["height"], frame["width"], frame["padded"]
    sources = [np.asarray(Image.open(p).convert("RGB")) for p in a.frames]
    detail = m.get("detail", {"mode": "none"})  # exports before the field resized back

    def model_input(img: np.ndarray) -> np.ndarray:  # bicubic to the exported size, x / 127.5 - 1 (H x W x 3)
        if img.shape[:2] != (h, w):
            img = np.asarray(Image.fromarray(img).resize((w, h), Image.BICUBIC))
        return img.astype(np.float32) / 127.5 - 1.0

    def unet(name: str, x: np.ndarray, kv: list[np.ndarray]) -> list[np.ndarray]:  # x: model_input's (padded here)
        x = np.pad(x, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")
        feeds = {"initial_noise": const["initial_noise"], "text_emb": text_emb,
                 "image_latents": sessions["encoder"].run(None, {"images": x.transpose(2, 0, 1)[None]})[0],
                 "time_features": const["time_features"][:1], "guidance_features": const["guidance_features"]}
        names = [i.name for i in sessions[name].get_inputs()]
        feeds.update(zip([n for n in names if n.startswith("anchor_")], kv))
        return sessions[name].run(None, {n: feeds[n] for n in names})

    policy, pick, kv = m["anchor"]["policy"], {"middle": len(sources) // 2, "first": 0}, []
    if "unet_replay" in sessions:  # the anchor frame's self-attention keys/values, replayed for every frame
        kv = unet("unet", model_input(sources[pick[policy] if policy in pick else int(policy)]), [])[1:]
    Path(a.out).mkdir(parents=True, exist_ok=True)
    for i, src in enumerate(sources):
        x = model_input(src)
        y = sessions["decoder"].run(None, {"latents": unet("unet_replay" if kv else "unet", x, kv)[0]})[0]
        y = y[0, :, :h, :w].transpose(1, 2, 0)
        if detail["mode"] != "none":  # the model's colour map on the source's own pixels (the manifest's rule)
            y = colour_map(detail, (x + 1) / 2, (y + 1) / 2, src / 255.0) * 2 - 1
        y = np.round((np.clip(y, -1, 1) + 1) * 127.5).astype(np.uint8)
        if y.shape[:2] != src.shape[:2]:  # back to the source's size
            y = np.asarray(Image.fromarray(y).resize((src.shape[1], src.shape[0]), Image.BICUBIC))
        Image.fromarray(y).save(Path(a.out) / f"frame_{i + 1:06d}.png")


if __name__ == "__main__":
    main()

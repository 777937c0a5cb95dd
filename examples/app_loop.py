"""Edit frames with the files `movie export --backend onnx` (or `hexagon`) wrote: numpy, PIL and onnxruntime only.

    python examples/app_loop.py EXPORT_DIR "make it sepia" frame1.png [frame2.png ...] --out OUT_DIR

Every constant comes from EXPORT_DIR (manifest.json, tokenizer.json, *.npy), the execution provider and its
options from the manifest's "runtime" (--runtime '{"options": {...}}' overrides keys); with an anchor in the
manifest the anchor frame is run first and its keys/values replayed for every frame.
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
    """A Hugging Face tokenizer.json of CLIP's BPE read with the standard library: the ids `tokenizers` gives."""

    def __init__(self, path: Path, info: dict):
        t = json.loads(path.read_text(encoding="utf-8"))
        self.vocab, merges, self.suffix = t["model"]["vocab"], t["model"]["merges"], t["model"]["end_of_word_suffix"]
        self.ranks = {tuple(m.split(" ") if isinstance(m, str) else m): i for i, m in enumerate(merges)}
        self.special = {a["content"]: a["id"] for a in t["added_tokens"] if a["special"]}
        self.info = info  # bos_id, eos_id, pad_id, max_length
        keep = [*range(33, 127), *range(161, 173), *range(174, 256)]  # bytes shown as themselves, the rest moved
        self.byte = [chr(b) if b in keep else chr(256 + sum(c not in keep for c in range(b))) for b in range(256)]

    def words(self, text: str):  # 's 't 're 've 'm 'll 'd | a letter run | one number | a run of other non-spaces
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

    def bpe(self, word: str) -> list[int]:  # byte-level symbols, the last one ending in </w>, merged by rank
        parts = [self.byte[b] for b in word.encode("utf-8")]
        parts[-1] += self.suffix
        while len(parts) > 1:
            rank, i = min((self.ranks.get(p, len(self.ranks)), i) for i, p in enumerate(zip(parts, parts[1:])))
            if rank == len(self.ranks):
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        return [self.vocab[p] for p in parts]

    def __call__(self, prompt: str) -> list[int]:
        ids: list[int] = []
        for piece in re.split("(" + "|".join(map(re.escape, self.special)) + ")", prompt):
            text = re.sub(r"\s+", " ", unicodedata.normalize("NFC", piece)).lower()
            ids += [self.special[piece]] if piece in self.special else sum(map(self.bpe, self.words(text)), [])
        n = self.info["max_length"]
        ids = [self.info["bos_id"], *ids[:n - 2], self.info["eos_id"]]
        return ids + [self.info["pad_id"]] * (n - len(ids))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("export")
    ap.add_argument("prompt")
    ap.add_argument("frames", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--runtime", default="{}", help="JSON over the manifest's runtime (provider, options, ...)")
    ap.add_argument("--lib-dir", help="where the provider's libraries are (default: its Python package's folder)")
    a = ap.parse_args()
    root = Path(a.export)
    m = json.loads((root / "manifest.json").read_text())
    host, frame, rt = m["host"], m["frame"], m["runtime"]
    rt = rt | {k: rt.get(k, {}) | v if isinstance(v, dict) else v for k, v in json.loads(a.runtime).items()}
    assert host["sampler"]["fused_in_unet"], "this loop runs exports whose unet holds the sampler (1 step)"
    so, providers = ort.SessionOptions(), [(rt["provider"], rt["options"])]
    for key, value in rt["session_config"].items():
        so.add_session_config_entry(key, value)
    if rt.get("library"):  # a plugin execution provider (QNN): register its library, options naming its files
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

    def unet(name: str, img: np.ndarray, kv: list[np.ndarray]) -> list[np.ndarray]:
        if img.shape[:2] != (h, w):  # bicubic to the exported size, x / 127.5 - 1, edge-padded, NCHW
            img = np.asarray(Image.fromarray(img).resize((w, h), Image.BICUBIC))
        x = np.pad(img.astype(np.float32) / 127.5 - 1.0, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")
        lat = sessions["encoder"].run(None, {"images": x.transpose(2, 0, 1)[None]})[0]
        feeds = {"initial_noise": const["initial_noise"], "image_latents": lat, "text_emb": text_emb,
                 "time_features": const["time_features"][:1], "guidance_features": const["guidance_features"]}
        names = [i.name for i in sessions[name].get_inputs()]
        feeds.update(zip([n for n in names if n.startswith("anchor_")], kv))
        return sessions[name].run(None, {n: feeds[n] for n in names})

    kv: list[np.ndarray] = []
    if "unet_replay" in sessions:  # record the anchor frame's self-attention keys/values
        policy = m["anchor"]["policy"]  # middle: frame_count // 2, first: 0, or a frame index
        kv = unet("unet", sources[len(sources) // 2 if policy == "middle" else 0 if policy == "first"
                                 else int(policy)], [])[1:]
    Path(a.out).mkdir(parents=True, exist_ok=True)
    for i, src in enumerate(sources):
        edited = unet("unet_replay" if kv else "unet", src, kv)[0]
        y = sessions["decoder"].run(None, {"latents": edited})[0][0, :, :h, :w].transpose(1, 2, 0)
        y = np.round((np.clip(y, -1, 1) + 1) * 127.5).astype(np.uint8)
        if y.shape[:2] != src.shape[:2]:
            y = np.asarray(Image.fromarray(y).resize((src.shape[1], src.shape[0]), Image.BICUBIC))
        Image.fromarray(y).save(Path(a.out) / f"frame_{i + 1:06d}.png")


if __name__ == "__main__":
    main()

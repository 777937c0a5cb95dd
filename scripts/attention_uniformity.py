"""How uniform is a text-to-image denoiser's self-attention? (Why the anchor moves nano edits so little.)

Anchor cross-frame attention gives every frame the anchor's self-attention keys and values. If a layer's attention
weights are near uniform, its output is close to the mean of the values over the frame, whichever frame supplies
them, and the anchor changes little. This script runs one UNet pass (a random latent at --size/8, timestep --t, a
caption prompt) and reports, per self-attention layer: the tokens, the mean entropy of the attention rows over
log(tokens) (1 = uniform), and the mean largest weight times the tokens (1 = uniform). `stable-diffusion`'s `attn1`
layers and the MobileDiffusion UNet's self-attention (its shared key/value projection) alike. Prints and saves JSON.

    python scripts/attention_uniformity.py --out docs/results/attention_uniformity.json
    python scripts/attention_uniformity.py --model T2I   # a trained text-to-image model folder
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path

import torch


def rows_of(probs: torch.Tensor) -> tuple[float, float]:
    """Normalized entropy and peak of softmax rows (..., tokens); one token counts as uniform (its output is the
    frame's mean value, as a uniform row's is)."""
    n = probs.shape[-1]
    if n == 1:
        return 1.0, 1.0
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean().item() / math.log(n)
    return entropy, probs.max(-1).values.mean().item() * n


def measure(den, prompt: str, size: int, t: int, seed: int) -> list[dict]:
    from movie_plugins.denoisers import _mobile_diffusion as md

    found: list[dict] = []

    def record(name: str, q: torch.Tensor, k: torch.Tensor, heads: int) -> None:
        b, n, d = q.shape
        q, k = (x.reshape(b, -1, heads, d // heads).transpose(1, 2) for x in (q, k))
        probs = (q @ k.transpose(-1, -2) * (d // heads) ** -0.5).softmax(-1)
        entropy, peak = rows_of(probs)
        found.append({"layer": name, "tokens": n, "entropy": round(entropy, 4), "peak": round(peak, 3)})

    hooks = []
    for name, module in den.unet.named_modules():
        # MobileDiffusion: a TransformerLayer's `sa`; SD-UNet: a BasicTransformerBlock's `attn1`
        if (isinstance(module, md.Attention) and name.endswith(".sa")) or (
                name.endswith("attn1") and hasattr(module, "to_q")):
            hooks.append(module.register_forward_hook(
                lambda m, args, out, name=name: record(name, m.to_q(args[0]), m.to_k(args[0]), m.heads)))
    if not hooks:
        sys.exit(f"{den.name}: no self-attention layers found")
    torch.manual_seed(seed)
    latent = torch.randn(1, den.unet.config.in_channels, size // 8, size // 8)
    text = den.encode_prompt([prompt])[-1:]
    with torch.no_grad():
        den.unet(latent, torch.tensor([t]), text)  # both UNets: (sample, timestep, text embeddings)
    for h in hooks:
        h.remove()
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--denoisers", default="stable-diffusion,mobile-diffusion",
                    help="random nano weights of these (ignored with --model)")
    ap.add_argument("--model", type=Path, action="append", default=[],
                    help="a trained text-to-image model folder (repeatable)")
    ap.add_argument("--prompt", default="a picture of a yellow square on the right, the background is green")
    ap.add_argument("--size", type=int, default=128, help="image size in pixels (the latent is size/8)")
    ap.add_argument("--t", type=int, default=500, help="the timestep of the pass")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from movie_core.components import BuildContext
    from movie_plugins.denoisers import _t2i

    runs = []
    if args.model:
        for folder in args.model:
            name = json.loads((folder / "movie.json").read_text())["recipe"]["denoiser"]
            runs.append((f"{name} ({folder})", _t2i.build(name, BuildContext(size="nano", weights=folder), None)))
    else:
        for name in args.denoisers.split(","):
            runs.append((f"{name} (random nano, seed {args.seed})",
                         _t2i.build(name, BuildContext(size="nano", seed=args.seed), None)))
    result = {"what": __doc__.strip().splitlines()[0], "command": "python " + shlex.join(sys.argv),
              "prompt": args.prompt, "size": args.size, "t": args.t, "models": []}
    for label, den in runs:
        layers = measure(den, args.prompt, args.size, args.t, args.seed)
        mean = sum(x["entropy"] for x in layers) / len(layers)
        result["models"].append({"model": label, "mean_entropy": round(mean, 4), "layers": layers})
        print(f"{label}: {len(layers)} self-attention layers, entropy / log(tokens) mean {mean:.3f} "
              f"(min {min(x['entropy'] for x in layers):.3f}), peak x tokens "
              f"{min(x['peak'] for x in layers):.2f}-{max(x['peak'] for x in layers):.2f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

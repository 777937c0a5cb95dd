"""MobileDiffusion's Table 1 (parameters and GFLOPs of SD-XL, SD-1.5, MobileDiffusion) with `movie flops`.

Everything is built on the meta device (no weights, a few seconds each). The SD-1.5 and MobileDiffusion rows are
`movie flops --convention mobilediffusion` on recipes with the `stable-diffusion` and `mobile-diffusion` denoisers
(the UNet's count per pass); SD-XL has no denoiser here, so its UNet is diffusers' UNet2DConditionModel with
SD-XL base 1.0's published config typed in, counted by the same convention code. Each row also gets MoViE's
`paper` convention (2 FLOPs per multiply-add, no attention matmuls) for comparison, and SD-XL two diagnostics
(at 1024^2, without its mid block, with a depth-1 mid block) that bear on its gap; and MoViE's 1-step recipe at
480x480 beside the same stage on the MobileDiffusion UNet (MoViE's Table 1 ladder row). Prints a table and writes
docs/results/mobilediffusion_table1.json.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from movie_core import flops
from movie_core.composer import compose
from movie_core.flops_conventions import measure, parameters
from movie_core.recipe import preset

OUT = Path(__file__).resolve().parent.parent / "docs" / "results" / "mobilediffusion_table1.json"
PAPER = {"SD-XL": (2600, 710), "SD-1.5": (862, 392), "MobileDiffusion": (386, 182), "MobileDiffusion-Lite": None}

# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json, the fields that differ from diffusers' defaults
SDXL = dict(
    in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280), layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, sample_size=128,
)

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", type=Path, default=OUT)
parser.add_argument("--size", type=int, default=512, help="image side in pixels (the paper's: 512)")
args = parser.parse_args()


def recipe_row(denoiser: str) -> dict:
    recipe = preset("movie").replace(denoiser=denoiser, size="full", steps=1, encoder="taesd", decoder="taesd")
    r = flops.count(compose(recipe), height=args.size, width=args.size, convention="mobilediffusion")
    unet = r["components"]["unet"]
    return {"params_M": unet["params"] / 1e6, "gflops": unet["gflops_mobilediffusion_per_call"],
            "gflops_movie_paper_convention": unet["tflops_paper"] / unet["calls"] * 1e3,
            "text_encoder_params_M": r["components"]["text_encoder"]["params"] / 1e6,
            "how": f"movie flops --denoiser {denoiser} --size full --vae taesd --steps 1 --height {args.size} "
                   f"--width {args.size} --convention mobilediffusion --json (unet: gflops_mobilediffusion_per_call)"}


def sdxl_row(side: int, mid: str = "as published") -> dict:
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL)
        if mid == "removed":
            unet.mid_block = None
        elif mid == "depth 1":  # one transformer layer in the mid block, as SD-1.5's, instead of SD-XL's 10
            from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2DCrossAttn

            unet.mid_block = UNetMidBlock2DCrossAttn(in_channels=1280, temb_channels=1280, resnet_groups=32,
                                                     transformer_layers_per_block=1, num_attention_heads=20,
                                                     cross_attention_dim=2048, use_linear_projection=True)
        latent = side // 8
        x, t, c = torch.empty(1, 4, latent, latent), torch.tensor([999]), torch.empty(1, 77, 2048)
        added = {"text_embeds": torch.empty(1, 1280), "time_ids": torch.empty(1, 6)}
        with torch.no_grad():
            parts = measure(lambda: unet(x, t, encoder_hidden_states=c, added_cond_kwargs=added))
    return {"params_M": parameters(unet) / 1e6, "gflops": (parts["layers"] + parts["attention"]) / 1e9,
            "gflops_movie_paper_convention": 2 * parts["layers"] / 1e9,
            "how": f"diffusers UNet2DConditionModel(SD-XL config) at {side}^2, mid block {mid}, "
                   "movie_core.flops_conventions.measure"}


def sd15_without_mid() -> dict:
    from movie_plugins.denoisers._t2i import sd_unet_config

    with torch.device("meta"):
        unet = UNet2DConditionModel(**sd_unet_config("full"))
        unet.mid_block = None
        x, t, c = torch.empty(1, 4, args.size // 8, args.size // 8), torch.tensor([999]), torch.empty(1, 77, 768)
        with torch.no_grad():
            parts = measure(lambda: unet(x, t, encoder_hidden_states=c))
    return {"params_M": parameters(unet) / 1e6, "gflops": (parts["layers"] + parts["attention"]) / 1e9,
            "how": "diffusers UNet2DConditionModel(SD-1.5 config), mid block removed"}


rows = {
    "SD-XL": sdxl_row(args.size),
    "SD-1.5": recipe_row("stable-diffusion"),
    "MobileDiffusion": recipe_row("mobile-diffusion"),
    "MobileDiffusion-Lite": recipe_row("mobile-diffusion-lite"),
}
diagnostics = {"SD-XL at 1024^2": sdxl_row(1024), "SD-XL without its mid block": sdxl_row(args.size, "removed"),
               "SD-XL with a depth-1 mid block": sdxl_row(args.size, "depth 1"),
               "SD-1.5 without its mid block": sd15_without_mid()}
for name, row in rows.items():
    if PAPER[name]:
        p, g = PAPER[name]
        row |= {"paper_params_M": p, "paper_gflops": g, "params_gap": row["params_M"] / p - 1,
                "gflops_gap": row["gflops"] / g - 1}
print(f"Table 1 in the 'mobilediffusion' convention (MACs incl. attention matmuls, {args.size}x{args.size}):")
print(f"{'model':22} {'params M':>9} {'paper':>6} {'GFLOPs':>8} {'paper':>6} {'gap':>7}  MoViE-paper GFLOPs")
for name, row in rows.items():
    paper = (f"{row['paper_params_M']:6.0f} {row['gflops']:8.1f} {row['paper_gflops']:6.0f} "
             f"{100 * row['gflops_gap']:+6.1f}%") if "paper_gflops" in row else (
        f"{'-':>6} {row['gflops']:8.1f} {'-':>6} {'':7}")
    print(f"{name:22} {row['params_M']:9.1f} {paper}  {row['gflops_movie_paper_convention']:.1f}")
for name, row in diagnostics.items():
    paper = PAPER["SD-XL" if name.startswith("SD-XL") else "SD-1.5"]
    print(f"  ({name}: {row['gflops']:.1f} GFLOPs ({100 * (row['gflops'] / paper[1] - 1):+.1f}%), "
          f"{row['params_M']:.1f}M params)")
# MoViE's Table 1 setting (480x480, MoViE's paper convention): its 1-step recipe, and the same stage on the MD UNet
ladder = {}
for label, recipe in (("movie (paper 0.76)", preset("movie").replace(size="full")),
                      ("movie on the MobileDiffusion UNet", preset("movie").replace(
                          size="full", denoiser="mobile-diffusion-pix2pix-1step", encoder="taesd", decoder="taesd"))):
    r = flops.count(compose(recipe), height=480, width=480)
    ladder[label] = {"tflops_per_frame_paper": r["tflops_paper"], "recipe": r["recipe"],
                     "unet_params_M": r["components"]["unet"]["params"] / 1e6}
    print(f"{label:36} {r['tflops_paper']:.3f} TFLOPs per frame at 480x480 (MoViE paper convention)")
result = {"convention": "mobilediffusion", "side": args.size, "rows": rows, "diagnostics": diagnostics,
          "movie_table1_ladder_480": ladder,
          "command": " ".join(["python", "examples/mobilediffusion_table1.py", *sys.argv[1:]])}
args.out.parent.mkdir(parents=True, exist_ok=True)
args.out.write_text(json.dumps(result, indent=2) + "\n")
print(f"wrote {args.out}")

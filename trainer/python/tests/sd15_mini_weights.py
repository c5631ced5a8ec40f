"""Writes random weights for the sd15-mini preset in the real sd15 file formats, for the CPU proof of the sd15 path.

    python3 tests/sd15_mini_weights.py OUTDIR

OUTDIR gets what configs/train/sd15.yaml expects under $VLMDIFF_WEIGHTS, at sd15-mini's shapes:
    v1-5-pruned.ckpt                 {'state_dict': model.diffusion_model.* (UNet), first_stage_model.* (VAE),
                                      cond_stage_model.transformer.* (CLIP text, with position_ids), the DDPM
                                      schedule buffers and dot-less model_ema.* UNet copies}, global_step, epoch
    kl-f8.ckpt                       {'state_dict': encoder.*, decoder.*, quant_conv.*, post_quant_conv.*,
                                      loss.* (LPIPS/discriminator entries the loader ignores)}
    dino_deitsmall8_pretrain.pth     the ViT backbone's plain state dict
    clip-vit-large-patch14/          vocab.json + merges.txt (Hugging Face layout, a small learnt vocabulary)
The networks are freshly initialised (presets.build), each file from its own seed, so a loader that took a part
from the wrong file would change the results. Nothing here is a real checkpoint.
"""
from __future__ import annotations

import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from vlmdiff_train import checkpoints as C  # noqa: E402
from vlmdiff_train import presets  # noqa: E402
from vlmdiff_train.tokenizer import EOT, SOT, base_vocab, learn_merges  # noqa: E402

PRESET = "sd15-mini"
SD_EXTRAS = ["betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "posterior_variance"]


def write_weights(out: str) -> dict:
    os.makedirs(out, exist_ok=True)
    sd_nets = presets.build(PRESET, seed=101)
    sd = {}
    for prefix, module in ((C.UNET_PREFIX, sd_nets.unet), (C.VAE_PREFIX, sd_nets.vae),
                           (C.TEXT_PREFIX, sd_nets.text_encoder)):
        sd.update({prefix + k: v.clone() for k, v in module.state_dict().items()})
    sd[C.TEXT_PREFIX + C.TEXT_POSITION_IDS] = torch.arange(77).unsqueeze(0)
    for k in SD_EXTRAS:
        sd[k] = torch.rand(1000)
    sd["model_ema.decay"], sd["model_ema.num_updates"] = torch.tensor(0.9999), torch.tensor(840000)
    for k, v in list(sd.items()):
        if k.startswith(C.UNET_PREFIX):
            sd["model_ema." + k[len("model."):].replace(".", "")] = v.clone()
    torch.save({"state_dict": sd, "global_step": 840000, "epoch": 6}, os.path.join(out, "v1-5-pruned.ckpt"))

    ae = presets.build(PRESET, seed=202, with_text=False, with_dino=False).vae
    ae_sd = {k: v.clone() for k, v in ae.state_dict().items()}
    ae_sd["loss.logvar"] = torch.zeros(())
    ae_sd["loss.discriminator.main.0.weight"] = torch.randn(8, 3, 4, 4)
    torch.save({"state_dict": ae_sd, "global_step": 246803}, os.path.join(out, "kl-f8.ckpt"))

    dino = presets.build(PRESET, seed=303, with_text=False).dino
    torch.save(dino.state_dict(), os.path.join(out, "dino_deitsmall8_pretrain.pth"))

    tok_dir = os.path.join(out, "clip-vit-large-patch14")
    os.makedirs(tok_dir, exist_ok=True)
    merges = learn_merges(["a photo of a stripes", "a photo of a waves", "a photo of a bottle"], 60)
    vocab = base_vocab() + ["".join(m) for m in merges] + [SOT, EOT]
    with open(os.path.join(tok_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f)
    with open(os.path.join(tok_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return {"dir": out, "dino_config": presets.get_preset(PRESET).dino.to_dict()}


def check_run(weights: str, ae_file: str, built_file: str, trained_file: str) -> dict:
    """After `vlmdiff train`: the stages read the files they were given, in their real formats.

    - finetune-ae started from kl-f8.ckpt (2 small steps: close to it, far from the SD file's VAE);
    - build took the UNet and CLIP text from v1-5-pruned.ckpt, the VAE from finetune-ae, and initialised the SG
      network from the UNet encoder (every shared key equal to the UNet's, the new layers' zero convs zero);
    - train changed the trainable denoiser parts and nothing frozen.
    Raises AssertionError naming the first thing that does not hold; returns figures for the log."""
    sd = torch.load(os.path.join(weights, "v1-5-pruned.ckpt"), map_location="cpu")["state_dict"]
    kl = torch.load(os.path.join(weights, "kl-f8.ckpt"), map_location="cpu")["state_dict"]
    built = torch.load(built_file, map_location="cpu")["state"]
    trained = torch.load(trained_file, map_location="cpu")["state"]
    ae = torch.load(ae_file, map_location="cpu")
    ae = ae.get("state_dict", ae)

    def maxdiff(a: dict, b: dict, prefix_b: str = "") -> float:
        return max(float((v.float() - b[prefix_b + k].float()).abs().max()) for k, v in a.items())

    vae_built = built["vae"]
    d_kl = maxdiff({k: v for k, v in vae_built.items()}, kl)
    d_sd = maxdiff(vae_built, sd, C.VAE_PREFIX)
    assert d_kl < 0.05 < d_sd, f"built VAE: max diff {d_kl:.3g} to kl-f8.ckpt, {d_sd:.3g} to the SD file's VAE"
    assert maxdiff(vae_built, ae) == 0.0, "built VAE is not the finetune-ae output"
    unet = {k[len("unet."):]: v for k, v in built["denoiser"].items() if k.startswith("unet.")}
    sgn = {k[len("sgn."):]: v for k, v in built["denoiser"].items() if k.startswith("sgn.")}
    assert unet and sgn, f"denoiser keys: {sorted(built['denoiser'])[:5]}"
    assert maxdiff(unet, sd, C.UNET_PREFIX) == 0.0, "built UNet is not v1-5-pruned.ckpt's"
    assert maxdiff(built["text"], sd, C.TEXT_PREFIX) == 0.0, "built text encoder is not v1-5-pruned.ckpt's"
    shared = {k: v for k, v in sgn.items() if C.UNET_PREFIX + k in sd}
    new = [k for k in sgn if k not in shared]
    assert len(shared) > 100 and maxdiff(shared, sd, C.UNET_PREFIX) == 0.0, "SG network not initialised from the UNet"
    zero = [k for k in new if k.startswith(("zero_convs.", "middle_block_out."))]
    assert zero and all(float(sgn[k].abs().max()) == 0.0 for k in zero), "SG zero convs are not zero"
    moved = [k for k, v in trained["denoiser"].items() if not torch.equal(v, built["denoiser"][k])]
    assert moved, "train changed no denoiser weight"
    assert all(not k.startswith("unet.input_blocks.") for k in moved), "train changed the frozen UNet encoder"
    assert maxdiff(trained["vae"], vae_built) == 0.0 and maxdiff(trained["text"], built["text"]) == 0.0, \
        "train changed a frozen network"
    return {"vae_vs_klf8": d_kl, "vae_vs_sd": d_sd, "sgn_shared": len(shared), "sgn_new": len(new),
            "trained_changed": len(moved)}


if __name__ == "__main__":
    torch.set_num_threads(2)
    if len(sys.argv) == 2:
        print(json.dumps(write_weights(sys.argv[1])))
    elif len(sys.argv) == 6 and sys.argv[1] == "check":
        print(json.dumps(check_run(*sys.argv[2:])))
    else:
        print("usage: sd15_mini_weights.py OUTDIR | check WEIGHTS AE.pt MODEL.pt TRAINED.pt", file=sys.stderr)
        sys.exit(2)

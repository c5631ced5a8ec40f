"""VLMDiff networks in PyTorch, with the public checkpoints' parameter names.

    autoencoder  AutoencoderKL (LDM first_stage_model)
    unet         UNetModel (SD1.5 model.diffusion_model)
    sgn          SemanticGuidedNetwork (DiAD control_model), ControlledUnetModel, VLMDiffDenoiser, VLMDiffModel
    clip_text    CLIPTextModel (HF layout; SD1.5 cond_stage_model.transformer)
    dino         VisionTransformer (facebookresearch/dino), DinoFeatures export wrapper
"""
from .autoencoder import AutoencoderKL, DDConfig
from .clip_text import CLIPTextConfig, CLIPTextModel
from .dino import DinoConfig, DinoFeatures, VisionTransformer
from .layers import count_params, meta_device, timestep_embedding
from .sgn import (
    SCALE_FACTOR,
    ControlledUnetModel,
    SemanticGuidedNetwork,
    VLMDiffDenoiser,
    VLMDiffModel,
)
from .unet import UNetConfig, UNetModel

__all__ = [
    "AutoencoderKL", "DDConfig", "CLIPTextConfig", "CLIPTextModel", "DinoConfig", "DinoFeatures",
    "VisionTransformer", "count_params", "meta_device", "timestep_embedding", "SCALE_FACTOR",
    "ControlledUnetModel", "SemanticGuidedNetwork", "VLMDiffDenoiser", "VLMDiffModel", "UNetConfig", "UNetModel",
]

"""Building blocks of the EVA transformers, one concept per file."""

from openeva.layers.attention import Attention
from openeva.layers.attention_pool import AttentionPoolLatent
from openeva.layers.drop import DropPath, patch_keep_indices
from openeva.layers.mlp import ACTIVATIONS, Mlp, QuickGELU, SwiGLU, activation
from openeva.layers.patch_embed import PatchEmbed, resample_patch_kernel
from openeva.layers.pos_embed import resample_pos_embed
from openeva.layers.rope import RotaryEmbedding2D, apply_rope, rope_angles_2d

__all__ = [
    "ACTIVATIONS", "Attention", "AttentionPoolLatent", "DropPath", "Mlp", "PatchEmbed", "QuickGELU",
    "RotaryEmbedding2D", "SwiGLU", "activation", "apply_rope",
    "patch_keep_indices", "resample_patch_kernel", "resample_pos_embed", "rope_angles_2d",
]

"""Building blocks of the EVA transformers, one concept per file."""

from openeva.layers.attention import Attention
from openeva.layers.drop import DropPath, patch_keep_indices
from openeva.layers.mlp import Mlp, SwiGLU
from openeva.layers.patch_embed import PatchEmbed, resample_patch_kernel
from openeva.layers.pos_embed import resample_pos_embed
from openeva.layers.rope import RotaryEmbedding2D, apply_rope, rope_angles_2d

__all__ = [
    "Attention", "DropPath", "Mlp", "PatchEmbed", "RotaryEmbedding2D", "SwiGLU", "apply_rope",
    "patch_keep_indices", "resample_patch_kernel", "resample_pos_embed", "rope_angles_2d",
]

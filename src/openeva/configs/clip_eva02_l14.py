"""EVA02-CLIP-L/14 as published (Sun et al., 2023, arXiv 2303.15389, and the official training command).

Recipe: vision tower from the EVA-02-L MIM checkpoint (Merged-38M), text tower from OpenAI CLIP-L/14, vision
head / text projection / logit scale re-initialised; LAMB, visual lr 4e-4 with layer decay 0.85, text lr 4e-5
with layer decay 0.75, base lr 5e-4 (logit scale), weight decay 0.05, grad clip 5.0, 2000 warmup steps then
cosine; global batch 131,072 (1,024 per GPU x 128 GPUs); 100 "epochs" of 40M samples = 4B samples seen (tag
``merged2b_s4b_b131k``); local loss + gather-with-grad; grad checkpointing; no patch dropout; seed 4096.

    torchrun --nproc_per_node 8 --nnodes 16 ... -m openeva train clip_eva02_l14 \\
        data.train='/data/laion2b/{000000..164090}.tar;/data/coyo700m/{000000..047435}.tar' \\
        model.pretrained_image=/ckpt/eva02_L_psz14.pt model.pretrained_text=/ckpt/openai_clip_l14.pt

The 304M-parameter vision tower fits DDP on 80 GB GPUs with grad checkpointing; ``dist.strategy=fsdp`` shards
parameters, gradients and optimizer state when memory is short. LAMB, betas / eps, precision and what else
follows or departs from EVA-CLIP's code, and the Merged-2B data mix (whole batches alternating between LAION-2B
and COYO-700M at 0.8 / 0.2, resampled shards): see clip_eva02_b16.py.
"""

import dataclasses

from openeva.configs.clip_eva02_b16 import config as _b16

config = _b16.replace(
    name="eva02_clip_l14",
    model=dataclasses.replace(
        _b16.model,
        name="EVA02-L-14",
        pretrained_image="/path/to/eva02_L_psz14.pt",  # EVA-02-L MIM (timm: eva02_large_patch14_224.mim_m38m)
        pretrained_text="/path/to/openai_clip_vit_l14.pt",  # OpenAI CLIP ViT-L/14 (text tower used)
    ),
    data=dataclasses.replace(_b16.data, batch_size=1024),  # per GPU; x 128 GPUs = 131,072
    optim=dataclasses.replace(_b16.optim, visual_lr=4e-4, text_lr=4e-5, visual_layer_decay=0.85),
    schedule=dataclasses.replace(_b16.schedule, epochs=100),
)

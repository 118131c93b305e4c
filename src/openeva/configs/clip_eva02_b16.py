"""EVA02-CLIP-B/16 as published (Sun et al., 2023, arXiv 2303.15389, and the official training command).

Recipe: vision tower from the EVA-02-B MIM checkpoint (patch 14 resampled to 16), text tower from OpenAI
CLIP-B/16, vision head / text projection / logit scale re-initialised; LAMB, visual lr 2e-4 with layer decay
0.75, text lr 2e-5 with layer decay 0.75, base lr 5e-4 (logit scale), weight decay 0.05, grad clip 5.0,
2000 warmup steps then cosine; global batch 131,072 (2,048 per GPU x 64 GPUs); 200 "epochs" of 40M samples
= 8B samples seen (tag ``merged2b_s8b_b131k``); local loss + gather-with-grad; grad checkpointing; no patch
dropout; RandomResizedCrop scale (0.9, 1.0); seed 4096.

Set the paths (every one is checked before any compute):

    torchrun --nproc_per_node 8 --nnodes 8 ... -m openeva train clip_eva02_b16 \\
        data.train='/data/laion2b/{000000..164090}.tar;/data/coyo700m/{000000..047435}.tar' \\
        model.pretrained_image=/ckpt/eva02_B_psz14to16.pt model.pretrained_text=/ckpt/openai_clip_b16.pt \\
        data.zeroshot=/data/imagenet/val data.zeroshot_classnames=imagenet1k data.zeroshot_templates=imagenet1k

With fewer GPUs keep the global batch with ``optim.accum_steps`` (e.g. 8 GPUs: accum_steps=8).
Betas / eps: the paper lists (0.9, 0.98) / 1e-6, used here; the released command resolves to PyTorch-style
defaults (0.9, 0.999) / 1e-8 because its default table keys on "vit" in the model name.
"""

from openeva.train.config import (
    DataConfig, DistConfig, LossConfig, ModelConfig, OptimConfig, ScheduleConfig, TrainConfig,
)

config = TrainConfig(
    name="eva02_clip_b16",
    seed=4096,
    precision="bf16",
    model=ModelConfig(
        name="EVA02-B-16",
        pretrained_image="/path/to/eva02_B_psz14to16.pt",  # EVA-02-B MIM (timm: eva02_base_patch14_224.mim_in22k)
        pretrained_text="/path/to/openai_clip_vit_b16.pt",  # OpenAI CLIP ViT-B/16 (text tower used)
        patch_dropout=0.0,
        grad_checkpointing=True,
    ),
    data=DataConfig(
        train="/path/to/merged-2b/{000000..164090}.tar",
        train_num_samples=40_000_000,  # samples per "epoch" (open_clip --train-num-samples)
        batch_size=2048,  # per GPU; x 64 GPUs = 131,072
        num_workers=8,
        scale=(0.9, 1.0),
        val=None,
        zeroshot=None,
    ),
    optim=OptimConfig(
        optimizer="lamb",
        lr=5e-4,
        visual_lr=2e-4,
        text_lr=2e-5,
        visual_layer_decay=0.75,
        text_layer_decay=0.75,
        weight_decay=0.05,
        betas=(0.9, 0.98),
        eps=1e-6,
        grad_clip=5.0,
        accum_steps=1,
    ),
    schedule=ScheduleConfig(scheduler="cosine", warmup_steps=2000, epochs=200),
    loss=LossConfig(kind="clip", local_loss=True, gather_with_grad=True),
    dist=DistConfig(strategy="ddp"),
    save_every=1000,
    keep_last=3,
    log_every=100,
    eval_every=2000,
)

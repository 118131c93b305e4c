"""EVA-02-S MIM pretraining, the published recipe (Fang et al., 2023, arXiv 2303.11331, Table 2 / eva.md s.2).

Student ``eva02_small_patch14_224`` (21.6M params), teacher EVA01-CLIP-g/14 (frozen, bf16), 224 px, block masks of
105 / 256 patches, 240 epochs on ImageNet-21K.
Global batch 4000 = data.batch_size 250 x 16 processes
(x optim.accum_steps); with another process count change data.batch_size (or accum_steps) to keep it.
``warmup_steps`` is one epoch of ImageNet-21K (14,197,122 images) at this global batch.

    torchrun --nproc_per_node 8 --nnodes 2 -m openeva pretrain configs/mim_s.py \
        data.train=/data/in21k/shards-{00000..14196}.tar task_options.teacher_pretrained=/ckpt/EVA01_CLIP_g_14_psz14_s11B.pt

``data.train`` takes any image-text source of ``openeva train`` (captions are ignored). ``RUN/final`` is the
backbone: ``openeva train configs/... model.pretrained_image=RUN/final`` (EVA-CLIP) or a classifier.
"""

from openeva.train.config import DataConfig, ModelConfig, OptimConfig, ScheduleConfig, TrainConfig
from openeva.train.mim_task import MIM_TASK

PEAK_LR = 3e-3
IN21K_IMAGES = 14_197_122
GLOBAL_BATCH = 4000

config = TrainConfig(
    task=MIM_TASK,
    name="mim_s",
    precision="bf16",
    model=ModelConfig(name="eva02_small_patch14_224", drop_path_rate=0.0),
    data=DataConfig(train="/path/to/in21k/shards-{00000..14196}.tar", train_num_samples=IN21K_IMAGES,
                    batch_size=250, num_workers=8, scale=(0.2, 1.0), val=None, zeroshot=None),
    optim=OptimConfig(optimizer="adamw", lr=PEAK_LR, weight_decay=0.05, betas=(0.9, 0.98), eps=1e-6, grad_clip=3.0),
    schedule=ScheduleConfig(scheduler="cosine", warmup_steps=IN21K_IMAGES // GLOBAL_BATCH, epochs=240,
                            min_lr_ratio=1e-5 / PEAK_LR),  # cosine to 1e-5
    task_options=dict(
        teacher="EVA01-g-14",  # EVA-CLIP g/14: 1408-wide tower, targets projected to 1024
        teacher_pretrained="laion400m_s11b_b41k",  # a published tag (downloaded) or a local checkpoint path
        teacher_precision="bf16",
        target="clip",
        num_masking_patches=105,
        min_num_patches=16,
        min_aspect=0.3,
        hflip=0.5,
        patch_embed_grad_scale=0.1,
    ),
    save_every=2000,
    keep_last=3,
    log_every=50,
    eval_every=0,
)

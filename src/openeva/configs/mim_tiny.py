"""Tiny EVA-02 MIM on the built-in synthetic shapes: a CPU smoke run in about a minute.

    openeva pretrain mim_tiny
    openeva pretrain mim_tiny task_options.teacher=runs/clip_tiny/final task_options.teacher_pretrained=none  # a trained teacher

The student is ``eva02_test_patch8_32`` (32 px, patch 8: a 4x4 grid, 6 of 16 patches masked in blocks of >= 2);
the teacher defaults to an untrained ``EVA02-test`` (``teacher_pretrained=random``); point ``task_options.teacher``
at a trained CLIP run's ``final`` directory (e.g. from ``clip_tiny``) for a meaningful target.
``runs/mim_tiny/final`` then initialises an EVA-CLIP:
``openeva train clip_tiny model.pretrained_image=runs/mim_tiny/final`` (see the hand-off note in
openeva.models.mim about EVA-CLIP's sub-LN keys).
"""

from openeva.train.config import DataConfig, ModelConfig, OptimConfig, ScheduleConfig, TrainConfig

config = TrainConfig(
    task="mim",
    name="mim_tiny",
    seed=0,
    precision="auto",
    model=ModelConfig(name="eva02_test_patch8_32", drop_path_rate=0.0),
    data=DataConfig(train="synthetic", synthetic_num_samples=2048, batch_size=32, scale=(0.2, 1.0),
                    val="synthetic", val_num_samples=128, zeroshot=None),
    optim=OptimConfig(optimizer="adamw", lr=3e-3, weight_decay=0.05, betas=(0.9, 0.98), eps=1e-6, grad_clip=3.0),
    schedule=ScheduleConfig(scheduler="cosine", warmup_steps=15, total_steps=150, min_lr_ratio=1e-5 / 3e-3),
    task_options=dict(
        teacher="EVA02-test",
        teacher_pretrained="random",
        teacher_precision="auto",
        target="clip",
        num_masking_patches=6,
        min_num_patches=2,
        min_aspect=0.3,
        hflip=0.5,
        patch_embed_grad_scale=0.1,
    ),
    save_every=75,
    log_every=10,
    eval_every=50,
)

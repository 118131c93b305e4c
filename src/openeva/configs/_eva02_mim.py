"""The EVA-02 ImageNet-21K MIM recipe shared by the Ti / S / B / L configs (EVA-02 paper, Table 2; eva.md s.2).

Every size: EVA01-CLIP-g/14 teacher (frozen, bf16), 224 px, block masks of 105 / 256 patches (>= 16 per block,
aspect 0.3-3.33), RandomResizedCrop (0.2, 1) + flip, AdamW (0.9, 0.98) eps 1e-6, weight decay 0.05, grad clip
3.0, one warmup epoch, cosine to 1e-5, 0.1 gradient scale on the patch embedding. Sizes differ in peak lr,
global batch, epochs and drop path.
"""

from openeva.train.config import DataConfig, ModelConfig, OptimConfig, ScheduleConfig, TrainConfig

IN21K_IMAGES = 14_197_122
PROCESSES = 16  # 2 nodes x 8 GPUs; with another count change data.batch_size (or optim.accum_steps)


def eva02_mim_in21k(name: str, student: str, peak_lr: float, global_batch: int, epochs: int,
                    drop_path_rate: float = 0.0, grad_checkpointing: bool = False) -> TrainConfig:
    return TrainConfig(
        task="mim",
        name=name,
        precision="bf16",
        model=ModelConfig(name=student, drop_path_rate=drop_path_rate, grad_checkpointing=grad_checkpointing),
        data=DataConfig(train="/path/to/in21k/shards-{00000..14196}.tar", train_num_samples=IN21K_IMAGES,
                        batch_size=global_batch // PROCESSES, num_workers=8, scale=(0.2, 1.0), val=None,
                        zeroshot=None),
        optim=OptimConfig(optimizer="adamw", lr=peak_lr, weight_decay=0.05, betas=(0.9, 0.98), eps=1e-6,
                          grad_clip=3.0),
        schedule=ScheduleConfig(scheduler="cosine", warmup_steps=IN21K_IMAGES // global_batch, epochs=epochs,
                                min_lr_ratio=1e-5 / peak_lr),  # cosine to 1e-5
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

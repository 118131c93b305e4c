"""EVA-02-B ImageNet-1K fine-tuning from the IN-21K MIM checkpoint (official ``run_class_finetuning.py`` recipe
for ``eva02_B_pt_in21k_p14`` -> 88.3 top-1 at 448 px, reported without EMA).

    torchrun --nproc_per_node 8 -m openeva train finetune_eva02_B \
        data.train=/data/imagenet/train data.val=/data/imagenet/val

Recipe: AdamW lr 1e-4, layer decay 0.7, weight decay 0.05, betas (0.9, 0.999), eps 1e-8; global batch 1024,
30 epochs, 3 warmup epochs, cosine to 0; drop path 0.1; label smoothing 0.1; RandAugment rand-m9-mstd0.5-inc1,
RandomResizedCrop(0.08-1); no mixup / cutmix / random erasing; EMA 0.9999 kept (``raw_*`` vs EMA metrics are both
logged) but the raw weights are evaluated and exported, as the published number is without EMA.
Departs from EVA-02's code in precision only: bf16 autocast instead of DeepSpeed fp16 with dynamic loss scaling
(bf16 needs no loss scale; the effect on top-1 has not been measured).
"""

from openeva.train.config import DataConfig, ModelConfig, OptimConfig, ScheduleConfig, TrainConfig

IMAGENET_TRAIN_IMAGES = 1_281_167
GLOBAL_BATCH = 1024
STEPS_PER_EPOCH = IMAGENET_TRAIN_IMAGES // GLOBAL_BATCH  # 1251

config = TrainConfig(
    task="finetune",
    name="finetune_eva02_B_in1k",
    precision="bf16",
    model=ModelConfig(name="eva02_base_patch14_224", pretrained="mim_in22k", img_size=448, drop_path_rate=0.1),
    # per-process micro-batch: 32 x 8 GPUs x 4 accumulation steps = 1024 (keep the product at 1024)
    data=DataConfig(train="/path/to/imagenet/train", val="/path/to/imagenet/val", zeroshot=None, batch_size=32,
                    num_workers=10, scale=(0.08, 1.0)),
    optim=OptimConfig(optimizer="adamw", lr=1e-4, layer_decay=0.7, weight_decay=0.05, betas=(0.9, 0.999),
                      eps=1e-8, grad_clip=None, accum_steps=4),
    schedule=ScheduleConfig(scheduler="cosine", epochs=30, warmup_steps=3 * STEPS_PER_EPOCH, min_lr_ratio=0.0),
    task_options={
        "label_smoothing": 0.1,
        "auto_augment": "rand-m9-mstd0.5-inc1",
        "re_prob": 0.0,
        "ema_decay": 0.9999,
        "ema_eval": False,
        "patch_embed_grad_scale": 0.0,
        "head_init_scale": 0.001,
    },
    save_every=STEPS_PER_EPOCH,
    eval_every=STEPS_PER_EPOCH,
    log_every=50,
)

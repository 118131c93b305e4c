"""EVA-02-L ImageNet-1K fine-tuning from the Merged-38M MIM checkpoint (EVA-02 paper, Sec. 4.1; the official
``run_class_finetuning.py`` recipe for ``eva02_L_pt_m38m_p14`` -> 89.6 top-1 at 448 px, EMA weights).

    torchrun --nproc_per_node 8 -m openeva train configs/finetune_eva02_L.py \
        data.train=/data/imagenet/train data.val=/data/imagenet/val
    openeva eval --model eva02_large_patch14_224 --pretrained mim_m38m --task finetune \
        --train-dataset /data/imagenet/train --dataset /data/imagenet/val --finetune-config configs/finetune_eva02_L.py

Recipe: AdamW lr 7e-5 (5e-5 from the IN-21K MIM checkpoint), layer decay 0.8, weight decay 0.05, betas
(0.9, 0.999), eps 1e-8, no grad clipping; global batch 1024, 30 epochs, 3 warmup epochs, cosine to 0; drop path
0.15; label smoothing 0.2; RandAugment rand-m9-mstd0.5-inc1 on RandomResizedCrop(0.08-1) + flip, no random
erasing; EMA 0.9999 (evaluated and exported); patch embedding detached; new head trunc-normal(0.02) x 0.001.
Mixup and CutMix are 0 in the official scripts; enable them with task_options.mixup=0.8 task_options.cutmix=1.0.
"""

from openeva.train.config import DataConfig, DistConfig, ModelConfig, OptimConfig, ScheduleConfig, TrainConfig

IMAGENET_TRAIN_IMAGES = 1_281_167
GLOBAL_BATCH = 1024
STEPS_PER_EPOCH = IMAGENET_TRAIN_IMAGES // GLOBAL_BATCH  # 1251

config = TrainConfig(
    task="openeva.train.finetune_task:build_finetune",
    name="finetune_eva02_L_in1k",
    precision="bf16",
    model=ModelConfig(name="eva02_large_patch14_224", pretrained="mim_m38m", img_size=448, drop_path_rate=0.15,
                      grad_checkpointing=True),
    # per-process micro-batch: 32 x 8 GPUs x 4 accumulation steps = 1024 (keep the product at 1024)
    data=DataConfig(train="/path/to/imagenet/train", val="/path/to/imagenet/val", zeroshot=None, batch_size=32,
                    num_workers=10, scale=(0.08, 1.0)),
    optim=OptimConfig(optimizer="adamw", lr=7e-5, layer_decay=0.8, weight_decay=0.05, betas=(0.9, 0.999),
                      eps=1e-8, grad_clip=None, accum_steps=4),
    schedule=ScheduleConfig(scheduler="cosine", epochs=30, warmup_steps=3 * STEPS_PER_EPOCH, min_lr_ratio=0.0),
    dist=DistConfig(strategy="ddp"),
    task_options={
        "label_smoothing": 0.2,
        "mixup": 0.0,
        "cutmix": 0.0,
        "auto_augment": "rand-m9-mstd0.5-inc1",
        "re_prob": 0.0,
        "ema_decay": 0.9999,
        "ema_eval": True,
        "patch_embed_grad_scale": 0.0,
        "head_init_scale": 0.001,
    },
    save_every=STEPS_PER_EPOCH,
    eval_every=STEPS_PER_EPOCH,
    log_every=50,
)

"""Tiny semantic segmentation fine-tune on CPU: the test backbone + ViTDet simple pyramid + light decoder label
the synthetic multi-shape scenes by colour (7 classes: background + 6 colours).

    openeva train segment_tiny
    openeva train segment_tiny data.train=data/seg data.val=data/seg_val   # images/ + masks/ + classnames.txt

Random-init backbone at 32 px (patch 8: a 4x4 grid; the pyramid's p2 is 8x8); 64 steps. Validation mIoU
rises well above the all-background baseline (measured in tests/dense/test_segmentation_task.py).
"""

from openeva.train.config import DataConfig, ModelConfig, OptimConfig, ScheduleConfig, TrainConfig

config = TrainConfig(
    task="segmentation",
    name="segment_tiny",
    seed=0,
    precision="auto",
    model=ModelConfig(name="eva02_test_patch8_32", drop_path_rate=0.0),  # 32 px, patch 8: a 4x4 grid
    data=DataConfig(train="synthetic", synthetic_num_samples=512, batch_size=16, val="synthetic", val_num_samples=64,
                    zeroshot=None),
    optim=OptimConfig(optimizer="adamw", lr=2e-3, layer_decay=1.0, weight_decay=0.05, betas=(0.9, 0.999), eps=1e-8,
                      grad_clip=1.0),
    schedule=ScheduleConfig(scheduler="cosine", warmup_steps=8, epochs=2),
    task_options={"synthetic_label_by": "color", "out_channels": 32, "decoder_channels": 32, "hflip": 0.5},
    save_every=100,
    log_every=8,
    eval_every=32,
)

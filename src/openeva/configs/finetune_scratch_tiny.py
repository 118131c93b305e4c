"""Small-scale fine-tuning from RANDOM weights (the ``finetune_tiny`` values, for any labelled data): chosen
automatically by ``openeva eval --task finetune`` and ``openeva quickstart --data`` when the backbone has no
pretrained weights; ``finetune_pretrained_tiny`` is its pretrained counterpart.

A high lr, almost no layer decay and a fully trained patch embedding, because nothing in the backbone is
worth keeping; an EMA of the weights with warmup. Augmentation sized to small images (28-64 px): flips only, no
random-resized crops, colour jitter or RandAugment (crops of 50-100% and jitter 0.4 cost 8-13 points on
Fashion-MNIST: 71.8% vs 84.5% at 400 steps of batch 128). A fresh head: a probe of random features is a worse
start (80.2% with LP-FT at the same 400 steps).
"""

from openeva.train.config import DataConfig, ModelConfig, OptimConfig, ScheduleConfig, TrainConfig

config = TrainConfig(
    task="finetune",
    name="finetune_scratch_tiny",
    seed=0,
    precision="auto",
    model=ModelConfig(name="eva02_quickstart_patch8_64", drop_path_rate=0.0),
    data=DataConfig(train="synthetic", batch_size=64, val=None, zeroshot=None, scale=(1.0, 1.0)),
    optim=OptimConfig(optimizer="adamw", lr=2e-3, layer_decay=0.9, weight_decay=0.05, betas=(0.9, 0.999), eps=1e-8,
                      grad_clip=None),
    schedule=ScheduleConfig(scheduler="cosine", warmup_steps=0, epochs=10),  # warmup: 10% of the run (caller)
    task_options={
        "label_smoothing": 0.1,
        "color_jitter": 0.0,
        "auto_augment": None,
        "patch_embed_grad_scale": 1.0,
        "ema_decay": 0.99,
        "ema_warmup": True,
    },
    save_every=10**9,
    log_every=20,
    eval_every=0,
    tensorboard=False,
)

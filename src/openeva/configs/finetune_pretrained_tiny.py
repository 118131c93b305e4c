"""Small-scale fine-tuning from a PRETRAINED backbone (a MIM student, an EVA-CLIP vision tower): the EVA-02
fine-tune ingredients sized for small images and short CPU runs, chosen automatically by ``openeva eval
--task finetune`` and ``openeva quickstart --data`` when the backbone carries pretrained weights.

    openeva eval --model run/mim/final --task finetune --finetune-config finetune_pretrained_tiny \
        --train-dataset data/train --dataset data/val

The values are EVA-02's fine-tune ingredients scaled to small images and short CPU runs, not tuned: a lower
peak lr than from scratch with layer-wise lr decay (keep the lower blocks near where MIM put them), a warmup (10%
of the run, set by the caller), a small drop path, crops of 50-100% (EVA-02's 8-100% is sized for 224 px photos)
and no RandAugment for 28-64 px images, the patch embedding at a tenth of the lr. Measured on Fashion-MNIST
(``benchmarks/results/user_chain.md``, 100 steps of batch 32): with a fresh head this recipe fine-tunes the student
to BELOW the from-scratch recipe on random weights (too little lr for so few steps); with the head started from a
linear probe (LP-FT, as ``openeva quickstart --data`` does) it beats the from-scratch recipe by about 5 points, but
still ends below the student's own frozen probe. From random weights use ``finetune_scratch_tiny``.
"""

from openeva.train.config import DataConfig, ModelConfig, OptimConfig, ScheduleConfig, TrainConfig

config = TrainConfig(
    task="finetune",
    name="finetune_pretrained_tiny",
    seed=0,
    precision="auto",
    model=ModelConfig(name="eva02_quickstart_patch8_64", drop_path_rate=0.05),
    data=DataConfig(train="synthetic", batch_size=64, val=None, zeroshot=None, scale=(0.5, 1.0)),
    optim=OptimConfig(optimizer="adamw", lr=1e-3, layer_decay=0.75, weight_decay=0.05, betas=(0.9, 0.999),
                      eps=1e-8, grad_clip=None),
    schedule=ScheduleConfig(scheduler="cosine", warmup_steps=0, epochs=10),  # warmup: 10% of the run (caller)
    task_options={
        "label_smoothing": 0.1,
        "auto_augment": None,
        "patch_embed_grad_scale": 0.1,
        "ema_decay": 0.0,
    },
    save_every=10**9,
    log_every=20,
    eval_every=0,
    tensorboard=False,
)

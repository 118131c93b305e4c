"""Small-scale fine-tuning from a PRETRAINED backbone (a MIM student, an EVA-CLIP vision tower): the EVA-02
fine-tune ingredients sized for small images and short CPU runs, chosen automatically by ``openeva eval
--task finetune`` and ``openeva quickstart --data`` when the backbone carries pretrained weights.

    openeva eval --model run/mim/final --task finetune --finetune-config finetune_pretrained_tiny \
        --train-dataset data/train --dataset data/val

For small images (28-64 px, upsampled to the model's 64 px input), measured, not copied: EVA-02's fine-tune
ingredients at small scale. The from-scratch peak lr (2e-3) on the head with layer-wise lr decay 0.75, so each
block below trains slower (the lower blocks stay near where MIM put them), a warmup (10% of the run, set by the
caller), the patch embedding at a tenth of the lr, no drop path and no label smoothing (both cost points at these
run lengths), and augmentation sized to the images: flips only. Random-resized crops of 50-100% and colour jitter
(sized for 224 px photos) cut a 28 px image's content further and cost the student 6-7 points. ``openeva
quickstart --data`` starts the head from a linear probe of the student's features (LP-FT). Measured on
Fashion-MNIST (60k train, 5k val, batch 128, ``benchmarks/results/user_chain.md``): at 150 steps the student ends
84.2%, +1.2 over its frozen probe (paired noise +-0.8) and +5.8 over the from-scratch fine-tune (78.3%); at 100
steps it is still at its probe (+0.2), at 200 the from-scratch run closes to 3.9 points. The lr was chosen by
``benchmarks/bench_lpft_recipe.py`` (lr 1e-3 to 4e-3, layer decay 0.5 to 0.9, EMA, smoothing: 83.4-84.2% at 150
steps, 2e-3 the best). For photos at 224 px use ``finetune_eva02_B`` / ``_L``.
"""

from openeva.train.config import DataConfig, ModelConfig, OptimConfig, ScheduleConfig, TrainConfig

config = TrainConfig(
    task="finetune",
    name="finetune_pretrained_tiny",
    seed=0,
    precision="auto",
    model=ModelConfig(name="eva02_quickstart_patch8_64", drop_path_rate=0.0),
    data=DataConfig(train="synthetic", batch_size=64, val=None, zeroshot=None, scale=(1.0, 1.0)),
    optim=OptimConfig(optimizer="adamw", lr=2e-3, layer_decay=0.75, weight_decay=0.05, betas=(0.9, 0.999),
                      eps=1e-8, grad_clip=None),
    schedule=ScheduleConfig(scheduler="cosine", warmup_steps=0, epochs=10),  # warmup: 10% of the run (caller)
    task_options={
        "label_smoothing": 0.0,
        "color_jitter": 0.0,
        "auto_augment": None,
        "patch_embed_grad_scale": 0.1,
        "ema_decay": 0.0,
    },
    save_every=10**9,
    log_every=20,
    eval_every=0,
    tensorboard=False,
)

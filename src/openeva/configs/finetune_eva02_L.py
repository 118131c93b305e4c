"""EVA-02-L ImageNet-1K fine-tuning from the Merged-38M MIM checkpoint (EVA-02 paper, Sec. 4.1; the official
``run_class_finetuning.py`` recipe for ``eva02_L_pt_m38m_p14`` -> 89.6 top-1 at 448 px, EMA weights).

    torchrun --nproc_per_node 8 -m openeva train finetune_eva02_L \
        data.train=/data/imagenet/train data.val=/data/imagenet/val
    openeva eval --model eva02_large_patch14_224 --pretrained mim_m38m --task finetune \
        --train-dataset /data/imagenet/train --dataset /data/imagenet/val --finetune-config finetune_eva02_L

Recipe: AdamW lr 7e-5 (5e-5 from the IN-21K MIM checkpoint), layer decay 0.8, weight decay 0.05, betas
(0.9, 0.999), eps 1e-8, no grad clipping; global batch 1024, 30 epochs, 3 warmup epochs, cosine to 0; drop path
0.15; label smoothing 0.2; RandAugment rand-m9-mstd0.5-inc1 on RandomResizedCrop(0.08-1) + flip, no random
erasing; EMA 0.9999 (evaluated and exported); patch embedding detached; new head trunc-normal(0.02) x 0.001.
Mixup and CutMix are 0 in the official scripts; enable them with task_options.mixup=0.8 task_options.cutmix=1.0.
"""

import dataclasses

from openeva.configs.finetune_eva02_B import config as _base_recipe
from openeva.train.config import DistConfig

config = _base_recipe.replace(
    name="finetune_eva02_L_in1k",
    model=dataclasses.replace(_base_recipe.model, name="eva02_large_patch14_224", pretrained="mim_m38m",
                              drop_path_rate=0.15, grad_checkpointing=True),
    optim=dataclasses.replace(_base_recipe.optim, lr=7e-5, layer_decay=0.8),
    dist=DistConfig(strategy="ddp"),
    task_options={**_base_recipe.task_options, "label_smoothing": 0.2, "mixup": 0.0, "cutmix": 0.0,
                  "ema_eval": True},
)

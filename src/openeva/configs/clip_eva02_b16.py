"""EVA02-CLIP-B/16 as published (Sun et al., 2023, arXiv 2303.15389, and the official training command).

Recipe: vision tower from the EVA-02-B MIM checkpoint (patch 14 resampled to 16), text tower from OpenAI
CLIP-B/16, vision head / text projection / logit scale re-initialised; LAMB, visual lr 2e-4 with layer decay
0.75, text lr 2e-5 with layer decay 0.75, base lr 5e-4 (logit scale), weight decay 0.05, grad clip 5.0,
2000 warmup steps then cosine; global batch 131,072 (2,048 per GPU x 64 GPUs); 200 "epochs" of 40M samples
= 8B samples seen (tag ``merged2b_s8b_b131k``); local loss + gather-with-grad; grad checkpointing; no patch
dropout; RandomResizedCrop scale (0.9, 1.0); seed 4096.

Set the paths (every one is checked before any compute):

    torchrun --nproc_per_node 8 --nnodes 8 ... -m openeva train clip_eva02_b16 \\
        data.train='/data/laion2b/{000000..164090}.tar;/data/coyo700m/{000000..047435}.tar' \\
        model.pretrained_image=/ckpt/eva02_B_psz14to16.pt model.pretrained_text=/ckpt/openai_clip_b16.pt \\
        data.zeroshot=/data/imagenet/val data.zeroshot_classnames=imagenet1k data.zeroshot_templates=imagenet1k

With fewer GPUs keep the global batch with ``optim.accum_steps`` (e.g. 8 GPUs: accum_steps=8): the contrastive
loss of a step then covers all 131,072 samples (features of each micro-batch are cached and the loss's gradient
sent back through each one, GradCache), at the cost of one extra forward pass per micro-batch.

What follows EVA-CLIP's code (``EVA-CLIP/rei/training``) and what departs:

* LAMB is DeepSpeed's ``FusedLamb`` formula (:class:`openeva.train.optim.Lamb`): trust ratio clamped to
  [0.01, 10] and applied to every tensor (biases, norms, ``logit_scale`` included), bias correction folded into
  the step size. The global clip of 5.0 is the only clip (no second clip inside LAMB, as with DeepSpeed).
  Departure: the ratio is computed per tensor; under ZeRO-1 DeepSpeed computes it per flattened slice of a
  parameter group on each GPU, which makes the update depend on the GPU count.
* Parameter groups are EVA-CLIP's (``training/optim.py``): per-tower lr and layer decay, no decay for ndim <= 1,
  biases, ``pos_embed``, ``cls_token``, ``positional_embedding`` and ``logit_scale``; the text
  ``token_embedding`` is decayed (``tests/train/data/eva02_b16_param_groups.json`` lists every parameter).
* The new vision head starts at trunc-normal(0.02) x 0.001 (``eva_vit_model.py``).
* Betas / eps: the paper and the repository's DeepSpeed config say (0.9, 0.98) / 1e-6, used here. The released
  command resolves to (0.9, 0.999) / 1e-8, because ``training/params.py`` keys its defaults on "vit" in the
  model name and EVA's names lack it; ``optim.betas_preset=eva_clip_release`` selects those.
* Precision: bf16 autocast instead of EVA-CLIP's fp16 with DeepSpeed's dynamic loss scaling. bf16 has fp32's
  exponent range, so no loss scale is needed and no step is skipped on overflow; fp16 with a loss scaler stays
  available (``precision=fp16``). Its effect on the published numbers has not been measured.
* Data: as EVA-CLIP, whole batches alternate between LAION-2B and COYO-700M (``data.mix=batch``: each batch is
  drawn from one source), at weights 0.8 / 0.2 (Merged-2B is 1.6B LAION-2B + 0.4B COYO-700M samples, EVA-CLIP
  paper section 3), shards resampled with replacement (``data.resampled=true``, EVA-CLIP's
  ``--dataset-resampled``), so an "epoch" is ``train_num_samples`` draws, not a pass. Departure: openeva draws
  the source of each batch at the weights, seeded per rank and data worker (``openeva.data.mix``); the weights
  come from the paper's composition, as EVA-CLIP's data loader (not among the files read for this recipe) takes
  them from ``--train-num-samples-list``. ``data.mix=sample`` mixes per sample instead.
"""

from openeva.train.config import (
    DataConfig, DistConfig, LossConfig, ModelConfig, OptimConfig, ScheduleConfig, TrainConfig,
)

config = TrainConfig(
    name="eva02_clip_b16",
    seed=4096,
    precision="bf16",
    model=ModelConfig(
        name="EVA02-B-16",
        pretrained_image="/path/to/eva02_B_psz14to16.pt",  # EVA-02-B MIM (timm: eva02_base_patch14_224.mim_in22k)
        pretrained_text="/path/to/openai_clip_vit_b16.pt",  # OpenAI CLIP ViT-B/16 (text tower used)
        patch_dropout=0.0,
        grad_checkpointing=True,
    ),
    data=DataConfig(
        # Merged-2B as EVA-CLIP trains on it: LAION-2B and COYO-700M shard sets, whole batches alternating between
        # them at the paper's 1.6B : 0.4B composition, shards drawn with replacement (--dataset-resampled)
        train="/path/to/laion2b/{000000..164090}.tar;/path/to/coyo700m/{000000..047435}.tar",
        train_weights=(0.8, 0.2),
        mix="batch",
        resampled=True,
        train_num_samples=40_000_000,  # samples per "epoch" (open_clip --train-num-samples)
        batch_size=2048,  # per GPU; x 64 GPUs = 131,072
        num_workers=8,
        scale=(0.9, 1.0),
        val=None,
        zeroshot=None,
    ),
    optim=OptimConfig(
        optimizer="lamb",
        lr=5e-4,
        visual_lr=2e-4,
        text_lr=2e-5,
        visual_layer_decay=0.75,
        text_layer_decay=0.75,
        weight_decay=0.05,
        betas=(0.9, 0.98),
        eps=1e-6,
        grad_clip=5.0,
        accum_steps=1,
    ),
    schedule=ScheduleConfig(scheduler="cosine", warmup_steps=2000, epochs=200),
    loss=LossConfig(kind="clip", local_loss=True, gather_with_grad=True),
    dist=DistConfig(strategy="ddp"),
    save_every=1000,
    keep_last=3,
    log_every=100,
    eval_every=2000,
)

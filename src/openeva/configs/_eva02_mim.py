"""The EVA-02 ImageNet-21K MIM recipe shared by the Ti / S / B / L configs (EVA-02 paper, Table 2; eva.md s.2).

Every size: EVA01-CLIP-g/14 teacher (frozen, bf16), 224 px, block masks of 105 / 256 patches (>= 16 per block,
aspect 0.3-3.33), RandomResizedCrop (0.2, 1) + flip, AdamW (0.9, 0.98) eps 1e-6, weight decay 0.05, grad clip
3.0, one warmup epoch, cosine to 1e-5, 0.1 gradient scale on the patch embedding. Sizes differ in peak lr,
global batch, epochs and drop path.

What follows EVA-02's code (``EVA-02/asuka``) and what departs:

* Masks are drawn as BEiT's generator draws them (``masking_generator.py``): 104.4 masked patches on average,
  exactly 105 in ~65% of masks, no scattered top-up; the loss is the mean over every masked patch of the batch,
  as EVA's ``-cos(lm_head(x[mask]), target[mask]).mean()``.
* Initialisation is EVA's ``jax_init``, matrix by matrix (separate q/k/v and w1/w2 for B/L, fused for Ti/S), with
  the sub-LN rescale and tokens trunc-normal(0.02) cut at one std; parameter groups are EVA's (no decay for
  ndim <= 1, biases, ``pos_embed``, ``cls_token``; the ``mask_token`` is decayed).
* Precision: bf16 autocast instead of DeepSpeed fp16 with dynamic loss scaling (bf16 needs no loss scale);
  the teacher's weights are bf16 (``teacher_precision``; EVA keeps fp32 weights under fp16 autocast;
  ``teacher_precision=fp32`` computes the targets in fp32). bf16 weights keep the targets at cosine 0.99996 on
  average (0.9995 at worst) to an fp32 teacher's, over the 4,096 patches of 256 Fashion-MNIST images through a
  random EVA02-test teacher (EVA's fp16 autocast: 0.999999), 0.99985 (0.99967 at worst) over 6,272 patches of
  32 images through a random EVA02-B-16 tower at 224 px (fp16 autocast: 0.999998): a loss floor of 4e-5 to 1.5e-4
  against the loss's 1 - cosine (``benchmarks/bench_teacher_precision.py``; a trained g/14 teacher is not
  measured). The effect of bf16 autocast
  on the student has not been measured.
* NaN: as EVA restarts from its last checkpoint on a NaN loss, a non-finite loss or gradient norm restores the
  newest checkpoint and skips the data window that produced it, up to ``nan_max_retries`` (3) times
  (``openeva.train.nan_guard``).
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

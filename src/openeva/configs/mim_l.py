"""EVA-02-L MIM pretraining, the published recipe (Fang et al., 2023, arXiv 2303.11331, Table 2).

Student ``eva02_large_patch14_224`` (303.3M params), teacher EVA01-CLIP-g/14, peak lr 0.0015, global batch 2048
(128 per process x 16; keep it with data.batch_size or optim.accum_steps), 150 epochs on ImageNet-21K
(the rest of the recipe: ``_eva02_mim.py``).

The Merged-38M variant runs 56 epochs: ``schedule.epochs=56 data.train=... data.train_num_samples=38000000
schedule.warmup_steps=18554``.

    torchrun --nproc_per_node 8 --nnodes 2 ... -m openeva pretrain mim_l \\
        data.train=/data/in21k/shards-{00000..14196}.tar task_options.teacher_pretrained=/ckpt/EVA01_CLIP_g_14_psz14_s11B.pt

``RUN/final`` is the backbone: ``openeva train clip_eva02_b16 model.pretrained_image=RUN/final`` (EVA-CLIP) or a
classifier (``openeva eval --task finetune``).
"""

from openeva.configs._eva02_mim import eva02_mim_in21k

config = eva02_mim_in21k("mim_l", "eva02_large_patch14_224", peak_lr=0.0015, global_batch=2048, epochs=150,
                         drop_path_rate=0.1, grad_checkpointing=True)

"""EVA-02-S MIM pretraining, the published recipe (Fang et al., 2023, arXiv 2303.11331, Table 2).

Student ``eva02_small_patch14_224`` (21.6M params), teacher EVA01-CLIP-g/14, peak lr 0.003, global batch 4000
(250 per process x 16; keep it with data.batch_size or optim.accum_steps), 240 epochs on ImageNet-21K
(the rest of the recipe: ``_eva02_mim.py``).

    torchrun --nproc_per_node 8 --nnodes 2 ... -m openeva pretrain mim_s \\
        data.train=/data/in21k/shards-{00000..14196}.tar task_options.teacher_pretrained=/ckpt/EVA01_CLIP_g_14_psz14_s11B.pt

``RUN/final`` is the backbone: ``openeva train clip_eva02_b16 model.pretrained_image=RUN/final`` (EVA-CLIP) or a
classifier (``openeva eval --task finetune``).
"""

from openeva.configs._eva02_mim import eva02_mim_in21k

config = eva02_mim_in21k("mim_s", "eva02_small_patch14_224", peak_lr=0.003, global_batch=4000, epochs=240)

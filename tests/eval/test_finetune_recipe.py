"""Without ``--finetune-config`` the recipe follows the backbone: pretrained -> ``finetune_pretrained_tiny``,
random -> ``finetune_scratch_tiny``, and the choice is said in the output (issue 13, item 2)."""

from openeva.eval.finetune import load_finetune_config
from openeva.eval.finetune_recipe import PRETRAINED_RECIPE, SCRATCH_RECIPE, auto_finetune_recipe


def test_a_checkpoint_or_a_pretrained_tag_gets_the_pretrained_recipe(tmp_path):
    lines = []
    assert auto_finetune_recipe(str(tmp_path), log=lines.append) == PRETRAINED_RECIPE
    assert lines == [f"fine-tune recipe: pretrained (backbone has pretrained weights; {PRETRAINED_RECIPE})"]
    assert auto_finetune_recipe("eva02_test_patch8_32", pretrained="mim_in22k", log=None) == PRETRAINED_RECIPE


def test_random_weights_get_the_scratch_recipe():
    lines = []
    assert auto_finetune_recipe("eva02_test_patch8_32", log=lines.append) == SCRATCH_RECIPE
    assert lines and lines[0].startswith("fine-tune recipe: from scratch (backbone has random weights")


def test_the_two_recipes_differ_where_pretraining_matters():
    pre, scratch = load_finetune_config(PRETRAINED_RECIPE), load_finetune_config(SCRATCH_RECIPE)
    # the head may train as fast as from scratch (lr 2e-3 measured best at 150 steps, bench_lpft_recipe.py), but every
    # block below it trains slower: block k from the top gets lr * layer_decay ** k
    assert pre.optim.lr <= scratch.optim.lr and pre.optim.layer_decay < scratch.optim.layer_decay
    for k in range(1, 13):
        assert pre.optim.lr * pre.optim.layer_decay ** k < scratch.optim.lr * scratch.optim.layer_decay ** k
    # measured on Fashion-MNIST (configs/finetune_pretrained_tiny.py): drop path and label smoothing cost the
    # pretrained start points at these run lengths, the slowed patch embedding keeps what MIM learned
    assert pre.model.drop_path_rate == 0.0 and pre.task_options["label_smoothing"] == 0.0
    assert pre.task_options["patch_embed_grad_scale"] < 1.0
    assert scratch.task_options["patch_embed_grad_scale"] == 1.0
    assert pre.precision == scratch.precision == "auto"  # fp32 on a CPU without native bf16

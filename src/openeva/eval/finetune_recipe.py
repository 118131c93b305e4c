"""Which fine-tune recipe a backbone gets when the user names none: pretrained weights -> the pretrained recipe
(layer decay 0.75, warmup, a slowed patch embedding), random weights -> the from-scratch one.

One recipe for both loses either way (issue 13; Fashion-MNIST, 100 steps, benchmarks/results/user_chain.md): the
from-scratch recipe (little layer decay, a full-speed patch embedding, smoothing, EMA) moves the student's lower
blocks as fast as its head and ends at 81.1% against 83.2% for the pretrained recipe with LP-FT, and the pretrained
recipe's layer decay leaves a random backbone's lower blocks under-trained (72.1% against 73.3%). The choice is
printed, so a reader of the log knows which one ran.
"""

from __future__ import annotations

from pathlib import Path

PRETRAINED_RECIPE = "finetune_pretrained_tiny"
SCRATCH_RECIPE = "finetune_scratch_tiny"


def has_pretrained_weights(model, pretrained: str | None = None) -> tuple[bool, str]:
    """(whether the backbone starts from trained weights, why), from how the model is given."""
    if pretrained:
        return True, f"pretrained={pretrained}"
    if isinstance(model, str):
        if Path(model).exists():
            return True, "backbone has pretrained weights"
        return False, "backbone has random weights"
    return True, "a built model is taken to carry its weights"


def auto_finetune_recipe(model, pretrained: str | None = None, log=print) -> str:
    """The recipe name for ``model``; logs ``fine-tune recipe: pretrained (backbone has pretrained weights)``."""
    is_pretrained, why = has_pretrained_weights(model, pretrained)
    name = PRETRAINED_RECIPE if is_pretrained else SCRATCH_RECIPE
    if log is not None:
        log(f"fine-tune recipe: {'pretrained' if is_pretrained else 'from scratch'} ({why}; {name})")
    return name

"""The linear probe: the protocol lives in :mod:`openeva.evaluators.linear_probe` (shared with training); these
are the names ``openeva.eval.linear_probe`` has always offered."""

from openeva.evaluators.linear_probe import (
    DEFAULT_SEARCH_SAMPLES, DEFAULT_WEIGHT_DECAYS, FALLBACK_WEIGHT_DECAY, LinearProbe, LinearProbeOptions,
    LinearProbeResult, ProbeFit, _subsample, evaluate_linear_probe, few_shot_indices, fit_linear_head,
    fit_linear_probe, fit_logistic_regression, stratified_split,
)

__all__ = [
    "DEFAULT_SEARCH_SAMPLES", "DEFAULT_WEIGHT_DECAYS", "FALLBACK_WEIGHT_DECAY", "LinearProbe", "LinearProbeOptions",
    "LinearProbeResult", "ProbeFit", "_subsample", "evaluate_linear_probe", "few_shot_indices", "fit_linear_head",
    "fit_linear_probe", "fit_logistic_regression", "stratified_split",
]

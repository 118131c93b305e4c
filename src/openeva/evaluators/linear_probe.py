"""Linear probe: multinomial logistic regression on frozen features (CLIP paper, Sec. 3.2 / App. A.3).

CLIP fits sklearn's L-BFGS logistic regression and sweeps the L2 strength on a validation split; here the
same objective is minimised in torch with full-batch L-BFGS (GPU-capable), sweeping the weight decay on a
held-out part of the training split, then refitting on the whole training split with the best value.
Features are standardised with training statistics so one weight-decay grid suits every model width.

Speed at 60,000 x D features (issue 13; ``benchmarks/bench_linear_probe.py``): the search runs on a stratified
subsample of at most ``search_samples`` fitting samples (the held-out accuracy that ranks the weight decays
needs far fewer samples than the final fit), the grid is walked from the strongest to the weakest decay with
each fit starting from the previous solution, and the final refit on every training sample starts from the
chosen decay's search solution. ``search_samples=None, warm_start=False`` is the former exhaustive search.

Rank rule: the training features are gathered (every rank holds them in dataset order), rank 0 fits the probe
and shares it (:func:`~openeva.evaluators.distributed.broadcast`), each rank scores its part of the test set
and the counts are summed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from openeva.evaluators.base import Batching, TrainTest, rank_batches
from openeva.evaluators.classification import classification_counts, counts_metrics
from openeva.evaluators.distributed import all_sum, broadcast, rank_world
from openeva.evaluators.features import extract, image_features
from openeva.metrics import classification_metrics
from openeva.runtime import autocast

DEFAULT_WEIGHT_DECAYS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
FALLBACK_WEIGHT_DECAY = 1e-4  # used when no held-out samples remain for the search
DEFAULT_SEARCH_SAMPLES = 10_000  # fitting samples in the weight-decay search (held-out: a quarter of that)


@dataclass
class LinearProbeResult:
    metrics: dict[str, float]
    weight_decay: float
    val_acc1: dict[float, float] = field(default_factory=dict)  # search: weight decay -> held-out top-1
    scores: torch.Tensor | None = None  # (N_test, C) logits
    num_train: int = 0


def few_shot_indices(labels: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """k random positions per class (all of a class's samples when it has fewer than k)."""
    if k < 1:
        raise ValueError(f"few-shot k must be >= 1, got {k}")
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c in labels.unique():
        pos = (labels == c).nonzero().flatten()
        picked.append(pos[torch.randperm(len(pos), generator=g)[:k]])
    return torch.cat(picked).sort().values


def stratified_split(labels: torch.Tensor, val_fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(train positions, held-out positions): ``val_fraction`` of each class with >= 2 samples held out."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    g = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in labels.unique():
        pos = (labels == c).nonzero().flatten()
        pos = pos[torch.randperm(len(pos), generator=g)]
        n_val = 0 if len(pos) < 2 else max(1, round(val_fraction * len(pos)))
        val.append(pos[:n_val])
        train.append(pos[n_val:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def _standardize(fit_x: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean = fit_x.mean(dim=0, keepdim=True)  # (1, D)
    std = fit_x.std(dim=0, keepdim=True).nan_to_num(1.0).clamp(min=1e-6)  # (1, D)
    return [(x - mean) / std for x in (fit_x, *others)]


def fit_logistic_regression(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    weight_decay: float,
    *,
    max_iter: int = 500,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise mean cross-entropy + wd/2 * ||W||^2 with full-batch L-BFGS; returns W (D, C), b (C,).

    ``init`` (W, b) starts from a previous solution (a warm start) instead of zeros.
    """
    if init is None:
        weight = torch.zeros(x.shape[1], num_classes, device=x.device, requires_grad=True)
        bias = torch.zeros(num_classes, device=x.device, requires_grad=True)
    else:
        weight = init[0].detach().clone().to(x.device).requires_grad_(True)  # (D, C)
        bias = init[1].detach().clone().to(x.device).requires_grad_(True)  # (C,)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-7, tolerance_change=1e-10)
    y = y.long()
    rows = torch.arange(len(y), device=x.device)

    @torch.no_grad()
    def closure():
        # the gradient by hand: autograd's x.t() @ dlogits is a transposed skinny GEMM that runs ~8x slower on
        # CPU than the equal (dlogits.t() @ x).t() below (measured at 60,000 x 384)
        log_p = torch.log_softmax(x @ weight + bias, dim=1)  # (N, C)
        loss = -log_p[rows, y].mean() + 0.5 * weight_decay * weight.pow(2).sum()
        dlogits = log_p.exp()  # (N, C): softmax - one_hot, over N
        dlogits[rows, y] -= 1.0
        dlogits /= len(y)
        weight.grad = (dlogits.t() @ x).t().contiguous() + weight_decay * weight  # (D, C)
        bias.grad = dlogits.sum(dim=0)  # (C,)
        return loss

    opt.step(closure)
    return weight.detach(), bias.detach()


def _subsample(positions: torch.Tensor, labels: torch.Tensor, limit: int | None, seed: int) -> torch.Tensor:
    """At most ``limit`` of ``positions``, drawn per class in proportion (all of them when under the limit)."""
    if limit is None or len(positions) <= limit:
        return positions
    kept, _ = stratified_split(labels[positions], 1.0 - limit / len(positions), seed)
    return positions[kept]


def _accuracy(x, y, weight, bias) -> float:
    return ((x @ weight + bias).argmax(dim=1) == y).float().mean().item()


def _search_weight_decay(x, labels, fit_idx, val_idx, num_classes, weight_decays, search_samples, warm_start,
                         max_iter, seed, device) -> tuple[float, dict, dict]:
    """-> (best weight decay, {wd: held-out top-1}, {wd: (W, b) on standardised features}).

    Fits on ``fit_idx`` and ranks on ``val_idx`` (both subsampled to ``search_samples``), features standardised
    with the fitting statistics; ties go to the stronger decay.
    """
    weight_decays = list(weight_decays)
    val_acc: dict[float, float] = {}
    solutions: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}
    if len(weight_decays) == 1:
        return weight_decays[0], val_acc, solutions
    if len(val_idx) == 0:
        return FALLBACK_WEIGHT_DECAY, val_acc, solutions
    fit_idx = _subsample(fit_idx, labels, search_samples, seed)
    val_idx = _subsample(val_idx, labels, None if search_samples is None else max(1, search_samples // 4), seed + 1)
    fx, vx = _standardize(x[fit_idx], x[val_idx])
    fy, vy = labels[fit_idx].to(device), labels[val_idx].to(device)
    fx, vx = fx.to(device), vx.to(device)
    solution = None
    for wd in sorted(weight_decays, reverse=warm_start):  # strong decay first: the easy fit seeds the next
        w, b = fit_logistic_regression(fx, fy, num_classes, wd, max_iter=max_iter,
                                       init=solution if warm_start else None)
        solution = (w, b)
        solutions[wd] = solution
        val_acc[wd] = _accuracy(vx, vy, w, b)
    return max(weight_decays, key=lambda wd: (val_acc[wd], wd)), val_acc, solutions


def fit_linear_head(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    weight_decays=DEFAULT_WEIGHT_DECAYS,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_iter: int = 500,
    search_samples: int | None = DEFAULT_SEARCH_SAMPLES,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The probe's classifier for a model's own head: -> (W (C, D), b (C,), weight decay), acting on RAW features.

    The same search and fit as :func:`evaluate_linear_probe` (standardised features, weight decay chosen on a
    held-out part), without its L2 normalisation (a head sees the features as they are), and with the
    standardisation folded into the weights: ``((x - m) / s) @ W + b == x @ (W / s') + (b - (m / s) @ W)``.
    Used to start a fine-tune from the probe (LP-FT), so that its first step scores what the probe scores.
    """
    labels = labels.long()
    x = features.float()  # (N, D)
    fit_idx, val_idx = stratified_split(labels, val_fraction, seed)
    best_wd, _, solutions = _search_weight_decay(x, labels, fit_idx, val_idx, num_classes, weight_decays,
                                                 search_samples, True, max_iter, seed, x.device)
    mean = x.mean(dim=0, keepdim=True)  # (1, D)
    std = x.std(dim=0, keepdim=True).nan_to_num(1.0).clamp(min=1e-6)  # (1, D)
    w, b = fit_logistic_regression((x - mean) / std, labels, num_classes, best_wd, max_iter=max_iter,
                                   init=solutions.get(best_wd))  # (D, C), (C,)
    raw_w = w / std.t()  # (D, C)
    raw_b = b - (mean / std) @ w  # (1, C)
    return raw_w.t().contiguous(), raw_b.flatten(), best_wd


@dataclass
class ProbeFit:
    """A fitted probe: L2-normalised features standardised by the fitting statistics, then ``x @ weight + bias``."""

    mean: torch.Tensor  # (1, D)
    std: torch.Tensor  # (1, D)
    weight: torch.Tensor  # (D, C)
    bias: torch.Tensor  # (C,)
    weight_decay: float
    val_acc1: dict[float, float]
    num_train: int

    def scores(self, features: torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
        """(N, D) raw features -> (N, C) logits on the CPU."""
        x = (F.normalize(features.float(), dim=-1) - self.mean) / self.std  # (N, D)
        return (x.to(device) @ self.weight.to(device) + self.bias.to(device)).cpu()

    def cpu(self) -> "ProbeFit":
        return ProbeFit(self.mean.cpu(), self.std.cpu(), self.weight.cpu(), self.bias.cpu(), self.weight_decay,
                        self.val_acc1, self.num_train)


@dataclass(frozen=True)
class LinearProbeOptions:
    """The probe's search and fit: weight-decay grid, held-out fraction, L-BFGS iterations, few-shot k, seed,
    the search's sample cap and warm start. One object for :func:`fit_linear_probe`, :func:`evaluate_linear_probe`
    and :class:`LinearProbe`, so the three cannot drift apart."""

    weight_decays: tuple[float, ...] = DEFAULT_WEIGHT_DECAYS
    val_fraction: float = 0.2
    max_iter: int = 500
    few_shot: int | None = None
    seed: int = 0
    search_samples: int | None = DEFAULT_SEARCH_SAMPLES
    warm_start: bool = True  # walk the grid from strong to weak decay, each fit starting from the last one

    def __post_init__(self):
        object.__setattr__(self, "weight_decays", tuple(float(w) for w in self.weight_decays))
        if not self.weight_decays or any(w < 0 for w in self.weight_decays):
            raise ValueError(f"weight_decays must be numbers >= 0, got {list(self.weight_decays)}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.max_iter < 1:
            raise ValueError(f"probe max_iter must be >= 1, got {self.max_iter}")
        if self.few_shot is not None and self.few_shot < 1:
            raise ValueError(f"few_shot must be >= 1, got {self.few_shot}")
        if self.search_samples is not None and self.search_samples < 1:
            raise ValueError(f"search_samples must be >= 1 or None, got {self.search_samples}")


def fit_linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    num_classes: int,
    options: LinearProbeOptions = LinearProbeOptions(),
    *,
    device: str | torch.device = "cpu",
) -> ProbeFit:
    """Search the weight decay and fit the probe on (N, D) features (see :func:`evaluate_linear_probe`)."""
    o = options
    train_labels = train_labels.long()
    if train_features.shape[0] != train_labels.shape[0]:
        raise ValueError("features and labels must have the same number of rows")
    if train_labels.max() >= num_classes:
        raise ValueError(f"a label is >= num_classes ({num_classes})")
    train_x = F.normalize(train_features.float(), dim=-1)

    if o.few_shot is not None:
        fit_idx = few_shot_indices(train_labels, o.few_shot, o.seed)
        rest = torch.ones(len(train_labels), dtype=torch.bool)
        rest[fit_idx] = False
        rest_idx = rest.nonzero().flatten()
        val_idx = (rest_idx[few_shot_indices(train_labels[rest_idx], o.few_shot, o.seed + 1)] if len(rest_idx)
                   else rest_idx)
        final_idx = fit_idx
    else:
        fit_idx, val_idx = stratified_split(train_labels, o.val_fraction, o.seed)
        final_idx = torch.arange(len(train_labels))

    best_wd, val_acc, solutions = _search_weight_decay(train_x, train_labels, fit_idx, val_idx, num_classes,
                                                        o.weight_decays, o.search_samples, o.warm_start,
                                                        o.max_iter, o.seed, device)
    fit_x = train_x[final_idx]
    mean = fit_x.mean(dim=0, keepdim=True)  # (1, D)
    std = fit_x.std(dim=0, keepdim=True).nan_to_num(1.0).clamp(min=1e-6)  # (1, D)
    w, b = fit_logistic_regression(((fit_x - mean) / std).to(device), train_labels[final_idx].to(device),
                                   num_classes, best_wd, max_iter=o.max_iter,
                                   init=solutions.get(best_wd) if o.warm_start else None)
    return ProbeFit(mean, std, w, b, best_wd, val_acc, len(final_idx))


def evaluate_linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    options: LinearProbeOptions = LinearProbeOptions(),
    *,
    device: str | torch.device = "cpu",
) -> LinearProbeResult:
    """Fit and evaluate a linear classifier on (N, D) features.

    Without ``few_shot``: hold out ``val_fraction`` of each class for the weight-decay search, then refit on
    the whole training set. With ``few_shot=k``: train on k samples per class, search on k other samples per
    class where the training split has them (else use ``FALLBACK_WEIGHT_DECAY``), never train on those.
    ``search_samples`` caps the fitting samples of the search (held-out: a quarter of it; None: no cap);
    ``warm_start`` walks the grid from strong to weak decay, each fit starting from the last one.
    """
    test_labels = test_labels.long()
    if test_features.shape[0] != test_labels.shape[0]:
        raise ValueError("features and labels must have the same number of rows")
    if test_labels.max() >= num_classes:
        raise ValueError(f"a label is >= num_classes ({num_classes})")
    fit = fit_linear_probe(train_features, train_labels, num_classes, options, device=device)
    scores = fit.scores(test_features, device)  # (N_test, C)
    metrics = classification_metrics(scores, test_labels, num_classes)
    return LinearProbeResult(metrics, fit.weight_decay, fit.val_acc1, scores, num_train=fit.num_train)


@dataclass(frozen=True)
class LinearProbe:
    """Logistic-regression probe of a frozen model's image features on a :class:`TrainTest` pair."""

    options: LinearProbeOptions = field(default_factory=LinearProbeOptions)
    batching: Batching = field(default_factory=Batching)
    name: str = "linear_probe"

    def fit(self, train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, device="cpu") -> ProbeFit:
        return fit_linear_probe(train_x, train_y, num_classes, self.options, device=device)

    def score(self, train_x, train_y, test_x, test_y, num_classes: int, device="cpu") -> LinearProbeResult:
        """Features already encoded (one process) -> the probe's result, as :func:`evaluate_linear_probe`."""
        return evaluate_linear_probe(train_x, train_y, test_x, test_y, num_classes, self.options, device=device)

    @torch.no_grad()
    def run(self, model, data: TrainTest, *, device="cpu", precision: str = "fp32", group=None) -> dict[str, float]:
        num_classes = len(data.test.classnames)
        (train_x, train_y), _ = extract(lambda cols: (image_features(model, cols[0]), cols[1].long()),
                                        data.train.dataset, self.batching, device=device, precision=precision,
                                        group=group, gather=True, desc="probe features")  # (N, E), (N,)
        fit = None
        if rank_world(group)[0] == 0:
            fit = self.fit(train_x, train_y, num_classes, device).cpu()  # the gradient is written by hand
        fit = broadcast(fit, group)
        counts = torch.zeros(3 + 2 * num_classes, dtype=torch.long)
        for columns, _ in rank_batches(data.test.dataset, self.batching, group, "probe"):
            with autocast(precision, device):
                feats = image_features(model, columns[0].to(device)).float()  # (B, E)
            counts += classification_counts(fit.scores(feats.cpu(), device), columns[1], num_classes)
        return counts_metrics(all_sum(counts, group), num_classes)

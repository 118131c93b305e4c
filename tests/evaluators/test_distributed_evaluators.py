"""Every evaluator on 2 gloo processes equals the same evaluator in one process on the same data.

The ranks run this file as a script (``python test_distributed_evaluators.py RANK STORE OUT``), build the same
tiny models and datasets (seeded), run each evaluator with ``group=WORLD`` (the models with a forward wrapped
in DDP) and save what they got; the tests compare it with ``group=None`` runs in the pytest process. The
datasets have odd sizes (the ranks' blocks differ by one) and an unreadable sample (skipped by every rule).
"""

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from openeva.evaluators import (
    KNN, Accuracy, Batching, KNNOptions, Labelled, LinearProbe, LinearProbeOptions, MIoU, MIoUOptions, Retrieval,
    RetrievalOptions, Segmented, TrainTest, VideoZeroShot, ZeroShot, ZeroShotOptions,
)

WORLD_SIZE = 2
NAMES = ("red", "green", "blue")
BATCHING = Batching(batch_size=3)


class TinyCLIP(nn.Module):
    """Image tower: mean colour -> linear; text tower: mean token embedding; both (B, 8)."""

    def __init__(self):
        super().__init__()
        self.visual = nn.Linear(3, 8)
        self.token_embedding = nn.Embedding(64, 8)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def encode_image(self, images, normalize=False):
        feats = self.visual(images.mean(dim=(2, 3)))  # (B, 8)
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_text(self, tokens, normalize=False):
        feats = self.token_embedding(tokens).mean(dim=1)  # (B, 8)
        return F.normalize(feats, dim=-1) if normalize else feats

    def forward(self, images):  # a classifier view of the image tower, for Accuracy
        return self.encode_image(images)[:, :len(NAMES)]


def tokenize(texts):
    """Texts -> (N, 12) character codes mod 64."""
    out = torch.zeros(len(texts), 12, dtype=torch.long)
    for i, t in enumerate(texts):
        codes = [ord(c) % 64 for c in t[:12]]
        out[i, :len(codes)] = torch.tensor(codes)
    return out


class Images(torch.utils.data.Dataset):
    """(image (3, 4, 4), label) of noisy class colours; item ``bad`` fails to load (None)."""

    def __init__(self, n, seed, bad=None):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % len(NAMES)
        self.images = F.one_hot(self.labels, len(NAMES)).float()[:, :, None, None] + 0.6 * torch.rand(n, 3, 4, 4,
                                                                                                      generator=g)
        self.bad = bad

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return None if i == self.bad else (self.images[i], int(self.labels[i]))


class Pairs(Images):
    """(image, tokens of its caption) pairs."""

    def __getitem__(self, i):
        item = super().__getitem__(i)
        return None if item is None else (item[0], tokenize([f"a {NAMES[item[1]]} {i}"])[0])


class Scenes(Images):
    """(image, (4, 4) mask) with one ignored pixel per image."""

    def __getitem__(self, i):
        item = super().__getitem__(i)
        if item is None:
            return None
        mask = (self.images[i].argmax(dim=0) + int(self.labels[i])) % len(NAMES)  # (4, 4)
        mask[0, 0] = 255
        return item[0], mask


class Videos(torch.utils.data.Dataset):
    """(3 PIL frames, label); item 2 unreadable."""

    def __init__(self, n=7):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == 2:
            return None
        colour = [40, 40, 40]
        colour[i % 3] = 200 + i
        return [Image.new("RGB", (4, 4), tuple(colour)) for _ in range(3)], i % 3


def frame_tensor(frame):
    return torch.from_numpy(__import__("numpy").asarray(frame, dtype="float32") / 255.0).permute(2, 0, 1)


def build():
    """The models, evaluators and data every process builds the same way."""
    torch.manual_seed(0)
    clip = TinyCLIP()
    torch.manual_seed(1)
    seg = nn.Conv2d(3, len(NAMES), 1)
    labelled = Labelled(Images(11, seed=1, bad=4), NAMES)
    train_test = TrainTest(Labelled(Images(17, seed=2, bad=6), NAMES), labelled)
    return {
        "zeroshot": (ZeroShot(tokenize, ZeroShotOptions(templates=("a {c}", "the {c} one")), BATCHING), clip,
                     labelled),
        "accuracy": (Accuracy(batching=BATCHING), clip, Images(11, seed=1, bad=4)),
        "retrieval": (Retrieval(RetrievalOptions(loss=True), BATCHING), clip, Pairs(9, seed=3, bad=5)),
        "knn": (KNN(KNNOptions(ks=(1, 3, 5)), BATCHING), clip, train_test),
        "knn_few_shot": (KNN(KNNOptions(ks=(1, 3), few_shot=2, seed=4), BATCHING), clip, train_test),
        "linear_probe": (LinearProbe(LinearProbeOptions(weight_decays=(1e-3, 1e-1), max_iter=30), BATCHING), clip,
                         train_test),
        "miou": (MIoU(MIoUOptions(loss=True), BATCHING), seg, Segmented(Scenes(7, seed=5, bad=3), len(NAMES))),
        "video": (VideoZeroShot(tokenize, frame_tensor), clip, Labelled(Videos(), NAMES)),
    }


def run_all(group=None, ddp: bool = False) -> dict:
    results = {}
    for name, (evaluator, model, data) in build().items():
        if ddp and name in ("accuracy", "miou"):  # the evaluators that call forward: the model as DDP holds it
            model = nn.parallel.DistributedDataParallel(model)
        results[name] = evaluator.run(model, data, device="cpu", precision="fp32", group=group)
    return results


def _run_rank(rank: int, store: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD_SIZE)
    try:
        torch.save(run_all(dist.group.WORLD, ddp=True), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Run both ranks once; -> [results of rank 0, results of rank 1]."""
    tmp = tmp_path_factory.mktemp("gloo")
    from gloo_ranks import run_ranks  # here, not at the top: the ranks run this file as a script

    run_ranks(__file__, WORLD_SIZE, tmp)
    return [torch.load(tmp / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD_SIZE)]


@pytest.fixture(scope="module")
def single():
    return run_all()


def _same(actual: dict, expected: dict, exact: bool) -> None:
    assert set(actual) == set(expected) and expected
    for key, value in expected.items():
        if exact:
            assert actual[key] == value, key
        else:
            assert actual[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


# counts are integers summed over ranks: the metrics are exactly one process's
@pytest.mark.parametrize("name", ["zeroshot", "accuracy", "knn", "knn_few_shot", "miou", "video"])
def test_summed_counts_equal_one_process(ranks, single, name):
    for rank in range(WORLD_SIZE):
        _same(ranks[rank][name], single[name], exact=name != "accuracy" and name != "miou")


def test_retrieval_gathers_the_features(ranks, single):
    for rank in range(WORLD_SIZE):
        _same(ranks[rank]["retrieval"], single["retrieval"], exact=False)
    assert "loss" in single["retrieval"] and single["retrieval"]["text_retrieval_recall@10"] == 1.0  # 8 pairs


def test_linear_probe_fits_once_and_shares_it(ranks, single):
    for rank in range(WORLD_SIZE):
        _same(ranks[rank]["linear_probe"], single["linear_probe"], exact=True)


def test_the_data_splits_and_skips_as_stated(single):
    """The single-process numbers are right by construction: 10 readable images of 11, 3 classes."""
    assert single["accuracy"].keys() == {"acc1", "acc5", "loss"} and single["accuracy"]["acc5"] == 1.0
    assert set(single["knn"]) >= {"knn1_acc1", "knn5_acc5", "acc1", "mean_per_class_recall"}
    assert set(single["miou"]) == {"miou", "miou_fg", "pixel_acc", "loss"}


if __name__ == "__main__":
    _run_rank(int(sys.argv[1]), sys.argv[2], sys.argv[3])

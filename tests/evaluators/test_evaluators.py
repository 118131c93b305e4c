"""The evaluators in one process: one zero-shot head for every caller, typed options that refuse bad values, the
counts that reproduce the metric functions, and the training config's ``evals``."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from openeva.evaluators import Batching, KNNOptions, LinearProbeOptions, RetrievalOptions, ZeroShotOptions
from openeva.evaluators.classification import classification_counts, counts_metrics
from openeva.evaluators.distributed import rank_positions
from openeva.evaluators.text import build_zeroshot_classifier, prompt_classifier, zeroshot_classifier
from openeva.metrics import classification_metrics, zeroshot_head


class Words(torch.nn.Module):
    """A text tower whose embedding of a text is fixed by its words (tokens = word ids)."""

    def __init__(self, vocab=("a", "photo", "of", "cat", "dog", "car", "the", "sky"), dim=6):
        super().__init__()
        self.vocab = list(vocab)
        self.table = torch.nn.Embedding(len(vocab) + 1, dim)

    def tokenize(self, texts):
        out = torch.zeros(len(texts), 8, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = [self.vocab.index(w) + 1 for w in t.replace(".", "").split()]
            out[i, :len(ids)] = torch.tensor(ids)
        return out

    def encode_text(self, tokens, normalize=False):
        feats = self.table(tokens).sum(dim=1)  # (N, E)
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_image(self, images, normalize=False):
        return images


def test_one_zero_shot_head_for_eval_segmenter_and_serving():
    torch.manual_seed(0)
    model = Words()
    names, templates = ["cat", "dog", "car"], ["a photo of a {c}.", "the {c}"]
    ours = build_zeroshot_classifier(model, model.tokenize, names, templates, batch_size=2)  # chunks of 2 prompts
    prompts = [t.replace("{c}", c) for c in names for t in templates]
    by_hand = zeroshot_head(model.encode_text(model.tokenize(prompts)).detach(), len(names))  # (E, C)
    torch.testing.assert_close(ours, by_hand)
    assert ours.shape == (6, 3) and torch.allclose(ours.norm(dim=0), torch.ones(3))

    # serving: the same head over a numpy encoder (what every serving backend offers)
    from openeva.serve.classify import label_probs, text_classifier

    class NumpyEncoder:
        def encode_texts(self, texts):
            return model.encode_text(model.tokenize(texts), normalize=True).detach().numpy()

    served = text_classifier(NumpyEncoder(), names, templates)
    np.testing.assert_allclose(served, ours.numpy(), rtol=1e-5, atol=1e-6)
    probs = label_probs(np.eye(6, dtype=np.float32)[:2], served)  # (2, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)

    # the dense segmenter: class columns from the same head, background prompts ensembled as one more class
    def encode(texts):
        return model.encode_text(model.tokenize(texts)).detach()

    with_bg = torch.cat([zeroshot_classifier(encode, names, templates), prompt_classifier(encode, [["the sky"]])], 1)
    assert with_bg.shape == (6, 4)
    torch.testing.assert_close(with_bg[:, :3], ours)


def test_counts_reproduce_the_metric_functions():
    g = torch.Generator().manual_seed(0)
    scores, labels = torch.randn(40, 7, generator=g), torch.randint(0, 6, (40,), generator=g)  # class 6 absent
    counts = classification_counts(scores[:25], labels[:25], 7) + classification_counts(scores[25:], labels[25:], 7)
    got, want = counts_metrics(counts, 7), classification_metrics(scores, labels, 7)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-6)


def test_rank_blocks_cover_the_dataset_once(monkeypatch):
    import openeva.evaluators.distributed as d

    blocks = []
    for rank in range(3):  # three ranks, seen without a process group
        monkeypatch.setattr(d, "rank_world", lambda group, rank=rank: (rank, 3))
        blocks.append(list(rank_positions(10, object())))
    assert blocks == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    monkeypatch.undo()
    assert list(rank_positions(5, None)) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("make, match", [
    (lambda: KNNOptions(ks=(1, 0)), "knn_ks"),
    (lambda: KNNOptions(temperature=0), "knn_temperature"),
    (lambda: LinearProbeOptions(val_fraction=1.5), "val_fraction"),
    (lambda: LinearProbeOptions(few_shot=0), "few_shot"),
    (lambda: RetrievalOptions(ks=()), "retrieval ks"),
    (lambda: ZeroShotOptions(templates=()), "template"),
    (lambda: Batching(batch_size=0), "batch_size"),
])
def test_options_refuse_bad_values(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_eval_config_is_typed_and_checked(tmp_path):
    from openeva.eval import EvalConfig, SegmentationEvalOptions

    config = EvalConfig(tasks="zeroshot, knn,linear-probe", dataset=tmp_path, classnames=["a", "b"])
    assert config.tasks == ("zeroshot", "knn", "linear_probe") and config.dataset == str(tmp_path)
    assert config.classnames == ("a", "b") and config.knn == KNNOptions()
    with pytest.raises(ValueError, match="batch_size"):
        EvalConfig(tasks="knn", dataset="d", batch_size=0)
    with pytest.raises(ValueError, match="EvalConfig.knn"):
        EvalConfig(tasks="knn", dataset="d", knn={"ks": (1,)})  # an untyped dict is refused
    with pytest.raises(ValueError, match="bg-threshold"):
        SegmentationEvalOptions(bg_threshold=2.0)
    with pytest.raises(ValueError, match="method"):
        SegmentationEvalOptions(method="nope")


def test_training_config_names_its_evals():
    from openeva.train.config import ScheduleConfig, TrainConfig
    from openeva.train.evals import select_evals

    base = TrainConfig(schedule=ScheduleConfig(total_steps=4, warmup_steps=0))
    assert base.evals is None and select_evals(base, ("retrieval", "zeroshot")) == ("retrieval", "zeroshot")
    only = base.with_overrides(["evals=zeroshot"])
    assert only.evals == ("zeroshot",) and select_evals(only, ("retrieval", "zeroshot")) == ("zeroshot",)
    with pytest.raises(ValueError, match="task 'clip' validates with retrieval, zeroshot, not miou"):
        select_evals(base.with_overrides(["evals=miou"]), ("retrieval", "zeroshot"))
    with pytest.raises(ValueError, match="evals"):
        base.with_overrides(["evals=knn"])

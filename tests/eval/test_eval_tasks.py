"""Task math on tensors whose right answers are known by hand."""

import json
import math

import pytest
import torch
from evalfakes import NAMES, FakeCLIP, fake_tokenizer

from openeva.eval.knn import knn_classify, knn_scores, main_k
from openeva.eval.linear_probe import (
    LinearProbeOptions, evaluate_linear_probe, few_shot_indices, stratified_split,
)
from openeva.eval.retrieval import evaluate_retrieval, retrieval_ranks
from openeva.eval.zeroshot import (
    build_zeroshot_classifier,
    classification_metrics,
    confusion_matrix,
    fill_template,
    load_builtin,
    load_classnames,
    load_templates,
    zeroshot_logits,
)


# ------------------------------------------------------------------------------------------ metadata
def test_builtin_metadata_sizes():
    imagenet = load_builtin("imagenet1k")
    assert len(imagenet["classnames"]) == 1000
    assert len(imagenet["templates"]) == 80 and len(imagenet["templates_short"]) == 7
    assert imagenet["classnames"][0] == "tench" and imagenet["classnames"][-1] == "toilet paper"
    assert len(load_classnames("cifar10")) == 10 and len(load_classnames("cifar100")) == 100
    assert load_templates("imagenet1k_short")[0] == "itap of a {c}."
    assert fill_template("a photo of a {c}.", "dog") == "a photo of a dog."
    assert fill_template("a {} photo", "dog") == "a dog photo"


def test_user_classnames_and_templates_files(tmp_path):
    (tmp_path / "names.txt").write_text("cat\n\ndog\n")
    (tmp_path / "names.json").write_text(json.dumps({"pets": ["cat", "dog"], "cars": ["a"]}))
    (tmp_path / "t.json").write_text(json.dumps(["a {c}", "the {c}"]))
    (tmp_path / "bad.txt").write_text("no placeholder\n")
    assert load_classnames(str(tmp_path / "names.txt")) == ["cat", "dog"]
    assert load_classnames(str(tmp_path / "names.json"), dataset="pets") == ["cat", "dog"]
    with pytest.raises(ValueError, match="several datasets"):
        load_classnames(str(tmp_path / "names.json"))
    assert load_templates(str(tmp_path / "t.json")) == ["a {c}", "the {c}"]
    with pytest.raises(ValueError, match="no class-name placeholder"):
        load_templates(str(tmp_path / "bad.txt"))
    with pytest.raises(FileNotFoundError):
        load_classnames(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="neither an existing file nor a builtin"):
        load_classnames("imagenet22k")


# ------------------------------------------------------------------------------------------ zero-shot
class TemplateSensitiveText(torch.nn.Module):
    """Template 'big {c}' -> 3 * e_0 for every class; 'small {c}' -> e_1 (+ class offset on dim 2)."""

    def encode_text(self, tokens, normalize=False):
        out = []
        for row in tokens.tolist():
            text = "".join(chr(c) for c in row if c)
            cls = 1.0 if "beta" in text else 0.0
            out.append([3.0, 0.0, cls * 3.0] if text.startswith("big") else [0.0, 1.0, 0.0])
        return torch.tensor(out)


def test_classifier_averages_normalized_template_embeddings():
    w = build_zeroshot_classifier(TemplateSensitiveText(), fake_tokenizer, ["alpha", "beta"],
                                  ["big {c}", "small {c}"])
    assert w.shape == (3, 2)
    # alpha: normalize([3,0,0]) = e0, normalize([0,1,0]) = e1 -> mean (0.5, 0.5, 0) -> renormalized
    torch.testing.assert_close(w[:, 0], torch.tensor([1.0, 1.0, 0.0]) / math.sqrt(2))
    # beta: normalize([3,0,3]) = (1,0,1)/sqrt2, e1 -> mean -> renormalized
    expected = torch.tensor([1 / math.sqrt(2), 1.0, 1 / math.sqrt(2)])
    torch.testing.assert_close(w[:, 1], expected / expected.norm())


def test_zeroshot_fake_towers_agree_gives_full_accuracy():
    model = FakeCLIP()
    w = build_zeroshot_classifier(model, fake_tokenizer, NAMES, ["a photo of a {c}.", "art of the {c}."],
                                  batch_size=4)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 2, 0])
    images = torch.nn.functional.one_hot(labels, len(NAMES)).float() * 7.0  # unnormalized image features
    logits = zeroshot_logits(images, w)
    torch.testing.assert_close(logits.max(dim=1).values, torch.full((8,), 100.0))
    metrics = classification_metrics(logits, labels, len(NAMES))
    assert metrics == {"acc1": 1.0, "acc5": 1.0, "mean_per_class_recall": 1.0}


def test_classification_metrics_by_hand():
    scores = torch.tensor([[0.9, 0.1, 0.0],   # true 0, pred 0
                           [0.8, 0.2, 0.0],   # true 1, pred 0 (1 in top-2)
                           [0.1, 0.2, 0.7],   # true 2, pred 2
                           [0.5, 0.4, 0.1]])  # true 2, pred 0
    labels = torch.tensor([0, 1, 2, 2])
    m = classification_metrics(scores, labels, 3)
    assert m["acc1"] == 0.5
    assert m["acc5"] == 1.0  # top-min(5, 3)
    assert m["mean_per_class_recall"] == pytest.approx((1.0 + 0.0 + 0.5) / 3)
    conf = confusion_matrix(scores.argmax(1), labels, 3)
    assert conf.tolist() == [[1, 0, 0], [1, 0, 0], [1, 0, 1]]


# ------------------------------------------------------------------------------------------ retrieval
def test_retrieval_ranks_by_hand():
    # 3 images (e0, e1, e2); 5 captions: 0,1 -> image 0; 2 -> image 1; 3,4 -> image 2.
    images = torch.eye(3)
    texts = torch.tensor([
        [0.2, 1.0, 0.0],  # of image 0 but closest to image 1
        [1.0, 0.1, 0.0],  # of image 0, closest to image 0
        [0.0, 1.0, 0.5],  # of image 1, ranks image 1 first
        [1.0, 0.0, 0.3],  # of image 2: image 0 first, image 2 second
        [1.0, 0.9, 0.1],  # of image 2: third
    ])
    t2i = torch.tensor([0, 0, 1, 2, 2])
    ranks = retrieval_ranks(images, texts, t2i, chunk_size=2)
    # text -> image ranks: [1, 0, 0, 1, 2]
    assert ranks.text_to_image.tolist() == [1, 0, 0, 1, 2]
    # image 0: caption 1 (cos .995) is its best text and ranks first.
    # image 1: sims to texts (cosines): t0 .98, t2 .89, t4 .67 -> caption 2 ranks second.
    # image 2: t3 cos .29 vs t2 .45 -> its best caption t3 ranks second.
    assert ranks.image_to_text.tolist() == [0, 1, 1]
    metrics, _ = evaluate_retrieval(images, texts, t2i, ks=(1, 2))
    assert metrics["image_retrieval_recall@1"] == pytest.approx(2 / 5)
    assert metrics["image_retrieval_recall@2"] == pytest.approx(4 / 5)
    assert metrics["text_retrieval_recall@1"] == pytest.approx(1 / 3)
    assert metrics["text_retrieval_recall@2"] == pytest.approx(1.0)
    assert metrics["image_retrieval_mean_rank"] == pytest.approx((2 + 1 + 1 + 2 + 3) / 5)


def test_retrieval_rejects_image_without_caption():
    with pytest.raises(ValueError, match="at least one caption"):
        retrieval_ranks(torch.eye(3), torch.eye(3)[:2], torch.tensor([0, 1]))


# ------------------------------------------------------------------------------------------ linear probe
def separable(n, d=10, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    w_true = torch.randn(d, c, generator=g)
    x = torch.randn(n, d, generator=g) * 3 + 1
    return x, (x @ w_true).argmax(dim=1)


def test_linear_probe_separates_linearly_separable_features():
    x, y = separable(400)
    res = evaluate_linear_probe(x, y, x, y, 4, LinearProbeOptions(weight_decays=(1e-6,), max_iter=300))
    assert res.metrics["acc1"] == 1.0  # separable training data is fit exactly


def test_linear_probe_generalises_and_searches_weight_decay():
    x, y = separable(600, seed=1)
    res = evaluate_linear_probe(x[:400], y[:400], x[400:], y[400:], 4,
                                LinearProbeOptions(weight_decays=(1e-5, 1e-3, 10.0), max_iter=200))
    assert set(res.val_acc1) == {1e-5, 1e-3, 10.0}
    assert res.val_acc1[10.0] < max(res.val_acc1.values())  # heavy decay underfits, so it is not chosen
    assert res.weight_decay in (1e-5, 1e-3)
    assert res.metrics["acc1"] > 0.9
    assert res.num_train == 400


def test_few_shot_and_split_indices():
    labels = torch.tensor([0] * 10 + [1] * 10 + [2] * 3)
    idx = few_shot_indices(labels, 4, seed=3)
    assert torch.bincount(labels[idx]).tolist() == [4, 4, 3]
    assert torch.equal(idx, few_shot_indices(labels, 4, seed=3))  # seeded
    train, val = stratified_split(labels, 0.2, seed=0)
    assert torch.bincount(labels[val]).tolist() == [2, 2, 1]
    assert sorted(train.tolist() + val.tolist()) == list(range(len(labels)))


def test_few_shot_probe_trains_on_k_per_class():
    x, y = separable(300, seed=2)
    res = evaluate_linear_probe(x, y, x, y, 4, LinearProbeOptions(few_shot=5, weight_decays=(1e-4, 1e-2), max_iter=100))
    assert res.num_train == 20
    assert set(res.val_acc1) == {1e-4, 1e-2}


# ------------------------------------------------------------------------------------------ kNN
def test_knn_clustered_features_are_classified_perfectly():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 16, generator=g) * 5
    train_y = torch.arange(3).repeat_interleave(30)
    test_y = torch.arange(3).repeat_interleave(10)
    train_x = centers[train_y] + 0.1 * torch.randn(90, 16, generator=g)
    test_x = centers[test_y] + 0.1 * torch.randn(30, 16, generator=g)
    metrics, scores = knn_classify(train_x, train_y, test_x, test_y, 3, ks=(10, 20))
    assert metrics["knn10_acc1"] == 1.0 and metrics["knn20_acc1"] == 1.0 and metrics["acc1"] == 1.0
    assert scores[10].shape == (30, 3)


def test_knn_vote_is_weighted_by_exp_similarity():
    # query e0; one class-1 neighbour at cos 1.0, two class-0 neighbours at cos 0.8.
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6]])
    labels = torch.tensor([1, 0, 0])
    scores = knn_scores(train, labels, torch.tensor([[1.0, 0.0]]), 2, ks=(3, 1), temperature=0.07)
    expected = torch.tensor([[2 * math.exp(0.8 / 0.07), math.exp(1.0 / 0.07)]])
    torch.testing.assert_close(scores[3], expected)
    assert scores[3].argmax().item() == 1  # weighted vote beats the 2-vs-1 majority
    # with a high temperature the weights flatten and the majority wins
    flat = knn_scores(train, labels, torch.tensor([[1.0, 0.0]]), 2, ks=(3,), temperature=100.0)
    assert flat[3].argmax().item() == 0


def test_knn_k_larger_than_train_set_is_clamped_and_main_k():
    scores = knn_scores(torch.eye(2), torch.tensor([0, 1]), torch.eye(2), 2, ks=(200,))
    assert scores[200].shape == (2, 2)
    assert main_k((10, 20, 100, 200)) == 20 and main_k((5, 100)) == 5
    with pytest.raises(ValueError, match="temperature"):
        knn_scores(torch.eye(2), torch.tensor([0, 1]), torch.eye(2), 2, temperature=0)

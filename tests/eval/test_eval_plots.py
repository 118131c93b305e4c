import torch

from openeva.eval.plots import plot_confusion_matrix, plot_per_class_accuracy, plot_retrieval_examples
from openeva.eval.zeroshot import confusion_matrix, per_class_accuracy

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_classification_plots_small_and_many_classes(tmp_path):
    for c in (4, 60):
        labels = torch.arange(c).repeat(3)
        preds = torch.where(labels % 3 == 0, (labels + 1) % c, labels)
        names = [f"class {i}" for i in range(c)]
        conf = plot_confusion_matrix(confusion_matrix(preds, labels, c), names, tmp_path / f"conf{c}.png")
        acc = per_class_accuracy(preds, labels, c)
        bars = plot_per_class_accuracy(acc, names, tmp_path / f"acc{c}.png")
        for p in (conf, bars):
            assert p.read_bytes()[:8] == PNG_MAGIC


def test_per_class_accuracy_skips_classes_without_samples(tmp_path):
    acc = per_class_accuracy(torch.tensor([0, 0]), torch.tensor([0, 2]), 3)
    assert acc[0] == 1.0 and torch.isnan(acc[1]) and acc[2] == 0.0
    assert plot_per_class_accuracy(acc, ["a", "b", "c"], tmp_path / "a.png").is_file()


def test_retrieval_grid(tmp_path):
    from PIL import Image

    path = plot_retrieval_examples(lambda i: Image.new("RGB", (8, 8), (i * 40, 0, 0)), [0, 1, 2],
                                   [["a red thing"], ["b"], ["c"]], ["a red thing", "b", "wrong"],
                                   [True, True, False], tmp_path / "grid.png")
    assert path.read_bytes()[:8] == PNG_MAGIC

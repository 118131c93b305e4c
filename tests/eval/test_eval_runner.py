"""End to end: evaluate(model, EvalConfig(...)) and the CLI on tiny generated datasets with fake models."""

import csv
import json
import re

import pytest
import torch
import torchvision.transforms as T
from evalfakes import NAMES, FakeBackbone, FakeCLIP, fake_tokenizer, solid_image, write_mnist_split

from openeva.cli import build_parser, eval_cmd, main
from openeva.eval.features import FeatureCache, cache_key, encode_images, model_fingerprint
from openeva.eval.results import load_results, make_result, merge_results, validate_result
from openeva.eval import EvalConfig, KNNOptions, LinearProbeOptions
from openeva.eval.runner import evaluate, parse_tasks

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_zeroshot_end_to_end_with_corrupt_file(make_folder, preprocess, tmp_path):
    root = make_folder(per_class=2)
    (root / "bravo" / "broken.png").write_bytes(b"\x89PNG garbage")
    model = FakeCLIP()
    out = tmp_path / "out"
    config = EvalConfig(tasks="zeroshot", dataset=root, batch_size=3, output_dir=out, model_name="fake",
                        progress=False)
    (result,) = evaluate(model, config, tokenizer=fake_tokenizer, preprocess=preprocess)
    assert result["task"] == "zeroshot_classification" and result["model"] == "fake"
    assert result["metrics"] == {"acc1": 1.0, "acc5": 1.0, "mean_per_class_recall": 1.0}
    assert result["num_skipped"] == 1 and result["skipped_files"][0].endswith("broken.png")
    assert result["num_samples"] == 8 and result["num_templates"] == 1
    saved = json.loads(open(result["result_file"]).read())
    validate_result(saved)
    for png in result["plots"]:
        assert open(png, "rb").read(8) == PNG_MAGIC


def test_zeroshot_with_builtin_templates_and_classnames_file(make_folder, preprocess, tmp_path):
    # folder names are the class names written otherwise (matched by name, never by position)
    root = make_folder(per_class=1, names=["ALPHA", "Bravo", "char_lie"])
    names_file = tmp_path / "names.txt"
    names_file.write_text("alpha\nbravo\ncharlie\n")
    config = EvalConfig(tasks=["zeroshot"], dataset=root, classnames=str(names_file), templates="imagenet1k_short",
                        progress=False)
    (result,) = evaluate(FakeCLIP(), config, tokenizer=fake_tokenizer, preprocess=preprocess)
    assert result["metrics"]["acc1"] == 1.0 and result["num_templates"] == 7


def test_bad_inputs_fail_before_any_compute(make_folder, preprocess, tmp_path):
    root = make_folder(per_class=1)
    model = FakeCLIP()
    kw = dict(tokenizer=fake_tokenizer, preprocess=preprocess)

    def cfg(tasks, **options):
        return EvalConfig(tasks=tasks, dataset=root, progress=False, **options)

    bad_names = tmp_path / "names.txt"
    bad_names.write_text("alpha\nbravo\n")
    with pytest.raises(ValueError, match="class names do not match"):
        evaluate(model, cfg("zeroshot", classnames=str(bad_names)), **kw)
    with pytest.raises(ValueError, match="unknown task 'detection'"):
        evaluate(model, cfg("zeroshot,detection"), **kw)
    with pytest.raises(ValueError, match="run each in its own openeva eval call"):
        evaluate(model, cfg("zeroshot,segmentation"), **kw)
    with pytest.raises(ValueError, match="need a training dataset"):
        evaluate(model, cfg("knn"), **kw)
    with pytest.raises(ValueError, match="precision must be one of"):
        evaluate(model, cfg("zeroshot", precision="int3"), **kw)
    with pytest.raises(ValueError, match="no captions"):
        evaluate(model, cfg("retrieval"), **kw)  # an image folder has no captions
    with pytest.raises(ValueError, match="text tower"):
        evaluate(FakeBackbone(), cfg("zeroshot"), **kw)
    with pytest.raises(ValueError, match="knn_ks"):
        evaluate(model, cfg("knn", train_dataset=root, knn=KNNOptions(ks=(10, 0))), **kw)
    (root / "zulu").mkdir()
    with pytest.raises(ValueError, match="contains no images"):
        evaluate(model, cfg("zeroshot"), **kw)
    assert model.image_calls == 0 and model.text_calls == 0


def test_retrieval_end_to_end(tmp_path, preprocess):
    rows = []
    for k in range(4):
        solid_image(k).save(tmp_path / f"{k}.png")
        rows += [{"image": f"{k}.png", "captions": [f"a photo of {NAMES[k]}", f"{NAMES[k]} again"]}]
    rows[3]["captions"].append(f"mislabelled {NAMES[0]}")  # ranks image 0 first, its own image second
    (tmp_path / "caps.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    config = EvalConfig(tasks="retrieval", dataset=tmp_path / "caps.jsonl", output_dir=tmp_path / "out",
                        model_name="fake", progress=False)
    (result,) = evaluate(FakeCLIP(), config, tokenizer=fake_tokenizer, preprocess=preprocess)
    m = result["metrics"]
    assert result["task"] == "zeroshot_retrieval" and result["num_texts"] == 9
    assert m["text_retrieval_recall@1"] == 1.0
    assert m["image_retrieval_recall@1"] == pytest.approx(8 / 9)
    assert m["image_retrieval_recall@5"] == 1.0
    assert open(result["plots"][0], "rb").read(8) == PNG_MAGIC


def test_probe_and_knn_with_backbone_share_cached_features(make_folder, preprocess, tmp_path):
    train = make_folder("train", names=NAMES[:3], per_class=6, jitter=30, seed=1)
    test = make_folder("test", names=NAMES[:3], per_class=3, jitter=30, seed=2)
    model = FakeBackbone(num_classes=3)
    config = EvalConfig(tasks="linear_probe,knn", dataset=test, train_dataset=train, batch_size=4,
                        cache_dir=tmp_path / "cache", linear_probe=LinearProbeOptions(weight_decays=(1e-4, 1e-2),
                                                                                      max_iter=50),
                        knn=KNNOptions(ks=(1, 5)), progress=False, model_name="bb")
    probe, knn = evaluate(model, config.replace(output_dir=tmp_path / "out"), preprocess=preprocess)
    assert probe["metrics"]["acc1"] == 1.0 and probe["weight_decay"] in (1e-4, 1e-2)
    assert knn["metrics"]["knn1_acc1"] == 1.0 and knn["metrics"]["knn5_acc1"] == 1.0
    assert knn["main_k"] == 5 and knn["num_train"] == 18
    calls = model.calls
    assert calls == 3 + 5  # each dataset encoded once for both tasks: ceil(9/4) + ceil(18/4) batches
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2
    again = evaluate(model, config.replace(tasks=["knn"]), preprocess=preprocess)
    assert model.calls == calls  # second run reads the disk cache
    assert again[0]["metrics"] == knn["metrics"]
    few_probe = LinearProbeOptions(weight_decays=(1e-4, 1e-2), max_iter=50, few_shot=2)
    (few,) = evaluate(model, config.replace(tasks="linear_probe", linear_probe=few_probe), preprocess=preprocess)
    assert few["num_train"] == 6 and few["few_shot"] == 2


def test_feature_cache_key_changes_with_transform_and_model(tmp_path):
    a = cache_key(model="m", dataset="d", transform=repr(T.ToTensor()), precision="fp32")
    b = cache_key(model="m", dataset="d", transform=repr(T.Compose([T.Resize(4), T.ToTensor()])), precision="fp32")
    c = cache_key(model="m", dataset="d", transform=repr(T.ToTensor()), precision="bf16")
    assert len({a, b, c}) == 3
    m1, m2 = FakeBackbone(), FakeBackbone()
    assert model_fingerprint(m1) == model_fingerprint(m2)
    with torch.no_grad():
        m2.bias.add_(1.0)
    assert model_fingerprint(m1) != model_fingerprint(m2)
    cache = FeatureCache(tmp_path)
    assert cache.load(a) is None


def test_encode_images_bf16_autocast(make_folder, preprocess):
    from openeva.data.image_lists import LabelledImages
    from openeva.data.labelled import load_classification_dataset

    data = load_classification_dataset(make_folder(per_class=1))
    enc = encode_images(FakeBackbone(), LabelledImages(data.images, preprocess), batch_size=2, precision="bf16",
                        progress=False)
    assert enc.features.dtype == torch.float32 and enc.features.shape == (4, 8)
    assert enc.indices.tolist() == [0, 1, 2, 3] and enc.skipped == []


# ------------------------------------------------------------------------------------------ results
def test_validate_result_reports_problems():
    good = make_result("cifar10", "m", None, "zeroshot", {"acc1": 0.5}, num_skipped=0)
    assert good["task"] == "zeroshot_classification" and good["pretrained"] == ""
    with pytest.raises(ValueError, match="missing field 'metrics'"):
        validate_result({k: v for k, v in good.items() if k != "metrics"})
    with pytest.raises(ValueError, match="finite number"):
        validate_result({**good, "metrics": {"acc1": float("nan")}})
    with pytest.raises(ValueError, match="unknown task"):
        validate_result({**good, "task": "dance"})
    with pytest.raises(ValueError, match="num_skipped"):
        validate_result({**good, "num_skipped": -1})


def test_parse_tasks():
    assert parse_tasks(["zeroshot,knn", "knn", "linear-probe"]) == ["zeroshot", "knn", "linear_probe"]
    assert parse_tasks("finetune") == ["finetune"]
    with pytest.raises(ValueError, match="unknown task"):
        parse_tasks("finetuning")


# ------------------------------------------------------------------------------------------ CLI
def test_cli_eval_and_merge(make_folder, tmp_path, capsys):
    root = make_folder(per_class=2)
    out = tmp_path / "results"
    parser = build_parser()  # the real parser; the run is called directly to inject a fake model
    args = parser.parse_args(["eval", "--model", "fake-clip", "--task", "zeroshot", "--task", "knn",
                              "--dataset", str(root), "--train-dataset", str(root), "--knn-k", "1", "3",
                              "--output", str(out), "--batch-size", "4", "--no-progress"])
    assert args.func is eval_cmd.run
    code = args.func(args, model=FakeCLIP(), tokenizer=fake_tokenizer,
                     preprocess=T.Compose([T.Resize((8, 8)), T.ToTensor()]))
    assert code == 0
    printed = capsys.readouterr().out
    assert "zeroshot_classification" in printed and "knn" in printed
    files = sorted(out.glob("*.json"))
    assert len(files) == 2
    assert all(validate_result(json.loads(f.read_text())) for f in files)
    assert len(list((out / "plots").glob("*.png"))) == 4

    assert main(["eval-merge", str(out), "--out", str(tmp_path / "table.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "table.csv")))
    assert {r["task"] for r in rows} == {"zeroshot_classification", "knn"}
    assert all(r["model"] == "fake-clip" for r in rows)
    assert {r["acc1"] for r in rows} == {"1.0"}
    assert "knn3_acc1" in rows[0]


def test_cli_reports_input_errors_with_exit_code_2(make_folder, tmp_path, capsys):
    root = make_folder(per_class=1)
    args = build_parser().parse_args(["eval", "--model", "m", "--task", "knn", "--dataset", str(root),
                                      "--output", str(tmp_path)])
    with pytest.raises(ValueError, match="need a training dataset"):  # commands raise; main turns it into exit 2
        eval_cmd.run(args, model=FakeBackbone(), preprocess=T.ToTensor())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"dataset": "x"}))
    assert main(["eval-merge", str(bad), "--out", str(tmp_path / "t.csv")]) == 2
    err = capsys.readouterr().err
    assert "missing field" in err and err.startswith("openeva eval-merge: error: ") and err.count("\n") == 1


def test_merge_results_wide_csv(tmp_path):
    a = make_result("d1", "m", "x", "zeroshot", {"acc1": 0.5})
    b = make_result("d1", "m", "x", "retrieval", {"text_retrieval_recall@1": 0.25}, num_skipped=3)
    for i, r in enumerate((a, b)):
        (tmp_path / f"{i}.json").write_text(json.dumps(r))
    assert len(load_results([tmp_path])) == 2
    merge_results([tmp_path / "0.json", tmp_path / "1.json"], tmp_path / "t.csv")
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert rows[0]["acc1"] == "0.5" and rows[0]["text_retrieval_recall@1"] == ""
    assert rows[1]["text_retrieval_recall@1"] == "0.25" and rows[1]["num_skipped"] == "3"


def test_model_by_name_uses_factory_lazily(make_folder, preprocess, tmp_path, monkeypatch):
    """A model name goes through openeva.factory (stubbed here); the checkpoint file keys the cache."""
    from openeva.eval import runner as runner_mod

    built = []

    def create_model_and_transforms(name, pretrained=None, **kw):
        built.append((name, pretrained))
        return FakeCLIP(), None, preprocess

    monkeypatch.setattr(runner_mod, "create_model_and_transforms", create_model_and_transforms)
    monkeypatch.setattr(runner_mod, "get_tokenizer", lambda name: fake_tokenizer)
    ckpt = tmp_path / "ckpt.safetensors"
    ckpt.write_bytes(b"weights")
    root = make_folder(per_class=1)
    (result,) = evaluate("EVA02-fake", EvalConfig(tasks="zeroshot", dataset=root, pretrained=str(ckpt),
                                                  cache_dir=tmp_path / "c", output_dir=tmp_path / "o",
                                                  make_plots=False, progress=False))
    assert built == [("EVA02-fake", str(ckpt))]
    assert result["model"] == "EVA02-fake" and result["pretrained"] == str(ckpt)
    assert result["metrics"]["acc1"] == 1.0
    assert re.search(r"ds__EVA02-fake__ckpt\.safetensors-[0-9a-f]{6}__zeroshot_classification\.json$",
                     result["result_file"])


def test_result_files_of_checkpoints_with_the_same_name_do_not_collide():
    from openeva.eval.results import result_filename

    base = {"dataset": "pets", "model": "EVA02-B-16", "task": "zeroshot_classification"}
    a = result_filename({**base, "pretrained": "runs/clip_tiny/final"})
    b = result_filename({**base, "pretrained": "runs/clip_b/final"})
    assert a != b and a.startswith("pets__EVA02-B-16__final-")
    assert result_filename({**base, "pretrained": None}) == "pets__EVA02-B-16__none__zeroshot_classification.json"


def test_idx_train_and_test_splits_from_one_folder(tmp_path):
    write_mnist_split(tmp_path, "train", [0, 1, 2, 0, 1, 2])
    write_mnist_split(tmp_path, "t10k", [2, 1, 0])
    tf = T.Compose([T.Resize((8, 8)), T.ToTensor()])
    config = EvalConfig(tasks="knn", dataset=tmp_path, train_dataset=tmp_path, knn=KNNOptions(ks=(1,)),
                        classnames=["zero", "one", "two"], progress=False)
    (result,) = evaluate(FakeBackbone(num_classes=3), config, preprocess=tf)
    assert result["metrics"]["acc1"] == 1.0
    assert result["num_samples"] == 3 and result["num_train"] == 6
    assert result["dataset"].endswith("_test") and result["train_dataset"].endswith("_train")


def test_named_model_without_checkpoint_is_cached_by_weights(make_folder, preprocess, tmp_path, monkeypatch):
    """pretrained=None means random init: a new draw of weights must not reuse cached features."""
    from openeva.eval import runner as runner_mod

    models = []

    def create_model_and_transforms(name, pretrained=None, **kw):
        models.append(FakeBackbone(num_classes=4))
        with torch.no_grad():
            models[-1].bias.fill_(float(len(models)))  # a different "random init" per build
        return models[-1], None, preprocess

    monkeypatch.setattr(runner_mod, "create_model_and_transforms", create_model_and_transforms)
    root = make_folder(per_class=1)
    for _ in range(2):
        evaluate("tiny", EvalConfig(tasks="knn", dataset=root, train_dataset=root, knn=KNNOptions(ks=(1,)),
                                    cache_dir=tmp_path / "c", progress=False))
    assert [m.calls for m in models] == [1, 1]
    assert len(list((tmp_path / "c").glob("*.pt"))) == 2


def test_real_tiny_clip_from_factory(make_folder, tmp_path):
    """Integration with openeva.factory: the registered tiny EVA-CLIP runs every task end to end."""
    root = make_folder(names=NAMES[:3], per_class=2, jitter=50)
    caps = tmp_path / "caps.csv"
    caps.write_text("image,caption\n" + "".join(f"ds/{n}/0.png,a photo of {n}\n" for n in NAMES[:3]))
    results = evaluate("EVA02-test", EvalConfig(tasks="zeroshot,linear_probe,knn", dataset=root, train_dataset=root,
                                                knn=KNNOptions(ks=(1,)),
                                                linear_probe=LinearProbeOptions(weight_decays=(1e-3,), max_iter=10),
                                                precision="bf16", progress=False, make_plots=False))
    results += evaluate("EVA02-test", EvalConfig(tasks="retrieval", dataset=caps, progress=False))
    assert [r["task"] for r in results] == ["zeroshot_classification", "linear_probe", "knn", "zeroshot_retrieval"]
    for r in results:
        validate_result(r)
        assert all(0.0 <= v <= 1.0 for k, v in r["metrics"].items() if "rank" not in k)
    assert results[2]["metrics"]["acc1"] == 1.0  # each training image is its own nearest neighbour

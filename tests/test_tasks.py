"""Tasks: real row counts, seeded splits, encoding, user tasks, and every kind of bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ntkft.errors import ConfigError, DataError
from ntkft.tasks import BUILTIN, encode, get_spec, holdout, load_task, subsample, task_metrics

# rows per split as listed in shared/data/SOURCES.md (CR: 3,771 sentences, split 80/20 by us)
COUNTS = {
    ("stsb", "train"): 5749, ("stsb", "validation"): 1500, ("stsb", "test"): 1379,
    ("sts12", "train"): 2234, ("sts12", "test"): 3108,
    ("semrel", "train"): 5500, ("semrel", "validation"): 250, ("semrel", "test"): 2600,
    ("rte", "train"): 2490, ("rte", "validation"): 277,
    ("mrpc", "train"): 3668, ("mrpc", "validation"): 408, ("mrpc", "test"): 1725,
    ("sst2", "train"): 67349, ("sst2", "validation"): 872,
    ("amazon_polarity", "train"): 5000, ("amazon_polarity", "test"): 1000, ("amazon_polarity", "test_head"): 1000,
}


@pytest.mark.parametrize("task,split", list(COUNTS))
def test_row_counts_match_sources(data_dir, task, split):
    d = load_task(task, split, data_dir)
    assert len(d) == COUNTS[(task, split)]
    assert len(d.labels) == len(d.text_a) and np.isfinite(d.labels.astype(float)).all()
    assert (d.text_b is not None) == BUILTIN[task].pair


def test_label_balance_matches_sources(data_dir):
    rte = load_task("rte", "train", data_dir)
    assert np.bincount(rte.labels).tolist() == [1241, 1249]  # not_entailment, entailment
    mrpc = load_task("mrpc", "train", data_dir)
    assert np.bincount(mrpc.labels).tolist() == [1194, 2474]
    amazon = load_task("amazon_polarity", "train", data_dir)
    assert np.bincount(amazon.labels).tolist() == [2525, 2475]


def test_sts12_combines_files_and_keeps_source(data_dir):
    d = load_task("sts12", "test", data_dir)
    counts = {s: d.source.count(s) for s in set(d.source)}
    assert counts == {"MSRpar": 750, "MSRvid": 750, "SMTeuroparl": 459, "OnWN": 750, "SMTnews": 399}
    assert d.labels.min() >= 0 and d.labels.max() <= 5


def test_cr_split_is_fixed_stratified_and_disjoint(data_dir):
    tr, te = load_task("cr", "train", data_dir), load_task("cr", "test", data_dir)
    assert len(tr) + len(te) == 3771
    assert set(tr.origin).isdisjoint(te.origin)
    assert abs(tr.labels.mean() - te.labels.mean()) < 0.01
    assert tr.origin == load_task("cr", "train", data_dir).origin


def test_subsample_is_seeded_and_stratified(data_dir):
    d = load_task("rte", "train", data_dir)
    a, b, c = subsample(d, 100, seed=0), subsample(d, 100, seed=0), subsample(d, 100, seed=1)
    assert a.indices.tolist() == b.indices.tolist() != c.indices.tolist()
    assert abs(np.bincount(a.labels)[0] - 50) <= 1
    with pytest.raises(ConfigError, match="larger than"):
        subsample(d, 10**6)


def test_holdout_is_seeded_and_disjoint(data_dir):
    d = subsample(load_task("stsb", "train", data_dir), 200, seed=0)
    tr, va = holdout(d, 0.25, seed=3)
    assert len(tr) == 150 and len(va) == 50
    assert set(tr.indices).isdisjoint(va.indices)
    assert holdout(d, 0.25, seed=3)[1].indices.tolist() == va.indices.tolist()
    with pytest.raises(DataError, match="empty"):
        holdout(d, 0)


def test_holdout_rejects_single_class_train(tmp_path):
    from ntkft.tasks import user_task

    f = tmp_path / "one.csv"
    f.write_text("text,label\n" + "".join(f"row {i},a\n" for i in range(9)) + "odd,b\n")
    d = load_task(user_task("one", "classification", {"train": str(f)}, ["text"], "label"), "train")
    raised = 0
    for seed in range(40):  # the lone 'b' lands in validation for some seeds: then train has one class
        try:
            tr, _ = holdout(d, 1, seed=seed)
            assert len(set(tr.labels.tolist())) == 2
        except DataError as e:
            assert "only one class" in str(e)
            raised += 1
    assert raised > 0


def test_unknown_task_and_split(data_dir):
    with pytest.raises(ConfigError, match="unknown task 'nope'"):
        get_spec("nope")
    with pytest.raises(DataError, match="no split 'dev'"):
        load_task("rte", "dev", data_dir)


# ------------------------------------------------------------------ user tasks and bad input


def _csv(tmp_path, text, name="d.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def _user(path, kind="regression", cols=("a", "b"), label="y"):
    from ntkft.tasks import user_task

    return user_task("mine", kind, {"train": str(path)}, list(cols), label)


def test_user_task_csv_tsv_jsonl(tmp_path):
    p = _csv(tmp_path, "a,b,y\nhello,world,1.5\nfoo,bar,2\n")
    d = load_task(_user(p), "train")
    assert d.text_b == ["world", "bar"] and d.labels.tolist() == [1.5, 2.0]
    t = _csv(tmp_path, "a\ty\nx\tpos\nz\tneg\n", "d.tsv")
    d = load_task(_user(t, "classification", ("a",)), "train")
    assert d.task.labels == ["neg", "pos"] and d.labels.tolist() == [1, 0]
    j = _csv(tmp_path, json.dumps({"a": "x", "y": 1}) + "\n" + json.dumps({"a": "z", "y": 0}) + "\n", "d.jsonl")
    assert len(load_task(_user(j, "classification", ("a",)), "train")) == 2


def test_user_task_spec_file_yaml(tmp_path):
    _csv(tmp_path, "s1,s2,score\na b,c d,0.5\ne f,g h,0.7\ni j,k l,0.1\n", "train.csv")
    _csv(tmp_path, "s1,s2,score\nm,n,0.2\n", "test.csv")
    spec = tmp_path / "task.yaml"
    spec.write_text("name: toy\ntype: regression\nfiles: {train: train.csv, test: test.csv}\n"
                    "text_columns: [s1, s2]\nlabel_column: score\n")
    d = load_task(str(spec), "train")
    assert len(d) == 3 and d.task.pair and d.task.metrics == ["mse", "pearson", "spearman"]
    assert len(load_task(str(spec))) == 1  # default split = test


@pytest.mark.parametrize("content,match", [
    ("a,b,y\nx,y,notanumber\n", r"d.csv:2: score 'notanumber' is not a number"),
    ("a,b,y\nx,y,nan\n", r"d.csv:2: score is nan \(not finite\)"),
    ("a,b,y\nx,y,1\nx,1\n", r"d.csv:3: expected 3 fields, found 2"),
    ("a,b,z\nx,y,1\n", r"d.csv: missing column 'y'"),
    ("", r"d.csv: file is empty"),
    ("a,b,y\n,y,1\n", r"d.csv:2: empty text"),
])
def test_bad_regression_files(tmp_path, content, match):
    p = _csv(tmp_path, content)
    with pytest.raises(DataError, match=match):
        load_task(_user(p), "train")


def test_bad_label_and_missing_file(tmp_path):
    from ntkft.tasks import user_task

    p = _csv(tmp_path, "a,y\nx,pos\ny,neg\nz,maybe\n")
    spec = user_task("m", "classification", {"train": str(p)}, ["a"], "y", labels=["neg", "pos"])
    with pytest.raises(DataError, match=r"d.csv:4: unknown label 'maybe'"):
        load_task(spec, "train")
    with pytest.raises(DataError, match=r"missing.csv: file not found"):
        load_task(_user(tmp_path / "missing.csv"), "train")


def test_bad_builtin_layout(tmp_path):
    (tmp_path / "rte").mkdir()
    (tmp_path / "rte" / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(DataError, match=r"train.tsv:2: unknown label 'maybe'"):
        load_task("rte", "train", tmp_path)


def test_bad_spec_file(tmp_path):
    spec = tmp_path / "t.yaml"
    spec.write_text("name: x\ntype: regression\nfiles: {train: a.txt}\ntext_columns: [a]\nlabel_column: y\n")
    with pytest.raises(ConfigError, match="cannot tell the format"):
        get_spec(str(spec))
    spec.write_text("name: x\ntype: sorting\nfiles: {train: a.csv}\ntext_columns: [a]\nlabel_column: y\n")
    with pytest.raises(ConfigError, match="invalid task spec"):
        get_spec(str(spec))


def test_offline_without_data_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="no local files for 'rte'"):
        load_task("rte", "train", tmp_path)


def test_metrics():
    m = task_metrics("regression", [1.0, 2.0, 3.0], [1.0, 2.0, 4.0])
    assert m["mse"] == pytest.approx(1 / 3) and m["spearman"] == pytest.approx(1.0)
    c = task_metrics("classification", np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0]]), [0, 1, 0])
    assert c["accuracy"] == pytest.approx(2 / 3) and c["f1"] == pytest.approx(2 / 3)


# ------------------------------------------------------------------ encoding


def test_encode_pairs_keep_both_sentences(data_dir, minilm):
    from ntkft.models import load_model

    d = subsample(load_task("rte", "train", data_dir), 6, seed=0)
    tiny = load_model("tiny-llama")
    enc = encode(tiny.tokenizer, "decoder", d, max_length=24)
    assert enc["input_ids"].shape[1] <= 24
    sep = tiny.tokenizer("\nSentence 2: ", add_special_tokens=False)["input_ids"]
    for row, m in zip(enc["input_ids"], enc["attention_mask"]):
        ids = row[m.bool()].tolist()
        assert any(ids[i:i + len(sep)] == sep for i in range(len(ids)))  # the template survives truncation
    assert (enc["attention_mask"][:, -1] == 1).all()  # decoders are left-padded
    enc = encode(minilm.tokenizer, "encoder", d, max_length=24)
    assert (enc["input_ids"] == minilm.tokenizer.sep_token_id).sum(1).tolist() == [2] * 6
    with pytest.raises(ConfigError, match="max-length"):
        encode(minilm.tokenizer, "encoder", d, max_length=2)

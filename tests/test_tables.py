"""Tasks from tables: pandas DataFrames, datasets Dataset / DatasetDict, save_to_disk folders, parquet files,
and hub ids (resolved without the network: a hub id that cannot be loaded is one line, exit 2)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import run_cli

datasets = pytest.importorskip("datasets")
pd = pytest.importorskip("pandas")

from ntkft.errors import DataError  # noqa: E402
from ntkft.tasks import get_spec, load_task, resolve_task  # noqa: E402


def _frame(n=24, seed=0, regression=False):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"sentence1": [f"first sentence {i}" for i in range(n)],
                         "sentence2": [f"second sentence {i}" for i in range(n)],
                         "label": rng.uniform(0, 5, n).round(2) if regression else rng.integers(0, 2, n)})


def test_dataframe_dataset_and_datasetdict_give_the_same_rows():
    df = _frame()
    a = load_task(df, "train")
    b = load_task(datasets.Dataset.from_pandas(df), "train")
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_pandas(df), "test": datasets.Dataset.from_pandas(_frame(8, 1))})
    c = load_task(dd, "train")
    assert a.task.type == "classification" and a.task.pair and a.task.labels == ["0", "1"]
    assert a.text_a == b.text_a == c.text_a and a.text_b == c.text_b
    np.testing.assert_array_equal(a.labels, df["label"].to_numpy())
    np.testing.assert_array_equal(b.labels, c.labels)
    assert load_task(dd).split == "test" and len(load_task(dd)) == 8  # the test split by default


def test_save_to_disk_folder_and_parquet_match_the_csv_reader(tmp_path):
    df = _frame(regression=True)
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_pandas(df), "validation": datasets.Dataset.from_pandas(df[:6]),
                               "test": datasets.Dataset.from_pandas(df.assign(label=-1))})  # GLUE-style unlabelled test
    dd.save_to_disk(str(tmp_path / "saved"))
    df.to_parquet(tmp_path / "t.parquet")
    df.to_csv(tmp_path / "t.csv", index=False)
    spec = get_spec(str(tmp_path / "saved"))
    assert spec.type == "regression" and list(spec.splits) == ["train", "validation"] and spec.test_split == "validation"
    saved = load_task(str(tmp_path / "saved"), "train")
    pq = load_task(str(tmp_path / "t.parquet"), "train")
    csv = load_task(resolve_task(str(tmp_path / "t.csv"), "sentence1,sentence2", "label", "regression"), "train")
    for got in (saved, pq):
        assert got.text_a == csv.text_a and got.text_b == csv.text_b
        np.testing.assert_allclose(got.labels, csv.labels)
        assert got.fingerprint() != "" and len(got) == 24


def test_columns_given_and_errors_name_the_columns(tmp_path):
    df = pd.DataFrame({"review": ["good", "bad", "fine", "awful"], "stars": [1, 0, 1, 0], "other": ["a"] * 4})
    d = load_task(df, "train", text_columns="review", label_column="stars")
    assert not d.task.pair and d.task.labels == ["0", "1"]
    with pytest.raises(Exception, match="give --text-columns and --label-column .columns: stars, x."):
        load_task(df.drop(columns=["review"]).rename(columns={"other": "x"}), "train")
    with pytest.raises(Exception, match="no column 'nope'"):
        load_task(df, "train", text_columns="nope", label_column="stars")


def test_hub_ids_fail_in_one_line_offline(tmp_path, monkeypatch, capsys):
    """No test reaches the hub: with HF offline, a hub id is one line naming it, exit 2."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(DataError, match="hub dataset no-such-org/no-such-set could not be loaded"):
        get_spec("no-such-org/no-such-set")
    code, _, err = run_cli(["kernel", "--model", "tiny-bert", "--task", "glue/mrpc", "--n", "4", "--out",
                            str(tmp_path / "k")], capsys)
    assert code == 2 and "glue/mrpc" in err and len(err.strip().splitlines()) == 1, err


def test_cli_runs_on_a_saved_dataset(tmp_path, capsys):
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_pandas(_frame(16))})
    dd.save_to_disk(str(tmp_path / "ds"))
    code, out, err = run_cli(["kernel", "--model", "tiny-bert", "--task", str(tmp_path / "ds"), "--n", "6",
                              "--max-length", "16", "--out", str(tmp_path / "k")], capsys)
    assert code == 0, err
    code, out, err = run_cli(["kernel", "--model", "tiny-bert", "--task", str(tmp_path / "ds"), "--text-columns",
                              "sentence2", "--label-column", "label", "--n", "6", "--max-length", "16", "--out",
                              str(tmp_path / "k2")], capsys)
    assert code == 0, err

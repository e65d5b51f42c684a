"""List fields in the generated CLI: a repeated flag and a comma-separated value mean the same list."""

from __future__ import annotations

from conftest import run_cli
from ntkft.cli._common import _parse, load_config
from ntkft.taskvec import CosineConfig


def test_repeats_and_commas_give_one_list():
    ann = CosineConfig.model_fields["finetuned"].annotation
    assert _parse(["a", "b,c"], ann) == ["a", "b", "c"]
    assert _parse("a,b", ann) == ["a", "b"]
    cfg = load_config(CosineConfig, None, {"pretrained": "tiny-bert", "finetuned": ["x=/p/a", "y=/p/b"]})
    assert cfg.finetuned == ["x=/p/a", "y=/p/b"]


def test_repeated_flag_reaches_the_command(tmp_path, capsys):
    """Before: `--finetuned a --finetuned b` failed with 'List should have at least 2 items'."""
    code, _, err = run_cli(["taskvec", "cosine", "--pretrained", "tiny-bert", "--finetuned", str(tmp_path / "a"),
                            "--finetuned", str(tmp_path / "b"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "at least 2 items" not in err and str(tmp_path / "a") in err  # the missing checkpoint, named

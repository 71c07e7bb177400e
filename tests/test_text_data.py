"""A user's text: .txt and .jsonl documents, the tokenizer beside the model, clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from p2pnode import text_data
from p2pnode import transformer_models as tm
from p2pnode.control.work import _read_text
from p2pnode.exec import onnx_model


def test_txt_and_jsonl_give_their_documents_in_order(tmp_path: Path) -> None:
    txt = tmp_path / "d.txt"
    txt.write_text("first document\n\nsecond one\n")
    assert text_data.read_texts(str(txt)) == ["first document", "second one"]
    jl = tmp_path / "d.jsonl"
    jl.write_text("\n".join(json.dumps(v) for v in ["a plain string", {"text": "an object"}, {"prompt": "p"}]))
    assert text_data.read_texts(str(jl)) == ["a plain string", "an object", "p"]


@pytest.mark.parametrize("content, why", [('{"body": "x"}', "expected a string"), ("not json", "not JSON"),
                                          ("[1, 2]", "expected a string"), ("", "no documents")])
def test_a_bad_jsonl_line_is_refused_naming_it(tmp_path: Path, content: str, why: str) -> None:
    jl = tmp_path / "d.jsonl"
    jl.write_text(content)
    with pytest.raises(text_data.TextError, match=why):
        text_data.read_texts(str(jl))


def test_other_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(text_data.TextError, match=".txt"):
        text_data.read_texts(str(tmp_path / "d.csv"))
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(text_data.TextError, match="not UTF-8"):
        text_data.read_texts(str(tmp_path / "bin.txt"))


def test_a_model_folder_is_tokenized_with_its_own_tokenizer(tmp_path: Path) -> None:
    tok = tm.tokenizer()
    folder = tm.write_model_dir(tmp_path / "enc", tm.encoder(tm.Config(), token_types=False), tok, eos=None)
    docs = tmp_path / "docs.txt"
    docs.write_text("Return a new list\nAn ordered dictionary of the arguments given to the function\n")
    blob, arrays, notes = _read_text(folder, str(docs), 8)
    assert onnx_model.unpack(blob)[0] == (folder / "model.onnx").read_bytes()
    assert set(arrays) == {"input_ids", "attention_mask"}  # what this model takes, no token types
    want = [tok.encode(line).ids[:8] for line in docs.read_text().splitlines()]
    assert arrays["input_ids"][0, :len(want[0])].tolist() == want[0]
    assert arrays["attention_mask"].sum(1).tolist() == [len(w) for w in want]
    assert any("cut at 8 tokens" in n for n in notes)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(text_data.TextError, match="tokenizer.json goes beside"):
        _read_text(folder, str(docs), 8)


def test_a_model_taking_other_inputs_is_told_to_use_arrays() -> None:
    with pytest.raises(text_data.TextError, match="npz"):
        text_data.encode(tm.tokenizer(), ["x"], ["input_ids", "pixel_values"], 8)
    arrays, _ = text_data.encode(tm.tokenizer(), ["a", "bb cc dd"], ["input_ids", "attention_mask"], 8)
    assert arrays["input_ids"].dtype == np.int64 and arrays["attention_mask"][0, -1] == 0

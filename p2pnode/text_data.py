"""Text on the requester's side: documents and prompts read from a user's file, and tokenized with
the ``tokenizer.json`` beside their model (the ``tokenizers`` library, ``pip install
'p2pnode[text]'``).

* **Files** (:func:`read_texts`): ``.txt``, one document a line (empty lines skipped), or
  ``.jsonl``, one JSON value a line: a string, or an object whose ``text`` (or ``prompt``) field is
  one. Read as a regular file of at most ``MAX_TEXT_BYTES``, at most ``MAX_DOCS`` documents;
  anything else is a one-line :class:`TextError`.
* **Model folders** (:func:`model_file`): a model is named by its ``.onnx`` file or by its folder
  (``model.onnx`` in it); ``tokenizer.json`` and ``config.json`` are read from that folder.
* **Tokens** (:func:`encode`): int64 ``input_ids`` and ``attention_mask`` (and zero
  ``token_type_ids`` for a model that takes them), right-padded to the longest document, each
  document cut at ``max_tokens``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from p2pnode import local_files
from p2pnode.errors import FileRefused

MAX_TEXT_BYTES = 1 << 30
MAX_DOCS = 10_000_000
MAX_TOKENIZER_BYTES = 64 << 20
TEXT_FIELDS = ("text", "prompt")


class TextError(FileRefused):
    """A text file, a tokenizer or a model folder this node will not use as it is."""


def model_file(path: Path) -> Path:
    """The ``.onnx`` file of a model named by its file or its folder."""
    if path.is_dir():
        found = path / "model.onnx"
        if not found.is_file():
            raise TextError(f"{path} is a folder without a model.onnx in it")
        return found
    return path


def read_texts(path: str) -> list[str]:
    """The documents of a ``.txt`` or ``.jsonl`` file, in order."""
    if not path.endswith((".txt", ".jsonl")):
        raise TextError(f"{path}: text comes as .txt (a document a line) or .jsonl (a JSON string, or an object "
                        "with a \"text\" field, a line)")
    try:
        raw = local_files.read_regular(path, what="text file", limit=MAX_TEXT_BYTES)
    except FileRefused as exc:
        raise TextError(str(exc)) from None
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise TextError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    docs: list[str] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        docs.append(_document(line, path, number) if path.endswith(".jsonl") else line)
        if len(docs) > MAX_DOCS:
            raise TextError(f"{path} has more than {MAX_DOCS} documents: split it")
    if not docs:
        raise TextError(f"{path} has no documents")
    return docs


def _document(line: str, path: str, number: int) -> str:
    try:
        value = json.loads(line)
    except ValueError:
        raise TextError(f"{path}, line {number}: not JSON") from None
    if isinstance(value, dict):
        value = next((value[k] for k in TEXT_FIELDS if k in value), None)
    if not isinstance(value, str):
        raise TextError(f"{path}, line {number}: expected a string, or an object with a \"text\" field")
    return value


def tokenizer_for(model: Path) -> Any:
    """The tokenizer saved as ``tokenizer.json`` beside ``model``."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise TextError("text needs the tokenizers library: pip install 'p2pnode[text]'") from None
    where = model.parent / "tokenizer.json"
    try:
        raw = local_files.read_regular(where, what="tokenizer", limit=MAX_TOKENIZER_BYTES)
        return Tokenizer.from_str(raw.decode("utf-8"))
    except FileRefused as exc:
        raise TextError(f"{exc} (a model's tokenizer.json goes beside its model.onnx)") from None
    except Exception as exc:  # noqa: BLE001 - the library's own parse errors
        raise TextError(f"{where} is not a tokenizer: {str(exc).splitlines()[0][:200]}") from None


def model_config(model: Path) -> dict[str, Any]:
    """``config.json`` beside ``model`` ({} when there is none)."""
    where = model.parent / "config.json"
    if not where.exists():
        return {}
    try:
        value = json.loads(local_files.read_regular(where, what="model config", limit=1 << 20))
    except (FileRefused, ValueError) as exc:
        raise TextError(f"{where}: {exc}") from None
    return value if isinstance(value, dict) else {}


def token_lists(tok: Any, texts: list[str], max_tokens: int) -> tuple[list[list[int]], int]:
    """(each document's token ids, cut at ``max_tokens``; how many were cut)."""
    encoded = tok.encode_batch(texts)
    ids = [list(e.ids) for e in encoded]
    cut = sum(1 for i in ids if len(i) > max_tokens)
    return [i[:max_tokens] or [0] for i in ids], cut


def encode(tok: Any, texts: list[str], inputs: list[str], max_tokens: int) -> tuple[dict[str, np.ndarray], list[str]]:
    """The arrays an encoder export takes (by its input names), and notes on what was done."""
    ids, cut = token_lists(tok, texts, max_tokens)
    width = max(len(i) for i in ids)
    input_ids = np.zeros((len(ids), width), np.int64)
    mask = np.zeros((len(ids), width), np.int64)
    for row, seq in enumerate(ids):
        input_ids[row, :len(seq)] = seq
        mask[row, :len(seq)] = 1
    made = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}
    unknown = [n for n in inputs if n not in made]
    if unknown:
        raise TextError(f"the model takes {unknown}, which text does not make (it makes input_ids, attention_mask "
                        "and token_type_ids): give already tokenized arrays as an .npz instead")
    notes = [f"{len(texts)} documents tokenized: {int(mask.sum())} tokens, the longest {width}"]
    if cut:
        notes.append(f"{cut} documents cut at {max_tokens} tokens (--max-tokens)")
    return {n: made[n] for n in inputs}, notes


def check_generation_output(path: str) -> None:
    """An output path for generated text: a ``.jsonl`` file that can be written."""
    if not path.endswith(".jsonl"):
        raise TextError(f"--output {path}: generated text is saved as .jsonl (one JSON object a prompt)")
    try:
        local_files.check_output(path, what="--output")
    except FileRefused as exc:
        raise TextError(str(exc)) from None


def write_generations(path: str, tok: Any, prompts: list[str], tokens: np.ndarray,
                      length: np.ndarray) -> dict[str, Any]:
    """One JSON object a prompt, in the prompts' order: ``prompt``, the generated ``text`` and its
    ``tokens``; written whole or not at all (a temporary file beside it, renamed)."""
    import os
    import tempfile

    lines = []
    for i, prompt in enumerate(prompts):
        made = [int(t) for t in tokens[i, :int(length[i])]]
        lines.append(json.dumps({"prompt": prompt, "text": tok.decode(made), "tokens": made}, ensure_ascii=False))
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".gen-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise TextError(f"cannot write {path}: {exc.strerror}") from None
    return {"path": path, "prompts": len(prompts), "tokens": int(np.asarray(length).sum())}

"""Generation is safe for volunteers, each with a crafted decoder: a graph that never ends is
stopped in its worker; the cache is admitted from the model's dimensions and the tokens asked
for, and a job that misstates them is refused; external data is taken from inside the model's own
folder only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import trio
from onnx import TensorProto, helper, numpy_helper

from p2pnode import transformer_models as tm
from p2pnode.control.work import _read_prompts
from p2pnode.errors import ExecFailure, WorkloadError
from p2pnode.exec import generation_jobs, onnx_model
from p2pnode.exec.executor import Executor
from p2pnode.exec.generate_workload import GenerateWorkload
from p2pnode.text_data import TextError

WL = GenerateWorkload()


def endless_decoder() -> bytes:
    """The test decoder whose logits pass through a Loop of 2^62 rounds before they come out."""
    model = onnx.load_model_from_string(tm.decoder(tm.Config(seed=1)))
    head = next(n for n in model.graph.node if "logits" in n.output)
    head.output[0] = "logits.raw"
    body = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["c_out"]), helper.make_node("Identity", ["acc"], ["acc_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, None)])
    model.graph.initializer.extend([numpy_helper.from_array(np.array(1 << 62, np.int64), "trips"),
                                    numpy_helper.from_array(np.array(True), "cond")])
    model.graph.node.append(helper.make_node("Loop", ["trips", "cond", "logits.raw"], ["logits"], body=body))
    return bytes(model.SerializeToString())


def job(raw: bytes, **over: object) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    prepared = generation_jobs.prepare(raw, {}, [[5, 6, 7], [8, 9]], max_new=8, eos=0, batch=2)
    params, inputs = prepared.shard(0, prepared.rows)
    params.update(over)
    return params, inputs


async def test_a_decoder_that_never_ends_is_stopped_in_its_worker() -> None:
    async with Executor() as ex:
        params, inputs = job(endless_decoder())
        with trio.fail_after(30), pytest.raises(ExecFailure) as info:
            await ex.run("generate", params, inputs=inputs, timeout=1.0)
        assert info.value.code == "timeout" and ex.running == 0
        params, inputs = job(tm.decoder(tm.Config(seed=1)))  # the executor goes on
        assert (await ex.run("generate", params, inputs=inputs)).output.arrays["length"].tolist() == [8, 8]


async def test_the_cache_is_admitted_from_the_model_dimensions_and_the_tokens_asked_for() -> None:
    params, inputs = job(tm.decoder(tm.Config(seed=1)))
    p = WL.check(params)
    layers, heads, head_dim, _, _ = p["kv"]
    assert WL.kv_bytes(p) == 2 * 2 * layers * heads * head_dim * 2 * (p["prompt_len"] + 8) * 4
    longer = WL.check(dict(params, max_new=4096))
    assert WL.memory(longer) - WL.memory(p) >= WL.kv_bytes(longer) - WL.kv_bytes(p) > 0
    with pytest.raises(WorkloadError, match="key/value cache"):  # a cache no machine holds
        WL.check(dict(params, kv=[4096, 64, 128, 384, "float32"], max_new=16384, batch=512, prompts=512))
    async with Executor(memory_limit=WL.memory(p) + (1 << 20)) as ex:
        with pytest.raises(ExecFailure) as info:  # refused before any worker runs it
            await ex.run("generate", dict(params, max_new=16384), inputs=inputs)
        assert info.value.code == "no_capacity"
        with pytest.raises(WorkloadError, match="the job says"):  # a job that understates the cache
            await ex.run("generate", dict(params, kv=[1, 2, 16, 384, "float32"]), inputs=inputs)
        assert (await ex.run("generate", params, inputs=inputs)).output.arrays["tokens"].shape == (2, 8)


def _external_model_dir(folder: Path, location: str) -> Path:
    """The test decoder saved with every weight in the external file ``location``."""
    model = onnx.load_model_from_string(tm.decoder(tm.Config(seed=1)))
    onnx.external_data_helper.convert_model_to_external_data(model, location="weights.bin", size_threshold=0)
    folder.mkdir(parents=True)
    onnx.save_model(model, str(folder / "model.onnx"))  # writes weights.bin beside it
    if location != "weights.bin":
        for t in model.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = location
        (folder / "model.onnx").write_bytes(model.SerializeToString())
        (folder / location).parent.mkdir(parents=True, exist_ok=True)
        (folder / "weights.bin").rename(folder / location)
    tm.tokenizer(vocab=384).save(str(folder / "tokenizer.json"))
    return folder


def test_external_data_is_taken_from_inside_the_model_folder_only(tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("def open(file)\nimport os\n")
    inside = _external_model_dir(tmp_path / "inside", "weights.bin")
    made, texts, _, _ = _read_prompts(inside, str(prompts), max_tokens=32, max_new=4, temperature=0, seed=0)
    assert made.rows == 2 and len(onnx_model.unpack(made.blob)[0]) > 100_000  # the weights are in the job
    inline, _, _, _ = _read_prompts(tm.write_model_dir(tmp_path / "inline", tm.decoder(tm.Config(seed=1)),
                                                       tm.tokenizer(vocab=384)),
                                    str(prompts), max_tokens=32, max_new=4, temperature=0, seed=0)
    assert np.array_equal(made.arrays["prompt"], inline.arrays["prompt"]) and texts == ["def open(file)", "import os"]
    outside = _external_model_dir(tmp_path / "outside" / "m", "../weights.bin")
    with pytest.raises((onnx_model.ModelError, TextError), match="not a plain file name"):
        _read_prompts(outside, str(prompts), max_tokens=32, max_new=4, temperature=0, seed=0)

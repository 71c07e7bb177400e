"""The decode loop (``exec/decoder.py``): what it accepts as a decoder, and the cache bound to a
device (I/O binding, as on CUDA) giving exactly what plain feeds give."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from p2pnode import transformer_models as tm
from p2pnode.exec import decoder, generation_jobs, onnx_model
from p2pnode.exec.onnx_model import ModelError


def test_the_cache_bound_to_a_device_gives_what_plain_feeds_give() -> None:
    job = generation_jobs.prepare(tm.decoder(tm.Config(seed=4)), {}, [[5, 6, 7, 8], [9], [10, 11]], max_new=40,
                                  eos=-1, batch=2)
    model = onnx_model.load(job.blob)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    args: dict[str, Any] = {"max_new": 40, "temperature": 0.0, "seed": 0, "eos": -1, "batch": 2, "k": 16, "pad": 0}
    plain = decoder.Runner(sess, job.spec).generate(job.arrays["prompt"], job.arrays["index"], **args)
    bound = decoder.Runner(sess, job.spec, device="cpu").generate(job.arrays["prompt"], job.arrays["index"], **args)
    assert plain["length"].tolist() == [40, 40, 40]
    for name in plain:
        assert np.array_equal(plain[name], bound[name]), name


def test_only_a_decoder_exported_with_past_is_taken_and_its_hidden_state_is_exposed() -> None:
    model = onnx.load_model_from_string(tm.decoder(tm.Config(seed=4)))
    assert decoder.expose_hidden(model) and not decoder.expose_hidden(model)  # once
    spec = decoder.spec(onnx_model.check_model(model))
    assert spec.to_wire() == [2, 2, 16, 384, "float32"] and spec.hidden and spec.positions
    with pytest.raises(ModelError, match="past key/values"):
        decoder.spec(onnx_model.check_model(onnx.load_model_from_string(tm.encoder(tm.Config(seed=4)))))


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_sharding_and_batching_change_no_token(temperature: float) -> None:
    """Draws are seeded by each prompt's number in the whole job and its position: a prompt gets
    the same tokens in any shard, any batch."""
    g = np.random.default_rng(2)
    prompts = [[int(t) for t in g.integers(3, 384, size=int(k))] for k in g.integers(1, 20, size=10)]
    job = generation_jobs.prepare(tm.decoder(tm.Config(seed=4)), {}, prompts, max_new=30, eos=0, batch=8,
                                  temperature=temperature, seed=21)
    sess = ort.InferenceSession(onnx_model.load(job.blob).SerializeToString(), providers=["CPUExecutionProvider"])
    run = decoder.Runner(sess, job.spec)

    def tokens(rows: slice, batch: int) -> np.ndarray:
        return run.generate(job.arrays["prompt"][rows], job.arrays["index"][rows], max_new=30,
                            temperature=temperature, seed=21, eos=0, batch=batch, k=16, pad=0)["tokens"]

    whole = tokens(slice(0, 10), 8)
    assert np.array_equal(np.concatenate([tokens(slice(0, 3), 1), tokens(slice(3, 10), 3)]), whole)
    other = generation_jobs.prepare(tm.decoder(tm.Config(seed=4)), {}, prompts, max_new=30, eos=0, batch=8,
                                    temperature=temperature, seed=22)
    differ = not np.array_equal(decoder.Runner(sess, other.spec).generate(
        other.arrays["prompt"], other.arrays["index"], max_new=30, temperature=temperature, seed=22, eos=0,
        batch=8, k=16, pad=0)["tokens"], whole)
    assert differ == (temperature > 0)  # another seed draws other tokens; greedy has none to draw


def test_the_genai_config_names_the_decoders_own_inputs_and_outputs(tmp_path: Path) -> None:
    """The folder the llm benchmark gives ONNX Runtime GenAI: the same model.onnx, its names and
    dimensions; where GenAI is installed, its greedy loop makes the node's tokens."""
    cfg = tm.Config(seed=4)
    raw = tm.decoder(cfg)
    conf = tm.genai_config(cfg, max_length=40)["model"]
    graph = onnx.load_model_from_string(raw).graph
    names = {i.name for i in graph.input} | {o.name for o in graph.output}
    io = conf["decoder"]["inputs"] | conf["decoder"]["outputs"]
    for layer in range(cfg.layers):
        assert {v.replace("%d", str(layer)) for v in io.values()} <= names
    assert (conf["decoder"]["num_hidden_layers"], conf["decoder"]["head_size"], conf["vocab_size"]) == (2, 16, 384)
    og = pytest.importorskip("onnxruntime_genai")
    (tmp_path / "model.onnx").write_bytes(raw)
    (tmp_path / "genai_config.json").write_text(json.dumps(tm.genai_config(cfg, max_length=40)))
    model = og.Model(str(tmp_path))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=30, min_length=30, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(np.array([[5, 6, 7, 8, 9, 10]], np.int32))
    while not gen.is_done():
        gen.generate_next_token()
    job = generation_jobs.prepare(raw, {}, [[5, 6, 7, 8, 9, 10]], max_new=24, eos=-1, batch=1)
    sess = ort.InferenceSession(onnx_model.load(job.blob).SerializeToString(), providers=["CPUExecutionProvider"])
    ours = decoder.Runner(sess, job.spec).generate(job.arrays["prompt"], job.arrays["index"], max_new=24,
                                                   temperature=0.0, seed=0, eos=-1, batch=1, k=16, pad=0)
    assert gen.get_sequence(0)[6:].tolist() == ours["tokens"][0].tolist()


class _Session:
    def __init__(self, *providers: str) -> None:
        self.providers = list(providers)

    def get_providers(self) -> list[str]:
        return self.providers


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_the_cache_is_bound_to_cuda_only_where_the_session_runs_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA path's choices, exercised on a CPU: ``ort-cuda`` is offered only with CUDA's provider
    and a GPU; its sessions ask for CUDA first with TF32 off; the decode loop binds the cache to
    the device only when the session really runs there, and a session that fell back to the CPU
    decodes exactly as ``ort-cpu`` does."""
    from p2pnode.exec import backends
    from p2pnode.exec.generate_workload import GenerateWorkload

    assert decoder.cache_device(_Session("CUDAExecutionProvider", "CPUExecutionProvider")) == "cuda"
    assert decoder.cache_device(_Session("CPUExecutionProvider")) == ""
    for providers, gpus, offered in ((["CUDAExecutionProvider", "CPUExecutionProvider"], 1, True),
                                     (["CUDAExecutionProvider", "CPUExecutionProvider"], 0, False),
                                     (["CPUExecutionProvider"], 1, False)):
        backends.available.cache_clear()
        monkeypatch.setattr(ort, "get_available_providers", lambda p=providers: p)
        monkeypatch.setattr(backends, "_gpu_count", lambda g=gpus: g)
        assert ("ort-cuda" in backends.for_workload("generate", backends.available())) == offered
    monkeypatch.undo()
    backends.available.cache_clear()
    cuda = backends.OrtOps("ort-cuda")
    assert cuda.providers == [("CUDAExecutionProvider", {"use_tf32": 0}), "CPUExecutionProvider"]
    job = generation_jobs.prepare(tm.decoder(tm.Config(seed=4)), {}, [[5, 6, 7], [8], [9, 10]], max_new=12, eos=-1,
                                  batch=2)
    params, inputs = job.shard(0, job.rows)
    wl = GenerateWorkload()
    sess, _ = cuda.session(job.blob)
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a CUDA build of ONNX Runtime: its fallback is not what this machine shows")
    assert sess.get_providers() == ["CPUExecutionProvider"] and decoder.cache_device(sess) == ""
    fell_back = wl.run(wl.check(params), cuda, lambda f: None, inputs)
    on_cpu = wl.run(wl.check(params), backends.OrtOps("ort-cpu"), lambda f: None, inputs)
    for name in on_cpu.arrays:
        assert np.array_equal(fell_back.arrays[name], on_cpu.arrays[name]), name

"""The GPU path's parts on a CPU: SAM attention through scaled_dot_product_attention equals segment_anything's (fp32),
the cache records and reproduces the attention it used, and the GPU benchmark runs end to end with a tiny teacher."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything.modeling.image_encoder import Attention, add_decomposed_rel_pos

from medprep.distill import CacheExecution, CacheParams, cache_teacher
from medprep.distill.attention import rel_pos_bias, resolve_attention, sam_attention_blocks, set_attention
from medprep.distill.teachers import random_sam
from medprep.distill.synthetic import write_sa1b_tar

CPU = CacheExecution("cpu")

CONFIGS = [  # windowed blocks with and without window padding, global attention, several heads
    {"img_size": 64},
    {"img_size": 80, "embed_dim": 48, "num_heads": 3, "depth": 3, "window_size": 3},
    {"img_size": 128, "embed_dim": 64, "num_heads": 4, "depth": 2, "window_size": 8},
]


@pytest.mark.parametrize("config", CONFIGS)
def test_sdpa_equals_the_reference_attention_in_fp32(config):
    reference, _ = random_sam(**config)
    fast = copy.deepcopy(reference)
    assert set_attention(fast, "sdpa") == config.get("depth", 2) == sam_attention_blocks(fast)
    x = torch.randn(2, 3, config["img_size"], config["img_size"], generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a, b = reference(x), fast(x)
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()
    set_attention(fast, "reference")  # and back: segment_anything's own forward again
    with torch.inference_mode():
        assert torch.equal(fast(x), a)


def test_rel_pos_bias_is_what_segment_anything_adds():
    attn = Attention(32, num_heads=2, use_rel_pos=True, input_size=(5, 7))
    torch.nn.init.normal_(attn.rel_pos_h)
    torch.nn.init.normal_(attn.rel_pos_w)
    q = torch.randn(3, 2, 35, 16)
    ref = add_decomposed_rel_pos(torch.zeros(6, 35, 35), q.reshape(6, 35, 16), attn.rel_pos_h, attn.rel_pos_w,
                                 (5, 7), (5, 7))
    assert torch.allclose(rel_pos_bias(q, attn.rel_pos_h, attn.rel_pos_w, (5, 7)).reshape(6, 35, 35), ref, atol=1e-6)


def test_other_encoders_and_subclasses_are_left_alone():
    class Own(Attention):
        def forward(self, x):
            return x

    net = torch.nn.Sequential(Own(16, 2), torch.nn.Linear(4, 4))
    assert set_attention(net, "sdpa") == 0 and type(net[0]) is Own
    assert resolve_attention("auto", "cpu") == "reference" and resolve_attention("auto", "cuda") == "sdpa"
    with pytest.raises(ValueError, match="unknown --attention"):
        resolve_attention("flash", "cpu")


def test_cache_records_and_uses_its_attention(tmp_path):
    write_sa1b_tar(tmp_path / "sa1b" / "sa_000000.tar", [1, 2, 3], np.random.default_rng(0),
                   sizes=[(48, 64), (64, 30), (64, 64)])
    kw = dict(encoder_kwargs={"img_size": 64}, dtype="float32", shard_samples=3, batch_size=3)
    auto = cache_teacher(CacheParams("random-sam", tmp_path / "sa1b", tmp_path / "a.zarr", "r", **kw),
                         execution=CPU).store
    sdpa = cache_teacher(CacheParams("random-sam", tmp_path / "sa1b", tmp_path / "s.zarr", "r", attention="sdpa",
                                     **kw), execution=CPU).store
    assert auto.attrs["attention"] == "reference" and sdpa.attrs["attention"] == "sdpa"
    assert np.abs(auto.read(slice(None)) - sdpa.read(slice(None))).max() <= 1e-5
    callable_teacher = cache_teacher(CacheParams("medprep.distill.teachers:random_sam", tmp_path / "sa1b",
                                                 tmp_path / "c.zarr", "r", attention="sdpa", **kw), execution=CPU).store
    assert callable_teacher.attrs["attention"] == "sdpa"  # a SAM architecture behind a callable: still swapped


def test_gpu_benchmark_runs_on_a_cpu_with_a_tiny_teacher(tmp_path):
    """benchmarks/cache.py --gpu's code, end to end on a CPU: a random checkpoint in the official format through the
    real --checkpoint path, the fp32-reference comparison, the batch sweep, the pipeline and RESULTS.md."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import cache_gpu
    finally:
        sys.path.pop(0)
    result = cache_gpu.run(tmp_path, "random-sam", "cpu", images=6, batch_sizes=(1, 2), encoder_kwargs={"img_size": 64},
                           image_hw=(48, 72), decode_threads=1)
    fid = result["fidelity"]
    assert fid["fp32 + sdpa"]["max_abs"] <= 1e-5 * fid["fp32 + sdpa"]["ref_max_abs"]
    assert fid["bf16 + sdpa"]["cosine_min"] > 0.999 and fid["bf16 + reference attention"]["cosine_min"] > 0.999
    assert [r["batch_size"] for r in result["bare"]] == [1, 2] and result["pipeline"]["images_s"] > 0
    rows = cache_gpu.rows(result)
    cache_gpu.write_results(tmp_path / "RESULTS.md", rows, "python benchmarks/cache.py --gpu")
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| machine |" in text and "| pipeline efficiency |" in text and "fp32 reference" in text

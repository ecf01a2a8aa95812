"""The toolkit as a whole (mathllm.interp): every hook it reads exists in the model's cache."""

import pytest
import torch

from mathllm.interp import hook_names
from mathllm.interp.probes import residual_streams
from mathllm.model import MathTransformer, ModelConfig
from mathllm.utils import SHIPPED_CHECKPOINT


@pytest.mark.parametrize("preset, positional", [("tiny", "rotary"), ("mini", "rotary"), ("tiny", "learned")])
def test_every_hook_the_toolkit_uses_is_in_the_cache(preset, positional):
    model = MathTransformer(ModelConfig.from_preset(preset, positional=positional)).eval()
    _, cache = model.run_with_cache("658+189=<think>8+9=17 5+8+1=14 6+1+1=8</think>847<end>")
    names = hook_names(model.cfg)
    missing = [n for n in names if n not in cache.keys()]
    assert not missing, f"hooks the toolkit reads are missing from the cache: {missing}"
    assert len(names) == len(set(names)) and len(names) == 5 * model.cfg.n_layers + 1


@pytest.mark.skipif(not (SHIPPED_CHECKPOINT / "model.safetensors").is_file(), reason="no shipped checkpoint")
def test_hooks_exist_in_the_shipped_model():
    from mathllm.checkpoints import load

    model = load(SHIPPED_CHECKPOINT, device="cpu").model
    _, cache = model.run_with_cache("1+2=3<end>")
    assert set(hook_names(model.cfg)) <= set(cache.keys())


def test_residual_streams_end_with_what_the_unembedding_reads():
    model = MathTransformer.from_preset("tiny").eval()
    _, cache = model.run_with_cache("12+34=")
    last = residual_streams(model.cfg)[-1][1]
    logits = model.unembed(model.ln_final(cache[last]))
    torch.testing.assert_close(logits, model("12+34="))

"""Straight-through relaxation of hard top-k routing for attacks (``models.gates.relaxed_routing``): inside it a top-k
layer's forward value is the model's own, bit for bit, while its backward pass is the dense soft mixture's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rome_bench.models.gates import relaxed_routing
from tests.test_batch_independence import variant_model

HARD_TOP_K = [("sparse-moe", ()), ("moe-ffn", ("model.options.top_k=1",)),
              ("rome", ("model.options.expert_type=ffn", "model.options.targets=mlp", "model.options.top_k=2")),
              ("remoe", ("model.options.top_k=2",))]


def logits_and_input_gradient(model, images, labels):
    inputs = images.clone().requires_grad_(True)
    logits = model(inputs)
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, labels), inputs)
    return logits.detach(), grad


@pytest.mark.parametrize(("family", "extra"), HARD_TOP_K, ids=[family for family, _ in HARD_TOP_K])
def test_relaxation_keeps_the_forward_and_changes_only_the_backward(family, extra):
    model = variant_model(family, extra)
    images, labels = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2)), torch.arange(4)
    hard_logits, hard_grad = logits_and_input_gradient(model, images, labels)
    with relaxed_routing():
        relaxed_logits, relaxed_grad = logits_and_input_gradient(model, images, labels)
        with torch.no_grad():
            assert torch.equal(model(images), hard_logits)
    assert torch.equal(relaxed_logits, hard_logits), f"{family}: the relaxation changed the forward pass"
    assert not torch.allclose(relaxed_grad, hard_grad), f"{family}: the backward pass is still the hard routing's"
    assert torch.isfinite(relaxed_grad).all()

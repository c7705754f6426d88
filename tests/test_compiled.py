"""``torch.compile`` at one fixed batch size (``eval --compile``): one graph however the attack batches shrink, the
eager model's logits, input gradients and gate records, and the same stored results."""

from __future__ import annotations

import shutil
import sqlite3

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from rome_bench.models import MODELS, ImageClassifier
from rome_bench.models.compiled import FixedBatchCompiled
from rome_bench.models.gates import gates
from rome_bench.models.rome import LoRAExpertMixture, RomeOptions, add_rome_experts

REFERENCE_RUN = "rome_bench/references/reference/models/synthetic-micro-max"


def micro(rome: bool) -> ImageClassifier:
    torch.manual_seed(0)
    backbone = MODELS.get("vit_smoke")(num_classes=10, image_size=32, patch_size=4, embed_dim=32, depth=2,
                                       num_heads=2)
    if rome:
        backbone = add_rome_experts(backbone, RomeOptions(num_experts=4, rank=2, gate_hidden=4))
        for module in backbone.modules():
            if isinstance(module, LoRAExpertMixture):
                torch.nn.init.normal_(module.lora_B, std=0.1)
    return ImageClassifier(backbone, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).eval().requires_grad_(False)


def logits_and_input_grad(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = images.clone().requires_grad_(True)
    logits = model(inputs)
    logits.logsumexp(dim=1).sum().backward()
    return logits.detach(), inputs.grad


@pytest.mark.parametrize("rome", [False, True], ids=["plain", "rome"])
def test_shrinking_batches_reuse_one_graph_and_match_the_eager_model(rome: bool) -> None:
    model = micro(rome)
    torch._dynamo.reset()
    counters.clear()
    wrapped = FixedBatchCompiled(model, batch_size=16, backend="eager")
    images = torch.rand(16, 3, 32, 32)
    for rows in (16, 11, 3, 1):
        logits, grad = logits_and_input_grad(wrapped, images[:rows])
        compiled_gates = [record.fused.detach().clone() for record in gates(wrapped)]
        expected_logits, expected_grad = logits_and_input_grad(model, images[:rows])
        # a padded batch takes other matmul paths than `rows` alone: equal up to float rounding
        assert logits.shape == (rows, 10) and torch.allclose(logits, expected_logits, atol=1e-6)
        assert torch.allclose(grad, expected_grad, atol=1e-6)
        assert all(torch.allclose(a, b.fused, atol=1e-6) for a, b in zip(compiled_gates, gates(model), strict=True))
        assert all(len(gate) == rows for gate in compiled_gates)  # records cut back to the real rows
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    larger = torch.rand(20, 3, 32, 32)  # more rows than compiled for: the eager model, no new graph
    assert torch.equal(wrapped(larger), model(larger)) and counters["stats"]["unique_graphs"] == 1


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("cc") is None, reason="inductor needs a C compiler")
def test_inductor_matches_the_eager_model(tmp_path, monkeypatch) -> None:
    # its own inductor cache: kernels cached by a run under another ATEN_CPU_CAPABILITY gave NaN logits here
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    model = micro(rome=False)
    torch._dynamo.reset()
    wrapped = FixedBatchCompiled(model, batch_size=8, backend="inductor")
    images = torch.rand(8, 3, 32, 32)
    for rows in (8, 5):
        logits, grad = logits_and_input_grad(wrapped, images[:rows])
        expected_logits, expected_grad = logits_and_input_grad(model, images[:rows])
        assert torch.allclose(logits, expected_logits, atol=1e-5)
        assert torch.allclose(grad, expected_grad, atol=1e-5, rtol=1e-4)


def stored(store) -> dict[tuple[str, int], int]:
    with sqlite3.connect(store) as connection:
        return {(key, example): correct for key, example, correct in
                connection.execute("SELECT threat_key, example_id, correct FROM results")}


def test_eval_compile_stores_the_eager_results_and_records_the_backend(tmp_path, cli_main) -> None:
    common = ("eval", "--run", REFERENCE_RUN, "--suite", "seen-pgd", "--n-examples", "24", "--batch-size", "16",
              "--no-progress", "--device", "cpu")
    eager = cli_main(*common, "--store", str(tmp_path / "eager.sqlite"))
    compiled = cli_main(*common, "--store", str(tmp_path / "compiled.sqlite"), "--compile", "eager")
    assert eager.returncode == 0 and compiled.returncode == 0, compiled.stderr
    assert stored(tmp_path / "compiled.sqlite") == stored(tmp_path / "eager.sqlite")
    with sqlite3.connect(tmp_path / "compiled.sqlite") as connection:
        (record,) = connection.execute("SELECT record FROM provenance").fetchone()
    assert '"compile": "eager"' in record
    wrong = cli_main(*common, "--store", str(tmp_path / "x.sqlite"), "--compile", "turbo")
    assert wrong.returncode != 0 and "--compile takes a torch.compile backend" in wrong.stderr


def test_own_feature_lpips_threats_apply_and_run_the_eager_model() -> None:
    """PPGD with the model's own LPIPS hooks its blocks, which a compiled graph would not fire: under --compile it
    stays applicable (it was n/a) and attacks the eager model, so it stores what an eager evaluation stores."""
    from rome_bench.threats import SelfPerceptualPGD

    model = micro(rome=False)
    compiled = FixedBatchCompiled(model, batch_size=4, backend="eager")
    threat = SelfPerceptualPGD(bound=0.5, steps=2, lpips="self", projection_steps=1, bisection_steps=2)
    assert threat.applicable(compiled)
    images, labels = torch.rand(4, 3, 32, 32), torch.arange(4)
    results = []
    for attacked in (model, compiled):
        torch.manual_seed(0)
        results.append(threat(attacked, images, labels))
    assert torch.equal(results[0], results[1])

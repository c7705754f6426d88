"""ReMoE (region-aware MoE FFNs with attention-guided routing) and its region-aware adversarial training recipe."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from timm.layers import Mlp
from typer.testing import CliRunner

from rome_bench.cli import app
from rome_bench.config import _typed_value
from rome_bench.data import load_dataset
from rome_bench.errors import ConfigError
from rome_bench.evaluation.leaderboard import build_leaderboard
from rome_bench.evaluation.reference import load_reference
from rome_bench.evaluation.render import render_markdown
from rome_bench.evaluation.store import ResultStore
from rome_bench.evaluation.suites import SUITES
from rome_bench.models import create_model, gates
from rome_bench.models.gates import fixed_expert_variant, inference_variant
from rome_bench.models.remoe import (
    RegionGateOutput,
    RegionMoE,
    ReMoEOptions,
    center_window,
    default_blocks,
    region_assignment,
    region_indices,
    region_weights,
    scatter_to_patches,
)
from rome_bench.presets import preset
from rome_bench.training.overrides import resolve_config
from rome_bench.training.recipe import Batch, StepContext, build_recipe
from rome_bench.training.recipes.remoe import (
    adaptive_beta,
    adaptive_gamma,
    alignment_loss,
    angular_distance,
    per_example_kl,
)
from rome_bench.training.recipes.trades import trades_kl

INFO = load_dataset("synthetic", "test").info


def micro_config(family: str = "remoe", backbone: str = "vit_micro", *overrides: str):
    return resolve_config(preset("remoe-smoke"), [f"model.backbone={backbone}", f"model.family={family}",
                                                  "threats.train_steps.linf=1", *overrides])


def micro_model(family: str = "remoe", backbone: str = "vit_micro", *overrides: str):
    torch.manual_seed(0)
    return create_model(micro_config(family, backbone, *overrides).model, INFO)


@pytest.mark.parametrize(("height", "width", "rows", "columns"), [(8, 8, 2, 2), (7, 8, 2, 3), (8, 8, 3, 3),
                                                                   (5, 5, 5, 1)])
def test_regions_partition_the_token_grid_exactly(height, width, rows, columns):
    assignment = region_assignment(height, width, rows, columns)
    positions = region_indices(assignment, rows * columns)
    together = torch.cat(positions)
    assert sorted(together.tolist()) == list(range(height * width))  # every patch in exactly one region
    sizes = []
    for k, where in enumerate(positions):
        grid_rows, grid_columns = where // width, where % width
        box = (grid_rows.max() - grid_rows.min() + 1) * (grid_columns.max() - grid_columns.min() + 1)
        assert int(box) == len(where), f"region {k} is not a rectangle"
        assert (int(grid_rows.min()) * rows // height, int(grid_columns.min()) * columns // width) == divmod(k, columns)
        sizes.append(len(where))
    row_heights = {len(torch.unique(where // width)) for where in positions}
    assert max(row_heights) - min(row_heights) <= 1 and min(sizes) >= 1  # as even as the grid allows


def test_center_window_is_the_central_square():
    window = center_window(8, 8, 0.5).view(8, 8)
    assert window[2:6, 2:6].all() and int(window.sum()) == 16
    odd = center_window(7, 7, 0.5).view(7, 7)  # side round(3.5) = 4, top-left ⌊(7 − 4)/2⌋ = 1
    assert int(odd.sum()) == 16 and odd[1:5, 1:5].all()


def test_scatter_back_restores_token_positions():
    tokens = torch.randn(3, 64, 5)
    positions = region_indices(region_assignment(8, 8, 2, 2), 4)
    gathered = torch.cat([tokens[:, where] for where in positions], dim=1)  # P2R order: region by region
    assert not torch.equal(gathered, tokens)
    assert torch.equal(scatter_to_patches(gathered, torch.cat(positions), 64), tokens)
    center = torch.nonzero(center_window(8, 8, 0.5)).squeeze(1)
    placed = scatter_to_patches(tokens[:, center], center, 64)
    outside = torch.ones(64, dtype=torch.bool)
    outside[center] = False
    assert torch.equal(placed[:, center], tokens[:, center]) and not placed[:, outside].any()


def test_layer_output_is_global_plus_center_plus_weighted_region_expert_per_token():
    """Z_i = f_g(h_i) + λ1·1[i ∈ R_c]·f_c(h_i) + λ2·w_k(i)·f_k(i)(h_i); prefix tokens see f_g only."""
    torch.manual_seed(0)
    options = ReMoEOptions(lambda_center=0.7, lambda_region=1.3, expert_init="copy", expert_ratio=0.5)
    layer = RegionMoE(Mlp(6, 12), (4, 4), 1, options, layer=1, name="test")
    for parameter in layer.parameters():  # every expert different
        parameter.data.normal_()
    hidden, saliency = torch.randn(2, 17, 6), torch.rand(2, 16).softmax(-1)
    out = layer(hidden, saliency)
    assignment = region_assignment(4, 4, 2, 2)
    center = center_window(4, 4, 0.5)
    weights = region_weights(saliency, assignment, 4, "sum")
    for b in range(2):
        assert torch.allclose(out[b, 0], layer.global_expert(hidden[b, 0]), atol=1e-5)
        for i in range(16):
            h = hidden[b, 1 + i]
            k = int(assignment[i])
            expected = (layer.global_expert(h) + 0.7 * center[i] * layer.center_expert(h)
                        + 1.3 * weights[b, k] * layer.region_experts[k](h))
            assert torch.allclose(out[b, 1 + i], expected, atol=1e-4), (b, i)


def test_region_weights_are_the_saliency_shares_of_the_regions():
    saliency = torch.zeros(1, 16)
    saliency[0, 0], saliency[0, 15] = 0.75, 0.25  # top-left patch (region 0), bottom-right (region 3)
    assignment = region_assignment(4, 4, 2, 2)
    assert torch.allclose(region_weights(saliency, assignment, 4, "sum"), torch.tensor([[0.75, 0, 0, 0.25]]))
    unequal = region_assignment(3, 3, 2, 1)  # region 0: rows 0-1 (6 patches), region 1: row 2 (3 patches)
    flat = torch.full((1, 9), 1 / 9)
    assert torch.allclose(region_weights(flat, unequal, 2, "sum"), torch.tensor([[2 / 3, 1 / 3]]))
    assert torch.allclose(region_weights(flat, unequal, 2, "mean"), torch.tensor([[0.5, 0.5]]))


@pytest.mark.parametrize("backbone", ["vit_micro", "deit_micro"])
def test_model_equals_its_backbone_at_init_and_records_region_gates(backbone):
    model, plain = micro_model("remoe", backbone).eval(), micro_model("plain", backbone).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k in plain.state_dict()})
    images = torch.rand(3, 3, 32, 32)
    assert torch.allclose(model(images), plain(images), atol=1e-6)
    (gate,) = gates(model)  # vit_micro has 2 blocks: ReMoE in block 1 only
    assert isinstance(gate, RegionGateOutput) and gate.layer == 1
    assert gate.fused.shape == (3, 1, 4) and gate.region.shape == (3, 4) and gate.attention.shape == (3, 64)
    assert torch.allclose(gate.fused.sum(-1), torch.ones(3, 1)) and torch.allclose(gate.attention.sum(-1),
                                                                                   torch.ones(3))
    copied = micro_model("remoe", backbone, "model.options.expert_init=copy", "model.options.expert_ratio=1.0").eval()
    assert not torch.allclose(copied(images), model(images), atol=1e-4)  # full copies add (λ1 + λ2·w)·MLP(h)


def test_inference_variants_route_every_image_to_one_regional_expert():
    model = micro_model().eval()
    for parameter in model.parameters():
        parameter.data.add_(0.02 * torch.randn_like(parameter))
    images = torch.rand(2, 3, 32, 32)
    with inference_variant(model, fixed_expert_variant(2)):
        model(images)
        (gate,) = gates(model)
    assert torch.equal(gate.fused, torch.tensor([0.0, 0, 1, 0]).expand(2, 1, 4))
    assert torch.allclose(gate.region.sum(-1), torch.ones(2))  # AEA's own weights are kept beside the variant
    with inference_variant(model, "removed"):
        removed = model(images)
    layer = model.backbone.blocks[0].mlp
    layer.region_experts.apply(lambda m: m.weight.data.zero_() if isinstance(m, torch.nn.Linear) else None)
    layer.region_experts.apply(lambda m: m.bias.data.zero_() if isinstance(m, torch.nn.Linear) else None)
    assert torch.allclose(model(images), removed, atol=1e-6)  # removed = no regional expert contributes


def test_top_k_keeps_the_k_most_salient_regions_and_records_dispatch():
    model = micro_model("remoe", "vit_micro", "model.options.top_k=2").eval()
    model(torch.rand(3, 3, 32, 32))
    (gate,) = gates(model)
    assert gate.dispatch is not None and torch.equal(gate.dispatch.sum(-1), torch.full((3, 1), 2.0))
    chosen, weights = gate.dispatch[:, 0].bool(), gate.fused[:, 0]
    assert (weights[chosen].view(3, 2).min(-1).values >= weights[~chosen].view(3, 2).max(-1).values).all()


def test_blocks_default_to_the_papers_6_and_10_scaled_and_are_checked_against_the_depth():
    assert default_blocks(12) == (6, 10) and default_blocks(4) == (2, 3) and default_blocks(2) == (1,)
    for value in ([6, 10], "6,10", (6, 10)):
        assert _typed_value("model.options.blocks", tuple[int, ...], value) == (6, 10)
    assert _typed_value("model.options.blocks", tuple[int, ...], 6) == (6,)
    with pytest.raises(ConfigError, match=r"vit_micro has 2 blocks, so ReMoE blocks are 1\.\.1"):
        micro_model("remoe", "vit_micro", "model.options.blocks=6,10")
    with pytest.raises(ConfigError, match="grid"):
        micro_model("remoe", "vit_micro", "model.options.grid=2by2")
    with pytest.raises(ConfigError, match="ViT or DeiT"):
        micro_model("remoe", "resnet_micro")
    smoke = create_model(resolve_config(preset("remoe-smoke"), []).model, INFO)
    smoke(torch.rand(1, 3, 32, 32))
    assert [gate.layer for gate in gates(smoke)] == [2, 3]


def test_gamma_and_beta_tilde_follow_their_formulas():
    distance = torch.tensor([0.0, 0.5, 2.0])
    gamma = adaptive_gamma(distance, 1e-6)
    assert torch.allclose(gamma, torch.exp(-distance / (2.0 + 1e-6)))
    assert gamma[0] == 1 and torch.isclose(gamma[2], torch.tensor(math.exp(-1)), atol=1e-6)
    beta_tilde = adaptive_beta(0.5, gamma)
    assert torch.allclose(beta_tilde, 0.5 * gamma / (0.5 * gamma + 0.5))
    assert beta_tilde[0] == 0.5 and torch.isclose(beta_tilde[2], torch.tensor(math.exp(-1) / (math.exp(-1) + 1)))
    assert (beta_tilde.diff() < 0).all()  # a larger regional shift weights the adversarial term more
    assert torch.allclose(adaptive_beta(0.8, torch.ones(2)), torch.full((2,), 0.8))


def test_alignment_loss_is_zero_when_regional_activations_align():
    w = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]], requires_grad=True)
    aligned = alignment_loss(w, 3 * w.detach(), 1e-6)  # same direction
    assert aligned.abs().max() <= 1e-5
    aligned.sum().backward()
    assert torch.isfinite(w.grad).all()
    orthogonal = alignment_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), 1e-6)
    assert torch.isclose(orthogonal, torch.tensor([-math.log(0.5 + 1e-6)]))
    a, b = torch.rand(5, 4), torch.rand(5, 4)
    arccos = torch.arccos(F.cosine_similarity(a, b, dim=-1))
    assert torch.allclose(angular_distance(a, b), arccos, atol=1e-3)
    assert (alignment_loss(a, b, 1e-6) > alignment_loss(a, a, 1e-6)).all()


def make_context(model):
    return StepContext(model, list(model.parameters()), None)


@pytest.mark.parametrize("base", ["sat", "trades"])
def test_recipe_loss_is_the_region_adaptive_loss_plus_alignment_on_the_models_gates(base):
    config = micro_config()
    model = micro_model()
    for parameter in model.parameters():
        parameter.data.add_(0.02 * torch.randn_like(parameter))
    recipe = build_recipe("remoe", {"align_weight": 0.3, "base": base}, config.threats, "pgd")
    images, labels = torch.rand(6, 3, 32, 32), torch.arange(6) % 10
    ctx = make_context(model)
    torch.manual_seed(1)
    result = recipe.loss(ctx, Batch(images, labels, 0, 0))
    torch.manual_seed(1)
    adversarial = ctx.attack(recipe.threats()[0], images, labels)
    clean_logits = ctx.forward(images)
    (clean_gate,) = gates(model)
    adversarial_logits = ctx.forward(adversarial)
    (adversarial_gate,) = gates(model)
    distance = (clean_gate.region - adversarial_gate.region).norm(dim=-1)
    gamma = torch.exp(-distance / (distance.max() + 1e-6))
    beta_tilde = 0.5 * gamma / (0.5 * gamma + 0.5)
    if base == "sat":
        adversarial_term = F.cross_entropy(adversarial_logits, labels, reduction="none")
    else:  # TRADES' β_T·KL(f(x) ‖ f(x')) per example, β_T = 6
        adversarial_term = 6 * F.kl_div(F.log_softmax(adversarial_logits, 1), F.softmax(clean_logits, 1),
                                        reduction="none").sum(1)
    robust = (beta_tilde * F.cross_entropy(clean_logits, labels, reduction="none")
              + (1 - beta_tilde) * adversarial_term).mean()
    cosine = F.cosine_similarity(clean_gate.region, adversarial_gate.region, dim=-1).clamp(-1, 1)
    align = -torch.log(1 - torch.arccos(cosine) / math.pi + 1e-6).mean()
    assert distance.max() > 0 and gamma.min() < 1
    assert torch.isclose(result.loss, robust + 0.3 * align, atol=1e-4)
    assert result.logs["region_layers"] == 1
    assert result.logs["gamma"] == pytest.approx(float(gamma.detach().mean()), abs=1e-5)
    result.loss.backward()
    attention = model.backbone.blocks[0].attn.qkv.weight
    assert attention.grad is not None and attention.grad.abs().sum() > 0


def test_recipe_options_and_family_are_checked_in_one_line():
    config = micro_config()
    clean, adversarial = torch.randn(4, 10), torch.randn(4, 10)
    assert torch.isclose(per_example_kl(clean, adversarial).mean(), trades_kl(clean, adversarial))
    with pytest.raises(ConfigError, match="KL-PGD"):
        build_recipe("remoe", {"base": "trades"}, config.threats, "apgd").threats()
    for bad in ({"beta": 1.0}, {"base": "mart"}, {"distance": "kl"}):
        with pytest.raises(ConfigError, match=r"train\.options"):
            build_recipe("remoe", bad, config.threats, "pgd")
    with pytest.raises(ConfigError, match="--family remoe"):
        build_recipe("remoe", {}, config.threats, "pgd").check_family("plain")
    (attack,) = build_recipe("remoe", {}, config.threats, "apgd").threats()  # SAT base: the training APGD
    assert attack.name.startswith("apgd-train")


def test_paper_reference_loads_and_prints_its_own_protocol_columns(tmp_path):
    rows = {(row.label, row.dataset): row for row in load_reference("remoe-paper")}
    headline = rows[("ReMoE (DeiT-S)", "cifar10")]
    assert headline.values == pytest.approx({"nat": 0.8658, "pgd20-linf": 0.5354, "aa-linf": 0.5016})
    assert rows[("ReMoE (DeiT-S)", "cifar100")].values["aa-linf"] == pytest.approx(0.2682)
    with ResultStore(tmp_path / "r.sqlite") as store:
        table = render_markdown(build_leaderboard(store, SUITES.get("seen"), "cifar10", list(rows.values())),
                                SUITES.get("seen"))
    header = next(line for line in table.splitlines() if line.startswith("| Method"))
    assert header.endswith("| PGD-20 ℓ∞ 8/255 (paper) | AA ℓ∞ 8/255 (paper) | Flags | Source |")
    assert "| ReMoE (DeiT-S) | – | 86.6 | – | – | – | – | – | 53.5 | 50.2 |" in table
    ablation = rows[("ReMoE ablation: w/o REs (DeiT-T)", "cifar10")]  # the summary's ablation table: 48.49 C&W-20
    assert ablation.values == pytest.approx({"nat": 0.8095, "pgd20-linf": 0.5082, "cw20-linf": 0.4849,
                                             "aa-linf": 0.4678})
    with ResultStore(tmp_path / "r.sqlite") as store:  # a reference without titles adds no column
        other = render_markdown(build_leaderboard(store, SUITES.get("seen"), "cifar10",
                                                  load_reference("rome-paper-table1")), SUITES.get("seen"))
    assert "(paper)" not in other
    result = CliRunner().invoke(app, ["leaderboard", "--reference", "remoe-paper", "--store",
                                      str(tmp_path / "r.sqlite"), "--dataset", "cifar100"])
    assert result.exit_code == 0, result.output
    assert "| ReMoE (DeiT-S) | – | – | – | – | – | – | – | 30.2 | 26.8 |" in result.output


def test_presets_resolve_to_the_paper_settings():
    paper = preset("remoe-cifar10")
    assert (paper.model.family, paper.model.backbone, paper.train.recipe) == ("remoe", "deit_small", "remoe")
    assert paper.threats.eps["linf"] == 8 / 255 and paper.train.epochs == 50 and paper.train.warmup_epochs == 2
    recipe = build_recipe(paper.train.recipe, paper.train.options, paper.threats, "pgd")
    (attack,) = recipe.threats()
    assert attack.eps == 8 / 255 and attack.step_size == 2 / 255 and attack.steps == 10
    with torch.device("meta"):
        model = create_model(paper.model, INFO)
    assert [block for block, module in enumerate(model.backbone.blocks, 1) if hasattr(module.mlp, "gate")] == [6, 10]
    tiny = dataclasses.replace(paper.model, backbone="deit_tiny")
    with torch.device("meta"):
        counts = [sum(p.numel() for p in create_model(config, INFO).parameters())
                  for config in (tiny, dataclasses.replace(tiny, family="plain", options={}))]
    assert round(counts[0] / 1e6, 2) == 5.63 and counts[1] < 5.4e6  # the paper's DeiT-T + ReMoE count, 5.63M


def test_init_from_a_plain_vit_starts_with_its_logits(tmp_path):
    """The global expert keeps the MLP's keys: --init from a plain run loads it; the added experts start at fc2 = 0."""
    from safetensors.torch import save_file

    from rome_bench.training.finetune import load_initial_weights

    plain = micro_model("plain").eval()
    for parameter in plain.parameters():
        parameter.data.add_(0.05 * torch.randn_like(parameter))
    save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, tmp_path / "plain.safetensors")
    config = micro_config("remoe", "vit_micro", f"model.init_from={tmp_path / 'plain.safetensors'}")
    torch.manual_seed(1)
    model = create_model(config.model, INFO)
    load_initial_weights(model, config.model, INFO)
    images = torch.rand(2, 3, 32, 32)
    assert torch.allclose(model.eval()(images), plain(images), atol=1e-5)

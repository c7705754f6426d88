"""DWF and MORE: logit mixtures of whole experts under a soft gate, their recipes, expert runs and FGSM.

Micro models only (resnet_micro experts, 1-2 attack steps); the contract tests cover training, resume, gradients,
gate shapes and GMA for both families.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from rome_bench.data import load_dataset
from rome_bench.errors import CheckpointError, ConfigError
from rome_bench.evaluation.reference import load_reference
from rome_bench.evaluation.suites import SUITES
from rome_bench.models import build_family, create_model, gates
from rome_bench.models.gates import inference_variant
from rome_bench.models.mixture import expert_heads, find_mixture
from rome_bench.presets import preset
from rome_bench.threats import LinfPGD
from rome_bench.threats.fgsm import FGSM
from rome_bench.training.overrides import resolve_config
from rome_bench.training.recipe import Batch, StepContext, build_recipe
from rome_bench.training.recipes.dwf_experts import RandomizedAttackOptions
from rome_bench.training.trainer import Trainer

INFO = load_dataset("synthetic", "test").info
TINY = ["data.train_size=16", "train.batch_size=8", "train.epochs=1", "threats.train_steps.l1=1",
        "threats.train_steps.l2=1", "threats.train_steps.linf=1"]


def micro(family: str, *overrides: str):
    config = resolve_config(preset(f"{family}-smoke"), ["model.options.num_experts=3", *TINY, *overrides])
    torch.manual_seed(0)
    return config, create_model(config.model, INFO)


@pytest.mark.parametrize("family", ["dwf", "more"])
def test_gate_weights_sum_to_one_and_mix_the_experts_logits(family):
    _, model = micro(family)
    model.eval()
    images = torch.rand(5, 3, 32, 32)
    logits = model(images)
    (gate,) = gates(model)
    assert gate.fused.shape == (5, 1, 3) and gate.dispatch is None
    assert torch.allclose(gate.fused.sum(-1), torch.ones(5, 1), atol=1e-6) and (gate.fused > 0).all()
    normalised = (images - model.mean) / model.std
    experts = torch.stack([expert(normalised) for expert in find_mixture(model).experts], 1)  # (B, K, C)
    assert torch.allclose(logits, (gate.fused.transpose(1, 2) * experts).sum(1), atol=1e-5)
    with inference_variant(model, "expert-1"):
        assert torch.allclose(model(images), experts[:, 1], atol=1e-5)
        assert torch.equal(gates(model)[0].fused, torch.tensor([0.0, 1.0, 0.0]).expand(5, 1, 3))


def attack_trace(family: str, recipe_name: str, options: dict, gate_shift: float = 0.0):
    """One recipe step: whether the gate received gradient inside ctx.attack, and the attacked inputs."""
    config, model = micro(family)
    recipe = build_recipe(recipe_name, options, config.threats, "pgd")
    parameters = recipe.parameters(model)
    gate_network = find_mixture(model).gate.network
    with torch.no_grad():
        gate_network.fc.bias.add_(gate_shift * torch.arange(3.0))
    ctx = StepContext(model, parameters, None)
    state = {"in_attack": False, "gate_grads_in_attack": 0}
    attacked: list[torch.Tensor] = []
    plain_attack = ctx.attack

    def traced_attack(threat, images, labels):
        state["in_attack"] = True
        try:
            result = plain_attack(threat, images, labels)
        finally:
            state["in_attack"] = False
        attacked.append(result)
        return result

    def count_gradient(grad: torch.Tensor) -> None:
        state["gate_grads_in_attack"] += state["in_attack"] and bool(grad.abs().sum() > 0)

    def on_gate_forward(module, inputs, output):
        if output.requires_grad:
            output.register_hook(count_gradient)

    ctx.attack = traced_attack
    gate_network.register_forward_hook(on_gate_forward)
    images, labels = load_dataset("synthetic", "train", size=6, seed=0).dataset.batch(list(range(6)))
    torch.manual_seed(1)
    recipe.update(ctx, Batch(images, labels, step=0, epoch=0))
    return state["gate_grads_in_attack"], attacked


@pytest.mark.parametrize(("family", "recipe", "options", "attacks"), [
    ("dwf", "dwf", {"iterations": 1, "iteration_count": 1}, 2),
    ("more", "more", {}, 3),
])
def test_training_attacks_go_through_the_gate_of_the_whole_mixture(family, recipe, options, attacks):
    """The adversarial examples of DWF joint training / MORE stage 2 attack the mixture: the gate gets gradients
    during ctx.attack, and another gate gives other adversarial examples (same seed, same experts)."""
    gate_grads, attacked = attack_trace(family, recipe, options)
    assert len(attacked) == attacks and gate_grads >= attacks
    _, attacked_other_gate = attack_trace(family, recipe, options, gate_shift=3.0)
    assert all(not torch.equal(a, b) for a, b in zip(attacked, attacked_other_gate, strict=True))


def test_stage2_freezes_all_but_gate_and_heads():
    config, model = micro("more")
    recipe = build_recipe("more", {}, config.threats, "pgd")
    trained = {id(p) for p in recipe.parameters(model)}
    mixture = find_mixture(model)
    expected = {id(p) for module in [mixture.gate, *expert_heads(model)] for p in module.parameters()}
    assert trained == expected
    assert all(p.requires_grad == (id(p) in expected) for p in model.parameters())


def expert_run(tmp_path, name: str, recipe: str):
    config = resolve_config(preset("more-smoke"), [*TINY, "model.family=plain", f"train.recipe={recipe}"])
    return Trainer(config, tmp_path / name, progress=False).fit().parent


def test_expert_runs_load_stay_frozen_in_stage2_and_their_hashes_reach_the_sidecar(tmp_path):
    from rome_bench.evaluation.runner import load_run

    runs = [expert_run(tmp_path, "clean", "clean"), expert_run(tmp_path, "linf", "linf-at")]
    experts = [runs[0], runs[1], runs[1], runs[0]]
    listed = json.dumps([str(run) for run in experts])
    config = resolve_config(preset("more-smoke"), [*TINY, f"model.options.experts={listed}"])
    sidecar = Trainer(config, tmp_path / "stage2", progress=False).fit()
    final = load_file(sidecar.with_suffix(".safetensors"))
    torch.manual_seed(config.train.seed)  # the trainer's fresh gate, before training
    fresh = create_model(config.model, INFO).state_dict()
    for index, run in enumerate(experts):
        source = load_file(run / "model.safetensors")
        prefix = f"backbone.experts.{index}."
        body = {k for k in source if not k.startswith("backbone.fc.")}
        assert all(torch.equal(final[prefix + k.removeprefix("backbone.")], source[k]) for k in body), index
        assert not torch.equal(final[prefix + "fc.weight"], source["backbone.fc.weight"]), f"head {index} frozen"
    gate_keys = [k for k in final if k.startswith("backbone.gate.")]
    assert gate_keys and any(not torch.equal(final[k], fresh[k]) for k in gate_keys)
    records = json.loads(sidecar.read_text())["experts"]
    hashes = {str(run): load_run(run, INFO, torch.device("cpu")).model_hash for run in runs}
    assert [r["run"] for r in records] == [str(run) for run in experts]
    assert [r["model_hash"] for r in records] == [hashes[str(run)] for run in experts]
    assert records[1]["recipe"] == "linf-at"


def test_expert_run_errors_are_one_line(tmp_path):
    run = expert_run(tmp_path, "clean", "clean")

    def start(experts, *extra):
        listed = json.dumps([str(e) for e in experts])
        config = resolve_config(preset("more-smoke"), [*TINY, f"model.options.experts={listed}", *extra])
        Trainer(config, tmp_path / "stage2", progress=False).fit()

    with pytest.raises(CheckpointError, match=r"experts\[1\] = .*missing does not exist") as missing:
        start([run, tmp_path / "missing", run, run])
    assert "\n" not in str(missing.value)
    with pytest.raises(ConfigError, match="has backbone resnet_micro, this model's experts are preact_resnet_micro"):
        start([run] * 4, "model.backbone=preact_resnet_micro")
    with pytest.raises(ConfigError, match="lists 2 run directories but num_experts is 4"):
        start([run] * 2)
    with pytest.raises(ConfigError, match=r"init_from and model\.options\.experts"):
        start([run] * 4, f"model.init_from={run}")
    assert not (tmp_path / "stage2").exists()  # every refusal comes before anything is written


def test_dwf_draws_cover_the_papers_grids():
    options = RandomizedAttackOptions()
    torch.manual_seed(0)
    eps = {round(options.draw_fgsm().eps, 6) for _ in range(300)}
    steps = {options.draw_pgd().steps for _ in range(200)}
    assert eps == {round(0.01 * k, 6) for k in range(1, 10)}
    assert steps == {10, 20, 30, 40, 50}
    pgd = options.draw_pgd()
    assert (pgd.eps, pgd.step_size, pgd.keep_adversarial) == (8 / 255, 2 / 255, False)


def test_fgsm_is_one_signed_gradient_step_clipped_to_the_box():
    torch.manual_seed(0)
    _, model = micro("dwf")
    model.eval()
    images, labels = torch.rand(4, 3, 32, 32), torch.arange(4)
    probe = images.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(model(probe), labels, reduction="sum").backward()
    adversarial = FGSM(0.09)(model, images, labels)
    assert torch.equal(adversarial, (images + 0.09 * probe.grad.sign()).clamp(0, 1))
    assert (adversarial - images).abs().max() <= 0.09 + 1e-6


def test_dwf_suite_and_paper_reference():
    _, fgsm, pgd = SUITES.get("dwf").build(preset("smoke").threats)
    assert isinstance(fgsm, FGSM) and fgsm.eps == 0.09
    assert isinstance(pgd, LinfPGD) and pgd.eps == 8 / 255
    rows = {row.method: row for row in load_reference("dwf-paper")}
    assert rows["DWF"].values == pytest.approx({"nat": 0.9108, "fgsm": 0.6548, "pgd-linf": 0.5633})
    # the baselines as DWF reports them (shared/papers/dwf-summary.txt): SoE 58.61 / 51.51, ADVMoE 61.44 / 55.13
    assert rows["SoE (as reported by DWF)"].values == pytest.approx({"fgsm": 0.5861, "pgd-linf": 0.5151})
    assert rows["ADVMoE (as reported by DWF)"].values == pytest.approx({"fgsm": 0.6144, "pgd-linf": 0.5513})


def test_family_options_fail_in_one_line():
    with pytest.raises(ConfigError, match=r"model\.options\.gate must be one of cnn, backbone"):
        build_family(resolve_config(preset("dwf-smoke"), ["model.options.gate=vit"]).model)
    with pytest.raises(ConfigError, match=r"train\.options\.inputs must list distinct kinds"):
        build_recipe("dwf", {"inputs": ["clean", "cw"]}, preset("smoke").threats, "pgd")


def test_the_model_hash_ignores_where_the_experts_were_trained():
    from rome_bench.config import apply_override
    from rome_bench.models import model_identity
    from rome_bench.presets import preset

    base = apply_override(preset("more-smoke"), 'model.options.experts=["a", "b", "c", "d"]')
    moved = apply_override(base, 'model.options.experts=["x/a", "x/b", "x/c", "x/d"]')
    assert model_identity(base.model) == model_identity(moved.model)
    assert model_identity(base.model) != model_identity(apply_override(base, "model.options.gate=backbone").model)

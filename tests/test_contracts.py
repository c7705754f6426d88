"""Contract tests over the registries (timm-style): every entry, including ones added later, is checked here.

* every recipe, on every family it accepts, trains 2 steps to finite weights and resumes bit-exact after a kill;
* every family's forward/backward reaches every parameter, and its gates (if any) have consistent shapes;
* every registered threat appears in some suite or training attack, rebuilds from ``params()``, stays within its
  budget and [0, 1], and is deterministic under a seed.
"""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from safetensors.torch import load_file

from rome_bench.data import load_dataset
from rome_bench.evaluation.runner import attack_precision, verify_threat_output
from rome_bench.evaluation.suites import SUITES
from rome_bench.models import FAMILIES, create_model, gates
from rome_bench.models.autocast import attack_model
from rome_bench.models.family import build_family
from rome_bench.presets import preset
from rome_bench.threats import THREATS, Threat
from rome_bench.training import recipes as _recipes  # noqa: F401  (registers every recipe)
from rome_bench.training.attacks import training_threats
from rome_bench.training.overrides import resolve_config
from rome_bench.training.recipe import RECIPES
from rome_bench.training.trainer import Trainer
from tests.test_precision import bf16_unsupported
from tests.test_training import Killed, kill_at

FAST = ["data.train_size=24", "train.batch_size=8", "train.epochs=2",
        "train.checkpoint_every=2", "threats.train_steps.l1=1", "threats.train_steps.l2=1",
        "threats.train_steps.linf=1", "threats.apgd_steps.l1=2", "threats.apgd_steps.l2=2",
        "threats.apgd_steps.linf=2"]
ITERATION_OPTIONS = ("steps", "iterations", "attack_steps")  # a recipe's own attack-length options, cut to 1
CORE_FAMILIES = ("plain", "rome")  # every recipe runs on these; every other family runs its paper's recipe


def fast_config(recipe: str, family: str):
    options = [f"train.options.{f.name}=1" for f in dataclasses.fields(RECIPES.get(recipe).Options)
               if f.name in ITERATION_OPTIONS]
    micro = list(FAMILIES.get(family).micro)
    return resolve_config(preset("smoke"), [*micro, *FAST, f"train.recipe={recipe}", f"model.family={family}",
                                            *options])


RECIPE_FAMILY_PAIRS = [(recipe, family) for family in CORE_FAMILIES for recipe in RECIPES.names()
                       if RECIPES.get(recipe).families is None] + [
    (FAMILIES.get(family).paper_recipe, family) for family in FAMILIES.names() if family not in CORE_FAMILIES]


def test_every_family_specific_recipe_is_some_familys_paper_recipe():
    """A recipe that trains only some families is covered by the pairs above through those families."""
    specific = {name for name in RECIPES.names() if RECIPES.get(name).families is not None}
    assert specific <= {FAMILIES.get(family).paper_recipe for family in FAMILIES.names()}


def record_logged_terms(trainer: Trainer) -> set[str]:
    """The names of the logs of every step the trainer's recipe takes (filled as it trains)."""
    logged: set[str] = set()
    update = trainer.recipe.update

    def recording_update(ctx, batch):
        result = update(ctx, batch)
        logged.update(result.logs)
        return result

    trainer.recipe.update = recording_update  # type: ignore[method-assign]
    return logged


@pytest.mark.parametrize(("recipe", "family"), RECIPE_FAMILY_PAIRS)
def test_every_recipe_trains_and_resumes_bit_exact(tmp_path, recipe, family):
    """6 steps unbroken vs killed at step 5 (after the checkpoint at step 4) and resumed: identical weights.

    On a family with a routing loss, the unbroken run's steps log a ``routing`` term: every recipe labels the
    forward whose gates the loss reads (``ctx.forward(..., routing_ids=...)``), and ``Recipe.update`` adds it.
    """
    config = fast_config(recipe, family)
    trainer = Trainer(config, tmp_path / "unbroken", progress=False)
    logged = record_logged_terms(trainer)
    unbroken = trainer.fit()
    if build_family(config.model).routing(config.model) is not None:
        assert "routing" in logged, f"{recipe} on {family}: no step added the family's routing loss ({logged})"
    else:
        assert "routing" not in logged
    with pytest.raises(Killed):
        Trainer(fast_config(recipe, family), tmp_path / "broken", progress=False).fit(on_step=kill_at(5))
    resumed = Trainer(fast_config(recipe, family), tmp_path / "broken", progress=False).fit(resume=True)
    expected, got = load_file(unbroken.with_suffix(".safetensors")), load_file(resumed.with_suffix(".safetensors"))
    assert expected.keys() == got.keys()
    assert all(torch.isfinite(t).all() for t in expected.values() if t.is_floating_point())
    assert all(torch.equal(expected[k], got[k]) for k in expected), f"{recipe} on {family} did not resume bit-exact"


def micro_model(family: str):
    config = fast_config(FAMILIES.get(family).paper_recipe, family)
    torch.manual_seed(0)
    return create_model(config.model, load_dataset("synthetic", "test").info)


@pytest.mark.parametrize("family", FAMILIES.names())
def test_every_family_trains_every_parameter_and_reports_consistent_gates(family):
    model = micro_model(family)
    for parameter in model.parameters():  # experts start neutral (B = 0): perturb so every gradient is non-zero
        parameter.data.add_(0.01 * torch.randn_like(parameter))
    images = torch.rand(6, 3, 32, 32)
    model.train()
    model(images).logsumexp(1).sum().backward()
    silent = [name for name, p in model.named_parameters()  # frozen ones (RoME's per-layer L_div projections) aside
              if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not silent, f"family {family}: no gradient reaches {silent[:3]} (a dead expert or a detached gate?)"
    outputs = gates(model)
    assert bool(outputs) == FAMILIES.get(family).has_experts
    for gate in outputs:
        batch, _, experts = gate.fused.shape
        assert batch == len(images) and experts >= 2, gate.name
        assert torch.allclose(gate.fused.sum(-1), torch.ones(()), atol=1e-5), gate.name
        if gate.dispatch is not None:  # a hard top-k assignment: 0/1, the same k experts per token
            assert gate.dispatch.shape == gate.fused.shape, gate.name
            assert set(gate.dispatch.unique().tolist()) <= {0.0, 1.0}, gate.name
            assert len(gate.dispatch.sum(-1).unique()) == 1, gate.name
    if outputs:  # analyze gating reads every family the same way: token-averaged gates (B, L, K)
        from rome_bench.evaluation.gating_analysis import token_averaged_gates

        assert token_averaged_gates(model.eval(), images).shape == (len(images), len(outputs), outputs[0].num_experts)


@pytest.mark.parametrize("family", [name for name in FAMILIES.names() if FAMILIES.get(name).has_experts])
def test_gma_attacks_every_gated_family_within_budget(family):
    """GMA runs on every family with gates (its misrouting term reads them) and stays in its ℓ∞ ball and [0, 1]."""
    from rome_bench.threats.gma import GatingMisrouting, misrouting_loss, model_gates

    model = micro_model(family).eval().requires_grad_(False)
    images, labels = torch.rand(4, 3, 32, 32), torch.arange(4)
    probe = images.clone().requires_grad_(True)
    model(probe)
    targets = [gate.detach().argmin(-1) for gate in model_gates(model)]
    misrouting_loss(model_gates(model), targets).sum().backward()
    assert probe.grad is not None and probe.grad.abs().sum() > 0, f"{family}: the gates carry no input gradient"
    threat = GatingMisrouting(eps=8 / 255, steps=2)
    assert threat.applicable(model)
    torch.manual_seed(0)
    adversarial = threat(model, images, labels)
    assert (adversarial - images).abs().max() <= 8 / 255 + 1e-6
    if bf16_unsupported() is None:  # eval --precision bf16: the gates come from a bf16 forward
        with attack_precision("bf16", torch.device("cpu")):
            adversarial = threat(attack_model(model), images, labels)
        assert adversarial.dtype == torch.float32 and (adversarial - images).abs().max() <= 8 / 255 + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1


@pytest.mark.parametrize("family", FAMILIES.names())
def test_every_family_runs_forward_and_backward_under_bf16_autocast(family):
    """train.precision=bf16 and eval --precision bf16 run each family's passes under autocast: no mixed-dtype
    failure, finite logits, finite fp32 gradients (the weights stay fp32)."""
    if reason := bf16_unsupported():
        pytest.skip(reason)
    model = micro_model(family)
    for parameter in model.parameters():
        parameter.data.add_(0.01 * torch.randn_like(parameter))
    images = torch.rand(6, 3, 32, 32, requires_grad=True)
    for mode in (model.train, model.eval):
        mode()
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(images)
        logits.float().logsumexp(1).sum().backward()
        assert torch.isfinite(logits).all() and torch.isfinite(images.grad).all(), family
        grads = [p.grad for p in model.parameters() if p.grad is not None]  # top-k experts may get no token
        assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads), family


def all_threat_instances() -> list[Threat]:
    """One instance of every threat the suites and the training attacks build, at the smoke preset."""
    threats_config = preset("smoke").threats
    instances: dict[str, Threat] = {}
    for suite in SUITES.entries():
        for threat in suite.obj.build(threats_config):
            instances.setdefault(threat.name, threat)
    for attack in ("pgd", "apgd"):
        for threat in training_threats(threats_config, attack):
            instances.setdefault(threat.name, threat)
    for name in RECIPES.names():
        recipe = RECIPES.get(name)
        for threat in recipe(recipe.Options(), threats_config, "pgd").threats():
            instances.setdefault(threat.name, threat)
    return list(instances.values())


INSTANCES = all_threat_instances()
SLOW = {"autoattack-linf", "autoattack-l2", "autoattack-l1"}  # covered by test_autoattack; minutes on 2 cores


@functools.cache
def _gated_model() -> torch.nn.Module:
    """A RoME micro model (untrained, experts perturbed off zero), for the threats that only attack gated models."""
    model = micro_model("rome")
    generator = torch.Generator().manual_seed(0)
    for parameter in model.parameters():
        parameter.data.add_(0.01 * torch.randn(parameter.shape, generator=generator))
    return model.eval().requires_grad_(False)


def attacked_model(threat: Threat, undefended_model: torch.nn.Module) -> torch.nn.Module:
    """The shared ViT; for a threat that reads gates (router-aware APGD), the RoME micro model. Every threat must
    attack one of them: none is left unchecked."""
    model = undefended_model if threat.applicable(undefended_model) else _gated_model()
    assert threat.applicable(model), f"{threat.name} attacks neither the shared ViT nor a RoME micro model"
    return model


def test_every_registered_threat_is_built_by_some_suite_or_recipe():
    built = {threat.name for threat in INSTANCES}
    assert set(THREATS.names()) <= built, f"never built, so never checked: {sorted(set(THREATS.names()) - built)}"


@pytest.mark.parametrize("threat", [t for t in INSTANCES if t.name not in SLOW], ids=lambda t: t.name)
def test_every_threat_rebuilds_stays_in_budget_and_is_deterministic(threat, undefended_model, synthetic_test,
                                                                    request):
    rebuilt = type(threat)(**threat.params())
    assert rebuilt.key == threat.key
    if getattr(threat, "lpips", None) == "alexnet":  # ppgd-alexnet, lpa-alexnet: a stand-in AlexNet file
        request.getfixturevalue("fake_alexnet")
    model = attacked_model(threat, undefended_model)  # the shared ViT (GMA without gates: CE only), or a gated one
    images, labels = synthetic_test.dataset.batch([0, 1, 2])
    kwargs = {"example_ids": [0, 1, 2]} if threat.uses_example_ids else {}
    outputs = []
    for _ in range(2):
        torch.manual_seed(0)
        outputs.append(rebuilt(model, images, labels, **kwargs))
    verify_threat_output(rebuilt, images, outputs[0], [0, 1, 2])
    assert torch.equal(outputs[0], outputs[1]), f"{threat.name} is not deterministic under a seed"


@pytest.mark.parametrize("threat", [t for t in INSTANCES if t.name not in SLOW], ids=lambda t: t.name)
def test_every_threat_runs_under_bf16_autocast(threat, undefended_model, synthetic_test, request):
    """``eval --precision bf16`` runs the model under bf16 autocast inside every attack: no threat may break there
    (bf16 logits, mixed-dtype buffers) or leave its budget (its own arithmetic must stay fp32)."""

    if reason := bf16_unsupported():
        pytest.skip(reason)
    model = attacked_model(threat, undefended_model)
    if getattr(threat, "lpips", None) == "alexnet":
        request.getfixturevalue("fake_alexnet")
    images, labels = synthetic_test.dataset.batch([0, 1, 2])
    kwargs = {"example_ids": [0, 1, 2]} if threat.uses_example_ids else {}
    torch.manual_seed(0)
    with attack_precision("bf16", torch.device("cpu")):
        output = threat(attack_model(model), images, labels, **kwargs)
    verify_threat_output(threat, images, output.detach().to(images.dtype), [0, 1, 2])

"""Single-threat AT, TRADES and MSD: each trains through the Trainer, and each recipe's defining property holds."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from rome_bench.config import ThreatsConfig
from rome_bench.data import load_dataset
from rome_bench.errors import ConfigError
from rome_bench.models import create_model
from rome_bench.presets import preset
from rome_bench.threats import THREATS, LinfPGD, project_l2_box
from rome_bench.threats.msd import MSD, UnionBudget
from rome_bench.training import recipes as _recipes  # noqa: F401  (registers the recipes)
from rome_bench.training.overrides import resolve_config
from rome_bench.training.recipe import Batch, StepContext, build_recipe
from rome_bench.training.recipes.trades import TradesKLAttack, trades_kl
from rome_bench.training.routing import build_routing_loss
from rome_bench.training.trainer import Trainer

RECIPES = ["linf-at", "l2-at", "l1-at", "trades", "msd"]
EPS = {"l1": 12.0, "l2": 0.5, "linf": 8 / 255}


def tiny_config(recipe: str, family: str):
    return resolve_config(preset("smoke"), [
        "model.backbone=vit_micro", "data.train_size=32", "train.batch_size=16", "train.epochs=1",
        "train.checkpoint_every=100", f"train.recipe={recipe}", f"model.family={family}",
        "threats.train_steps.l1=2", "threats.train_steps.l2=2", "threats.train_steps.linf=1",
        *(["train.options.steps=2"] if recipe == "msd" else [])])


def micro_model(family: str, seed: int = 0) -> nn.Module:
    config = preset("smoke").model
    config.backbone, config.family = "vit_micro", family
    config.options = config.options if family == "rome" else {}  # the smoke preset's options are RoME's
    torch.manual_seed(seed)
    return create_model(config, load_dataset("synthetic", "test").info)


def synthetic_batch(size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_dataset("synthetic", "test").dataset.batch(list(range(size)))
    return images, labels


class RecordingRouting(nn.Module):
    """A routing loss that records the threat ids it is given and returns the real one's value."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.ids: list[torch.Tensor] = []

    def forward(self, gates, threat_ids: torch.Tensor) -> torch.Tensor:
        self.ids.append(threat_ids.clone())
        return self.inner(gates, threat_ids)


def rome_context(model: nn.Module, num_threats: int) -> tuple[StepContext, RecordingRouting]:
    routing = RecordingRouting(build_routing_loss(preset("smoke").model, num_threats))
    return StepContext(model, list(model.parameters()), routing), routing


@pytest.mark.parametrize("family", ["plain", "rome"])
@pytest.mark.parametrize("recipe", RECIPES)
def test_two_training_steps_give_finite_weights(tmp_path, recipe, family):
    final = Trainer(tiny_config(recipe, family), tmp_path / "run", progress=False).fit()
    weights = load_file(final.with_suffix(".safetensors"))
    assert weights and all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


# --- single-threat AT -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
def test_at_loss_is_the_cross_entropy_on_every_inputs_adversarial_example(norm):
    recipe = build_recipe(f"{norm}-at", {}, ThreatsConfig(train_steps={"l1": 2, "l2": 2, "linf": 2}), "pgd")
    (threat,) = recipe.threats()
    assert threat.column == norm and threat.eps == ThreatsConfig().eps[norm]
    model = micro_model("plain")
    images, labels = synthetic_batch()
    torch.manual_seed(1)
    result = recipe.loss(StepContext(model, list(model.parameters()), None), Batch(images, labels, 0, 0))
    torch.manual_seed(1)
    adversarial = threat(model.eval(), images, labels)
    assert not torch.equal(adversarial, images)
    expected = F.cross_entropy(model.train()(adversarial), labels)
    assert torch.allclose(result.loss, expected, rtol=1e-6, atol=1e-7)
    assert set(result.correct) == {"nat", norm} and result.correct[norm][1] == len(labels)


def test_rome_at_labels_every_input_threat_0_and_its_single_group_l_div_is_exactly_0():
    recipe = build_recipe("linf-at", {}, ThreatsConfig(train_steps={"l1": 1, "l2": 1, "linf": 1}), "pgd")
    model = micro_model("rome")
    ctx, routing = rome_context(model, len(recipe.threats()))
    images, labels = synthetic_batch()
    result = recipe.objective(ctx, Batch(images, labels, 0, 0))  # loss() + the routing loss of its labelled forward
    assert [ids.tolist() for ids in routing.ids] == [[0] * len(labels)]
    assert torch.isfinite(result.loss) and result.logs["routing"] == 0.0


# --- TRADES -----------------------------------------------------------------------------------------------------


def trades(options: dict, attack: str = "pgd"):
    return build_recipe("trades", options, ThreatsConfig(train_steps={"l1": 1, "l2": 1, "linf": 3}), attack)


def test_trades_with_beta_0_is_exactly_the_clean_cross_entropy():
    model = micro_model("plain")
    images, labels = synthetic_batch()
    result = trades({"beta": 0.0}).loss(StepContext(model, list(model.parameters()), None),
                                        Batch(images, labels, 0, 0))
    assert result.logs["kl"] > 0  # the KL term was computed, then weighted by 0
    assert float(result.loss.detach()) == float(F.cross_entropy(model.train()(images), labels).detach())


def test_trades_loss_is_cross_entropy_plus_beta_times_a_nonnegative_kl():
    model = micro_model("plain")
    images, labels = synthetic_batch()
    result = trades({"beta": 6.0}).loss(StepContext(model, list(model.parameters()), None),
                                        Batch(images, labels, 0, 0))
    assert result.logs["kl"] >= 0
    assert result.loss.item() == pytest.approx(result.logs["nat_loss"] + 6.0 * result.logs["kl"], rel=1e-6)
    assert set(result.correct) == {"nat", "linf"}
    assert trades_kl(torch.randn(4, 10), torch.randn(4, 10)) >= 0


def test_trades_attack_raises_the_kl_above_its_start_and_stays_in_the_linf_ball():
    model = micro_model("plain").eval()
    images, labels = synthetic_batch()
    attack = TradesKLAttack(8 / 255, steps=10, step_size=0.007)
    torch.manual_seed(3)
    adversarial = attack(model, images, labels)
    torch.manual_seed(3)
    start = (images + 0.001 * torch.randn_like(images)).clamp(0, 1)  # the attack's first draw
    with torch.no_grad():
        clean = model(images)
        kl_start, kl_adversarial = trades_kl(clean, model(start)), trades_kl(clean, model(adversarial))
    assert kl_adversarial > 10 * kl_start
    assert (adversarial - images).abs().max() <= 8 / 255 + 1e-6 and adversarial.min() >= 0 and adversarial.max() <= 1


@pytest.mark.parametrize("options", [{"beta": -1.0}, {"steps": 0}, {"step_size": 0.0}])
def test_trades_options_out_of_range_are_refused(options):
    with pytest.raises(ConfigError, match=r"train\.options\."):
        trades(options)


def test_trades_and_msd_refuse_the_apgd_training_attack():
    for name in ("trades", "msd"):
        with pytest.raises(ConfigError, match="train-attack apgd"):
            build_recipe(name, {}, ThreatsConfig(), "apgd").threats()


# --- MSD --------------------------------------------------------------------------------------------------------


def msd(**overrides) -> MSD:
    settings = {"eps_l1": EPS["l1"], "eps_l2": EPS["l2"], "eps_linf": EPS["linf"], "steps": 5, **overrides}
    return MSD(**settings)


def cross_entropies(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, delta: torch.Tensor):
    with torch.no_grad():
        return F.cross_entropy(model((images + delta).clamp(0, 1)), labels, reduction="none")


def test_each_msd_iteration_keeps_the_candidate_with_the_highest_loss_of_the_three():
    model = micro_model("plain").eval()
    images, labels = synthetic_batch()
    attack = msd(alpha_l1=2.0, alpha_l2=0.2, alpha_linf=0.003)  # steps at which ℓ2 wins first, then ℓ∞
    delta = torch.zeros_like(images)
    kept_norms = set()
    for _ in range(4):
        delta_in = delta.clone().requires_grad_(True)
        loss = F.cross_entropy(model((images + delta_in).clamp(0, 1)), labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, delta_in)
        step = attack.iterate(model, images, labels, delta, k=10)
        # the three candidates: their own steepest-ascent step from δ, on their own ball ∩ box
        linf = LinfPGD(EPS["linf"]).project(images, delta + 0.003 * grad.sign())
        l2 = project_l2_box(delta + 0.2 * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1), images, EPS["l2"])
        assert torch.allclose(step.candidates[2], linf, atol=1e-7)
        assert torch.allclose(step.candidates[1], l2, atol=1e-6)
        l1_move = (step.candidates[0] - delta).flatten(1)
        room = delta.flatten(1).abs().sum(dim=1) <= EPS["l1"] - 2.0  # where the ℓ1 ball does not shrink δ
        assert ((l1_move != 0).sum(dim=1) <= 10)[room].all()  # only the k = 10 steepest coordinates move
        assert (step.candidates[0].flatten(1).abs().sum(dim=1) <= EPS["l1"] * (1 + 1e-5)).all()
        # the kept δ has, per example, the highest loss of the three candidates
        losses = torch.stack([cross_entropies(model, images, labels, c) for c in step.candidates])
        assert torch.allclose(step.losses, losses, atol=1e-5)
        assert torch.allclose(cross_entropies(model, images, labels, step.delta), losses.max(dim=0).values,
                              atol=1e-5)
        assert torch.equal(step.kept, losses.argmax(dim=0))
        kept_norms.update(step.kept.tolist())
        delta = step.delta
    assert len(kept_norms) >= 2, "the test should see more than one norm's step kept"


def test_msd_output_is_in_the_union_budget_and_the_box_and_records_the_kept_norm():
    model = micro_model("plain").eval()
    images, labels = synthetic_batch()
    attack = msd()
    torch.manual_seed(0)
    adversarial = attack(model, images, labels)
    check = attack.budget().check(images, adversarial)
    assert (check.measured <= check.limit).all()
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    ids = attack.kept_norm_ids
    assert ids is not None and ids.shape == labels.shape and set(ids.tolist()) <= {0, 1, 2}
    delta = (adversarial - images).flatten(1).double()
    norms = [delta.abs().sum(1) / EPS["l1"], delta.norm(dim=1) / EPS["l2"], delta.abs().amax(1) / EPS["linf"]]
    inside_kept_ball = torch.stack(norms).gather(0, ids.view(1, -1)).squeeze(0) <= 1 + 1e-5
    assert inside_kept_ball.all()
    assert cross_entropies(model, images, labels, adversarial - images).mean() > F.cross_entropy(
        model(images), labels)
    torch.manual_seed(0)
    assert torch.equal(attack(model, images, labels), adversarial)  # deterministic under a seed


def test_union_budget_accepts_one_ball_and_refuses_a_perturbation_outside_all_three():
    images = torch.full((2, 3, 8, 8), 0.5)
    budget = UnionBudget(tuple(EPS.items()))
    sparse = images.clone()
    sparse[0, 0, 0, :8] += 0.5  # ℓ1 4 ≤ 12 but ℓ∞ 0.5 > 8/255
    sparse[1] += 0.1  # ℓ∞ 0.1 > 8/255, ℓ2 ≈ 1.39 > 0.5, ℓ1 19.2 > 12: outside every ball
    check = budget.check(images, sparse)
    assert check.measured[0] <= check.limit < check.measured[1]


def test_msd_is_registered_and_rebuilds_from_its_params():
    attack = THREATS.get("msd")()
    assert attack.column == "msd" and attack.tag == "seen"
    assert attack.params()["eps_linf"] == 0.03 and attack.params()["steps"] == 50
    assert type(attack)(**attack.params()).key == attack.key


def test_msd_recipe_attacks_the_presets_balls_and_routes_by_the_kept_norm():
    recipe = build_recipe("msd", {"steps": 3}, ThreatsConfig(), "pgd")
    (attack,) = recipe.threats()
    assert attack.eps == ThreatsConfig().eps and attack.steps == 3
    model = micro_model("rome")
    ctx, routing = rome_context(model, 1)
    images, labels = synthetic_batch()
    result = recipe.objective(ctx, Batch(images, labels, 0, 0))
    assert torch.equal(routing.ids[0], attack.kept_norm_ids)
    assert torch.isfinite(result.loss) and set(result.correct) == {"nat", "msd"}
    assert sum(result.logs[f"kept_{norm}"] for norm in ("l1", "l2", "linf")) == pytest.approx(1.0)

"""SparseFool ℓ0 and the adversarial patch: budgets, box, strength, monotonicity, determinism, reference checks."""

import pytest
import torch

from rome_bench.threats import THREATS
from rome_bench.threats.sparse import (
    AdversarialPatch,
    L0Budget,
    PatchBudget,
    SparseFool,
    count_changed_pixels,
    deepfool,
    linear_solver,
    patch_extent,
)
from tests.measures import accuracy, fooled
from tests.reference_libs import torchattacks


@pytest.fixture(scope="module")
def few(correct_batch):
    """16 correctly classified examples: DeepFool needs one backward per class per step, so keep the CPU light."""
    images, labels = correct_batch
    return images[:16], labels[:16]


@pytest.fixture(scope="module")
def sparsefool_output(undefended_model, few):
    images, labels = few
    attack = SparseFool()
    return attack(undefended_model, images, labels), attack.last_l0


# ---------------------------------------------------------------------------------------------------------------
# SparseFool
# ---------------------------------------------------------------------------------------------------------------


def test_sparsefool_output_is_in_box_and_within_its_budget(few, sparsefool_output):
    images, _ = few
    adversarial, last_l0 = sparsefool_output
    assert adversarial.shape == images.shape and torch.isfinite(adversarial).all()
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    check = SparseFool().budget().check(images, adversarial)
    assert check.limit == 32 * 32 and (check.measured <= check.limit).all()
    assert check.description == "ℓ0 (unbounded minimum-norm attack)"
    assert torch.equal(check.measured.long(), last_l0.long()), "last_l0 is the budget's ℓ0 of the last call"


def test_l0_budget_counts_pixels_once_over_channels():
    clean = torch.full((2, 3, 4, 4), 0.5)
    perturbed = clean.clone()
    perturbed[0, :, 1, 1] = 0.9  # one pixel, three channels
    perturbed[0, 2, 3, 0] = 0.1  # another pixel, one channel
    perturbed[1, 0, 0, 0] += 1e-7  # below the tolerance
    check = L0Budget().check(clean, perturbed)
    assert check.measured.tolist() == [2.0, 0.0] and check.limit == 16


def test_sparsefool_fools_the_undefended_model(undefended_model, few, sparsefool_output):
    _, labels = few
    adversarial, _ = sparsefool_output
    assert accuracy(undefended_model, adversarial, labels) <= 0.25


def test_sparsefool_perturbation_is_sparse(few, sparsefool_output):
    images, _ = few
    changed = count_changed_pixels(images, sparsefool_output[0])
    fraction = changed.double() / (32 * 32)
    assert fraction.median() < 0.05, f"median changed-pixel fraction {fraction.median():.3f}"
    assert (changed > 0).float().mean() >= 0.75


def test_sparsefool_more_steps_never_weaker_and_deterministic(undefended_model, few, sparsefool_output):
    images, labels = few
    outputs = [SparseFool(steps=steps)(undefended_model, images, labels) for steps in (1, 3)]
    outputs.append(sparsefool_output[0])
    broken = [fooled(undefended_model, output, labels) for output in outputs]
    assert (broken[0] <= broken[1]).all() and (broken[1] <= broken[2]).all(), "an example fooled stays fooled"
    assert torch.equal(outputs[2][broken[0]], outputs[0][broken[0]]), "the first misclassified iterate is kept"
    assert broken[2].sum() > broken[0].sum(), "one outer iteration should not already be saturated"
    again = SparseFool()(undefended_model, images, labels)
    assert torch.equal(again, sparsefool_output[0])


def _sequential_linear_solver(x, w, plane_point):
    """Algorithm 1 of SparseFool literally: one coordinate per step by descending |w_j|, clipped to [0,1]."""
    x, w, plane_point = x.flatten().double().clone(), w.flatten().double(), plane_point.flatten().double()
    side = 1.0 if torch.dot(w, x - plane_point) > 0 else -1.0
    unused = w.abs().clone()
    while unused.max() > 0:
        distance = torch.dot(w, x - plane_point)
        if distance * side <= 0:
            break
        j = unused.argmax()
        move = max((distance.abs().item() + 1e-3) / w[j].abs().item(), 1e-4)
        x[j] = (x[j] - side * w[j].sign() * move).clamp(0, 1)
        unused[j] = 0
    return x


@pytest.mark.parametrize("distance", [-0.02, -0.4, -3.0, -200.0, 0.3])
def test_closed_form_linear_solver_equals_the_sequential_algorithm(distance):
    torch.manual_seed(3)
    x = torch.rand(4, 3, 8, 8)
    x[:, :, :2] = x[:, :, :2].round()  # some coordinates start on the box boundary
    w = torch.randn(4, 3 * 8 * 8)
    w[:, :5] = 0
    w = w / w.norm(dim=1, keepdim=True)
    plane_point = x - distance * w.view_as(x)  # wᵀ(x − x_B) = distance
    ours = linear_solver(x, w, plane_point)
    for i in range(len(x)):
        reference = _sequential_linear_solver(x[i], w[i], plane_point[i]).view_as(x[i]).float()
        assert torch.allclose(ours[i], reference, atol=1e-6)
    crossed = ((ours - plane_point).flatten(1).double() * w.double()).sum(1) * distance <= 0
    assert crossed.all() == (distance != -200.0), "the plane is crossed exactly when the box allows it"


def test_plane_point_falls_back_along_the_normal_when_the_linearisation_is_inconsistent():
    start = torch.full((2, 1, 1, 2), 0.5)
    normal = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    reached = start + torch.tensor([[0.3, 0.4], [-0.3, 0.4]]).view(2, 1, 1, 2)
    plane = SparseFool(lam=3.0)._plane_point(start, reached, normal)
    assert torch.allclose(plane.flatten(1), torch.tensor([[1.4, 1.7], [2.0, 0.5]]))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchattacks' numpy 2 warning, once per coordinate
def test_deepfool_matches_torchattacks_deepfool(undefended_model, few):
    ta = torchattacks()
    images, labels = few[0][:8], few[1][:8]
    reached, target = deepfool(undefended_model, images, labels, overshoot=0.02, steps=50, candidates=10)
    ours = (images + 1.02 * (reached - images)).clamp(0, 1)
    theirs = ta.DeepFool(undefended_model, steps=50, overshoot=0.02)(images, labels)
    ours_fooled, theirs_fooled = fooled(undefended_model, ours, labels), fooled(undefended_model, theirs, labels)
    # DeepFool's points lie within a 2% overshoot of the decision boundary, where the CPU's float kernels (and the
    # batch a point is classified in) can flip one example either way: allow that one, and nothing more. Ours
    # then fools at least as many as the reference (which, on AVX-512 kernels, leaves one of these 8 unfooled).
    assert ours_fooled.sum() >= len(labels) - 1 and ours_fooled.sum() >= theirs_fooled.sum() - 1, (
        ours_fooled, theirs_fooled)
    reached_class = undefended_model(ours).argmax(1)
    assert (reached_class[ours_fooled] != target[ours_fooled]).sum() <= 1, "the class DeepFool says it crossed into"
    both = ours_fooled & theirs_fooled
    assert both.sum() >= len(labels) // 2
    # Both take the same linearised steps; torchattacks overshoots each step by 2% and ours the total once (plus the
    # authors' 10⁻⁴ per step), so on an example both fool ours is within the 2% overshoot of theirs (measured: at most
    # 1.6% larger, 23 examples under ROME_BENCH_TEST_SEED 0, 1 and 2).
    ours_l2 = (ours - images).flatten(1).norm(dim=1)[both]
    theirs_l2 = (theirs - images).flatten(1).norm(dim=1)[both]
    ratio = ours_l2 / theirs_l2
    assert (ratio <= 1.02).all(), f"ours is larger than the reference's beyond the 2% overshoot (ours/theirs {ratio})"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_sparsefool_against_torchattacks(undefended_model, few, sparsefool_output):
    ta = torchattacks()
    images, labels = few
    theirs = ta.SparseFool(undefended_model, steps=10, lam=3, overshoot=0.02)(images, labels)
    ours, ours_l0 = sparsefool_output
    ours_fooled, theirs_fooled = fooled(undefended_model, ours, labels), fooled(undefended_model, theirs, labels)
    assert ours_fooled.float().mean() >= theirs_fooled.float().mean() - 1 / 16
    both = ours_fooled & theirs_fooled
    assert both.sum() >= 4
    theirs_l0 = count_changed_pixels(images, theirs)
    # On examples both attacks fool, our median ℓ0 is comparable to theirs (a few pixels each: medians are tiny).
    assert ours_l0[both].double().median() <= 3 * theirs_l0[both].double().median() + 2


def test_sparsefool_registration_and_params():
    entry = THREATS.entry("sparsefool-l0")
    assert entry.metadata["tag"] == "unseen" and entry.metadata["column"] == "l0"
    attack = SparseFool()
    assert attack.params() == {"steps": 10, "lam": 3.0, "overshoot": 0.02, "deepfool_steps": 50, "candidates": 10}
    assert type(attack)(**attack.params()).key == attack.key != SparseFool(lam=2.0).key


# ---------------------------------------------------------------------------------------------------------------
# Adversarial patch
# ---------------------------------------------------------------------------------------------------------------


def test_patch_budget_measures_the_square_holding_the_changes():
    clean = torch.full((4, 3, 32, 32), 0.5)
    perturbed = clean.clone()
    perturbed[0, :, 3:11, 20:28] = 1.0  # an 8×8 square
    perturbed[1, 1, 5, 5] = 0.0  # a single pixel
    perturbed[2, 0, 0, 0] = perturbed[2, 2, 31, 31] = 0.0  # spread over the image
    perturbed[3, 0, 10, 4] = perturbed[3, 0, 12, 12] = 1.0  # rows 10..12, columns 4..12: a 9-wide box
    check = PatchBudget(8).check(clean, perturbed)
    assert check.measured.tolist() == [8.0, 1.0, 32.0, 9.0] and check.limit == 8
    assert (check.measured > check.limit).tolist() == [False, False, True, True]
    assert patch_extent(clean, clean).tolist() == [0, 0, 0, 0]


def test_patch_output_is_in_box_and_within_its_budget(undefended_model, correct_batch):
    images, labels = correct_batch[0][:32], correct_batch[1][:32]
    torch.manual_seed(0)
    attack = AdversarialPatch(steps=10)
    adversarial = attack(undefended_model, images, labels)
    assert torch.isfinite(adversarial).all() and adversarial.min() >= 0 and adversarial.max() <= 1
    check = attack.budget().check(images, adversarial)
    assert (check.measured <= check.limit).all() and (check.measured >= 6).all(), "one 8×8 square per example"


def test_patch_fools_the_undefended_model_and_more_steps_never_weaker(undefended_model, correct_batch):
    images, labels = correct_batch[0][:32], correct_batch[1][:32]
    outputs = []
    for steps in (1, 5, 50):
        torch.manual_seed(0)
        outputs.append(AdversarialPatch(steps=steps)(undefended_model, images, labels))
    broken = [fooled(undefended_model, output, labels) for output in outputs]
    assert (broken[0] <= broken[1]).all() and (broken[1] <= broken[2]).all()
    assert torch.equal(outputs[2][broken[1]], outputs[1][broken[1]]), "the first misclassified iterate is kept"
    assert broken[2].float().mean() >= 0.6, f"only {broken[2].float().mean():.2f} fooled"
    assert broken[2].sum() > broken[0].sum()


def test_patch_restarts_never_weaker(undefended_model, correct_batch):
    images, labels = correct_batch[0][:32], correct_batch[1][:32]
    broken = []
    for restarts in (1, 3):
        torch.manual_seed(0)
        attack = AdversarialPatch(steps=3, restarts=restarts)
        broken.append(fooled(undefended_model, attack(undefended_model, images, labels), labels))
    assert (broken[0] <= broken[1]).all() and broken[1].sum() > broken[0].sum()


def test_patch_is_deterministic_under_a_seed(undefended_model, correct_batch):
    images, labels = correct_batch[0][:8], correct_batch[1][:8]
    outputs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        outputs.append(AdversarialPatch(steps=3)(undefended_model, images, labels))
    assert torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[0], outputs[2])


def test_patch_placement(undefended_model, correct_batch):
    images, labels = correct_batch[0][:16], correct_batch[1][:16]
    torch.manual_seed(0)
    centred = AdversarialPatch(steps=2, placement="center")(undefended_model, images, labels)
    changed = ((centred - images).abs() > 0).any(dim=1)
    assert changed[:, 12:20, 12:20].sum() >= 0.9 * 16 * 64
    assert not changed[:, :12].any() and not changed[:, 20:].any()
    assert not changed[:, :, :12].any() and not changed[:, :, 20:].any()
    torch.manual_seed(0)
    spread = AdversarialPatch(steps=2)(undefended_model, images, labels)
    changed = ((spread - images).abs() > 0).any(dim=1)
    rows = changed.any(dim=2).float().argmax(dim=1)
    cols = changed.any(dim=1).float().argmax(dim=1)
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) >= 12, "random corners differ per example"
    assert changed.any(dim=0).flatten().float().mean() > 0.4, "random patches cover much of the image overall"


def test_patch_registration_and_params():
    entry = THREATS.entry("patch")
    assert entry.metadata["tag"] == "unseen" and entry.metadata["column"] == "patch"
    attack = AdversarialPatch()
    assert attack.params() == {"size": 8, "steps": 50, "step_size": 2 / 255, "placement": "random", "restarts": 1}
    assert type(attack)(**attack.params()).key == attack.key
    with pytest.raises(ValueError, match="placement"):
        AdversarialPatch(placement="corner")

"""StAdv and ReColorAdv: budgets, identity, strength, monotonicity, determinism, and perceptual-advex cross-checks."""

import pytest
import torch

from rome_bench.errors import ThreatOutputError
from rome_bench.evaluation.runner import verify_threat_output
from rome_bench.threats.base import THREATS
from rome_bench.threats.functional import CIELUV, ReColorAdv, StAdv
from tests.measures import accuracy
from tests.reference_libs import perceptual_advex

THREAT_CLASSES = {"stadv": StAdv, "recoloradv": ReColorAdv}
QUICK = {"stadv": {"steps": 10, "bound": 0.01}, "recoloradv": {"steps": 10, "step_size": 0.01}}


def test_registered_as_unseen_with_paper_defaults():
    for name, cls in THREAT_CLASSES.items():
        entry = THREATS.entry(name)
        assert entry.obj is cls and entry.metadata["tag"] == "unseen" and entry.metadata["column"] == name
        threat = cls()
        assert type(threat)(**threat.params()).params() == threat.params()
    assert StAdv().params() == {"bound": 0.05, "steps": 100, "step_size": 0.01, "tau": 0.05}
    recolor = ReColorAdv().params()
    assert recolor["bound"] == 0.06 and recolor["steps"] == 20 and recolor["resolution"] == (16, 32, 32)
    assert recolor["colour_space"] == "cieluv" and recolor["smoothness_weight"] == pytest.approx(0.0036 / 0.06)


@pytest.mark.parametrize("name", ["stadv", "recoloradv"])
def test_output_within_budget_and_box(name, undefended_model, correct_batch):
    images, labels = (t[:16] for t in correct_batch)
    threat = THREAT_CLASSES[name](**QUICK[name])
    torch.manual_seed(0)
    adversarial = threat(undefended_model, images, labels)
    assert adversarial.shape == images.shape and torch.isfinite(adversarial).all()
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    check = threat.budget().check(images, adversarial)
    assert torch.isfinite(check.measured).all(), "the recorded parameters must reproduce the output"
    assert (check.measured <= threat.bound * (1 + 1e-6)).all()
    assert check.measured.max() > 0.5 * threat.bound, "the attack should use its budget"
    verify_threat_output(threat, images, adversarial, list(range(len(images))))


@pytest.mark.parametrize("name", ["stadv", "recoloradv"])
def test_budget_rejects_an_output_the_parameters_do_not_explain(name, undefended_model, correct_batch):
    images, labels = (t[:8] for t in correct_batch)
    threat = THREAT_CLASSES[name](steps=2)
    adversarial = threat(undefended_model, images, labels)
    tampered = adversarial.clone()
    tampered[3] = (tampered[3] + 0.2).clamp(0, 1)
    measured = threat.budget().check(images, tampered).measured
    assert torch.isinf(measured[3]) and torch.isfinite(measured[torch.arange(8) != 3]).all()
    with pytest.raises(ThreatOutputError, match=f"{name} exceeded its budget at example 13"):
        verify_threat_output(threat, images, tampered, list(range(10, 18)))
    assert torch.isinf(THREAT_CLASSES[name]().budget().check(images, adversarial).measured).all()  # no call yet


def test_stadv_budget_reports_flow_smoothness(undefended_model, correct_batch):
    images, labels = (t[:8] for t in correct_batch)
    threat = StAdv(steps=3)
    threat(undefended_model, images, labels)
    assert threat.last_smoothness is not None and (threat.last_smoothness > 1e-3).all()
    assert "flow smoothness" in threat.budget().check(images, threat(undefended_model, images, labels)).description


def test_zero_perturbation_is_the_identity(correct_batch):
    images = correct_batch[0][:8]
    stadv = StAdv()
    assert (stadv.apply(images, stadv.zero_params(images)) - images).abs().max() <= 1e-6
    for space in ("cieluv", "yuv", "rgb"):
        recolor = ReColorAdv(colour_space=space)
        assert (recolor.apply(images, recolor.zero_params(images)) - images).abs().max() <= 1e-6, space
    # a one-pixel flow shifts the image by exactly one pixel (align_corners=False: 1 px = 2/W)
    shift = stadv.zero_params(images)
    shift[..., 0] = 2 / images.shape[-1]
    assert torch.allclose(stadv.apply(images, shift)[..., :-1], images[..., 1:], atol=1e-5)


@pytest.mark.parametrize("name", ["stadv", "recoloradv"])
def test_undefended_model_loses_accuracy(name, undefended_model, correct_batch):
    images, labels = (t[:32] for t in correct_batch)
    steps = {"stadv": 10, "recoloradv": 20}[name]  # ReColorAdv: the paper's 20 steps at perceptual-advex's lr
    torch.manual_seed(0)
    adversarial = THREAT_CLASSES[name](steps=steps)(undefended_model, images, labels)
    assert accuracy(undefended_model, adversarial, labels) <= {"stadv": 0.1, "recoloradv": 0.75}[name]


@pytest.mark.parametrize("name,settings,counts", [
    ("stadv", {"bound": 0.01}, (1, 3, 10)),  # a small flow bound, so the attack is not saturated
    ("recoloradv", {}, (4, 10, 20)),
])
def test_accuracy_does_not_rise_with_more_steps(name, settings, counts, undefended_model, correct_batch):
    images, labels = (t[:32] for t in correct_batch)
    results = []
    for steps in counts:
        torch.manual_seed(0)
        threat = THREAT_CLASSES[name](steps=steps, **settings)
        results.append(accuracy(undefended_model, threat(undefended_model, images, labels), labels))
    assert results[0] >= results[1] >= results[2]
    assert results[2] < results[0], f"more steps should help on a non-saturated budget: {results}"


@pytest.mark.parametrize("name", ["stadv", "recoloradv"])
def test_deterministic(name, undefended_model, correct_batch):
    images, labels = (t[:8] for t in correct_batch)
    outputs = []
    for _ in range(2):
        torch.manual_seed(3)
        outputs.append(THREAT_CLASSES[name](steps=3)(undefended_model, images, labels))
    assert torch.equal(outputs[0], outputs[1])


def test_smoothness_and_colour_space_match_perceptual_advex(correct_batch):
    perceptual_advex()  # skips when absent; the recoloradv package ships with it
    from recoloradv import color_spaces, norms
    from recoloradv.mister_ed import spatial_transformers

    torch.manual_seed(0)
    flow = torch.randn(3, 32, 32, 2) * 0.03
    transform = spatial_transformers.FullSpatial(shape=(3, 3, 32, 32), manual_gpu=False)
    transform.xform_params.data.add_(flow)
    assert torch.allclose(StAdv().smoothness(flow), transform.stAdv_norm().detach(), rtol=1e-4)
    offsets = torch.randn(2, 16, 32, 32, 3) * 0.02
    ours = ReColorAdv().smoothness(offsets.permute(0, 4, 1, 2, 3))
    assert torch.allclose(ours, norms.smoothness(offsets), rtol=1e-4)

    images = correct_batch[0][:8]
    theirs = color_spaces.CIELUVColorSpace()
    assert torch.allclose(CIELUV().from_rgb(images), theirs.from_rgb(images), atol=1e-3)
    assert torch.allclose(CIELUV().to_rgb(CIELUV().from_rgb(images)), images, atol=1e-5)


@pytest.mark.parametrize("name,ours,theirs", [
    ("stadv", {"bound": 0.01, "steps": 5}, {"bound": 0.01, "num_iterations": 5}),
    ("recoloradv", {"steps": 20}, {"num_iterations": 20}),  # the paper's ReColorAdv: bound 0.06, 20 iterations
])
def test_at_least_as_strong_as_perceptual_advex(name, ours, theirs, undefended_model, correct_batch):
    attacks = perceptual_advex().attacks
    reference = {"stadv": attacks.StAdvAttack, "recoloradv": attacks.ReColorAdvAttack}[name]
    images, labels = (t[:32] for t in correct_batch)
    torch.manual_seed(0)
    our_accuracy = accuracy(undefended_model, THREAT_CLASSES[name](**ours)(undefended_model, images, labels), labels)
    torch.manual_seed(0)
    their_output = reference(undefended_model, **theirs)(images, labels)
    their_accuracy = accuracy(undefended_model, their_output, labels)
    assert 0 < their_accuracy < 1, "pick settings where the reference attack is not saturated"
    assert our_accuracy <= their_accuracy + 2 / 32, f"ours {our_accuracy:.3f} vs perceptual-advex {their_accuracy:.3f}"


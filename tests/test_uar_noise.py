"""Fog, Snow and Gabor (Kang et al. 2019): budgets, attack strength, determinism, and agreement with advex-uar."""

import math

import numpy as np
import pytest
import torch

from rome_bench.evaluation.runner import verify_threat_output
from rome_bench.threats.base import THREATS
from rome_bench.threats.fog import Fog, diamond_square
from rome_bench.threats.gabor import Gabor, gabor_kernels, gabor_noise
from rome_bench.threats.snow import Snow, apply_snow, snow_layer, streak_kernel
from tests.measures import accuracy, fooled

PAPER = {"fog": (Fog, 12.0), "snow": (Snow, 0.5), "gabor": (Gabor, 60.0)}
STRONG = {"fog": 128.0, "snow": 0.5, "gabor": 60.0}  # ε at which the tiny model must break within 10 steps
WEAK = {"fog": 48.0, "snow": 0.05, "gabor": 15.0}  # ε at which 10 steps do not saturate
# Small steps for the monotonicity test: advex-uar's ε/√steps moves fog and gabor parameters across their whole box.
SMALL_STEP = {"fog": 0.05, "snow": 0.01, "gabor": 0.05}
NAMES = list(PAPER)


def attack(name: str, model, images, labels, seed: int = 0, **kwargs) -> torch.Tensor:
    threat = PAPER[name][0](**{"eps": PAPER[name][1], "steps": 10, **kwargs})
    torch.manual_seed(seed)
    return threat(model, images, labels)


@pytest.fixture(scope="module")
def batch(correct_batch):
    images, labels = correct_batch
    return images[:16], labels[:16]


def test_registered_with_paper_defaults():
    for name, (cls, eps) in PAPER.items():
        assert THREATS.get(name) is cls and cls.tag == "unseen" and cls.column == name
        threat = cls()
        assert threat.eps == eps and threat.steps == 100
        assert threat.step_size == pytest.approx(eps / 10)  # advex-uar: ε/√steps
        assert type(threat)(**threat.params()).params() == threat.params()
        doubled = threat.scaled(2.0)
        assert doubled.eps == 2 * eps and doubled.step_size == pytest.approx(2 * threat.step_size)


@pytest.mark.parametrize("name", NAMES)
def test_output_within_budget_and_box_and_model_breaks(name, undefended_model, batch):
    images, labels = batch
    threat = PAPER[name][0](eps=STRONG[name], steps=10)
    torch.manual_seed(0)
    adversarial = threat(undefended_model, images, labels)
    verify_threat_output(threat, images, adversarial, list(range(len(images))))  # raises on any violation
    check = threat.budget().check(images, adversarial)
    assert (check.measured <= check.limit).all()
    assert torch.isfinite(adversarial).all() and adversarial.min() >= 0 and adversarial.max() <= 1
    assert accuracy(undefended_model, adversarial, labels) <= 0.2


@pytest.mark.parametrize("name", NAMES)
def test_paper_budget_is_verified(name, undefended_model, batch):
    images, labels = batch[0][:8], batch[1][:8]
    threat = PAPER[name][0](eps=PAPER[name][1], steps=3)
    torch.manual_seed(1)
    adversarial = threat(undefended_model, images, labels)
    verify_threat_output(threat, images, adversarial, list(range(len(images))))
    assert not torch.equal(adversarial, images)


def test_budgets_reject_outputs_the_threat_cannot_produce(undefended_model, batch):
    images, labels = batch[0][:8], batch[1][:8]
    torch.manual_seed(0)
    fog = Fog(steps=2)
    foggy = fog(undefended_model, images, labels)
    tinted = (foggy + 0.01 * torch.tensor([1.0, -1.0, 0.0]).view(1, 3, 1, 1)).clamp(0, 1)  # not channel-shared
    assert (fog.budget().check(images, tinted).measured > fog.budget().check(images, tinted).limit).all()
    gabor = Gabor(eps=15.0, steps=2)
    brighter = (images + 16 / 255).clamp(0, 1)
    check = gabor.budget().check(images, brighter)
    assert (check.measured > check.limit).any()
    snow = Snow(steps=2)
    assert torch.isinf(snow.budget().check(images, images).measured).all()  # no call recorded yet
    snowy = snow(undefended_model, images, labels)
    assert (snow.budget().check(images, snowy).measured <= 1e-5).all()
    shifted = (snowy - 1e-3).clamp(0, 1)
    assert (snow.budget().check(images, shifted).measured > 1e-5).any()
    assert (Snow(eps=0.6, steps=2, flake_budget=0.2).budget().check(images, snowy).measured > 1e-5).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("step", ["small", "reference"])
def test_more_steps_never_weaker(name, step, undefended_model, batch):
    """Per example, what 1 or 3 steps fool, 10 steps fool too (the reference's large steps oscillate)."""
    images, labels = batch
    eps = WEAK[name]
    step_size = SMALL_STEP[name] if step == "small" else eps / math.sqrt(10)
    adversarials = [attack(name, undefended_model, images, labels, eps=eps, steps=steps, step_size=step_size)
                    for steps in (1, 3, 10)]
    results = [fooled(undefended_model, adversarial, labels) for adversarial in adversarials]
    assert (results[0] <= results[1]).all() and (results[1] <= results[2]).all()
    if step == "small":
        # The loss, not the fooled count: how many of 16 examples cross the boundary at this ε depends on the float
        # kernels the shared model was trained with (8, 8, 8 under ATEN_CPU_CAPABILITY=default), its loss does not.
        with torch.no_grad():
            losses = [float(torch.nn.functional.cross_entropy(undefended_model(adversarial), labels))
                      for adversarial in adversarials]
        assert losses[0] < losses[1] < losses[2], f"optimising should raise the loss at ε={eps}: {losses}"


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_seed(name, undefended_model, batch):
    images, labels = batch[0][:8], batch[1][:8]
    first = attack(name, undefended_model, images, labels, seed=3, eps=WEAK[name], steps=3)
    second = attack(name, undefended_model, images, labels, seed=3, eps=WEAK[name], steps=3)
    other = attack(name, undefended_model, images, labels, seed=4, eps=WEAK[name], steps=3)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("name", NAMES)
def test_larger_eps_at_least_as_strong(name, undefended_model, batch):
    images, labels = batch
    small = accuracy(undefended_model, attack(name, undefended_model, images, labels, eps=WEAK[name] / 4),
                     labels)
    large = accuracy(undefended_model, attack(name, undefended_model, images, labels, eps=STRONG[name]), labels)
    assert large <= small and large < 1.0


@pytest.mark.parametrize("name", NAMES)
def test_zero_eps_leaves_only_the_eps_free_rendering(name, undefended_model, batch):
    """At ε = 0 gabor is the identity, fog divides each channel by its maximum, snow only discolours."""
    images, labels = batch[0][:8], batch[1][:8]
    out = attack(name, undefended_model, images, labels, eps=0.0, steps=2)
    if name == "gabor":
        expected = images
    elif name == "fog":
        expected = images / images.amax(dim=(2, 3), keepdim=True)
    else:
        luminance = 0.2126 * images[:, :1] + 0.7152 * images[:, 1:2] + 0.0722 * images[:, 2:3]
        expected = 0.75 * images + 0.25 * torch.maximum(images, 1.5 * luminance + 0.5)
    torch.testing.assert_close(out, expected.clamp(0, 1), atol=1e-6, rtol=0)
    tiny = attack(name, undefended_model, images, labels, eps=1e-4 * PAPER[name][1], steps=2)
    assert (tiny - expected.clamp(0, 1)).abs().max() < 1e-3


def test_fog_on_full_range_images_is_mild_and_batch_independent():
    torch.manual_seed(0)
    images = torch.rand(4, 3, 32, 32)
    images[:, :, 0, 0] = 1.0  # every channel reaches 1, so ε = 0 would be the identity
    grids = [torch.rand(4, 2**i, 2**i) for i in range(6) for _ in range(3)]
    fog = Fog(eps=12.0)
    out = fog.render(images, grids, 64)
    assert (out - images).abs().max() <= 12 / 255 / (1 + 12 / 255) + 1e-6
    alone = torch.cat([diamond_square([g[i:i + 1] for g in grids], 64, 2.0) for i in range(4)])
    torch.testing.assert_close(diamond_square(grids, 64, 2.0), alone)


# ---------------------------------------------------------------------------- agreement with advex-uar (reference)


@pytest.fixture
def advex_uar(monkeypatch):
    """advex-uar's renderers, with its hard-coded ``.cuda()`` calls made no-ops (this is a CPU test)."""
    fog = pytest.importorskip("advex_uar.attacks.fog", reason="advex-uar is not installed")
    snow = pytest.importorskip("advex_uar.attacks.snow")
    gabor = pytest.importorskip("advex_uar.attacks.gabor")
    snow_attack = pytest.importorskip("advex_uar.attacks.snow_attack")
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *args, **kwargs: self)
    return fog, snow, gabor, snow_attack


def test_fog_map_and_gradient_match_advex_uar(advex_uar):
    reference = advex_uar[0]
    torch.manual_seed(0)
    grids = [torch.rand(1, 2**i, 2**i) for i in range(6) for _ in range(3)]
    mine = [g.clone().requires_grad_(True) for g in grids]
    theirs = [g.clone().requires_grad_(True) for g in grids]
    ours = diamond_square(mine, 64, 2.0)
    ref = reference.fog_creator(theirs, 1, mapsize=64, wibbledecay=2.0)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    weights = torch.rand_like(ours)
    (ours * weights).sum().backward()
    (ref * weights).sum().backward()
    for a, b in zip(mine, theirs, strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize(("end_row", "end_col", "width", "flip", "blur"),
                         [(8, 12, 1, False, 0.5), (12, 9, 3, True, 0.41), (10, 10, 5, False, 0.6)])
@pytest.mark.filterwarnings("ignore:torch.meshgrid")
def test_snow_streak_matches_advex_uar(advex_uar, end_row, end_col, width, flip, blur):
    reference = advex_uar[1]
    size, mid = 13, 6
    kernel = np.zeros((size, size))
    rows, cols, values = reference.weighted_line(mid, mid, end_row, end_col, width, mid, size)
    kernel[rows, cols] = values
    kernel[:mid + 1, :mid + 1] = kernel[::-1, ::-1][:mid + 1, :mid + 1]
    if flip:
        kernel = kernel[:, ::-1]
    blurred = reference.GaussianSmoothing(math.ceil(5 * blur), blur)(
        torch.tensor(kernel.copy(), dtype=torch.float32).view(1, 1, size, size), padding=1)[0, 0]
    torch.testing.assert_close(streak_kernel(size, end_row, end_col, width, flip, blur).float(), blurred,
                               atol=1e-6, rtol=0)


def test_snow_layer_and_backdrop_match_advex_uar(advex_uar):
    _, reference, _, reference_attack = advex_uar
    torch.manual_seed(0)
    flakes = torch.rand(2, 7, 8, 8)
    kernels = [torch.rand(1, 1, 13, 13) for _ in range(7)]
    snow = snow_layer(flakes, torch.cat(kernels, 1), 32, 32)
    torch.testing.assert_close(snow, reference.snow_creator(flakes, kernels, 32))
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(apply_snow(images, snow, 0.5, 0.25),
                               reference_attack.apply_snow(images, snow, torch.full((2,), 0.5)))


@pytest.mark.filterwarnings("ignore:torch.meshgrid")
def test_gabor_kernel_and_noise_match_advex_uar(advex_uar):
    reference = advex_uar[2]
    sides = torch.tensor([1.0, 4.0, 10.0])
    sigma, frequency = torch.tensor([0.1, 0.25, 0.4]), torch.tensor([3.0, 4.0, 5.5])
    theta = torch.tensor([0.3, 1.2, 2.9])
    kernels = gabor_kernels(23, sides, sigma, frequency, theta)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # advex-uar builds its grid in the default dtype
    try:
        expected = [reference.get_gabor_with_sides(23, sigma[i:i + 1].double(), frequency[i:i + 1].double(),
                                                   theta[i:i + 1].double(), int(sides[i])) for i in range(3)]
    finally:
        torch.set_default_dtype(default)
    torch.testing.assert_close(kernels[:, 0], torch.stack(expected), atol=1e-9, rtol=0)
    torch.manual_seed(0)
    variables = torch.rand(3, 1, 32, 32, dtype=torch.float64) * 2 - 1  # float64: advex-uar's FFT round trip is exact
    mine, theirs = variables.clone().requires_grad_(True), variables.clone().requires_grad_(True)
    ours, ref = gabor_noise(mine, kernels), reference.gabor_rand_distributed(theirs, kernels)
    torch.testing.assert_close(ours, ref, atol=1e-9, rtol=0)
    weights = torch.rand_like(ours)
    (ours * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(mine.grad, theirs.grad, atol=1e-6, rtol=1e-6)

"""The UAR threats Elastic and JPEG-ℓ∞ (rome_bench.threats.uar_geometric)."""

import math
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rome_bench.threats.base import THREATS
from rome_bench.threats.uar_geometric import (
    RGB_TO_YCBCR,
    Elastic,
    JPEGLinf,
    dct_8x8,
    dct_matrix,
    from_blocks,
    idct_8x8,
    to_blocks,
)
from tests.measures import accuracy

N = 32  # examples per attack in these tests
THREAT_CLASSES = {"elastic": Elastic, "jpeg-linf": JPEGLinf}
PAPER_EPS = 0.125


def correct_after(model, images, labels) -> torch.Tensor:
    with torch.no_grad():
        return model(images).argmax(1) == labels


def test_registered_with_paper_defaults():
    for name, column, cls in (("elastic", "elastic", Elastic), ("jpeg-linf", "jpeg", JPEGLinf)):
        assert THREATS.get(name) is cls and cls.column == column and cls.tag == "unseen"
        threat = cls()
        assert (threat.eps, threat.steps) == (PAPER_EPS, 100)
        assert threat.step_size == pytest.approx(PAPER_EPS / 10)  # ε/√steps, perceptual-advex's rule
        assert type(threat)(**threat.params()).params() == threat.params()
        doubled = threat.scaled(2.0)
        assert doubled.eps == pytest.approx(0.25) and doubled.step_size == pytest.approx(0.025)
    assert Elastic().params()["kernel_size"] == 5 and Elastic().params()["kernel_std"] == pytest.approx(3 / 7)
    assert JPEGLinf().params()["quality"] == 50 and JPEGLinf().params()["subsample_chroma"] is True


@pytest.mark.parametrize("name", ["elastic", "jpeg-linf"])
def test_output_within_budget_and_box(name, undefended_model, correct_batch):
    images, labels = correct_batch[0][:N], correct_batch[1][:N]
    torch.manual_seed(0)
    threat = THREAT_CLASSES[name](steps=5)
    adversarial = threat(undefended_model, images, labels)
    assert adversarial.shape == images.shape and torch.isfinite(adversarial).all()
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    check = threat.budget().check(images, adversarial)
    assert torch.isfinite(check.measured).all() and (check.measured <= check.limit).all()
    assert check.limit == pytest.approx(PAPER_EPS * (1 + 1e-5))
    assert check.measured.max() == pytest.approx(PAPER_EPS)  # sign steps reach the box's faces


@pytest.mark.parametrize("name", ["elastic", "jpeg-linf"])
def test_budget_rejects_outputs_it_cannot_explain(name, undefended_model, correct_batch):
    images, labels = correct_batch[0][:8], correct_batch[1][:8]
    torch.manual_seed(0)
    threat = THREAT_CLASSES[name](eps=0.25, steps=2)
    adversarial = threat(undefended_model, images, labels)
    budget = threat.budget()
    tampered = adversarial.clone()
    tampered[3, 0, 10, 10] = 1 - tampered[3, 0, 10, 10]
    measured = budget.check(images, tampered).measured
    assert math.isinf(measured[3]) and torch.isfinite(measured[[0, 1, 2, 4, 5, 6, 7]]).all()
    assert torch.isinf(budget.check(images[:4], adversarial[:4]).measured).all()  # no call recorded for 4
    # Parameters beyond ε that do explain the output are measured as such, and exceed the limit.
    threat.last_parameters = threat.last_parameters.sign() * 0.5
    oversized = threat.apply(images, threat.last_parameters)
    check = budget.check(images, oversized)
    assert (check.measured == 0.5).all() and (check.measured > check.limit).all()
    assert torch.isinf(THREAT_CLASSES[name]().budget().check(images, adversarial).measured).all()


@pytest.mark.parametrize("name", ["elastic", "jpeg-linf"])
def test_undefended_model_loses_accuracy_at_paper_budget(name, undefended_model, correct_batch):
    images, labels = correct_batch[0][:N], correct_batch[1][:N]
    torch.manual_seed(0)
    adversarial = THREAT_CLASSES[name](steps=10)(undefended_model, images, labels)
    # Elastic at ε = 0.125 pixel is weak (≈ 0.44 here with 10 steps); JPEG-ℓ∞ at 0.125 breaks the model.
    assert accuracy(undefended_model, adversarial, labels) <= {"elastic": 0.6, "jpeg-linf": 0.1}[name]


@pytest.mark.parametrize(("name", "eps"), [("elastic", 0.125), ("jpeg-linf", 0.03)])
def test_more_steps_never_weaker(name, eps, undefended_model, correct_batch):
    images, labels = correct_batch[0][:N], correct_batch[1][:N]
    survivors = []
    for steps in (1, 3, 10):
        torch.manual_seed(0)
        threat = THREAT_CLASSES[name](eps=eps, steps=steps, step_size=eps / 4)
        survivors.append(correct_after(undefended_model, threat(undefended_model, images, labels), labels))
    assert (survivors[1] <= survivors[0]).all() and (survivors[2] <= survivors[1]).all()  # per example
    assert survivors[2].sum() < survivors[0].sum(), "more steps should help on a non-saturated budget"


class _Recording(nn.Module):
    """Wraps a model and records every batch it sees with the predictions it made."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(images)
        self.seen.append((images.detach().clone(), logits.argmax(1).detach()))
        return logits


@pytest.mark.parametrize(("name", "eps"), [("elastic", 0.5), ("jpeg-linf", 0.05)])
def test_returns_first_misclassified_iterate(name, eps, undefended_model, correct_batch):
    images, labels = correct_batch[0][:N], correct_batch[1][:N]
    recording = _Recording(undefended_model)
    torch.manual_seed(0)
    # Steps of 2ε jump between opposite faces of the box, so iterates can fool the model and then stop fooling it.
    adversarial = THREAT_CLASSES[name](eps=eps, steps=6, step_size=2 * eps)(recording, images, labels)
    wrong = torch.stack([predictions != labels for _, predictions in recording.seen])  # (iterates, B)
    inputs = torch.stack([batch for batch, _ in recording.seen])
    fooled = wrong.any(dim=0)
    first = wrong.int().argmax(dim=0)
    # Examples first fooled before the last iterate tell the first misclassified iterate from the last one (and this
    # setting often fools an example, then stops fooling it); how many there are follows the model.
    assert (first[fooled] < len(wrong) - 1).any(), "some example should be fooled before the last iterate"
    expected = torch.where(fooled.view(-1, 1, 1, 1), inputs[first, torch.arange(len(labels))], inputs[-1])
    assert (adversarial - expected).abs().max() < 1e-6
    assert torch.equal(~correct_after(undefended_model, adversarial, labels), fooled)


@pytest.mark.parametrize(("name", "scales"), [("elastic", (0.25, 1, 4)), ("jpeg-linf", (0.1, 0.3, 1))])
def test_larger_eps_at_least_as_strong(name, scales, undefended_model, correct_batch):
    images, labels = correct_batch[0][:N], correct_batch[1][:N]
    results = []
    for scale in scales:
        torch.manual_seed(0)
        threat = THREAT_CLASSES[name](eps=PAPER_EPS * scale, steps=10)
        results.append(accuracy(undefended_model, threat(undefended_model, images, labels), labels))
    assert results[0] >= results[1] >= results[2] and results[0] > results[2] + 0.3, results


@pytest.mark.parametrize("name", ["elastic", "jpeg-linf"])
def test_deterministic_under_a_seed(name, undefended_model, correct_batch):
    images, labels = correct_batch[0][:8], correct_batch[1][:8]
    outputs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        outputs.append(THREAT_CLASSES[name](steps=3)(undefended_model, images, labels))
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.equal(outputs[0], outputs[2])  # the random start depends on the seed


def test_elastic_tiny_eps_leaves_image_unchanged(undefended_model, correct_batch):
    images, labels = correct_batch[0][:8], correct_batch[1][:8]
    torch.manual_seed(0)
    adversarial = Elastic(eps=1e-6, steps=3)(undefended_model, images, labels)
    assert (adversarial - images).abs().max() < 1e-5
    flow = torch.zeros(8, 2, 32, 32)
    flow[:, 0] = 1.0  # a uniform shift of one "pixel" (advex-uar's unit: (W−1)/W image pixels)
    shifted = Elastic(eps=1.0).apply(images, flow)
    # align_corners=True: column j samples x_j + (W−1)/W·… between columns j and j+1 (bilinear)
    weight = (32 - 1) / 32
    expected = (1 - weight) * images[..., :, :-1] + weight * images[..., :, 1:]
    assert (shifted[..., :, :-1] - expected).abs().max() < 1e-5


def _chroma_subsampled(images: torch.Tensor) -> torch.Tensor:
    """Independent 4:2:0 round trip: JFIF YCbCr, 2×2-average chroma, repeat it, back to RGB (exact inverse)."""
    forward = torch.tensor(RGB_TO_YCBCR, dtype=torch.float64)
    ycbcr = torch.einsum("dc,bchw->bdhw", forward, images.double())
    chroma = F.interpolate(F.avg_pool2d(ycbcr[:, 1:], 2), scale_factor=2, mode="nearest")
    rgb = torch.einsum("dc,bchw->bdhw", torch.linalg.inv(forward), torch.cat([ycbcr[:, :1], chroma], dim=1))
    return rgb.clamp(0, 1).float()


def test_jpeg_tiny_eps_is_the_chroma_subsampled_image(undefended_model, correct_batch):
    images, labels = correct_batch[0][:8], correct_batch[1][:8]
    torch.manual_seed(0)
    adversarial = JPEGLinf(eps=1e-6, steps=3)(undefended_model, images, labels)
    # advex-uar's codec never rounds: at θ = 0 only the 4:2:0 chroma subsampling (and the clamp) remain.
    assert (adversarial - _chroma_subsampled(images)).abs().max() < 1e-4
    assert (adversarial - images).abs().max() > 1e-2  # the subsampling itself visibly changes coloured edges
    torch.manual_seed(0)
    full_chroma = JPEGLinf(eps=1e-6, steps=3, subsample_chroma=False)(undefended_model, images, labels)
    assert (full_chroma - images).abs().max() < 1e-4


def test_jpeg_parameters_move_quantised_coefficients_by_half_theta():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    threat = JPEGLinf(eps=1.0, subsample_chroma=False)
    theta = torch.zeros(threat.parameter_shape(images), dtype=torch.float64)
    theta[0, 5, 0, 1] = 1.0  # luma block 5 (4 per row: rows 8-15, columns 8-15), frequencies (0, 1)
    images = images.clamp(0.3, 0.7)  # keep away from the final clamp
    delta = threat.apply(images, theta) - threat.apply(images, theta * 0)
    # The quantised coefficient moves by θ/2, the DCT coefficient by Q[0,1]·θ/2 = 11/2 (0-255 units), in Y only.
    expected = 11 / 2 * dct_matrix()[0, :, None] * dct_matrix()[1, None, :] / 255
    assert torch.allclose(delta[0, :, 8:16, 8:16], expected.expand(3, 8, 8), atol=1e-9)  # R = G = B = ΔY
    delta[0, :, 8:16, 8:16] = 0
    assert delta.abs().max() < 1e-12


def test_dct_round_trip_is_exact_and_orthonormal():
    matrix = dct_matrix()
    assert torch.allclose(matrix @ matrix.T, torch.eye(8, dtype=torch.float64), atol=1e-14)
    torch.manual_seed(0)
    blocks = torch.rand(4, 7, 8, 8, dtype=torch.float64) * 255
    assert torch.allclose(idct_8x8(dct_8x8(blocks)), blocks, atol=1e-11)
    coefficients = dct_8x8(blocks)
    assert torch.allclose(coefficients.square().sum((-2, -1)), blocks.square().sum((-2, -1)))  # Parseval
    scipy_fft = pytest.importorskip("scipy.fft")
    expected = scipy_fft.dctn(blocks.numpy(), type=2, norm="ortho", axes=(-2, -1))
    assert torch.allclose(coefficients, torch.from_numpy(expected), atol=1e-10)
    channel = torch.rand(2, 32, 48, dtype=torch.float64)
    assert torch.equal(from_blocks(to_blocks(channel), 32, 48), channel)
    assert torch.equal(to_blocks(channel)[:, 7], channel[:, 8:16, 8:16])  # row-major: 6 blocks per row


# ----------------------------------------------------------------------------- against advex-uar (CPU-patched)


@pytest.fixture
def advex_uar_on_cpu(monkeypatch: pytest.MonkeyPatch):
    """advex-uar's codec and deformation modules with their hard-coded CUDA placements turned into no-ops.

    grid_sample is called with align_corners=True, the only behaviour of the torch advex-uar was written for.
    """
    jpeg = pytest.importorskip("advex_uar.attacks.jpeg", reason="advex-uar is not installed")
    elastic = pytest.importorskip("advex_uar.attacks.elastic", reason="advex-uar is not installed")
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *args, **kwargs: self)
    monkeypatch.setattr(nn.Module, "cuda", lambda self, *args, **kwargs: self)

    def without_device(function):
        return lambda *args, device=None, **kwargs: function(*args, **kwargs)

    def shim(module, **overrides) -> types.SimpleNamespace:
        names = {name: getattr(module, name) for name in dir(module) if not name.startswith("__")}
        return types.SimpleNamespace(**{**names, **overrides})

    monkeypatch.setattr(jpeg, "torch", shim(torch, as_tensor=without_device(torch.as_tensor),
                                            tensor=without_device(torch.tensor)))
    monkeypatch.setattr(elastic, "F", shim(F, grid_sample=lambda image, grid, mode: F.grid_sample(
        image, grid, mode=mode, align_corners=True)))
    return jpeg, elastic


def test_jpeg_matches_advex_uar(advex_uar_on_cpu):
    reference, _ = advex_uar_on_cpu
    torch.manual_seed(0)
    batch, height, width, eps = 3, 32, 48, 0.5
    images = torch.rand(batch, 3, height, width)
    threat = JPEGLinf(eps=eps)
    theta = torch.empty(threat.parameter_shape(images)).uniform_(-eps, eps)
    luma, chroma = height * width // 64, height * width // 256

    def transposed_frame(part: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
        """advex-uar codes the H/W-transposed image: blocks column-major, each coefficient block transposed."""
        return part.reshape(batch, rows, columns, 8, 8).permute(0, 2, 1, 4, 3).reshape(batch, -1, 8, 8) / eps

    rounding = [transposed_frame(theta[:, :luma], height // 8, width // 8),
                transposed_frame(theta[:, luma:luma + chroma], height // 16, width // 16),
                transposed_frame(theta[:, luma + chroma:], height // 16, width // 16)]
    expected = reference.JPEG()(images * 255, rounding, torch.full((batch,), eps)) / 255
    assert (threat.apply(images, theta) - expected).abs().max() < 1e-5


@pytest.mark.filterwarnings("ignore:torch.meshgrid")
def test_elastic_matches_advex_uar(advex_uar_on_cpu):
    _, reference = advex_uar_on_cpu
    torch.manual_seed(0)
    images = torch.rand(3, 3, 32, 32)
    flow = torch.empty(3, 2, 32, 32).uniform_(-1.5, 1.5)  # pixels; advex-uar takes flow·2/resolution
    deformation = reference.ElasticDeformation(32, 5, 3.0 / 224.0 * 32)
    assert (Elastic(eps=1.5).apply(images, flow) - deformation(images, flow * 2 / 32)).abs().max() < 1e-5


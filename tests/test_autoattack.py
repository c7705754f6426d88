"""AutoAttack and APGD through pyautoattack: identical to a direct pyautoattack run, stronger than own PGD, flags."""

import pytest
import torch
from torch import nn

from rome_bench.evaluation.suites import SUITES
from rome_bench.evaluation.validity import batch_model_flags
from rome_bench.presets import preset
from rome_bench.threats import L1AutoAttack, LinfAPGD, LinfAutoAttack, LinfPGD
from tests.measures import fooled

pyautoattack = pytest.importorskip("pyautoattack")

QUICK = {"n_iter": 8, "n_queries": 60}


def direct_autoattack(model, images, labels, norm, eps):
    """pyautoattack's own run_standard_evaluation with the same seed and the same shortened budgets."""
    from pyautoattack.autopgd_base import APGDAttack

    adversary = pyautoattack.AutoAttack(model, norm=norm, eps=eps, seed=0, version="standard", device="cpu")
    shortened = APGDAttack(model, n_iter=QUICK["n_iter"], eps=eps)  # its constructor derives the iteration settings
    for attack in (adversary.apgd, adversary.apgd_targeted):
        for name in ("n_iter", "n_iter_orig", "n_iter_2", "n_iter_min", "size_decr"):
            setattr(attack, name, getattr(shortened, name))
    adversary.fab.n_iter = QUICK["n_iter"]
    adversary.square.n_queries = QUICK["n_queries"]
    adversary.logger.disabled = True
    try:
        adversarial, _ = adversary.run_standard_evaluation(images, labels, batch_size=len(images))
    finally:
        adversary.logger.disabled = False
    return adversarial


@pytest.mark.parametrize(("threat_class", "norm", "eps"), [(LinfAutoAttack, "Linf", 1.5 / 255),
                                                            (L1AutoAttack, "L1", 0.75)])
def test_autoattack_equals_a_direct_pyautoattack_run(undefended_model, correct_batch, threat_class, norm, eps):
    images, labels = correct_batch[0][:12], correct_batch[1][:12]
    ours = threat_class(eps, **QUICK)(undefended_model, images, labels)
    theirs = direct_autoattack(undefended_model, images, labels, norm, eps)
    assert torch.equal(ours, theirs)
    robust = undefended_model(ours).argmax(1) == labels
    assert 0 < robust.sum() < len(labels), "pick ε so that the comparison is not trivial"


def test_own_pgd_is_never_stronger_than_apgd_beyond_noise(undefended_model, correct_batch):
    images, labels = correct_batch
    eps = 1 / 255
    pgd = undefended_model(LinfPGD(eps, steps=10)(undefended_model, images, labels)).argmax(1) == labels
    apgd = undefended_model(LinfAPGD(eps, n_iter=20)(undefended_model, images, labels)).argmax(1) == labels
    noise = 2 * (0.25 / len(labels)) ** 0.5  # two binomial standard errors at p = 1/2, the widest
    assert apgd.float().mean() <= pgd.float().mean() + noise
    assert (apgd & ~pgd).sum() <= 2, "APGD should rarely leave robust an example that PGD broke"


def test_an_undefended_model_is_at_zero_under_every_seen_threat(undefended_model, correct_batch):
    images, labels = correct_batch[0][:16], correct_batch[1][:16]
    threats = SUITES.get("seen").build(preset("smoke").threats)
    assert [t.name for t in threats] == ["clean", "autoattack-l1", "autoattack-l2", "autoattack-linf"]
    for threat in threats[1:]:
        adversarial = threat(undefended_model, images, labels)
        broken = fooled(undefended_model, adversarial, labels)
        assert broken.float().mean() >= 15 / 16, threat.name
        # Which stage of the cascade breaks an example follows the CPU's float kernels; that every break is
        # counted once, by some stage, and that the first stage does real work does not.
        assert sum(threat.successes.values()) == int(broken.sum()), (threat.name, threat.successes)
        assert threat.successes.get("apgd-ce", 0) >= len(labels) // 2, (threat.name, threat.successes)


class Quantised(nn.Module):
    """Rounds its input to 8 levels first: the input gradient is zero everywhere (gradient masking)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.inner((images * 7).round() / 7)


class Noisy(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.inner(images) + torch.randn(len(images), 10)


def test_gradient_masking_is_flagged(undefended_model, correct_batch):
    masked = Quantised(undefended_model).eval()
    images, labels = correct_batch[0][:16], correct_batch[1][:16]
    with torch.no_grad():
        logits = masked(images)
    correct = logits.argmax(1) == labels
    assert batch_model_flags(masked, images, labels, logits, correct)["zero-gradient"] == int(correct.sum())
    threat = LinfAutoAttack(16 / 255, n_iter=5, n_queries=300)
    threat(masked, images[correct], labels[correct])
    # no gradient: the white-box attacks only succeed through their random starts; Square does the work
    assert threat.successes["square"] > threat.successes["apgd-ce"] + threat.successes["apgd-t"]
    flags = threat.call_flags()
    assert flags["black-box-success"] > 0 and flags["zero-gradient"] > 0


def test_randomness_is_flagged_and_determinism_is_not(undefended_model, correct_batch):
    images, labels = correct_batch[0][:8], correct_batch[1][:8]
    with torch.no_grad():
        logits = undefended_model(images)
    correct = logits.argmax(1) == labels
    assert "randomized" not in batch_model_flags(undefended_model, images, labels, logits, correct)
    noisy = Noisy(undefended_model)
    with torch.no_grad():
        logits = noisy(images)
    assert batch_model_flags(noisy, images, labels, logits, correct)["randomized"] == 8


@pytest.mark.parametrize("threat_class", [L1AutoAttack, LinfAPGD])
def test_n_iter_sets_every_iteration_setting_as_the_constructor_would(threat_class):
    """Setting only ``n_iter`` on a built APGD left ℓ1's ε-schedule (and the step checkpoints) at 100 iterations."""
    from pyautoattack.autopgd_base import APGDAttack

    adversary = threat_class(eps=1.0, n_iter=10).adversary(nn.Linear(1, 1), torch.device("cpu"))
    reference = APGDAttack(nn.Linear(1, 1), n_iter=10, eps=1.0)
    for attack in (adversary.apgd, adversary.apgd_targeted):
        for name in ("n_iter", "n_iter_orig", "n_iter_2", "n_iter_min", "size_decr"):
            assert getattr(attack, name) == getattr(reference, name), name

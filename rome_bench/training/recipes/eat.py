"""E-AT, Extreme-norm Adversarial Training (Croce & Hein, "Adversarial robustness against multiple and single
lp-threat models via quick fine-tuning of robust classifiers", ICML 2022; arXiv 2105.12508).

Adversarial training against only the two extreme norms ℓ1 and ℓ∞ ("based on geometric properties of ℓp-balls",
the abstract says: ℓ2 sits between the two, and its robustness is meant to come with them), every batch attacked
under *one* of the two, so a step costs one attack (MAX costs three)::

    n_t ∈ {ℓ1, ℓ∞} drawn per batch,   L_t(θ) = mean_i CE(f_θ(x_i + δ_i), y_i),   δ = the n_t training attack

The schedule (``schedule = robust-error``, the default): the norm of batch t is drawn with probabilities
proportional to each norm's robust training error so far,

    P(ℓ1) = e_1 / (e_1 + e_∞),   e_n = 1 − (adversarial training examples of norm n classified right) / (seen),

counted over every earlier batch that used norm n (the whole run, not one epoch), and 1/2 : 1/2 until both norms
have been used once (or when both errors are 0). So the norm the model is weaker against is trained more often;
with equal errors ℓ1 and ℓ∞ alternate 1 : 1 in expectation. This is the rule of the authors' released
training code (github.com/fra31/robust-finetuning, ``train.py``; its README: "alternating the two threat models"),
which this module follows; the paper's own text could not be consulted here. The paper's attack is APGD
(``--train-attack apgd``: the best-loss training APGD with ``threats.apgd_steps``; E-AT fine-tunes with 10
steps on CIFAR-10); with ``--train-attack pgd`` the preset's PGD is used instead. The budgets are the run's
(CIFAR-10 ε1 = 12, ε∞ = 8/255, as in the paper). ``schedule = alternate`` is a deterministic variant:
ℓ1 on even steps, ℓ∞ on odd ones (exactly 1 : 1).

Randomness and resume: the draw is ``torch.rand(())`` on the global CPU RNG, whose state is in every checkpoint,
and the running counts (robust-correct and seen, per norm) are the recipe's ``state_dict``; a resumed run draws
the same norms. Deviations: the robust accuracy that feeds the counts is read from the update's own train-mode
forward on the adversarial batch (no extra forward); the authors' code takes it from the attack (eval mode, an
example counts as broken if any iterate fooled the model). The log ``l1_batches`` is the share of ℓ1 examples
in the step (1 or 0 when the draw is per batch), so it averages to the share of ℓ1 inputs in an epoch.

Routing on a family with experts (``rome+e-at``): every adversarial input carries the id of its norm (ℓ1 = 0,
ℓ∞ = 1). L_div (paper Eq. 6-8) compares the mean gates of different threats *within a batch*, so with one norm per
batch it is identically 0 and RoME+E-AT would train its gates with no diversification, though the paper reports
RoME gains on E-AT (Tables 1-3) and applies RoME by adding λ·L_div to the base loss (Eq. 9, Sec. 4.5). The reading
taken here: the norm is drawn **per example** (``draw = example``), with E-AT's probabilities (the same
P(ℓ1) from the running robust errors, or 1 : 1 by row parity for ``schedule = alternate``), so a batch holds both
norms and L_div has its pair, exactly as the paper's RANDOM (``recipes/mat.py``: one threat per example) does. A
step still costs one attack per example; the schedule's running counts are kept per norm as before. Option
``draw`` (``train.options.draw``): ``auto`` (default) = ``example`` on a family other than ``plain`` and ``batch``
(the authors' rule, bit for bit the previous behaviour) on the plain backbone; ``batch`` or ``example`` force one.
The other reading considered, L_div over a window of past batches, needs gates kept across steps (stale
graphs or detached means) and is not implemented. With several processes each rank draws its own examples' norms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rome_bench.config import ThreatsConfig
from rome_bench.errors import CheckpointError, ConfigError
from rome_bench.threats import Threat
from rome_bench.training.attacks import training_threats
from rome_bench.training.recipe import Batch, Recipe, StepContext, StepResult, register_recipe
from rome_bench.training.recipes.mat import adversarial_inputs

E_AT_NORMS: tuple[str, ...] = ("l1", "linf")  # threat ids 0 and 1
L1, LINF = 0, 1
SCHEDULES: tuple[str, ...] = ("robust-error", "alternate")
DRAWS: tuple[str, ...] = ("auto", "batch", "example")
STATE_KEYS: tuple[str, ...] = ("robust_correct", "robust_seen")


@dataclass(frozen=True)
class EATOptions:
    schedule: str = "robust-error"  # robust-error (P ∝ running robust error, the authors' rule) | alternate (1:1)
    draw: str = "auto"  # auto (example on a family with experts, batch on plain) | batch | example

    def check(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"e-at: unknown schedule '{self.schedule}'; set train.options.schedule to one of "
                              f"{', '.join(SCHEDULES)}")
        if self.draw not in DRAWS:
            raise ConfigError(f"e-at: unknown draw '{self.draw}'; set train.options.draw to one of {', '.join(DRAWS)}")


def l1_probability(robust_correct: torch.Tensor, robust_seen: torch.Tensor) -> float:
    """P(ℓ1) = e_1/(e_1 + e_∞) from the running counts; 1/2 until both norms were used or when both errors are 0."""
    if not bool((robust_seen > 0).all()):
        return 0.5
    errors = 1 - robust_correct / robust_seen
    total = float(errors.sum())
    return 0.5 if total <= 0 else float(errors[L1]) / total


@register_recipe("e-at", citation="Croce & Hein, ICML 2022 (E-AT)")
class ExtremeNormAT(Recipe):
    """E-AT: each batch is adversarial under ℓ1 or ℓ∞, drawn in proportion to their running robust error."""

    Options = EATOptions

    def __init__(self, options: EATOptions, threats: ThreatsConfig, attack: str) -> None:
        super().__init__(options, threats, attack)
        self.robust_correct = torch.zeros(len(E_AT_NORMS), dtype=torch.float64)
        self.robust_seen = torch.zeros(len(E_AT_NORMS), dtype=torch.float64)
        self.family = "plain"  # set by check_family; decides draw = auto

    def check_family(self, family: str) -> None:
        super().check_family(family)
        self.family = family

    @property
    def per_example(self) -> bool:
        """Whether each example draws its own norm (``draw``; ``auto``: on every family but plain)."""
        return self.options.draw == "example" or (self.options.draw == "auto" and self.family != "plain")

    def build_threats(self) -> list[Threat]:
        return training_threats(self.threat_config, self.attack_kind, norms=E_AT_NORMS)

    def choose_threat(self, step: int, ctx: StepContext | None = None) -> int:
        """The threat id of this batch: alternate by step, or one draw from the global torch RNG (with several
        processes rank 0's draw, the one-process stream's, so that every rank attacks its chunk with one norm)."""
        if self.options.schedule == "alternate":
            return L1 if step % 2 == 0 else LINF
        draw = float(torch.rand(()))
        if ctx is not None:
            draw = ctx.rank0_value(draw)
        return L1 if draw < l1_probability(self.robust_correct, self.robust_seen) else LINF

    def choose_threats(self, step: int, batch_size: int) -> torch.Tensor:
        """Per-example norm ids (draw = example): row parity for alternate (even rows ℓ1 on even steps), else
        ℓ1 with P(ℓ1) per row, from the global torch RNG."""
        if self.options.schedule == "alternate":
            return (torch.arange(batch_size) + step) % 2
        draws = torch.rand(batch_size)
        return torch.where(draws < l1_probability(self.robust_correct, self.robust_seen), L1, LINF)

    def loss(self, ctx: StepContext, batch: Batch) -> StepResult:
        images, labels = batch.images, batch.labels
        clean_correct = int((ctx.eval_logits(images).argmax(1) == labels).sum())
        if self.per_example:
            threat_ids = self.choose_threats(batch.step, len(labels)).to(labels)
        else:
            threat_ids = torch.full_like(labels, self.choose_threat(batch.step, ctx))
        assignment = (torch.arange(len(labels), device=labels.device), threat_ids)
        logits = ctx.forward(adversarial_inputs(ctx, self.threats(), images, labels, assignment),
                             routing_ids=threat_ids)
        loss = F.cross_entropy(logits, labels)
        hits = logits.argmax(1) == labels
        correct = {"nat": (clean_correct, len(labels))}
        counts: list[float] = []
        for threat_id, threat in enumerate(self.threats()):
            chosen = threat_ids == threat_id
            counts += [int(hits[chosen].sum()), int(chosen.sum())]
            if chosen.any():
                correct[threat.column] = (int(hits[chosen].sum()), int(chosen.sum()))
        totals = torch.tensor(ctx.global_sum(counts), dtype=torch.float64).view(-1, 2)  # the global batches
        self.robust_correct += totals[:, 0]
        self.robust_seen += totals[:, 1]
        l1_share = float((threat_ids == L1).float().mean())
        logs = {"adv_loss": float(loss.detach()), "l1_batches": l1_share}
        return StepResult(loss, logs, correct)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"robust_correct": self.robust_correct.clone(), "robust_seen": self.robust_seen.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = [key for key in STATE_KEYS if key not in state]
        if missing:
            raise CheckpointError(f"e-at checkpoint lacks recipe state {missing}; it was not written by e-at: "
                                  f"resume it with its own method or start over with --force")
        self.robust_correct = state["robust_correct"].to(torch.float64).clone()
        self.robust_seen = state["robust_seen"].to(torch.float64).clone()

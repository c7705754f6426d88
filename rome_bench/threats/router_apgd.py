"""Router-aware APGD: AutoAttack's APGD (step-size schedule, momentum, ℓ1 ε-schedule) on the GMA objective.

For a mixture-of-experts model, APGD ascends, per example,

    L = CE(f(x+δ), y) − w · (1/L) Σ_l (1/T) Σ_i CE(g_i^(l)(x+δ), k_i)

(``threats/gma.py``'s misrouting term, weight ``gate_weight`` = w) with two choices of the target experts k_i:

* ``untargeted`` — k_i = argmin_k g_{i,k} on the clean image (GMA's least-likely expert), one run with the norm's
  AutoAttack-standard restarts;
* ``targeted`` — every token of every gated layer pushed toward one expert k, iterated over k = 0..K−1 (K: the
  fewest experts of any gated layer) like APGD-T over target classes, each k on the examples still robust.

The two run as a cascade, like AutoAttack's attacks: each sees only the examples every earlier run failed on, and
an example's output is its first misclassified iterate (else the clean image). With the same seed and batch the
result is deterministic (pyautoattack reseeds on every ``perturb``).

Reuse of pyautoattack: ``APGDAttack`` has no custom-loss argument, but its loss hook suffices. ``attack_single_run``
computes every loss as ``criterion_indiv(logits, y)`` right after ``logits = self.model(x_adv)``, and for
``loss='dlr'`` that criterion is the bound method ``self.dlr_loss``. :class:`_MisroutingAPGD` overrides that method
(reading the gates the model recorded in that very forward, ``models/gates.py``) and ``attack_single_run`` (to fix
the target experts of exactly the examples it is given: ``perturb`` passes it the still-robust subset). Everything
else — random start, checkpoints, momentum, ℓ1's 3ε → 2ε → ε schedule and adaptive sparsity, EoT
(``eot_iter``) — is the library's own code, with AutoAttack-standard settings per norm (``_STANDARD``).

Gradients through routing: the misrouting term differentiates the **soft** gates, which every family records
(``fused``) whatever its dispatch, so a hard top-k router (sparse-moe, moe-ffn, ReMoE top-k, RoME top-k) still
gives the attack a routing gradient. With ``relax`` (default) the attack also runs the model inside
``models.gates.relaxed_routing``: those top-k layers keep their own forward value, bit for bit, but backpropagate
through the dense mixture under the soft gates (straight-through), so the classification term, too, sees what
switching experts would do; the decision stays the model's own. DWF's and MORE's soft mixtures are attacked end to
end. Stochastic routing
(an inference variant ``random``, routing noise) is handled by EoT: the gradient is averaged over ``eot_iter``
draws, and over at least ``eot_random`` (20, AutoAttack-rand's value) when two forward passes of the clean batch
differ. The runner still classifies each output with one draw; the per-example worst case over several evaluation
draws is not implemented.

The threat applies to models with gates (``has_gates``); on a model without them the misrouting term is empty and
the attack would be AutoAttack's own APGD-CE, so the runner stores it as "not applicable".
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from rome_bench.errors import ConfigError
from rome_bench.models.gates import gating_modules, has_gates, relaxed_routing
from rome_bench.threats.autoattack import PYAUTOATTACK_NORMS, _WarningCollector, set_apgd_iterations
from rome_bench.threats.base import Budget, LpBudget, Threat, register_threat
from rome_bench.threats.gma import misrouting_loss, model_gates

ROUTER_ATTACKS = ("untargeted", "targeted")
_STANDARD = {"linf": (1, False), "l2": (1, False), "l1": (5, True)}  # norm -> (restarts, ℓ1 ε-schedule)
_LOGGER = logging.getLogger("rome_bench.router_apgd")
_LOGGER.propagate = False  # its warnings become validity flags (call_flags), not log lines


def _apgd_class() -> type:
    try:
        from pyautoattack.autopgd_base import APGDAttack
    except ImportError as error:
        raise ConfigError("router-aware APGD needs pyautoattack: pip install pyautoattack") from error
    return APGDAttack


def expert_count(model: nn.Module) -> int:
    """K of the targeted variant: the fewest experts of any gating module (0 without gates)."""
    return min((module.num_experts for module in gating_modules(model)), default=0)


def misrouting_apgd(model: nn.Module, norm: str, eps: float, n_iter: int, seed: int, gate_weight: float,
                    target_expert: int | None, eot_iter: int) -> Any:
    """A pyautoattack ``APGDAttack`` whose loss is CE − w·misrouting (see the module docstring)."""

    class _MisroutingAPGD(_apgd_class()):  # type: ignore[misc]
        targets: list[torch.Tensor]

        def attack_single_run(self, x: torch.Tensor, y: torch.Tensor, x_init: torch.Tensor | None = None) -> Any:
            with torch.no_grad():
                self.model(x)
                clean = model_gates(self.model)
            self.targets = [gate.argmin(dim=-1) if target_expert is None
                            else torch.full(gate.shape[:-1], target_expert, dtype=torch.long, device=gate.device)
                            for gate in clean]
            return super().attack_single_run(x, y, x_init)

        def dlr_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            """The hook: called on the logits of the forward that just recorded the gates."""
            misrouting = misrouting_loss([g.float() for g in model_gates(self.model)], self.targets)
            return F.cross_entropy(logits, y, reduction="none") - gate_weight * misrouting

    restarts, largereps = _STANDARD[norm]
    attack = _MisroutingAPGD(model, n_iter=n_iter, norm=PYAUTOATTACK_NORMS[norm], n_restarts=restarts, eps=eps,
                             seed=seed, loss="dlr", eot_iter=eot_iter, use_largereps=largereps, logger=_LOGGER)
    set_apgd_iterations(attack, n_iter)
    return attack


def is_random(model: nn.Module, images: torch.Tensor) -> bool:
    """Whether two forward passes of ``images`` give different logits (stochastic routing or noise)."""
    with torch.no_grad():
        return not torch.equal(model(images), model(images))


class RouterAwareAPGD(Threat):
    """APGD on CE − misrouting: untargeted (least-likely expert), then targeted toward each expert in turn."""

    norm: ClassVar[str]

    def __init__(self, eps: float, attacks: tuple[str, ...] | list[str] = ROUTER_ATTACKS, n_iter: int = 100,
                 seed: int = 0, gate_weight: float = 1.0, eot_iter: int = 1, relax: bool = True,
                 eot_random: int = 20) -> None:
        unknown = [a for a in attacks if a not in ROUTER_ATTACKS]
        if eps <= 0 or n_iter < 1 or eot_iter < 1 or not attacks or unknown:
            raise ConfigError(f"{self.name}: needs eps > 0, n_iter >= 1, eot_iter >= 1 and attacks from "
                              f"{ROUTER_ATTACKS} (got eps={eps}, n_iter={n_iter}, eot_iter={eot_iter}, {attacks})")
        self.eps = float(eps)
        self.attacks = tuple(attacks)
        self.n_iter = int(n_iter)
        self.seed = int(seed)
        self.gate_weight = float(gate_weight)
        self.eot_iter = int(eot_iter)
        self.relax = bool(relax)
        self.eot_random = int(eot_random)
        self.draws = self.eot_iter
        self.successes: dict[str, int] = {}
        self._flags: dict[str, int] = {}

    def params(self) -> dict[str, Any]:
        return {"eps": self.eps, "attacks": list(self.attacks), "n_iter": self.n_iter, "seed": self.seed,
                "gate_weight": self.gate_weight, "eot_iter": self.eot_iter, "relax": self.relax,
                "eot_random": self.eot_random}

    def budget(self) -> Budget:
        return LpBudget(self.norm, self.eps)

    def applicable(self, model: nn.Module) -> bool:
        return has_gates(model)

    def call_flags(self) -> dict[str, int]:
        return dict(self._flags)

    def runs(self, model: nn.Module) -> list[tuple[str, int | None]]:
        """The cascade: (name, target expert) per APGD run; None targets the least likely expert."""
        plan: list[tuple[str, int | None]] = []
        for attack in self.attacks:
            if attack == "untargeted":
                plan.append(("untargeted", None))
            else:
                plan.extend((f"targeted-{k}", k) for k in range(expert_count(model)))
        return plan

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not has_gates(model):
            raise ConfigError(f"{self.name} needs a model with gates; this one has none")
        result = images.detach().clone()
        robust = torch.ones(len(images), dtype=torch.bool, device=images.device)
        self.successes = {}
        self.draws = max(self.eot_iter, self.eot_random) if is_random(model, images) else self.eot_iter
        warnings = _WarningCollector()
        _LOGGER.addHandler(warnings)
        try:
            for name, target in self.runs(model):
                remaining = robust.nonzero().squeeze(1)
                if len(remaining) == 0:
                    break
                attack = misrouting_apgd(model, self.norm, self.eps, self.n_iter, self.seed, self.gate_weight,
                                         target, self.draws)
                with relaxed_routing() if self.relax else contextlib.nullcontext():
                    perturbed = attack.perturb(images[remaining].clone(), labels[remaining].clone()).clamp(0, 1)
                with torch.no_grad():
                    fooled = model(perturbed).argmax(1) != labels[remaining]
                result[remaining[fooled]] = perturbed[fooled].to(result.dtype)
                robust[remaining[fooled]] = False
                self.successes[name] = int(fooled.sum())
        finally:
            _LOGGER.removeHandler(warnings)
        self._flags = warnings.flags()
        return result


@register_threat("router-apgd-linf", tag="seen", column="router-linf")
class LinfRouterAPGD(RouterAwareAPGD):
    """Router-aware APGD ℓ∞: CE − misrouting, untargeted then targeted at each expert (AutoAttack settings)."""

    norm = "linf"


@register_threat("router-apgd-l2", tag="seen", column="router-l2")
class L2RouterAPGD(RouterAwareAPGD):
    """Router-aware APGD ℓ2: CE − misrouting, untargeted then targeted at each expert (AutoAttack settings)."""

    norm = "l2"


@register_threat("router-apgd-l1", tag="seen", column="router-l1")
class L1RouterAPGD(RouterAwareAPGD):
    """Router-aware APGD ℓ1: CE − misrouting, untargeted then targeted at each expert (ε-schedule, 5 restarts)."""

    norm = "l1"

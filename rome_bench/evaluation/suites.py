"""Suites: named lists of threats evaluated together, with the leaderboard columns they fill.

A suite names its threats by their registered name (:func:`threat`), so a new threat module needs no import here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rome_bench.config import ThreatsConfig
from rome_bench.errors import ConfigError
from rome_bench.registry import Registry
from rome_bench.threats import CORRUPTIONS, THREATS, Threat, cifar10_c_threats, seen_threats


@dataclass(frozen=True)
class Suite:
    """``build`` makes the threats from a run's threat settings; 'clean' always comes first.

    * ``columns`` are the leaderboard's columns. A column shows the stored results of every threat whose column is
      listed for it in ``aggregates`` (default: the threats of that column itself), pooled: the mean accuracy over
      those threats, e.g. Com. Corr. over 15 corruptions × 5 severities, Percep. ℓp over five UAR threats.
    * ``show_avg`` adds the Avg column (mean of the threat columns).
    * ``union_with`` names suites whose stored results for the same model and examples join a second union
      column, "Union (all)": per example, correct under every threat of this suite and of that one.
    * ``union_columns`` are pooled columns shown as a per-example union instead of a mean: an example counts if it
      is correct under every threat of the column's members (the adaptive suite's AutoAttack and adaptive columns).
    * ``gaps`` are columns showing the difference of two other columns' accuracies (a − b), without an interval.
    * ``draws``: how many times the runner classifies each clean and perturbed image; an example counts as correct
      only if correct in every draw (the per-example worst case over m draws of a random model, e.g. routing noise
      left on at evaluation). ``rome-bench eval --draws M`` changes it for one run.
    * ``health``: after the threats, compute the attack-health flags (``evaluation/health.py``) on the first 100
      examples and store them with the model's clean-pass flags.
    """

    name: str
    build: Callable[[ThreatsConfig], list[Threat]]
    columns: tuple[str, ...]
    titles: dict[str, str]
    description: str
    aggregates: dict[str, tuple[str, ...]] = field(default_factory=dict)
    show_avg: bool = True
    union_with: tuple[str, ...] = ()
    union_columns: tuple[str, ...] = ()
    gaps: dict[str, tuple[str, str]] = field(default_factory=dict)
    draws: int = 1
    health: bool = False

    def members(self, column: str) -> tuple[str, ...]:
        """The stored threat columns a leaderboard column pools."""
        return self.aggregates.get(column, (column,))

    def detailed(self) -> Suite:
        """The same suite with every pooled column expanded into its member columns (``leaderboard --detail``)."""
        columns = tuple(dict.fromkeys(member for column in self.columns if column not in self.gaps
                                      for member in self.members(column)))
        return replace(self, columns=columns, aggregates={}, union_columns=(), gaps={})


SUITES: Registry[Suite] = Registry("suites")

LP_TITLES = {"nat": "Nat", "l1": "ℓ1", "l2": "ℓ2", "linf": "ℓ∞"}
LP_NORMS = ("l1", "l2", "linf")


def threat(name: str, *args: Any, **kwargs: Any) -> Threat:
    """The threat registered as ``name``, built with these arguments."""
    make: Callable[..., Threat] = THREATS.get(name)
    return make(*args, **kwargs)


def register_suite(suite: Suite) -> Suite:
    SUITES.add(suite.name, suite, description=suite.description, columns=suite.columns)
    return suite


def register_seen_suite(name: str, seen: Callable[[ThreatsConfig], list[Threat]], description: str) -> Suite:
    """A suite of clean + one threat per ℓp norm (ℓ1, ℓ2, ℓ∞), shown in the paper's Table 1 columns."""
    return register_suite(Suite(name=name, build=lambda threats: [threat("clean"), *seen(threats)],
                                columns=("nat", "l1", "l2", "linf"), titles=LP_TITLES, description=description))


def seen_autoattack(eps: dict[str, float], version: str = "standard") -> list[Threat]:
    """AutoAttack under ℓ1, ℓ2 and ℓ∞ at the given budgets (the paper's evaluation protocol), fixed seed 0."""
    return [threat(f"autoattack-{norm}", eps[norm], version) for norm in LP_NORMS]


def seen_apgd(eps: dict[str, float]) -> list[Threat]:
    """APGD-CE then APGD-T under ℓ1, ℓ2 and ℓ∞ (the cheaper protocol of E-AT and RAMP), fixed seed 0."""
    return [threat(f"apgd-{norm}", eps[norm]) for norm in LP_NORMS]


register_seen_suite(
    "seen", lambda t: seen_autoattack(t.eps),
    "clean + AutoAttack-standard ℓ1/ℓ2/ℓ∞ at the run's ε (pyautoattack, seed 0): the paper's protocol")
register_seen_suite(
    "seen-plus", lambda t: seen_autoattack(t.eps, version="plus"),
    "clean + AutoAttack-plus ℓ1/ℓ2/ℓ∞ (APGD-CE/DLR with 5 restarts, FAB, Square, APGD-T, FAB-T), seed 0")
register_seen_suite(
    "seen-rand", lambda t: seen_autoattack(t.eps, version="rand"),
    "clean + AutoAttack-rand ℓ1/ℓ2/ℓ∞ for randomised defences (APGD-CE/DLR with 20-step EOT), seed 0")
register_seen_suite(
    "seen-apgd", lambda t: seen_apgd(t.eps),
    "clean + APGD-CE then APGD-T (AutoAttack-standard settings) ℓ1/ℓ2/ℓ∞ at the run's ε, seed 0")
register_seen_suite(
    "seen-pgd", lambda t: seen_threats(t.eps, t.eval_steps, keep_adversarial=True),
    "clean + PGD ℓ1/ℓ2/ℓ∞ at the run's ε with threats.eval_steps steps (first success kept); the ℓ1 sparsity is "
    "the suite's (threats/pgd.py's measured default), never the run's training setting")

CHECK_PGD_STEPS: dict[str, int] = {"l1": 10, "l2": 10, "linf": 10}
register_seen_suite(
    "seen-pgd10", lambda t: seen_threats(t.eps, CHECK_PGD_STEPS, keep_adversarial=True),
    "clean + PGD ℓ1/ℓ2/ℓ∞ at the run's ε, 10 steps each (first success kept): the CIFAR-10 regression check's "
    "suite, ~1 min for 500 examples of a cifar10-cpu model on 2 cores")


def unseen_threats(linf_eps: float, lpips: str = "alexnet") -> list[Threat]:
    """The paper's unseen threats with its CIFAR-10 settings (Sec. A1), in Table 2's column order.

    75 corruption × severity threats, SparseFool ℓ0, Fog/Snow/Gabor/Elastic/JPEG-ℓ∞ (Percep. ℓp), PPGD and LPA
    under the ``lpips`` network (``ppgd-alexnet``: the paper's; ``ppgd-self``: the model's own), the 8×8 patch,
    StAdv, ReColorAdv, and GMA at the run's ℓ∞ ε (8/255 on CIFAR-10, as in the paper).
    """
    return [
        *cifar10_c_threats(),
        *(threat(name) for name in ("sparsefool-l0", "fog", "snow", "gabor", "elastic", "jpeg-linf",
                                    f"ppgd-{lpips}", f"lpa-{lpips}", "patch", "stadv", "recoloradv")),
        threat("gma", eps=linf_eps),
    ]


UNSEEN_TITLES = {
    "nat": "Nat", "corr": "Com. Corr.", "l0": "ℓ0", "percep": "Percep. ℓp", "ppgd": "PPGD (AlexNet)",
    "lpa": "LPA (AlexNet)", "ppgd-self": "PPGD (self)", "lpa-self": "LPA (self)",
    "patch": "Adv. Patch", "stadv": "StAdv", "recoloradv": "ReColorAdv", "gma": "GMA",
    "fog": "Fog", "snow": "Snow", "gabor": "Gabor", "elastic": "Elastic", "jpeg": "JPEG-ℓ∞",
    **{f"corr/{name}": name.replace("_", " ") for name in CORRUPTIONS},
}

register_suite(Suite(
    name="unseen",
    build=lambda threats: [threat("clean"), *unseen_threats(threats.eps["linf"])],
    columns=("nat", "corr", "l0", "percep", "ppgd", "lpa", "patch", "stadv", "recoloradv", "gma"),
    titles=UNSEEN_TITLES,
    description="clean + the paper's unseen threats (Table 2, CIFAR-10 settings): 15 corruptions × 5 severities, "
                "SparseFool ℓ0, Fog/Snow/Gabor/Elastic/JPEG-ℓ∞, PPGD and LPA under AlexNet-LPIPS (needs "
                "alexnet-owt-7be5be79.pth in torch.hub's cache), 8×8 patch, StAdv, ReColorAdv, GMA",
    aggregates={"corr": tuple(f"corr/{name}" for name in CORRUPTIONS),
                "percep": ("fog", "snow", "gabor", "elastic", "jpeg")},
    show_avg=False,
    union_with=("seen", "seen-apgd", "seen-plus", "seen-pgd"),
))

register_suite(Suite(
    name="unseen-self",
    build=lambda threats: [threat("clean"), *unseen_threats(threats.eps["linf"], lpips="self")],
    columns=("nat", "corr", "l0", "percep", "ppgd-self", "lpa-self", "patch", "stadv", "recoloradv", "gma"),
    titles=UNSEEN_TITLES,
    description="the unseen suite with PPGD and LPA under the model's own LPIPS (ppgd-self, lpa-self: its "
                "Transformer blocks' features) instead of the paper's AlexNet-LPIPS; no AlexNet file needed",
    aggregates={"corr": tuple(f"corr/{name}" for name in CORRUPTIONS),
                "percep": ("fog", "snow", "gabor", "elastic", "jpeg")},
    show_avg=False,
    union_with=("seen", "seen-apgd", "seen-plus", "seen-pgd"),
))

register_suite(Suite(
    name="gma-pgd",
    build=lambda threats: [threat("clean"), *(threat(name, threats.eps["linf"], 20)
                                                for name in ("pgd-linf", "gma", "gma-union"))],
    columns=("nat", "linf", "gma", "gma-union"),
    titles={"nat": "Nat", "linf": "PGD ℓ∞", "gma": "GMA", "gma-union": "GMA∪PGD"},
    description="clean, ℓ∞ PGD, the gating-misrouting attack and their per-example worst case, all at the run's ℓ∞ ε "
                "with 20 steps (the paper's GMA protocol; the suite named 'adaptive' before issue 26)",
    show_avg=False,
))


def adaptive_threats(eps: dict[str, float], n_iter: int = 100, n_queries: int = 5000,
                     gma_steps: int = 20) -> list[Threat]:
    """The adaptive suite's attacks: AutoAttack-standard, router-aware APGD (untargeted and targeted) per ℓp norm at
    the run's ε, then GMA at the ℓ∞ ε. With the defaults the AutoAttack threats are the ``seen`` suite's own (same
    keys), so a model evaluated on ``seen`` reuses those stored results. ``n_iter``/``n_queries``/``gma_steps``
    shorten every attack for tests."""
    return [*(threat(f"autoattack-{norm}", eps[norm], n_iter=n_iter, n_queries=n_queries) for norm in LP_NORMS),
            *(threat(f"router-apgd-{norm}", eps[norm], n_iter=n_iter) for norm in LP_NORMS),
            threat("gma", eps["linf"], gma_steps)]


ADAPTIVE_DRAWS = 5  # evaluation draws per image: a random model's example is robust only if correct in all five
ADAPTIVE_MEMBERS = ("l1", "l2", "linf", "router-l1", "router-l2", "router-linf", "gma")

register_suite(Suite(
    name="adaptive",
    build=lambda threats: [threat("clean"), *adaptive_threats(threats.eps)],
    columns=("nat", "aa", "adaptive", "gap"),
    titles={"nat": "Nat", "aa": "AA", "adaptive": "Adaptive", "gap": "AA − Adaptive (pp)",
            "l1": "AA ℓ1", "l2": "AA ℓ2", "linf": "AA ℓ∞", "router-l1": "Router-APGD ℓ1",
            "router-l2": "Router-APGD ℓ2", "router-linf": "Router-APGD ℓ∞", "gma": "GMA"},
    description="clean; per example the worst case over AutoAttack-standard ℓ1/ℓ2/ℓ∞ (column AA) and over AA, "
                "router-aware APGD (untargeted, targeted per expert) ℓ1/ℓ2/ℓ∞ and GMA (column Adaptive), at the run's "
                "ε: never above AA; on a model without gates the router attacks are n/a and Adaptive = AA",
    aggregates={"aa": LP_NORMS, "adaptive": ADAPTIVE_MEMBERS},
    union_columns=("aa", "adaptive"),
    gaps={"gap": ("aa", "adaptive")},
    show_avg=False,
    draws=ADAPTIVE_DRAWS,
    health=True,
))

register_suite(Suite(
    name="dwf",
    build=lambda threats: [threat("clean"), threat("fgsm", 0.09),
                           threat("pgd-linf", 8 / 255, threats.eval_steps["linf"])],
    columns=("nat", "fgsm", "linf"),
    titles={"nat": "Nat", "fgsm": "FGSM 0.09", "linf": "PGD ℓ∞ 8/255"},
    description="DWF's evaluation (arXiv 2512.20821): clean, FGSM ℓ∞ at ε = 0.09 and PGD ℓ∞ at ε = 8/255 with "
                "threats.eval_steps steps (first success kept); fixed budgets, whatever the run's ε",
))


# Pavlitska et al. (sparse-MoE ResNets, ICCVW 2025) evaluate ℓ∞ PGD-20 and APGD-20 at ε = 8/255: PGD with step 2/255
# = ε/4 and a uniform random start (here each example keeps its first misclassified iterate, never weaker than their
# last iterate); APGD as torchattacks' APGD(eps, steps=20): APGD-CE, one restart, seed 0.
register_suite(Suite(
    name="pgd20",
    build=lambda threats: [threat("clean"),
                           threat("pgd-linf", threats.eps["linf"], 20, step_size=threats.eps["linf"] / 4)],
    columns=("nat", "linf"),
    titles={"nat": "Nat", "linf": "PGD-20 ℓ∞"},
    description="clean + ℓ∞ PGD-20 at the run's ε, step ε/4 (2/255 at 8/255): the sparse-MoE paper's PGD",
    show_avg=False,
))

register_suite(Suite(
    name="apgd20",
    build=lambda threats: [threat("clean"),
                           threat("apgd-linf", threats.eps["linf"], attacks=("apgd-ce",), n_iter=20)],
    columns=("nat", "linf"),
    titles={"nat": "Nat", "linf": "APGD-20 ℓ∞"},
    description="clean + ℓ∞ APGD-CE with 20 iterations, 1 restart, seed 0, at the run's ε: the sparse-MoE paper's APGD",
    show_avg=False,
))


# ReMoE (CVPR 2026) evaluates ℓ∞ PGD-20, C&W-20 and AutoAttack at ε = 8/255 (CIFAR, Imagenette; 4/255 on ImageNet).
# Here PGD-20 and C&W-20 (threats/cw.py: ℓ∞ PGD on the C&W margin, κ = 50) take 20 steps of ε/4 (2/255 at 8/255,
# ReMoE's training step; its evaluation step is not given) with a uniform random start, each example keeping its
# first misclassified iterate. AutoAttack ℓ∞ fills the same stored column as PGD ℓ∞ (linf), so it is not pooled in
# here: the seen suite's ℓ∞ column is ReMoE's AA at the run's ε.
register_suite(Suite(
    name="remoe",
    build=lambda threats: [threat("clean"),
                           threat("pgd-linf", threats.eps["linf"], 20, step_size=threats.eps["linf"] / 4),
                           threat("cw-linf", threats.eps["linf"], 20, step_size=threats.eps["linf"] / 4)],
    columns=("nat", "linf", "cw-linf"),
    titles={"nat": "Nat", "linf": "PGD-20 ℓ∞", "cw-linf": "C&W-20 ℓ∞"},
    description="ReMoE's evaluation: clean, ℓ∞ PGD-20 and C&W-20 (margin-loss PGD, κ 50) at the run's ε, step ε/4, "
                "first success kept; its AutoAttack ℓ∞ is the seen suite's ℓ∞ column",
    show_avg=False,
))


def with_corruptions_dir(threats: list[Threat], folder: Path) -> list[Threat]:
    """The suite's threats with every corruption threat reading its images from ``folder`` (CIFAR-10-C files)."""
    if not folder.is_dir():
        raise ConfigError(f"--corruptions-dir {folder} is not a folder; give the folder of CIFAR-10-C's .npy files")
    rebuilt = [type(t)(**{**t.params(), "corruptions_dir": str(folder)}) if "corruptions_dir" in t.params() else t
               for t in threats]
    if rebuilt == threats:
        raise ConfigError("--corruptions-dir was given but the selected threats include no corruption threat")
    return rebuilt

"""Threats: the interface and registry (``base.py``) and the built-in threats, one file per threat or family.

Importing this package imports every module in it, so each module's ``@register_threat`` classes are registered:
adding a threat is one decorated class in one new file here (see ``base.py``), or in a plugin's module named in the
``rome_bench.threats`` entry-point group. Suites (``evaluation/suites.py``) build threats by registered name. The
names below are re-exported for convenience; a new threat need not be added to them.
"""

import importlib
import pkgutil

from rome_bench.threats.autoattack import (
    L1APGD,
    L2APGD,
    AutoAttackThreat,
    L1AutoAttack,
    L2AutoAttack,
    LinfAPGD,
    LinfAutoAttack,
)
from rome_bench.threats.base import (
    THREATS,
    Budget,
    BudgetCheck,
    Clean,
    LpBudget,
    Threat,
    UnboundedBudget,
    register_threat,
)
from rome_bench.threats.corruptions import CORRUPTIONS, CommonCorruption, cifar10_c_threats
from rome_bench.threats.fog import Fog
from rome_bench.threats.functional import ReColorAdv, StAdv
from rome_bench.threats.gabor import Gabor
from rome_bench.threats.gma import GatingMisrouting
from rome_bench.threats.lpa import AlexNetLagrangePerceptual, LagrangePerceptual, SelfLagrangePerceptual
from rome_bench.threats.pgd import (
    DEFAULT_L1_SPARSITY,
    L1PGD,
    L2PGD,
    PGD,
    LinfPGD,
    project_l1_box,
    project_l2_box,
    project_l2_box_sorted,
    seen_threats,
)
from rome_bench.threats.ppgd import AlexNetPerceptualPGD, PerceptualPGD, SelfPerceptualPGD
from rome_bench.threats.snow import Snow
from rome_bench.threats.sparse import AdversarialPatch, SparseFool
from rome_bench.threats.uar_geometric import Elastic, JPEGLinf

__all__ = [
    "CORRUPTIONS",
    "DEFAULT_L1_SPARSITY",
    "L1APGD",
    "L1PGD",
    "L2APGD",
    "L2PGD",
    "PGD",
    "THREATS",
    "AdversarialPatch",
    "AlexNetLagrangePerceptual",
    "AlexNetPerceptualPGD",
    "AutoAttackThreat",
    "Budget",
    "BudgetCheck",
    "Clean",
    "CommonCorruption",
    "Elastic",
    "Fog",
    "Gabor",
    "GatingMisrouting",
    "JPEGLinf",
    "L1AutoAttack",
    "L2AutoAttack",
    "LagrangePerceptual",
    "LinfAPGD",
    "LinfAutoAttack",
    "LinfPGD",
    "LpBudget",
    "PerceptualPGD",
    "ReColorAdv",
    "SelfLagrangePerceptual",
    "SelfPerceptualPGD",
    "Snow",
    "SparseFool",
    "StAdv",
    "Threat",
    "UnboundedBudget",
    "cifar10_c_threats",
    "project_l1_box",
    "project_l2_box",
    "project_l2_box_sorted",
    "register_threat",
    "seen_threats",
]

# Modules that register no threat and are imported on first use: the [unseen] extra's patched library.
LAZY_MODULES = ("imagecorruptions_compat",)
for _module in pkgutil.iter_modules(__path__):  # every threat module registers its threats on import
    if _module.name not in LAZY_MODULES:
        importlib.import_module(f"{__name__}.{_module.name}")

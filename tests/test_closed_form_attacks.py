"""Every ℓp attack against the exact smallest perturbation of a linear classifier (closed-form tests, after adv_lib).

For logits z = Wx + b and an example of class y, the example is misclassified as soon as some z_j ≥ z_y, so the
smallest flipping perturbation is the minimum over j ≠ y of the smallest δ with

    g·δ ≥ m,   g = w_j − w_y,   m = z_y − z_j > 0,   0 ≤ x + δ ≤ 1.

Per coordinate only the move in the direction of sign(g_i) helps; it gains |g_i| per unit and has room r_i
(1 − x_i moving up, x_i moving down). The optima, exact (written here; the LP test below checks them):

* ℓ1: a fractional knapsack: fill coordinates by descending |g_i|, each up to its room, until the gain reaches m;
* ℓ∞: the smallest t with Σ_i |g_i|·min(t, r_i) ≥ m (increasing in t: bisection to float64 precision);
* ℓ2: the KKT point δ_i = sign(g_i)·min(λ|g_i|, r_i), with λ the root of Σ_i |g_i|·min(λ|g_i|, r_i) = m (bisection);
* ℓ0 in pixels: the fewest pixels whose capacities Σ_channels |g_i|·r_i reach m: the largest capacities first.

Each attack runs as the project builds it (the suites' and recipes' own builders) and must
(1) flip every example whose optimum is ≤ 0.8·ε, (2) never leave its budget or the box — and never beat the
optimum, which checks the closed form on every output — and, for the minimum-norm attacks, (3) come within 1.25×
of the optimum. Where an attack does not meet (1) or (3), that single case is a strict xfail with the numbers.

The linear model: 3×8×8 images, 10 classes (AutoAttack-standard's APGD-T and FAB-T attack 9 target classes). Each
image is a noisy version of its class's weights pushed through a sigmoid, so its optima spread around the budgets
below (about 45% of examples ≤ 0.8·ε, about 20% above ε, asserted) and some coordinates sit close to the box.
Logit scale: the clean margin to the runner-up class is about 10 (3 to 19). With a much softer softmax the
cross-entropy maximum over the ball can stay correctly classified (all classes close to y, none above): at a
tenth of this scale own ℓ∞ PGD misses 2 of 29 examples it must flip, measured; a much sharper one rounds the
cross-entropy gradient away in float32.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import pytest
import torch
from torch import nn

from rome_bench.config import ThreatsConfig
from rome_bench.evaluation.suites import SUITES
from rome_bench.threats import L1AutoAttack, L2AutoAttack, LinfAutoAttack, SparseFool, Threat
from rome_bench.threats.msd import MSD
from rome_bench.training.attacks import training_threats
from rome_bench.training.recipes.msd import MSDOptions, msd_threat

CLASSES = 10
SIDE = 8
EXAMPLES = 64
LOGIT_SCALE = 0.5
EPS = {"l1": 7.5, "l2": 1.35, "linf": 0.125}
ORDERS = {"l1": 1.0, "l2": 2.0, "linf": math.inf}
DUAL = {"l1": math.inf, "l2": 2.0, "linf": 1.0}
MUST_FLIP = 0.8  # every example whose optimum is ≤ MUST_FLIP·ε must be flipped
MIN_NORM_FACTOR = 1.25  # a minimum-norm attack comes within this factor of the optimum
BUDGET_TOL = 1e-5  # relative, as the runner's budget check
NOT_BELOW_OPTIMUM = 1e-4  # relative: the attacks decide in float32, the optimum is float64


# -----------------------------------------------------------------------------------------------------------------
# The closed-form optima
# -----------------------------------------------------------------------------------------------------------------


def crossing_problems(model: nn.Sequential, images: torch.Tensor,
                      labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per example and class j, in float64: |g| (B, K, d), the margin m (B, K) and the room r (B, K, d)."""
    layer = model[-1]
    weight, bias = layer.weight.double(), layer.bias.double()
    x = images.flatten(1).double()
    logits = x @ weight.T + bias
    g = weight.unsqueeze(0) - weight[labels].unsqueeze(1)
    margin = logits.gather(1, labels.unsqueeze(1)) - logits
    room = torch.where(g > 0, 1 - x.unsqueeze(1), x.unsqueeze(1))
    return g.abs(), margin, room


def _unreachable(gain: torch.Tensor, margin: torch.Tensor, room: torch.Tensor) -> torch.Tensor:
    """Where even moving every coordinate to the box does not cross: no finite optimum."""
    return (gain * room).sum(-1) < margin


def minimal_l1(gain: torch.Tensor, margin: torch.Tensor, room: torch.Tensor) -> torch.Tensor:
    """Fractional knapsack: take coordinates by descending |g_i|, each up to its room, until the gain is m."""
    order = gain.argsort(dim=-1, descending=True)
    rate, space = gain.gather(-1, order), room.gather(-1, order)
    earned_before = (rate * space).cumsum(-1) - rate * space
    still_needed = (margin.unsqueeze(-1) - earned_before).clamp_min(0)
    moves = torch.where(rate > 0, torch.minimum(still_needed / rate.clamp_min(1e-300), space), 0.0)
    return torch.where(_unreachable(gain, margin, room), math.inf, moves.sum(-1))


def _smallest_root(reach, margin: torch.Tensor, high: torch.Tensor, rounds: int = 200) -> torch.Tensor:
    """The smallest s in [0, high] with reach(s) ≥ m, for reach increasing in s (bisection)."""
    low, high = torch.zeros_like(margin), high.expand_as(margin).clone()
    for _ in range(rounds):
        middle = (low + high) / 2
        enough = reach(middle) >= margin
        high, low = torch.where(enough, middle, high), torch.where(enough, low, middle)
    return high


def minimal_linf(gain: torch.Tensor, margin: torch.Tensor, room: torch.Tensor) -> torch.Tensor:
    """The smallest t with Σ_i |g_i|·min(t, r_i) ≥ m."""
    t = _smallest_root(lambda t: (gain * torch.minimum(room, t.unsqueeze(-1))).sum(-1), margin,
                       torch.ones(()).double())
    return torch.where(_unreachable(gain, margin, room), math.inf, t)


def minimal_l2(gain: torch.Tensor, margin: torch.Tensor, room: torch.Tensor) -> torch.Tensor:
    """‖δ(λ)‖₂ at the root λ of Σ_i |g_i|·min(λ|g_i|, r_i) = m, δ_i(λ) = min(λ|g_i|, r_i)."""
    def moves(scale: torch.Tensor) -> torch.Tensor:
        return torch.minimum(scale.unsqueeze(-1) * gain, room)

    everything = (room / gain.clamp_min(1e-300)).masked_fill(gain == 0, 0).amax(-1)  # every coordinate at the box
    scale = _smallest_root(lambda s: (gain * moves(s)).sum(-1), margin, everything)
    return torch.where(_unreachable(gain, margin, room), math.inf, moves(scale).norm(dim=-1))


def minimal_l0_pixels(gain: torch.Tensor, margin: torch.Tensor, room: torch.Tensor, channels: int) -> torch.Tensor:
    """The fewest pixels (a pixel counts once over its channels) whose capacities reach m, largest first."""
    batch, classes, dims = gain.shape
    capacity = (gain * room).view(batch, classes, channels, dims // channels).sum(2)
    reached = capacity.sort(dim=-1, descending=True).values.cumsum(-1)
    count = (reached < margin.unsqueeze(-1)).sum(-1) + 1
    return torch.where(_unreachable(gain, margin, room), math.inf, count.double())


SOLVERS = {"l1": minimal_l1, "l2": minimal_l2, "linf": minimal_linf}


def optima_per_class(model: nn.Sequential, images: torch.Tensor, labels: torch.Tensor, norm: str) -> torch.Tensor:
    """(B, K): the smallest perturbation that lifts class j to the label's logit (inf for j = y)."""
    gain, margin, room = crossing_problems(model, images, labels)
    if norm == "l0":
        per_class = minimal_l0_pixels(gain, margin, room, images.shape[1])
    else:
        per_class = SOLVERS[norm](gain, margin, room)
    return per_class.scatter(1, labels.unsqueeze(1), math.inf)


# -----------------------------------------------------------------------------------------------------------------
# The helpers against a solver
# -----------------------------------------------------------------------------------------------------------------


def tiny_problems(seed: int, dims: int = 6, count: int = 12) -> tuple[torch.Tensor, ...]:
    """A few random crossing problems, some too far to cross inside the box."""
    generator = torch.Generator().manual_seed(seed)
    gain = torch.randn(count, 1, dims, generator=generator, dtype=torch.float64).abs()
    gain[0, 0, 2] = 0.0  # a coordinate that does not help
    x = torch.rand(count, 1, dims, generator=generator, dtype=torch.float64)
    room = torch.where(torch.rand(count, 1, dims, generator=generator) > 0.5, 1 - x, x)
    margin = (gain * room).sum(-1) * torch.empty(count, 1, dtype=torch.float64).uniform_(0.05, 1.2, generator=generator)
    return gain, margin, room


def solver_optimum(gain: torch.Tensor, margin: float, room: torch.Tensor, norm: str) -> float:
    """The same problem as an LP (ℓ1, ℓ∞) or a smooth constrained problem (ℓ2) for scipy: δ_i ∈ [−r'_i, r_i] with
    both signs allowed (the far side's room is 1 − room here), so the solver may not assume the helpers' reduction."""
    optimize = pytest.importorskip("scipy.optimize")
    numpy = pytest.importorskip("numpy")
    g, r = gain.numpy(), room.numpy()
    dims = len(g)
    bounds = [(-(1 - ri), ri) for ri in r]  # δ_i > 0 moves towards the box side with room r_i
    if norm == "l2":
        most = optimize.linprog(-g, bounds=bounds, method="highs")  # the largest gain the box allows
        if -most.fun < margin:
            return math.inf
        result = optimize.minimize(lambda d: d @ d, numpy.minimum(r, 0.5) * (g > 0), jac=lambda d: 2 * d,
                                   bounds=bounds, method="SLSQP", options={"ftol": 1e-12, "maxiter": 500},
                                   constraints=[{"type": "ineq", "fun": lambda d: g @ d - margin, "jac": lambda d: g}])
        assert result.success, result.message
        return math.sqrt(result.fun)
    if norm == "l1":  # variables δ, s: minimise Σ s with −s ≤ δ ≤ s
        cost = numpy.concatenate([numpy.zeros(dims), numpy.ones(dims)])
        eye = numpy.eye(dims)
        upper = numpy.block([[eye, -eye], [-eye, -eye], [-g[None], numpy.zeros((1, dims))]])
        rhs = numpy.concatenate([numpy.zeros(2 * dims), [-margin]])
        all_bounds = bounds + [(0, None)] * dims
    else:  # ℓ∞, variables δ, t: minimise t with −t ≤ δ_i ≤ t
        cost = numpy.concatenate([numpy.zeros(dims), [1.0]])
        ones = numpy.ones((dims, 1))
        upper = numpy.block([[numpy.eye(dims), -ones], [-numpy.eye(dims), -ones], [-g[None], numpy.zeros((1, 1))]])
        rhs = numpy.concatenate([numpy.zeros(2 * dims), [-margin]])
        all_bounds = [*bounds, (0, None)]
    result = optimize.linprog(cost, A_ub=upper, b_ub=rhs, bounds=all_bounds, method="highs")
    if result.status == 2:
        return math.inf
    assert result.status == 0, result.message
    return float(result.fun)


@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
def test_closed_form_optima_equal_a_solver_on_tiny_problems(norm):
    gain, margin, room = tiny_problems(seed=3)
    ours = SOLVERS[norm](gain, margin, room)
    assert torch.isinf(ours).any() and torch.isfinite(ours).sum() >= 6, "both kinds of problem must occur"
    for k in range(len(gain)):
        theirs = solver_optimum(gain[k, 0], float(margin[k, 0]), room[k, 0], norm)
        if math.isinf(theirs):
            assert math.isinf(ours[k, 0]), (norm, k, float(ours[k, 0]))
        else:
            assert ours[k, 0].item() == pytest.approx(theirs, rel=1e-5, abs=1e-9), (norm, k)


def test_closed_form_l0_equals_a_search_over_every_pixel_set():
    gain, margin, room = tiny_problems(seed=4, dims=8)  # 2 channels × 4 pixels, channel-major as images flatten
    ours = minimal_l0_pixels(gain, margin, room, channels=2)
    capacity = (gain * room).view(len(gain), 2, 4).sum(1)  # everything a set of pixels can do: all its channels
    for k in range(len(gain)):
        sizes = [len(chosen) for size in range(1, 5) for chosen in itertools.combinations(range(4), size)
                 if capacity[k, list(chosen)].sum() >= margin[k, 0]]
        assert ours[k, 0].item() == (min(sizes) if sizes else math.inf), k


# -----------------------------------------------------------------------------------------------------------------
# The linear case
# -----------------------------------------------------------------------------------------------------------------


@cache
def linear_case(channels: int = 3) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    """A fixed linear classifier on channels×8×8 images in [0,1] and EXAMPLES images it classifies as labelled."""
    generator = torch.Generator().manual_seed(0)
    dims = channels * SIDE * SIDE
    weight = torch.randn(CLASSES, dims, generator=generator)
    drawn_class = torch.arange(EXAMPLES) % CLASSES
    noise = torch.randn(EXAMPLES, dims, generator=generator)
    images = torch.sigmoid(weight[drawn_class] - weight.mean(0) + 2 * noise).view(EXAMPLES, channels, SIDE, SIDE)
    model = nn.Sequential(nn.Flatten(), nn.Linear(dims, CLASSES))
    with torch.no_grad():
        model[1].weight.copy_(LOGIT_SCALE * weight)
        model[1].bias.copy_(-LOGIT_SCALE * weight.sum(1) / 2)  # all logits equal at the grey image
        labels = model(images).argmax(1)
    return model.eval().requires_grad_(False), images, labels


@cache
def optima(norm: str, channels: int = 3) -> torch.Tensor:
    """(B, K) per-class optima of the linear case."""
    return optima_per_class(*linear_case(channels), norm)


def best(norm: str) -> torch.Tensor:
    return optima(norm).min(1).values


def union_ratio() -> torch.Tensor:
    """Per example min_p optimum_p/ε_p: ≤ 1 iff some ball holds a flipping perturbation (MSD's threat)."""
    return torch.stack([best(norm) / EPS[norm] for norm in EPS]).min(0).values


@pytest.mark.parametrize("norm", ["l1", "l2", "linf", "union"])
def test_the_linear_case_exercises_both_sides_of_the_budget(norm):
    ratio = union_ratio() if norm == "union" else best(norm) / EPS[norm]
    must = (ratio <= MUST_FLIP).double().mean()
    beyond = (ratio > 1).double().mean()
    assert 0.3 <= must <= 0.7, f"{norm}: {must:.0%} of examples within {MUST_FLIP}·ε"
    assert beyond >= 0.1, f"{norm}: only {beyond:.0%} of examples beyond ε: no attack could fail to flip them"
    if norm != "union":  # the box must bind: the optimum exceeds the textbook box-free m/‖g‖_q (q the dual norm)
        model, images, labels = linear_case()
        gain, margin, _ = crossing_problems(model, images, labels)
        box_free = (margin / gain.norm(p=DUAL[norm], dim=-1)).scatter(1, labels.unsqueeze(1), math.inf).min(1).values
        binds = (best(norm) > box_free * 1.001).double().mean()
        assert binds >= 0.5, f"{norm}: the box binds on only {binds:.0%} of examples"


def test_the_optima_are_attained_on_the_linear_case():
    """The ℓ∞ optimum of each example's closest class, built and slightly overshot, does flip it."""
    model, images, labels = linear_case()
    gain, _, room = crossing_problems(model, images, labels)
    closest = optima("linf").argmin(1)
    pick = closest.view(-1, 1, 1).expand(-1, 1, gain.shape[-1])
    t = best("linf").unsqueeze(1) * (1 + 1e-6)
    weight = model[1].weight.double()
    direction = (weight[closest] - weight[labels]).sign()
    delta = direction * torch.minimum(room.gather(1, pick).squeeze(1), t)
    reached = images.flatten(1).double() + delta
    finite = torch.isfinite(best("linf"))
    assert finite.all()
    logits = reached @ weight.T + model[1].bias.double()
    assert (logits.argmax(1) != labels).all()
    assert torch.equal(delta.abs().amax(1), torch.minimum(t.squeeze(1), delta.abs().amax(1)))  # within t


# -----------------------------------------------------------------------------------------------------------------
# The attacks, as the project builds them
# -----------------------------------------------------------------------------------------------------------------

THREATS_CONFIG = ThreatsConfig(eps=dict(EPS))  # everything else: the defaults (the paper's CIFAR-10 protocol)
SQUARE_QUERIES = 300  # the library's 5,000 cost about 50 s on the three norms here; Square's misses are measured below
AUTOATTACK = {"l1": L1AutoAttack, "l2": L2AutoAttack, "linf": LinfAutoAttack}


def suite_threat(suite: str, norm: str) -> Threat:
    """The threat of ``suite`` under ``norm``, built by the suite at the test's budgets."""
    threats = SUITES.get(suite).build(THREATS_CONFIG)
    return next(t for t in threats if t.name != "clean" and t.budget().norm == norm)


def component(norm: str, attack: str) -> Threat:
    """One of AutoAttack's attacks alone, with AutoAttack-standard settings (the library's iterations)."""
    queries = {"n_queries": SQUARE_QUERIES} if attack == "square" else {}
    return AUTOATTACK[norm](EPS[norm], attacks=[attack], **queries)


@dataclass(frozen=True)
class Attack:
    norm: str  # l1, l2, linf, or union (MSD)
    build: Callable[[], Threat]
    only_must_flip: bool = False  # run on the examples it must flip only


def attacks() -> dict[str, Attack]:
    found: dict[str, Attack] = {}
    for norm in EPS:
        found[f"pgd-{norm}"] = Attack(norm, lambda n=norm: suite_threat("seen-pgd", n))
        found[f"apgd-train-{norm}"] = Attack(norm, lambda n=norm: next(
            t for t in training_threats(THREATS_CONFIG, "apgd") if t.norm == n))
        # pyautoattack's attacks run on the examples they must flip. On an example no attack can flip, each
        # restart and target class runs all its iterations (FAB-T and APGD-T: 9 targets × 100; the `seen` cascade
        # then Square's 5,000 queries: about 50 s on the three norms), and the library returns it unchanged.
        # Square alone runs on every example: its queries are capped here whichever examples it sees.
        found[f"autoattack-{norm}"] = Attack(norm, lambda n=norm: suite_threat("seen", n), only_must_flip=True)
        for stage in ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square"):
            found[f"{stage}-{norm}"] = Attack(norm, lambda n=norm, a=stage: component(n, a),
                                              only_must_flip=stage != "square")
    found["msd"] = Attack("union", lambda: msd_threat(EPS, MSDOptions()))  # the msd recipe's attack
    return found


ATTACKS = attacks()


def must_flip(norm: str) -> torch.Tensor:
    ratio = union_ratio() if norm == "union" else best(norm) / EPS[norm]
    return ratio <= MUST_FLIP


@dataclass(frozen=True)
class Outcome:
    threat: Threat
    rows: torch.Tensor  # which examples of the linear case it attacked
    images: torch.Tensor
    labels: torch.Tensor
    adversarial: torch.Tensor


@cache
def attacked(name: str) -> Outcome:
    """The attack's output on the linear case (each attack runs once per session), from a fixed global seed."""
    model, images, labels = linear_case()
    attack = ATTACKS[name]
    rows = must_flip(attack.norm).nonzero().squeeze(1) if attack.only_must_flip else torch.arange(len(labels))
    threat = attack.build()
    torch.manual_seed(0)
    adversarial = threat(model, images[rows], labels[rows])
    return Outcome(threat, rows, images[rows], labels[rows], adversarial)


def flipped(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(images).argmax(1) != labels


def norms_of(delta: torch.Tensor, norm: str) -> torch.Tensor:
    return delta.flatten(1).double().norm(p=ORDERS[norm], dim=1)


SQUARE_MISSES = ("Square (black-box random search) does not flip every example within 0.8·ε of a linear model "
                 "with white-noise weights: at the library's 5,000 queries, on all 64 examples, it missed 14 of 27 "
                 "(ℓ1), 24 of 28 (ℓ2) and 7 of 29 (ℓ∞), measured; here it runs 300 queries")
APGD_L2_MISSES = ("pyautoattack's APGD ℓ2 with AutoAttack-standard settings (1 restart from a random point of the "
                  "sphere, 100 iterations, seed 0) misses example 1 (optimum 0.78·ε; {other}): alone, it flips it "
                  "with seeds 1-9 but not 0; the `seen` cascade flips it (APGD-T)")
L1_PGD_MISSES = ("own ℓ1 PGD (seen-pgd: 50 steps, sparsity 0.01, random start) misses 7 of the 27 examples whose "
                 "optimum is ≤ 0.8·ε (at 0.56-0.78·ε), measured; without the random start it misses none: the "
                 "dense Laplace start leaves ~130 small coordinates that the sparse steps never clear")


def flip_cases() -> list:
    cases = []
    for name in ATTACKS:
        marks = ()
        if name.startswith("square-"):
            marks = pytest.mark.xfail(strict=True, reason=SQUARE_MISSES)
        elif name == "pgd-l1":
            marks = pytest.mark.xfail(strict=True, reason=L1_PGD_MISSES)
        elif name == "apgd-ce-l2":
            marks = pytest.mark.xfail(strict=True, reason=APGD_L2_MISSES.format(other="CE loss"))
        elif name == "apgd-dlr-l2":
            marks = pytest.mark.xfail(strict=True, reason=APGD_L2_MISSES.format(
                other="with the DLR loss also example 25, optimum 0.67·ε, which it flips alone with every seed 0-9"))
        cases.append(pytest.param(name, marks=marks, id=name))
    return cases


@pytest.mark.parametrize("name", flip_cases())
def test_attack_flips_every_example_within_four_fifths_of_its_budget(name):
    model = linear_case()[0]
    run = attacked(name)
    must = must_flip(ATTACKS[name].norm)[run.rows]
    assert must.any()
    missed = must & ~flipped(model, run.adversarial, run.labels)
    assert not missed.any(), (f"{name} missed {int(missed.sum())} of the {int(must.sum())} examples whose "
                              f"closed-form minimal perturbation is ≤ {MUST_FLIP}·ε "
                              f"(examples {run.rows[missed].tolist()})")


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_stays_in_its_budget_and_the_box_and_never_beats_the_optimum(name):
    model = linear_case()[0]
    run = attacked(name)
    norm = ATTACKS[name].norm
    assert run.adversarial.shape == run.images.shape and torch.isfinite(run.adversarial).all()
    outside = max(-run.adversarial.min().item(), run.adversarial.max().item() - 1)
    assert outside <= 0, f"{name} leaves [0,1] by {outside:.3g}"
    delta = run.adversarial - run.images
    if norm == "union":
        assert isinstance(run.threat, MSD)
        size = torch.stack([norms_of(delta, n) / EPS[n] for n in EPS]).min(0).values  # in at least one ball
        limit = 1 + BUDGET_TOL
    else:
        size, limit = norms_of(delta, norm), EPS[norm] * (1 + BUDGET_TOL)
    assert size.max() <= limit, f"{name} leaves its budget: max {size.max().item():.7g} > {limit:.7g}"
    # No flipped example lies closer than the optimum of the class it reached: checks the closed form as well.
    fooled = flipped(model, run.adversarial, run.labels)
    reached = model(run.adversarial).argmax(1)
    for n in EPS if norm == "union" else [norm]:
        floor = optima(n)[run.rows].gather(1, reached.unsqueeze(1)).squeeze(1)
        below = fooled & (norms_of(delta, n) < floor * (1 - NOT_BELOW_OPTIMUM))
        assert not below.any(), f"{name} flipped {int(below.sum())} examples below the closed-form {n} optimum"


# -----------------------------------------------------------------------------------------------------------------
# Minimum-norm attacks
# -----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [f"{stage}-{norm}" for stage in ("fab", "fab-t") for norm in EPS])
def test_fab_comes_within_a_quarter_of_the_optimum(name):
    """FAB returns, within ε, the smallest adversarial point it found.

    Per example the bound is against the optimum of the class the output reached: FAB picks the hyperplane to
    project on by its box-free distance |f_j|/‖∇f_j‖_q (FAB-T: the target it is given), and on a linear model its
    projection onto that hyperplane ∩ box is exact; so the box can make it cross to a class that is not the
    closest one under the box (untargeted ℓ1 FAB on all 64 examples: one at 1.22× the overall optimum). Against
    the overall optimum the bound holds on the median.
    """
    model = linear_case()[0]
    run = attacked(name)
    norm = ATTACKS[name].norm
    fooled = flipped(model, run.adversarial, run.labels)
    assert fooled.sum() >= must_flip(norm)[run.rows].sum()
    size = norms_of(run.adversarial - run.images, norm)[fooled]
    reached = model(run.adversarial).argmax(1)[fooled]
    to_reached = size / optima(norm)[run.rows][fooled].gather(1, reached.unsqueeze(1)).squeeze(1)
    overall = size / best(norm)[run.rows][fooled]
    assert to_reached.max() <= MIN_NORM_FACTOR, (
        f"{name}: {int((to_reached > MIN_NORM_FACTOR).sum())} of {int(fooled.sum())} flipped examples beyond "
        f"{MIN_NORM_FACTOR}× the optimum of the class they reached (worst {to_reached.max():.3f}×)")
    assert overall.median() <= MIN_NORM_FACTOR, f"{name}: median {overall.median():.3f}× the overall optimum"


@cache
def sparsefool_run(lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseFool on the single-channel linear case: (adversarial images, ℓ0 in pixels)."""
    model, images, labels = linear_case(channels=1)
    attack = SparseFool(lam=lam)
    adversarial = attack(model, images, labels)
    return adversarial, attack.last_l0.double()


def test_sparsefool_flips_every_example_in_the_box_at_no_fewer_pixels_than_the_optimum():
    """SparseFool is unbounded: it must flip every example that can be flipped inside the box at all.

    Single-channel images, so a pixel is a coordinate: SparseFool minimises coordinates, the budget counts pixels.
    """
    model, images, labels = linear_case(channels=1)
    adversarial, l0 = sparsefool_run(3.0)  # the paper's and RoME's λ
    optimum = optima("l0", channels=1).min(1).values
    assert torch.isfinite(optimum).all() and optimum.max() >= 3, "some examples need several pixels"
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert (SparseFool().budget().check(images, adversarial).measured <= SIDE * SIDE).all()
    fooled = flipped(model, adversarial, labels)
    assert fooled.all(), f"SparseFool missed {int((~fooled).sum())} of {len(labels)} flippable examples"
    assert (l0 >= optimum).all(), "SparseFool used fewer pixels than the closed-form ℓ0 optimum"


def greedy_by_weight(labels_reached: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pixels SparseFool's linear solver (Algorithm 1) moves to gain ``target`` towards the class reached: it
    takes coordinates by descending |w_i| (not by the capacity |w_i|·r_i the optimum uses), each to the box."""
    gain, _, room = crossing_problems(*linear_case(channels=1))
    rows = torch.arange(len(labels_reached))
    rate, space = gain[rows, labels_reached], room[rows, labels_reached]
    order = rate.argsort(dim=1, descending=True)
    reached = (rate * space).gather(1, order).cumsum(1)
    return (reached < target.unsqueeze(1)).sum(1).double() + 1


def test_sparsefool_at_lambda_one_is_the_greedy_solution_and_near_optimal_on_the_median():
    """With λ = 1 the plane SparseFool's linear solver crosses is the decision boundary itself, so on a linear model
    its ℓ0 is exactly that of moving coordinates by descending |w_i| until the margin is gained: a per-example
    guarantee, asserted exactly. That order is not the optimum's (by |w_i|·room_i): a large-|w_i| coordinate with
    little room costs a pixel and gains little, so per example SparseFool can need 2× the optimum (measured), and
    the 1.25× bound is asserted on the median."""
    model, images, labels = linear_case(channels=1)
    adversarial, l0 = sparsefool_run(1.0)
    assert flipped(model, adversarial, labels).all()
    reached = model(adversarial).argmax(1)
    margin = crossing_problems(model, images, labels)[1]
    expected = greedy_by_weight(reached, margin.gather(1, reached.unsqueeze(1)).squeeze(1))
    assert torch.equal(l0, expected), f"{int((l0 != expected).sum())} examples differ from Algorithm 1's greedy ℓ0"
    ratio = l0 / optima("l0", channels=1).min(1).values
    assert ratio.median() <= MIN_NORM_FACTOR, f"SparseFool λ=1: median {ratio.median():.2f}× the ℓ0 optimum"


@pytest.mark.xfail(strict=True, reason=(
    "SparseFool at the paper's λ = 3 aims at a plane 3× as far as the boundary (robust on deep networks, not "
    "sparse on a linear one): median 4.5×, worst 8× the ℓ0 optimum on this case, measured (on 3-channel images, "
    "counting pixels: median 6.8×)"))
def test_sparsefool_at_the_papers_lambda_comes_within_a_quarter_of_the_optimum_on_the_median():
    _, l0 = sparsefool_run(3.0)
    ratio = l0 / optima("l0", channels=1).min(1).values
    assert ratio.median() <= MIN_NORM_FACTOR, f"SparseFool λ=3: median {ratio.median():.2f}× the ℓ0 optimum"

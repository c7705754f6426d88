"""Attack health of the adaptive suite (``evaluation/health.py``) and the worst case over evaluation draws.

* A deliberately masked model — a non-differentiable input quantiser, round(8x)/8, in front of a trained micro ViT —
  gets the health flags from an adaptive-suite run (shortened attacks): zero gradients, an ε sweep that does not
  feel the budget, Square beating AutoAttack's white-box attacks; the same ViT unmasked gets none of the first two.
* A model whose routing noise stays on at evaluation is classified in m draws: an example counts only if correct in
  every draw, which is stricter than one draw; a deterministic model gives the same result whatever m.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rome_bench.evaluation.health import attack_health, sweep_flags
from rome_bench.evaluation.render import render_leaderboard
from rome_bench.evaluation.runner import LoadedRun, batch_seed, evaluate_run, evaluate_threats
from rome_bench.evaluation.store import ResultStore
from rome_bench.evaluation.suites import ADAPTIVE_DRAWS, SUITES, adaptive_threats
from rome_bench.models.sparse_moe import SparseRouter
from rome_bench.presets import preset
from rome_bench.threats import Clean
from tests.test_batch_independence import variant_model
from tests.test_cli import assert_one_line_error

CPU = torch.device("cpu")


class Quantised(nn.Module):
    """The wrapped model on inputs quantised to 9 levels: its input gradient is zero everywhere."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(images * 8) / 8)


def run_adaptive(store: ResultStore, model: nn.Module, model_hash: str, data, ids: list[int]) -> dict[str, int]:
    """An adaptive-suite run through ``evaluate_run`` (attacks shortened); every flag the run stored, summed."""
    threats = [Clean(), *adaptive_threats({"linf": 8 / 255, "l2": 0.5, "l1": 8.0}, n_iter=2, n_queries=50,
                                          gma_steps=3)]
    run = LoadedRun(model, preset("smoke"), {}, model_hash, Path("runs/test"), None)
    evaluate_run(run, "adaptive", threats, data, ids, store, len(ids), CPU, model_hash, progress=False)
    flags: dict[str, int] = {}
    for threat in threats:
        for flag, count in store.flags(model_hash, threat.key, data.fingerprint).items():
            flags[flag] = flags.get(flag, 0) + count
    return flags


def test_health_flags_fire_on_a_masked_model_in_an_adaptive_run(tmp_path, undefended_model, synthetic_test):
    ids = list(range(8))
    with ResultStore(tmp_path / "r.sqlite") as store:
        masked = run_adaptive(store, Quantised(undefended_model), "masked", synthetic_test, ids)
        shown = render_leaderboard(store, SUITES.get("adaptive"), synthetic_test.info.name)
    assert "eps-sweep-flat" in shown and "zero-gradient" in shown  # the leaderboard's Flags column
    assert masked.get("zero-gradient", 0) > 0
    assert masked.get("eps-sweep-flat", 0) > 0
    assert masked.get("black-box-success", 0) > 0
    images, labels = synthetic_test.dataset.batch(ids)
    plain = attack_health(undefended_model, images, labels, 8 / 255)
    assert plain["eps-sweep-flat"] == plain["eps-sweep-non-monotone"] == 0


def test_sweep_flags_count_the_rise_and_the_flat_sweep():
    def robust(*counts: int) -> list[torch.Tensor]:
        return [torch.arange(10) < count for count in counts]

    assert sweep_flags(robust(6, 4, 2)) == {"eps-sweep-non-monotone": 0, "eps-sweep-flat": 0}
    assert sweep_flags(robust(4, 6, 2)) == {"eps-sweep-non-monotone": 2, "eps-sweep-flat": 0}
    assert sweep_flags(robust(5, 5, 5)) == {"eps-sweep-non-monotone": 0, "eps-sweep-flat": 5}
    assert sweep_flags(robust(0, 0, 0)) == {"eps-sweep-non-monotone": 0, "eps-sweep-flat": 0}


def noisy_routing() -> nn.Module:
    """A sparse MoE whose routing noise (std 1) stays on at evaluation: each forward pass draws new routes."""
    model = variant_model("sparse-moe", ("model.options.noise_std=1.0",))
    for module in model.modules():
        if isinstance(module, SparseRouter):
            module.train()
    return model


def clean_correct(model: nn.Module, data, ids: list[int], draws: int, tmp_path: Path) -> dict[int, bool]:
    with ResultStore(tmp_path / f"draws{draws}.sqlite") as store:
        evaluate_threats(model, "m", [Clean()], data, ids, store, len(ids), CPU, progress=False, draws=draws)
        return store.correctness("m", Clean().key, data.fingerprint)


def test_a_random_model_counts_an_example_only_if_correct_in_every_draw(tmp_path, synthetic_test):
    assert SUITES.get("adaptive").draws == ADAPTIVE_DRAWS > 1
    ids = list(range(256))
    model = noisy_routing()
    one, worst = clean_correct(model, synthetic_test, ids, 1, tmp_path), clean_correct(model, synthetic_test, ids,
                                                                                       ADAPTIVE_DRAWS, tmp_path)
    images, labels = synthetic_test.dataset.batch(ids)
    torch.manual_seed(batch_seed(Clean().key, ids[0]))
    with torch.no_grad():
        every = torch.stack([model(images).argmax(1) == labels for _ in range(ADAPTIVE_DRAWS)]).all(dim=0)
    assert [worst[i] for i in ids] == every.tolist()
    assert sum(worst.values()) < sum(one.values())
    assert all(one[i] for i in ids if worst[i])
    plain = variant_model("sparse-moe", ())
    noisy, still = (attack_health(m, images[:32], labels[:32], 2 / 255, ADAPTIVE_DRAWS) for m in (model, plain))
    assert noisy["stochastic-predictions"] > 0 and still["stochastic-predictions"] == 0
    assert clean_correct(plain, synthetic_test, ids, 1, tmp_path / "a") == clean_correct(
        plain, synthetic_test, ids, ADAPTIVE_DRAWS, tmp_path / "b")


def test_draws_below_one_or_with_shards_fail_in_one_line(cli_main, tmp_path):
    for extra in (("--draws", "0"), ("--draws", "3", "--shards", "2")):
        result = cli_main("eval", "--run", str(tmp_path / "run"), "--suite", "adaptive", *extra)
        assert result.returncode == 2
        assert_one_line_error(result, "--draws takes a number >= 1")

"""bf16 autocast for attacks (``eval --precision bf16``): the attack runs in bf16, every stored decision in fp32,
and the attack is as strong as in fp32: on the same examples, the two precisions disagree on only a few."""

from __future__ import annotations

import math

import pytest
import torch

from rome_bench.evaluation.runner import attack_precision, evaluate_threats
from rome_bench.evaluation.store import ResultStore
from rome_bench.models.autocast import attack_model
from rome_bench.threats import L2PGD, Clean, LinfPGD

CPU = torch.device("cpu")


def bf16_unsupported() -> str | None:
    """Why this CPU cannot run bf16 (PyTorch's CPU attention needs AVX512 for it), or None."""
    from rome_bench.device import check_bf16
    from rome_bench.errors import ConfigError

    try:
        check_bf16(CPU)
    except ConfigError as error:
        return str(error)
    return None


needs_bf16 = pytest.mark.skipif(bf16_unsupported() is not None, reason=f"{bf16_unsupported()}")


class OutputDtypes:
    """Records the dtype of every Linear output of a model while active."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.dtypes: list[torch.dtype] = []
        self.handles = [m.register_forward_hook(lambda _m, _i, out: self.dtypes.append(out.dtype))
                        for m in model.modules() if isinstance(m, torch.nn.Linear)]

    def __enter__(self) -> OutputDtypes:
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()


# Paired bound on fp32 vs bf16 outcomes. Both attacks start from the same point (same seed) and take the same steps;
# they differ only by bf16's rounding of the forward pass and gradient, which flips an outcome only where the attack
# ends next to the decision boundary. Measured on the 64 examples: 0-2 disagreements for either threat, under
# ROME_BENCH_TEST_SEED 0, 1 and 2 (AVX2 kernels); 4 allows twice the most measured.
MAX_DISAGREEMENTS = 4


def disagreements(full: torch.Tensor, half: torch.Tensor) -> tuple[int, int]:
    """The discordant pairs of two per-example robustness masks of the same examples: (robust only under fp32,
    robust only under bf16)."""
    return int((full & ~half).sum()), int((~full & half).sum())


def robust_examples(model, threat, images, labels, precision: str) -> tuple[torch.Tensor, set[torch.dtype]]:
    """Which examples stay correctly classified after the attack run at this precision, and the Linear output
    dtypes seen while it ran."""
    torch.manual_seed(0)
    with OutputDtypes(model) as seen, attack_precision(precision, CPU):
        adversarial = threat(attack_model(model), images, labels)
    assert adversarial.dtype == torch.float32
    assert (adversarial - images).flatten(1).norm(p=2 if threat.norm == "l2" else math.inf, dim=1).max() \
        <= threat.eps * (1 + 1e-5)
    with torch.no_grad():
        return model(adversarial).argmax(1) == labels, set(seen.dtypes)


def test_disagreements_are_counted_per_example_not_from_two_rates() -> None:
    """Two runs with the same robust accuracy can disagree on every example: the paired count sees it."""
    full = torch.arange(64) < 32
    assert disagreements(full, full) == (0, 0)
    assert disagreements(full, full.roll(1)) == (1, 1)
    assert disagreements(full, torch.zeros(64, dtype=torch.bool)) == (32, 0)
    swapped = ~full  # robust accuracy 1/2 as well, on the other 32 examples
    assert sum(disagreements(full, swapped)) == 64 > MAX_DISAGREEMENTS


@needs_bf16
@pytest.mark.parametrize("threat", [LinfPGD(1 / 255, steps=10), L2PGD(0.1, steps=10)], ids=["linf", "l2"])
def test_bf16_attack_runs_in_bf16_and_is_as_strong_as_fp32(undefended_model, correct_batch, threat) -> None:
    images, labels = correct_batch
    full, full_dtypes = robust_examples(undefended_model, threat, images, labels, "fp32")
    half, half_dtypes = robust_examples(undefended_model, threat, images, labels, "bf16")
    assert full_dtypes == {torch.float32} and half_dtypes == {torch.bfloat16}
    rate = full.float().mean().item()
    assert 0.05 < rate < 0.95, f"pick ε so that the attack neither always nor never succeeds (got {rate})"
    only_full, only_half = disagreements(full, half)
    assert only_full + only_half <= MAX_DISAGREEMENTS, (
        f"fp32 and bf16 disagree on {only_full + only_half} of {len(labels)} examples ({only_full} robust only "
        f"under fp32, {only_half} only under bf16); at most {MAX_DISAGREEMENTS} expected")


def test_stored_decisions_are_fp32_under_bf16_and_provenance_says_bf16(tmp_path, undefended_model,
                                                                         synthetic_test) -> None:
    from rome_bench.provenance import evaluation_provenance

    ids = list(range(32))
    stores = {}
    for precision in ("fp32", "bf16"):
        with ResultStore(tmp_path / f"{precision}.sqlite") as store, OutputDtypes(undefended_model) as seen, \
                attack_precision(precision, CPU):
            store.use_provenance(evaluation_provenance(undefended_model, CPU))
            evaluate_threats(undefended_model, "m", [Clean()], synthetic_test, ids, store, 16, CPU, progress=False)
            stores[precision] = store.correctness("m", Clean().key, synthetic_test.fingerprint)
            record = store.provenance("m", Clean().key, synthetic_test.fingerprint)[0]
        assert set(seen.dtypes) == {torch.float32}  # clean classification (and the probe) in fp32 under autocast
        assert record["amp"] == ("bfloat16" if precision == "bf16" else "off")
    assert stores["fp32"] == stores["bf16"]


def test_bf16_where_the_kernels_lack_it_is_one_clear_error(tmp_path) -> None:
    """Where bf16 attention cannot run (a CPU without AVX512 kernels), eval --precision bf16 fails in one line."""
    import os
    import subprocess
    import sys

    environment = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}  # read at start-up: a fresh interpreter
    probe = subprocess.run([sys.executable, "-c", "import torch; from rome_bench.device import check_bf16; "
                            "check_bf16(torch.device('cpu'))"], capture_output=True, env=environment)
    if probe.returncode == 0:
        pytest.skip("this CPU runs bf16 attention even with ATEN_CPU_CAPABILITY=default")
    result = subprocess.run([sys.executable, "-m", "rome_bench", "eval", "--run", str(tmp_path / "nowhere"),
                             "--precision", "bf16", "--device", "cpu"], capture_output=True, text=True,
                            env=environment)
    assert "bf16 does not run on this cpu" in result.stderr
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "use precision fp32 here" in result.stderr


def test_unknown_precision_is_one_clear_error(cli_main) -> None:
    result = cli_main("eval", "--run", "nowhere", "--precision", "fp16")
    assert result.returncode != 0
    assert "--precision takes fp32 | bf16 (got 'fp16')" in result.stderr or "does not exist" in result.stderr


def bf16_config():
    from tests.test_training import tiny_config

    config = tiny_config("rome+max")
    config.train.precision = "bf16"
    return config


@needs_bf16
def test_bf16_training_autocasts_forwards_keeps_fp32_weights_resumes_exactly_and_records_it(tmp_path,
                                                                                             monkeypatch) -> None:
    import json

    from safetensors.torch import load_file

    from rome_bench.training import trainer as trainer_module
    from tests.test_training import Killed, kill_at

    seen: list[torch.dtype] = []
    original = trainer_module.train_step

    def watched_step(recipe, ctx, optimizer, batch):
        with OutputDtypes(ctx.model) as dtypes:
            result = original(recipe, ctx, optimizer, batch)
        seen.extend(dtypes.dtypes)
        assert all(p.dtype == torch.float32 for p in ctx.model.parameters())
        assert all(p.grad is None or p.grad.dtype == torch.float32 for p in ctx.model.parameters())
        return result

    with monkeypatch.context() as patch:
        patch.setattr(trainer_module, "train_step", watched_step)
        unbroken = trainer_module.Trainer(bf16_config(), tmp_path / "unbroken", progress=False).fit()
    assert set(seen) == {torch.bfloat16}  # every Linear of every forward (attacks and update) ran in bf16
    with pytest.raises(Killed):
        trainer_module.Trainer(bf16_config(), tmp_path / "broken", progress=False).fit(on_step=kill_at(9))
    resumed = trainer_module.Trainer(bf16_config(), tmp_path / "broken", progress=False).fit(resume=True)
    expected, actual = load_file(unbroken.with_suffix(".safetensors")), load_file(resumed.with_suffix(".safetensors"))
    assert all(torch.equal(expected[name], actual[name]) and actual[name].dtype == torch.float32 for name in expected)
    assert all(torch.isfinite(tensor).all() for tensor in actual.values())
    sidecar = json.loads(resumed.read_text())
    assert sidecar["provenance"]["amp"] == "bfloat16" and sidecar["config"]["train"]["precision"] == "bf16"


@needs_bf16
def test_autoattack_standard_runs_its_whole_cascade_under_bf16(undefended_model, correct_batch) -> None:
    """APGD-CE, APGD-T, FAB-T and Square all run under bf16 autocast (Square once mixed bf16 and fp32 buffers)."""
    from rome_bench.threats import LinfAutoAttack

    images, labels = correct_batch
    threat = LinfAutoAttack(0.2 / 255, n_iter=2, n_queries=3)  # too weak to fool everyone: every attack runs
    with attack_precision("bf16", CPU):
        adversarial = threat(attack_model(undefended_model), images[:8], labels[:8])
    assert set(threat.successes) == {"apgd-ce", "apgd-t", "fab-t", "square"}, threat.successes
    assert adversarial.dtype == torch.float32
    assert (adversarial - images[:8]).abs().max() <= threat.eps * (1 + 1e-5)

"""Com. Corr. is CIFAR-10-C's metric: plain accuracy on the corrupted images; the union still requires clean."""

import torch
from torch import nn
from torch.utils.data import TensorDataset

from rome_bench.data import LoadedDataset
from rome_bench.evaluation.leaderboard import LEGACY_FLAG, build_leaderboard
from rome_bench.evaluation.render import render_markdown
from rome_bench.evaluation.runner import evaluate_threats
from rome_bench.evaluation.store import UNION_ONLY, ResultStore
from rome_bench.evaluation.suites import SUITES, Suite
from rome_bench.threats import Clean, CommonCorruption, LinfPGD

CORR = Suite(name="corr-test", build=lambda threats: [], columns=("nat", "corr"),
             titles={"nat": "Nat", "corr": "Com. Corr."}, description="test suite",
             aggregates={"corr": ("corr/brightness",)}, show_avg=False)


class Brightness(nn.Module):
    """Says class 1 for bright images (mean > 0.45), class 0 otherwise."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        bright = images.mean(dim=(1, 2, 3)) - 0.45
        return torch.stack([-bright, bright, *([torch.full_like(bright, -1.0)] * 8)], dim=1)


def grey_images(synthetic_test, levels: list[float]) -> LoadedDataset:
    """Uniform grey images of the given levels, all labelled 1 (bright)."""
    images = torch.stack([torch.full((3, 32, 32), level) for level in levels])
    labels = torch.ones(len(levels), dtype=torch.long)
    return LoadedDataset(TensorDataset(images, labels), synthetic_test.info, f"grey-{levels}", "test")


def evaluate(store, data, threats, union_only=False):
    ids = list(range(len(data.dataset)))
    evaluate_threats(Brightness(), "m", threats, data, ids, store, 4, torch.device("cpu"), progress=False,
                     union_only=union_only)
    store.record_model("m", "brightness", None, None, {})
    store.record_suite_run("m", CORR.name, data.fingerprint, "grey", [t.key for t in threats], ids,
                           "2026-01-01T00:00:00", UNION_ONLY if union_only else "full")
    return ids


def test_corrupted_right_but_clean_wrong_counts_in_com_corr_not_in_the_union(tmp_path, synthetic_test):
    # brightness severity 5 adds 0.3 to HSV value: the 0.3-grey images turn bright (right), the 0.6 ones stay right
    data = grey_images(synthetic_test, [0.3, 0.3, 0.6, 0.6])
    corruption = CommonCorruption("brightness", 5)
    with ResultStore(tmp_path / "r.sqlite") as store:
        evaluate(store, data, [Clean(), corruption])
        assert store.correctness("m", corruption.key, data.fingerprint) == {0: True, 1: True, 2: True, 3: True}
        (row,) = build_leaderboard(store, CORR)
    assert row.values == {"nat": 0.5, "corr": 1.0, "union": 0.5}
    assert LEGACY_FLAG not in row.flags.get("corr", {})
    assert "Com. Corr. is plain accuracy on the corrupted images" in render_markdown([row], CORR)


def test_adversarial_threats_still_attack_only_clean_correct_examples(tmp_path, synthetic_test):
    data = grey_images(synthetic_test, [0.3, 0.6])
    pgd = LinfPGD(8 / 255, steps=2)  # moves the mean by at most 8/255: the answers stay
    with ResultStore(tmp_path / "r.sqlite") as store:
        evaluate(store, data, [Clean(), pgd, CommonCorruption("brightness", 5, given_clean=True)])
        assert store.correctness("m", pgd.key, data.fingerprint) == {0: False, 1: True}
        given_clean = CommonCorruption("brightness", 5, given_clean=True)
        assert store.correctness("m", given_clean.key, data.fingerprint) == {0: False, 1: True}
        assert given_clean.key != CommonCorruption("brightness", 5).key


def test_union_only_cascade_skips_clean_wrong_examples(tmp_path, synthetic_test):
    data = grey_images(synthetic_test, [0.3, 0.6])
    corruption = CommonCorruption("brightness", 5)
    with ResultStore(tmp_path / "r.sqlite") as store:
        evaluate(store, data, [Clean(), corruption], union_only=True)
        assert store.correctness("m", corruption.key, data.fingerprint) == {1: True}
        (row,) = build_leaderboard(store, CORR)
    assert row.values == {"nat": 0.5, "union": 0.5}


def test_corruptions_stored_under_the_old_rule_read_and_are_flagged(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.record_threat("clean:0", "clean", "nat", "seen", {})
        store.add_results("m", "clean:0", "d", [0, 1, 2], [True, False, False])
        old = {"corruption": "brightness", "severity": 5, "corruptions_dir": None}  # no given_clean: older store
        store.record_threat("corruption:old", "corruption", "corr/brightness", "unseen", old)
        store.add_results("m", "corruption:old", "d", [0, 1, 2], [True, False, False])
        store.record_model("m", "old", None, None, {})
        store.record_suite_run("m", CORR.name, "d", "grey", ["clean:0", "corruption:old"], [0, 1, 2], "2026")
        (row,) = build_leaderboard(store, CORR)
    assert row.values["corr"] == 1 / 3 and row.flags["corr"] == {LEGACY_FLAG: 2}
    assert f"{LEGACY_FLAG}×2 (Com. Corr.)" in render_markdown([row], CORR)


def test_the_unseen_suite_builds_plain_accuracy_corruptions():
    from rome_bench.config import ThreatsConfig

    corruptions = [t for t in SUITES.get("unseen").build(ThreatsConfig()) if isinstance(t, CommonCorruption)]
    assert len(corruptions) == 75 and not any(t.given_clean for t in corruptions)

"""Gating analysis: the routing-divergence score and threat classifier separate threat-agnostic from threat-specific
gates (synthetic arrays and tiny RoME ViTs), the figures are written, the score is stored and reaches the
leaderboard, and ``rome-bench analyze gating`` runs end to end or fails in one line without experts."""

import json
import math
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rome_bench.checkpoint import MODEL_STEM, save_tensors_with_sidecar
from rome_bench.cli import app, main
from rome_bench.data import load_dataset
from rome_bench.errors import ConfigError
from rome_bench.evaluation.gating_analysis import (
    KDE_FILE,
    MAPS_FILE,
    MEAN_GATES_FILE,
    GatingReport,
    analyse_run,
    collect_gates,
    condition_labels,
    gaussian_kde,
    region_mask,
    render_report,
    routing_divergence,
    score_collection,
    threat_classifier_accuracy,
)
from rome_bench.evaluation.leaderboard import build_leaderboard
from rome_bench.evaluation.render import RENDERERS
from rome_bench.evaluation.runner import LoadedRun, load_run
from rome_bench.evaluation.store import GatingScore, ResultStore
from rome_bench.evaluation.suites import SUITES
from rome_bench.models import MODELS, ImageClassifier, create_model
from rome_bench.models.family import with_stored_options
from rome_bench.models.rome import LoRAExpertMixture, RomeOptions, add_rome_experts
from rome_bench.presets import preset
from rome_bench.threats import L2PGD, Clean, LinfPGD

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CPU = torch.device("cpu")
THREATS = [Clean(), LinfPGD(0.25, steps=1), L2PGD(0.5, steps=1)]  # very different per-pixel noise energy
IDS = list(range(64))


def dirichlet_gates(rng: np.random.Generator, alpha: list[float], n: int, layers: int = 2) -> np.ndarray:
    return rng.dirichlet(alpha, size=(n, layers))


# --- the score on synthetic gate arrays ---

def test_same_gate_distribution_gives_near_zero_divergence_and_chance_classifier():
    rng = np.random.default_rng(0)
    gates = {name: dirichlet_gates(rng, [2.0, 2.0, 2.0, 2.0], 400) for name in ("l1", "l2", "linf")}
    divergence, per_layer = routing_divergence(gates)
    assert divergence < 0.03 and per_layer.shape == (2,)
    result = threat_classifier_accuracy(gates, seed=0)
    assert result.chance == pytest.approx(1 / 3)
    assert abs(result.accuracy - result.chance) < 0.08
    assert (result.train_examples, result.test_examples) == (200, 200)


def test_threat_specific_gates_give_high_divergence_and_a_perfect_classifier():
    rng = np.random.default_rng(0)
    gates = {name: dirichlet_gates(rng, [20.0 if k == t else 1.0 for k in range(4)], 200)
             for t, name in enumerate(("l1", "l2", "linf"))}
    divergence, _ = routing_divergence(gates)
    assert divergence > 0.5
    assert threat_classifier_accuracy(gates, seed=0).accuracy > 0.99


def test_divergence_is_the_mean_pairwise_distance_of_mean_gates_averaged_over_layers():
    one_hot = np.eye(3)
    gates = {"a": np.tile(np.stack([one_hot[0], one_hot[2]]), (5, 1, 1)),  # (5, 2 layers, 3 experts)
             "b": np.tile(np.stack([one_hot[1], one_hot[2]]), (5, 1, 1))}
    divergence, per_layer = routing_divergence(gates)
    assert per_layer == pytest.approx([math.sqrt(2), 0.0])
    assert divergence == pytest.approx(math.sqrt(2) / 2)
    with pytest.raises(ConfigError, match="at least two"):
        routing_divergence({"a": gates["a"]})


def test_constant_gates_classify_exactly_at_chance():
    gates = {name: np.full((10, 2, 4), 0.25) for name in ("a", "b", "c", "d")}
    assert threat_classifier_accuracy(gates).accuracy == 0.25


def test_kde_matches_scipy_and_survives_zero_variance():
    stats = pytest.importorskip("scipy.stats")
    samples = np.random.default_rng(1).beta(2, 5, size=300)
    grid = np.linspace(0, 1, 101)
    assert gaussian_kde(samples, grid) == pytest.approx(stats.gaussian_kde(samples)(grid), rel=1e-9, abs=1e-12)
    constant = np.full(50, 0.25)
    grid = np.linspace(0.2, 0.3, 2001)
    density = gaussian_kde(constant, grid)
    assert np.isfinite(density).all() and density.argmax() == 1000
    assert (density[1:] + density[:-1]).sum() / 2 * (grid[1] - grid[0]) == pytest.approx(1.0, abs=1e-3)


def test_condition_labels_are_unique():
    assert condition_labels(THREATS) == ["clean", "pgd-linf", "pgd-l2"]
    repeated = [Clean(), LinfPGD(0.1), LinfPGD(0.2), L2PGD(0.5)]
    assert condition_labels(repeated) == ["clean", "linf[1]", "linf[2]", "pgd-l2"]


def test_region_mask_is_the_central_half_square():
    mask = region_mask(32, 32)
    assert mask.sum() == 16 * 16 and mask[0, 0, 8:24, 8:24].all() and mask[0, 0, 7].sum() == 0


# --- end to end on tiny RoME ViTs ---

def tiny_rome(seed: int = 0) -> ImageClassifier:
    torch.manual_seed(seed)
    backbone = MODELS.get("vit_smoke")(num_classes=10, image_size=32, patch_size=4, embed_dim=32, depth=2,
                                       num_heads=2)
    add_rome_experts(backbone, RomeOptions(num_experts=4, rank=2, gate_hidden=4))
    return ImageClassifier(backbone, (0.57,) * 3, (0.17,) * 3).eval().requires_grad_(False)


def uniform_gates(model: ImageClassifier) -> ImageClassifier:
    """Zero every gate's output layer: all gates are exactly 1/K whatever the input (threat-agnostic routing)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoRAExpertMixture):
                for layer in (module.gate.local_out, module.gate.global_out):
                    layer.weight.zero_()
                    layer.bias.zero_()
    return model


def noise_energy_gate(model: ImageClassifier) -> ImageClassifier:
    """Uniform gates, except that block 0's qkv local gate favours expert 1 in proportion to the per-patch energy
    of a pixel-checkerboard filter: large for ℓ∞ noise of 0.25 on every pixel, small for ℓ2 noise of norm 0.5."""
    uniform_gates(model)
    backbone = model.backbone
    with torch.no_grad():
        checker = ((torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2 * 2 - 1.0).expand(3, 4, 4)
        proj = backbone.patch_embed.proj
        proj.weight.zero_()
        proj.bias.zero_()
        proj.weight[0], proj.weight[1], proj.bias[2] = checker, -checker, 10.0  # channels r, −r and a constant
        backbone.pos_embed.zero_()
        backbone.cls_token.zero_()
        gate = backbone.blocks[0].attn.qkv.gate
        gate.local_in.weight.zero_()
        gate.local_in.bias.zero_()
        gate.local_in.weight[0, 0], gate.local_in.weight[1, 0] = 1.0, -1.0  # GELU(h) + GELU(−h) ≈ |h|
        gate.local_out.weight[0, :2] = 2.0
    return model


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic", "test")


@pytest.fixture(scope="module")
def separating_model():
    return noise_energy_gate(tiny_rome())


def test_score_separates_threat_agnostic_from_threat_specific_gates(synthetic, separating_model):
    agnostic = collect_gates(uniform_gates(tiny_rome()), THREATS, synthetic, IDS, 64, CPU, progress=False)
    specific = collect_gates(separating_model, THREATS, synthetic, IDS, 64, CPU, progress=False)
    assert agnostic.labels == ["clean", "pgd-linf", "pgd-l2"] and agnostic.threat_labels == ["pgd-linf", "pgd-l2"]
    assert agnostic.gates["clean"].shape == (64, 4, 4) and len(agnostic.layers) == 4
    assert agnostic.unperturbed == {"pgd-linf": 0, "pgd-l2": 0}
    agnostic_score, agnostic_classifier = score_collection(agnostic, "agnostic", "seen-pgd", synthetic)
    specific_score, specific_classifier = score_collection(specific, "specific", "seen-pgd", synthetic)
    assert agnostic_score.divergence == 0.0 and agnostic_classifier.accuracy == agnostic_classifier.chance == 0.5
    assert specific_score.per_layer["blocks.0.attn.qkv"] > 0.1
    assert specific_score.divergence > agnostic_score.divergence + 0.02
    assert specific_classifier.accuracy >= 0.9


def loaded(model: ImageClassifier, model_hash: str, method: str = "rome+max") -> LoadedRun:
    return LoadedRun(model, preset("smoke"), {}, model_hash, Path("runs/tiny"), method)


def fill_suite_run(store: ResultStore, model_hash: str, label: str, dataset: str) -> None:
    """A complete stored 'seen' suite run of 4 examples (every threat correct on the first two)."""
    keys = []
    for column in ("nat", "l1", "l2", "linf"):
        key = f"t-{column}:0"
        store.record_threat(key, f"t-{column}", column, "seen", {})
        store.add_results(model_hash, key, dataset, [0, 1, 2, 3], [True, True, False, False])
        keys.append(key)
    store.record_model(model_hash, label, "max", None, {})
    store.record_suite_run(model_hash, "seen", dataset, "synthetic", keys, [0, 1, 2, 3], "2026-01-01T00:00:00")


def test_analysis_writes_figures_stores_the_score_and_fills_the_leaderboard(tmp_path, synthetic, separating_model):
    with ResultStore(tmp_path / "r.sqlite") as store:
        fill_suite_run(store, "gated", "rome model", synthetic.fingerprint)
        fill_suite_run(store, "plain", "plain model", synthetic.fingerprint)
        before = {name: render(build_leaderboard(store, SUITES.get("seen")), SUITES.get("seen"))
                  for name, render in RENDERERS.items()}
        report = analyse_run(loaded(separating_model, "gated"), "seen-pgd", THREATS, synthetic, IDS[:16], store,
                             16, CPU, tmp_path / "figures", progress=False, map_images=2)
        again = analyse_run(loaded(separating_model, "gated"), "seen-pgd", THREATS, synthetic, IDS[:16], store, 16,
                            CPU, tmp_path / "figures", progress=False, map_images=0)  # replaces the stored row
        stored = store.gating_score("gated", synthetic.fingerprint)
        rows = build_leaderboard(store, SUITES.get("seen"))
    expected = [tmp_path / "figures" / name for name in
                [*(KDE_FILE.format(k=k) for k in range(1, 5)), MEAN_GATES_FILE, MAPS_FILE]]
    assert report.figures == expected
    for path in expected:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000
    assert again.figures == expected[:-1] and again.score.divergence == report.score.divergence
    assert stored == again.score and stored.n_examples == 16 and stored.threats == ["pgd-linf", "pgd-l2"]
    assert sqlite3.connect(tmp_path / "r.sqlite").execute("SELECT COUNT(*) FROM gating_scores").fetchone() == (1,)
    assert "Routing div." not in before["md"] and "routing_divergence" not in before["csv"]
    assert '"gating"' not in before["json"] and "Routing div." not in before["tex"]
    suite = SUITES.get("seen")
    markdown = RENDERERS["md"](rows, suite)
    assert "| Routing div. | Gate clf. % (chance 50.0) |" in markdown
    gated = next(line for line in markdown.splitlines() if line.startswith("| rome model"))
    plain = next(line for line in markdown.splitlines() if line.startswith("| plain model"))
    assert f"| {stored.divergence:.4f} | {100 * stored.classifier_accuracy:.1f} |" in gated
    assert "| – | – |" in plain
    as_json = {row["label"]: row["gating"] for row in json.loads(RENDERERS["json"](rows, suite))["rows"]}
    assert as_json["plain model"] is None and as_json["rome model"]["routing_divergence"] == stored.divergence
    assert "routing_divergence" in RENDERERS["csv"](rows, suite).splitlines()[0]
    tex = RENDERERS["tex"](rows, suite)
    assert "Routing div." in tex and "-- & -- \\\\" in tex
    assert "note:" not in render_report(report)
    noted = render_report(GatingReport(report.score, report.classifier, report.figures, {"pgd-l2": 3}))
    assert "note: pgd-l2 returned 3 of 16 examples unperturbed" in noted


def test_store_prefers_the_seen_suites_score_then_the_newest(tmp_path):
    def score(suite: str, created: str, divergence: float) -> GatingScore:
        return GatingScore("m", suite, "data", "synthetic", 10, divergence, 0.5, 1 / 3, {"blocks.0": divergence},
                           ["a", "b", "c"], created)

    with ResultStore(tmp_path / "r.sqlite") as store:
        assert store.gating_score("m", "data") is None
        store.record_gating_score(score("seen-pgd", "2026-01-01T00:00:00", 0.1))
        store.record_gating_score(score("unseen", "2026-01-02T00:00:00", 0.2))
        assert store.gating_score("m", "data").suite == "unseen"
        store.record_gating_score(score("seen", "2025-01-01T00:00:00", 0.3))
        assert store.gating_score("m", "data").suite == "seen"
        assert store.gating_score("m", "data", suite="seen-pgd").divergence == 0.1
        assert store.gating_score("m", "other") is None


# --- the command line ---

def write_run(run_dir: Path, method: str) -> Path:
    """A micro run directory (vit_micro, 1-step PGD evaluation) with random gates, written without training."""
    config = preset("smoke")
    config.model.backbone = "vit_micro"
    config.train.recipe = method.removeprefix("rome+")
    if not method.startswith("rome+"):
        config.model.family, config.model.options = "plain", {}  # the smoke preset's options are RoME's
    config.threats.eval_steps = {"l1": 1, "l2": 1, "linf": 1}
    info = load_dataset("synthetic", "test").info
    torch.manual_seed(0)
    model = create_model(config.model, info)
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, LoRAExpertMixture):
            for layer in (module.gate.local_in, module.gate.local_out, module.gate.global_in, module.gate.global_out):
                if layer is not None:
                    layer.weight.data.normal_(0, 1.0, generator=generator)
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(with_stored_options(config).to_json())  # as the trainer writes it
    save_tensors_with_sidecar(run_dir, MODEL_STEM, model.state_dict(), {"epoch": 1})
    return run_dir


def test_cli_analyze_gating_prints_the_score_and_writes_figures(tmp_path):
    run = write_run(tmp_path / "tiny", "rome+max")
    store = tmp_path / "r.sqlite"
    result = CliRunner().invoke(app, ["analyze", "gating", "--run", str(run), "--suite", "seen-pgd", "--n-examples",
                                      "8", "--batch-size", "8", "--map-images", "1", "--store", str(store),
                                      "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "**mean over layers**" in result.output
    assert "held-out threat classifier" in result.output and "chance 33.3%" in result.output
    for name in ("blocks.0.attn.qkv", "blocks.1.attn.proj", KDE_FILE.format(k=1), MAPS_FILE):
        assert name in result.output
    assert (run / "figures" / MAPS_FILE).read_bytes().startswith(PNG_MAGIC)
    data = load_dataset("synthetic", "test")
    with ResultStore(store) as results:
        stored = results.gating_score(load_run(run, data.info, CPU).model_hash, data.fingerprint)
    assert stored.suite == "seen-pgd" and stored.n_examples == 8 and len(stored.per_layer) == 4


def test_cli_fails_in_one_line_for_a_run_without_experts(tmp_path, monkeypatch, capsys):
    run = write_run(tmp_path / "plain", "max")
    monkeypatch.setattr(sys, "argv", ["rome-bench", "analyze", "gating", "--run", str(run), "--suite", "seen-pgd",
                                      "--n-examples", "4", "--store", str(tmp_path / "r.sqlite"), "--no-progress"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: run ") and "has no experts to analyse" in lines[0]
    assert "rome+" in lines[0]

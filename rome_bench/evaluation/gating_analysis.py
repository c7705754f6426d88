"""Gating analysis: does a mixture-of-experts model route different threats to different experts?

The paper argues (Sec. 3, Fig. 3, A1; Sec. 5.4, Fig. 7, A2) that a plain MoE routes every threat to the same
experts ("threat-agnostic routing") while RoME learns threat-specific expert combinations. This module measures
that, for any model of any family whose gates (``rome_bench.models.gates.gates``) record the fused gates of its
last forward pass.

* Gates. On a fixed seeded evaluation subset, for clean images and for every threat of a suite, applied to
  every example (not only the clean-correct ones, so all conditions see the same N images), the (perturbed)
  images go through the model in eval mode without gradients; each gated layer's fused gates (B, T, K) are
  averaged over the T tokens, giving an (N, L, K) array per condition. The average covers *all* tokens: for a ViT
  that includes the prefix (CLS) token, one of 1 + 64 tokens at CIFAR size, gated like the others (the paper's
  "token-averaged gating weights" do not exclude it); a conv model has no prefix. An attack may return an example
  unperturbed: AutoAttack (the ``seen`` suite) returns the clean image wherever it fails, so those examples carry
  clean gates under that threat, which dilutes the differences; the count per threat is reported, and
  ``--suite seen-pgd`` (PGD returns its last iterate) perturbs every example.
* Routing divergence (the score). Per gated layer, the mean gate vector (over the N examples, K-dim) of each
  threat, clean excluded; the layer's divergence is the mean L2 distance over unordered pairs of threats, and
  the score is the mean over layers. 0 means every threat is routed to the same expert mixture on average; the
  maximum, √2, means two threats use disjoint single experts. It needs at least two threats besides clean.
* Held-out threat classifier. A multinomial logistic regression (torch, float64, LBFGS from zero weights, L2
  penalty ``CLASSIFIER_L2``) on the L·K token-averaged gates, standardised with the training half's statistics
  (features with std < 1e-6 are left unscaled), predicts which threat produced an example. The examples are split
  by id, a seeded half for training and the rest held out, so an image is never on both sides; the reported
  accuracy is on the held-out half, against chance = 1/#threats. Ties go to the first threat, so gates that
  ignore the threat (identical features) score exactly chance.
* KDE figures (Fig. 3): for the final gated layer, one PNG per expert (``gating-kde-expert{k}.png``, k = 1..K as
  in the paper) with one Gaussian-KDE curve per condition of that expert's token-averaged gate over the N
  examples. The KDE is computed here with Scott's bandwidth h = σ̂·n^(-1/5) (σ̂ with ddof=1, as scipy's
  ``gaussian_kde``), floored at ``MIN_BANDWIDTH`` so that a constant gate (σ̂ = 0) draws a narrow peak, not NaN.
* Mean gates (Fig. A2 style): ``gating-mean-gates.png``, one heatmap per gated layer of the mean token-averaged
  gate of every condition (rows) and expert (columns): what the divergence compares, clean included.
* Activation maps (Fig. 7): for a few images and each condition, the perturbation is applied to one region only,
  x_region = x + mask·(x_adv − x), with the mask the central square covering ``REGION_FRACTION`` of the side;
  ``gating-activation-maps.png`` shows per image and condition the perturbed image (region outlined) and, per
  expert, the final gated layer's per-token fused gate as a heatmap over the patch grid (prefix tokens dropped:
  the first T − g² tokens, g = ⌊√T⌋). All heatmaps share one colour scale. The maps assume the final gated
  layer's tokens in row-major patch order: true for ViT/DeiT, conv models, and Swin when its last stage is one
  window (as at 32×32 and 224×224); a multi-window last stage would be drawn window by window.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import nn
from tqdm import tqdm

from rome_bench.data import LoadedDataset, fetch_batch
from rome_bench.errors import ConfigError
from rome_bench.evaluation.plots import _save_atomically
from rome_bench.evaluation.runner import LoadedRun, batch_seed
from rome_bench.evaluation.store import GatingScore, ResultStore
from rome_bench.models.gates import gates as read_gates
from rome_bench.threats import Clean, Threat

MIN_BANDWIDTH = 1e-3  # KDE bandwidth floor, in gate-weight units
CLASSIFIER_L2 = 1e-3  # L2 penalty on the logistic regression's weights
CONSTANT_FEATURE_STD = 1e-6  # features varying less than this are not scaled (float noise of constant gates)
REGION_FRACTION = 0.5  # side of the perturbed central square, as a fraction of the image side
KDE_POINTS = 400
KDE_FILE = "gating-kde-expert{k}.png"
MAPS_FILE = "gating-activation-maps.png"
MEAN_GATES_FILE = "gating-mean-gates.png"


@dataclass(frozen=True)
class GateCollection:
    """Token-averaged gates per condition: ``gates[label]`` is (N, L, K) over ``example_ids`` and ``layers``."""

    labels: list[str]  # every condition, in suite order (clean first)
    threat_labels: list[str]  # the conditions that are threats (clean excluded)
    layers: list[str]
    example_ids: list[int]
    gates: dict[str, np.ndarray]
    unperturbed: dict[str, int]  # threat label -> examples the threat returned unchanged

    def threat_gates(self) -> dict[str, np.ndarray]:
        return {label: self.gates[label] for label in self.threat_labels}


@dataclass(frozen=True)
class ClassifierResult:
    accuracy: float  # on the held-out examples
    chance: float
    train_examples: int
    test_examples: int


@dataclass(frozen=True)
class ActivationMaps:
    """Final-layer per-patch gates of region-perturbed images: ``maps[label]`` is (n, K, g, g)."""

    images: dict[str, torch.Tensor]  # label -> (n, C, H, W) region-perturbed images, on the CPU
    maps: dict[str, np.ndarray]
    layer: str
    box: tuple[int, int, int, int]  # the region: top, left, height, width in pixels


@dataclass(frozen=True)
class GatingReport:
    score: GatingScore
    classifier: ClassifierResult
    figures: list[Path]
    unperturbed: dict[str, int]  # threat label -> examples the threat returned unchanged


def condition_labels(threats: Sequence[Threat]) -> list[str]:
    """One unique label per threat: its name, else its column where names repeat, then an ordinal if needed."""
    names = [threat.name for threat in threats]
    labels = [name if names.count(name) == 1 else threat.column for name, threat in zip(names, threats, strict=True)]
    seen: dict[str, int] = {}
    unique = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if labels.count(label) == 1 else f"{label}[{seen[label]}]")
    return unique


def require_gates(model: nn.Module, images: torch.Tensor, what: str) -> list[str]:
    """Names of the model's gated layers; ConfigError when it has none."""
    with torch.no_grad():
        model(images)
    outputs = read_gates(model)
    if not outputs:
        raise ConfigError(f"{what} has no experts to analyse: train a family with gates "
                          f"(e.g. rome-bench train --method rome+max; see rome-bench list families)")
    return [output.name for output in outputs]


def token_averaged_gates(model: nn.Module, images: torch.Tensor) -> np.ndarray:
    """(B, L, K): each gated layer's fused gates averaged over all tokens (prefix tokens included)."""
    with torch.no_grad():
        model(images)
        outputs = read_gates(model)
        return torch.stack([output.fused.float().mean(dim=1) for output in outputs], dim=1).cpu().numpy()


def perturb(threat: Threat, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, ids: list[int],
            seed: int = 0) -> torch.Tensor:
    """The threat's output for a batch, seeded by threat, first example and ``seed`` (seed 0: as ``eval``)."""
    if isinstance(threat, Clean):
        return images
    torch.manual_seed(batch_seed(threat.key, ids[0]) ^ seed)
    extra = {"example_ids": ids} if threat.uses_example_ids else {}
    return threat(model, images, labels, **extra).detach()


def collect_gates(model: nn.Module, threats: Sequence[Threat], data: LoadedDataset, example_ids: list[int],
                  batch_size: int, device: torch.device, progress: bool = True, seed: int = 0) -> GateCollection:
    """Token-averaged gates of every example under every applicable condition (clean and each threat)."""
    gates: dict[str, np.ndarray] = {}
    unperturbed: dict[str, int] = {}
    threat_labels: list[str] = []
    layers: list[str] = []
    for threat, label in zip(threats, condition_labels(threats), strict=True):
        if not threat.applicable(model):
            tqdm.write(f"{label}: not applicable to this model, left out of the analysis")
            continue
        parts, unchanged = [], 0
        for start in tqdm(range(0, len(example_ids), batch_size), desc=f"gates {label}", disable=not progress):
            ids = example_ids[start:start + batch_size]
            images, targets = fetch_batch(data.dataset, ids)
            images, targets = images.to(device), targets.to(device)
            perturbed = perturb(threat, model, images, targets, ids, seed)
            unchanged += int(((perturbed - images).flatten(1).abs().amax(dim=1) == 0).sum())
            parts.append(token_averaged_gates(model, perturbed))
            layers = layers or [output.name for output in read_gates(model)]
        gates[label] = np.concatenate(parts)
        if not isinstance(threat, Clean):
            threat_labels.append(label)
            unperturbed[label] = unchanged
    return GateCollection(list(gates), threat_labels, layers, list(example_ids), gates, unperturbed)


def routing_divergence(threat_gates: Mapping[str, np.ndarray]) -> tuple[float, np.ndarray]:
    """(score, per-layer (L,)): mean pairwise L2 distance of the threats' mean gate vectors, averaged over layers."""
    if len(threat_gates) < 2:
        raise ConfigError(f"routing divergence compares threats: it needs at least two besides clean, "
                          f"got {len(threat_gates)}; choose a suite with more threats (e.g. --suite seen)")
    means = np.stack([np.asarray(gates, dtype=np.float64).mean(axis=0) for gates in threat_gates.values()])
    distances = [np.linalg.norm(means[a] - means[b], axis=-1) for a, b in itertools.combinations(range(len(means)), 2)]
    per_layer = np.mean(distances, axis=0)
    return float(per_layer.mean()), per_layer


def _split_examples(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the training half and the held-out half of n examples (seeded)."""
    if n < 2:
        raise ConfigError(f"the held-out threat classifier needs at least 2 examples, got {n}; raise --n-examples")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    return order[: n // 2], order[n // 2:]


def _features(arrays: list[np.ndarray], positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flattened (L·K) gates of the given examples under every threat, and the threat index of each row."""
    features = np.concatenate([array[positions].reshape(len(positions), -1) for array in arrays])
    return features.astype(np.float64), np.repeat(np.arange(len(arrays)), len(positions))


def fit_logistic_regression(features: np.ndarray, targets: np.ndarray, classes: int,
                            l2: float = CLASSIFIER_L2) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (D, C) and bias (C) minimising mean cross-entropy + l2·‖W‖² (LBFGS from zeros: deterministic)."""
    x = torch.as_tensor(features, dtype=torch.float64)
    y = torch.as_tensor(targets, dtype=torch.long)
    weight = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=200, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def threat_classifier_accuracy(threat_gates: Mapping[str, np.ndarray], seed: int = 0,
                               l2: float = CLASSIFIER_L2) -> ClassifierResult:
    """Held-out accuracy of a logistic regression predicting the threat from the (N, L, K) gates; split by example."""
    arrays = [np.asarray(gates) for gates in threat_gates.values()]
    if len(arrays) < 2 or len({len(array) for array in arrays}) != 1:
        raise ConfigError("the threat classifier needs at least two threats with gates of the same examples")
    train, test = _split_examples(len(arrays[0]), seed)
    x_train, y_train = _features(arrays, train)
    x_test, y_test = _features(arrays, test)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std = np.where(std > CONSTANT_FEATURE_STD, std, 1.0)
    weight, bias = fit_logistic_regression((x_train - mean) / std, y_train, len(arrays), l2)
    logits = torch.as_tensor((x_test - mean) / std) @ weight + bias
    accuracy = float((logits.argmax(dim=1).numpy() == y_test).mean())  # argmax: ties go to the first threat
    return ClassifierResult(accuracy, 1.0 / len(arrays), len(train), len(test))


def scott_bandwidth(samples: np.ndarray) -> float:
    """Scott's rule for one dimension, σ̂·n^(-1/5), floored at MIN_BANDWIDTH (so constant samples work)."""
    samples = np.asarray(samples, dtype=np.float64)
    sigma = float(samples.std(ddof=1)) if len(samples) > 1 else 0.0
    return max(sigma * len(samples) ** (-1 / 5), MIN_BANDWIDTH)


def gaussian_kde(samples: np.ndarray, grid: np.ndarray, bandwidth: float | None = None) -> np.ndarray:
    """The Gaussian kernel density estimate of ``samples`` at the ``grid`` points (Scott's bandwidth by default)."""
    samples = np.asarray(samples, dtype=np.float64)
    if not len(samples):
        raise ValueError("a KDE needs at least one sample")
    h = scott_bandwidth(samples) if bandwidth is None else bandwidth
    density = np.zeros(len(grid))
    for chunk in np.array_split(samples, max(1, len(samples) // 2048)):  # bounded memory for large N
        z = (np.asarray(grid, dtype=np.float64)[:, None] - chunk[None, :]) / h
        density += np.exp(-0.5 * z * z).sum(axis=1)
    return density / (len(samples) * h * math.sqrt(2 * math.pi))


def _kde_grid(columns: list[np.ndarray]) -> np.ndarray:
    """Evaluation points covering every condition's samples with 3 bandwidths to spare, clipped to [0, 1]."""
    low = min(float(c.min()) - 3 * scott_bandwidth(c) for c in columns)
    high = max(float(c.max()) + 3 * scott_bandwidth(c) for c in columns)
    return np.linspace(max(low, 0.0), min(high, 1.0), KDE_POINTS)


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_gate_kdes(collection: GateCollection, out_dir: Path) -> list[Path]:
    """One PNG per expert: KDE of its final-layer token-averaged gate, one curve per condition (paper Fig. 3)."""
    final = {label: gates[:, -1, :] for label, gates in collection.gates.items()}  # (N, K) each
    experts = next(iter(final.values())).shape[1]
    paths = []
    for k in range(experts):
        columns = {label: gates[:, k] for label, gates in final.items()}
        grid = _kde_grid(list(columns.values()))
        figure = _new_figure(5.0, 3.4)
        try:
            axes = figure.subplots()
            for label, values in columns.items():
                axes.plot(grid, gaussian_kde(values, grid), label=label)
            axes.set_title(f"Expert {k + 1}: {collection.layers[-1]} (n={len(collection.example_ids)})")
            axes.set_xlabel("token-averaged gating weight")
            axes.set_ylabel("density")
            axes.grid(alpha=0.3)
            axes.legend(fontsize="small")
            path = Path(out_dir) / KDE_FILE.format(k=k + 1)
            _save_atomically(figure, path)
        finally:
            figure.clear()
        paths.append(path)
    return paths


def plot_mean_gates(collection: GateCollection, path: Path) -> Path:
    """Per gated layer, a conditions × experts heatmap of the mean token-averaged gate (paper Fig. A2 style)."""
    means = np.stack([collection.gates[label].mean(axis=0) for label in collection.labels])  # (C, L, K)
    conditions, layers, experts = means.shape
    columns = min(layers, 4)
    rows = math.ceil(layers / columns)
    figure = _new_figure(columns * (0.45 * experts + 1.0) + 1.5, rows * (0.28 * conditions + 0.8) + 0.8)
    try:
        grid_axes = figure.subplots(rows, columns, squeeze=False)
        image = None
        for index, axes in enumerate(grid_axes.flat):
            if index >= layers:
                axes.set_visible(False)
                continue
            image = axes.imshow(means[:, index, :], vmin=0.0, vmax=float(means.max()), cmap="viridis", aspect="auto")
            axes.set_title(collection.layers[index], fontsize="small")
            axes.set_xticks(range(experts), [str(k + 1) for k in range(experts)], fontsize="x-small")
            axes.set_yticks(range(conditions), collection.labels if index % columns == 0 else [], fontsize="x-small")
        figure.colorbar(image, ax=grid_axes, shrink=0.9, label="mean gating weight")  # type: ignore[arg-type]
        figure.supxlabel("expert")
        figure.suptitle(f"Mean token-averaged gates per condition (n={len(collection.example_ids)})")
        _save_atomically(figure, Path(path))
    finally:
        figure.clear()
    return Path(path)


def region_box(height: int, width: int, fraction: float = REGION_FRACTION) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the central square whose side is ``fraction`` of the shorter image side."""
    side = max(1, round(fraction * min(height, width)))
    return (height - side) // 2, (width - side) // 2, side, side


def region_mask(height: int, width: int, fraction: float = REGION_FRACTION) -> torch.Tensor:
    """(1, 1, H, W) mask: 1 inside the central square of ``region_box``, 0 elsewhere."""
    top, left, box_height, box_width = region_box(height, width, fraction)
    mask = torch.zeros(1, 1, height, width)
    mask[..., top:top + box_height, left:left + box_width] = 1.0
    return mask


def patch_gate_maps(model: nn.Module, images: torch.Tensor) -> tuple[np.ndarray, str]:
    """(B, K, g, g) final-layer fused gates per patch (the first T − g² prefix tokens dropped), and its name."""
    with torch.no_grad():
        model(images)
        final = read_gates(model)[-1]
    batch, tokens, experts = final.fused.shape
    grid = math.isqrt(tokens)
    patches = final.fused[:, tokens - grid * grid:].float()
    return patches.reshape(batch, grid, grid, experts).permute(0, 3, 1, 2).cpu().numpy(), final.name


def region_activation_maps(model: nn.Module, threats: Sequence[Threat], images: torch.Tensor,
                           labels: torch.Tensor, ids: list[int], seed: int = 0,
                           fraction: float = REGION_FRACTION) -> ActivationMaps:
    """Per condition, the final-layer gate maps of the images with the perturbation applied to the region only."""
    mask = region_mask(images.shape[-2], images.shape[-1], fraction).to(images)
    shown: dict[str, torch.Tensor] = {}
    maps: dict[str, np.ndarray] = {}
    layer = ""
    for threat, label in zip(threats, condition_labels(threats), strict=True):
        if not threat.applicable(model):
            continue
        perturbed = perturb(threat, model, images, labels, ids, seed)
        region = images + mask * (perturbed - images)
        maps[label], layer = patch_gate_maps(model, region)
        shown[label] = region.cpu()
    return ActivationMaps(shown, maps, layer, region_box(images.shape[-2], images.shape[-1], fraction))


def _outline(axes: Axes, box: tuple[float, float, float, float]) -> None:
    top, left, height, width = box
    axes.add_patch(Rectangle((left, top), width, height, fill=False, edgecolor="red", linewidth=1.2))


def plot_activation_maps(maps: ActivationMaps, path: Path) -> Path:
    """One row per (image, condition): the region-perturbed image, then one gate heatmap per expert (Fig. 7)."""
    labels = list(maps.maps)
    count, experts, grid = next(iter(maps.maps.values())).shape[:3]
    low = min(float(m.min()) for m in maps.maps.values())
    high = max(float(m.max()) for m in maps.maps.values())
    top, left, height, width = maps.box
    pixels = next(iter(maps.images.values())).shape[-2:]
    patch_box = (top * grid / pixels[0] - 0.5, left * grid / pixels[1] - 0.5, height * grid / pixels[0],
                 width * grid / pixels[1])
    figure = _new_figure(1.5 * (experts + 1) + 0.8, 1.45 * count * len(labels) + 0.6)
    try:
        grid_axes = figure.subplots(count * len(labels), experts + 1, squeeze=False)
        image = None
        for (index, label), row in zip(itertools.product(range(count), labels), grid_axes, strict=True):
            picture = maps.images[label][index].permute(1, 2, 0).clamp(0, 1).numpy()
            row[0].imshow(picture.squeeze(-1) if picture.shape[-1] == 1 else picture, cmap="gray")
            row[0].set_title(f"image {index + 1}: {label}", fontsize="small")
            _outline(row[0], (top - 0.5, left - 0.5, height, width))
            for k in range(experts):
                image = row[k + 1].imshow(maps.maps[label][index, k], vmin=low, vmax=high, cmap="viridis")
                row[k + 1].set_title(f"Expert {k + 1}", fontsize="small")
                _outline(row[k + 1], patch_box)
            for axes in row:
                axes.set_xticks([])
                axes.set_yticks([])
        figure.colorbar(image, ax=grid_axes, shrink=0.3, label="fused gating weight")  # type: ignore[arg-type]
        figure.suptitle(f"Per-patch expert activations, threat in the outlined region ({maps.layer})")
        _save_atomically(figure, Path(path))
    finally:
        figure.clear()
    return Path(path)


def score_collection(collection: GateCollection, model_hash: str, suite: str, data: LoadedDataset,
                     seed: int = 0) -> tuple[GatingScore, ClassifierResult]:
    """The routing-divergence score and held-out classifier of a collection, ready for the store."""
    divergence, per_layer = routing_divergence(collection.threat_gates())
    classifier = threat_classifier_accuracy(collection.threat_gates(), seed)
    score = GatingScore(
        model_hash=model_hash, suite=suite, dataset=data.fingerprint, dataset_name=data.info.name,
        n_examples=len(collection.example_ids), divergence=divergence,
        classifier_accuracy=classifier.accuracy, chance=classifier.chance,
        per_layer={name: float(value) for name, value in zip(collection.layers, per_layer, strict=True)},
        threats=list(collection.threat_labels), created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return score, classifier


def analyse_run(run: LoadedRun, suite: str, threats: Sequence[Threat], data: LoadedDataset, example_ids: list[int],
                store: ResultStore, batch_size: int, device: torch.device, out_dir: Path, progress: bool = True,
                seed: int = 0, map_images: int = 4) -> GatingReport:
    """Collect gates, score and store them, and write the KDE and activation-map figures of a loaded run."""
    images, labels = fetch_batch(data.dataset, example_ids[:max(1, map_images)])
    images, labels = images.to(device), labels.to(device)
    require_gates(run.model, images[:1], f"run {run.source} ({run.method})")
    collection = collect_gates(run.model, threats, data, example_ids, batch_size, device, progress, seed)
    score, classifier = score_collection(collection, run.model_hash, suite, data, seed)
    store.record_gating_score(score)
    figures = [*plot_gate_kdes(collection, out_dir), plot_mean_gates(collection, Path(out_dir) / MEAN_GATES_FILE)]
    if map_images > 0:
        maps = region_activation_maps(run.model, threats, images, labels, example_ids[:map_images], seed)
        figures.append(plot_activation_maps(maps, Path(out_dir) / MAPS_FILE))
    return GatingReport(score, classifier, figures, collection.unperturbed)


def render_report(report: GatingReport) -> str:
    """The score table printed by ``rome-bench analyze gating``."""
    score, classifier = report.score, report.classifier
    lines = [f"gating analysis: suite '{score.suite}' on {score.dataset_name}, n = {score.n_examples} examples, "
             f"threats: {', '.join(score.threats)}", "",
             "| Gated layer | Routing divergence |", "|---|---:|"]
    lines += [f"| {name} | {value:.4f} |" for name, value in score.per_layer.items()]
    lines += [f"| **mean over layers** | **{score.divergence:.4f}** |", "",
              f"held-out threat classifier: {100 * score.classifier_accuracy:.1f}% accuracy "
              f"(chance {100 * score.chance:.1f}%; trained on {classifier.train_examples} examples, "
              f"tested on {classifier.test_examples} others, {len(score.threats)} threats each)"]
    lines += [f"note: {label} returned {count} of {score.n_examples} examples unperturbed (e.g. AutoAttack where it "
              f"fails), so they carry clean gates; --suite seen-pgd perturbs every example"
              for label, count in report.unperturbed.items() if count]
    lines += ["", "figures:", *(f"  {path}" for path in report.figures)]
    return "\n".join(lines)

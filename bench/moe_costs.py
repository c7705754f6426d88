"""Table 6 of the paper (computational cost) for this code: the same backbone with no experts (``plain``), RoME's
gated LoRA experts (``rome``), a conventional MoE of K FFN experts (``moe-ffn``) and gated bottleneck adapters
(``adapter``), built from one preset and seed and measured side by side in one process.

    python bench/moe_costs.py --preset smoke --threads 1                      # vit_smoke, CPU, seconds
    python bench/moe_costs.py --preset cifar10 --backbone vit_small --batch-size 8 --repeats 5 --threads 1
    python bench/moe_costs.py --preset cifar10 --device cuda --format md      # the paper's setting (ViT-B, 65 tokens)
    python bench/moe_costs.py --preset smoke --variants plain,rome --profile  # where RoME's step time goes
    python bench/moe_costs.py --preset cifar10 --gate-hidden 0 --variants plain,rome   # single-Linear gates

On a CPU shared with other work use ``--threads 1``: with several threads every op waits for its slowest thread,
so one descheduled thread stalls the whole model and the repeats scatter by several times.

Variants (K, r, gate_hidden and gating from the preset):

* ``plain``: the backbone alone (the paper's RANDOM baseline has the same architecture).
* ``rome``: K gated LoRA experts of rank r on ``attn.qkv`` and ``attn.proj`` of every block.
* ``moe-ffn``: K FFN experts replacing every block's MLP (``expert_type=ffn``), dense soft routing (all K computed,
  so K× the MLP's FLOPs).
* ``moe-ffn-top2``: the same experts with sparse top-2 dispatch (``top_k=2``: each token runs its 2 largest-gated
  experts only): the paper's MoE (FFN) row, 9.29G = 1.66× RANDOM, is top-2 of 4. Its FLOPs are counted on the
  tokens actually dispatched; the per-expert index/scatter loop costs time that FLOPs do not show.
* ``adapter``: K gated Houlsby adapters (bottleneck r) after ``attn.qkv`` and ``attn.proj``.
* ``rome-split`` (not in the default set): ``rome`` with the candidate forward of :func:`split_lora_forward`, a local
  copy of ``LoRAExpertMixture.forward`` without weight/activation concatenations, to measure that change.

Columns:

* ``params (M)``: all parameters (backbone, experts, gates), millions.
* ``GFLOPs/img``: forward FLOPs for one image from ``torch.utils.flop_counter`` (2 FLOPs per multiply-add of the
  matmuls and attention; the paper's Table 6 "FLOPs" are multiply-adds: its 5.61G for ViT-B at 65 tokens is our
  11.05 GFLOPs).
* ``step ms``: one training step on a batch: forward, cross-entropy on the *clean* images, backward, AdamW step
  (``build_optimizer``: fused AdamW). An adversarial step adds ``steps`` forward+backward passes for the attack,
  which cost about the same ratio to plain as this step does; the paper's "train time / iter" is that whole step.
* ``ms/img batched``: inference latency per image at ``--batch-size`` (no grad, eval mode, parameters frozen as
  evaluation loads a model: RoME then reuses its joined [W, B] weights).
* ``ms batch-1``: inference latency of one image (the mean of ``--single-iters`` calls per repeat).

Timings alternate between the variants in every repeat (plain, rome, moe-ffn, adapter, plain, …) so that drift in
machine load hits them all alike. A value is the median over repeats with its interquartile range in brackets; the
``×`` ratio beside it is the median of the per-repeat ratios to plain measured in the same round.

``--profile`` runs ``torch.profiler`` (CPU, and CUDA on a GPU) over a few train steps of ``plain`` and ``rome`` and
prints where the step time goes: forward / backward / optimizer, and within forward and backward the time of the
expert-carrying layers (``qkv``/``proj``: the plain Linear vs RoME's LoRA mixture including its gate) and of the
gates alone. Backward ops are attributed to the forward op that created them through the autograd sequence number.
Then the per-op time inside those layers for both models, and RoME's top ops by self time next to plain's. Profiled
times carry the profiler's per-op overhead (larger for the variant with more small ops); use them for shares, and
the table above for ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import time
import types
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.flop_counter import FlopCounterMode

from rome_bench.config import RunConfig
from rome_bench.data import DATASETS, DatasetInfo
from rome_bench.models import create_model
from rome_bench.models.rome import ExpertGate, LoRAExpertMixture, RomeOptions
from rome_bench.presets import preset
from rome_bench.training.optim import build_optimizer

EXPERT_VARIANTS: dict[str, dict[str, object]] = {
    "rome": {"expert_type": "lora", "targets": ("qkv", "proj")},
    "moe-ffn": {"expert_type": "ffn", "targets": ("mlp",)},
    "moe-ffn-top2": {"expert_type": "ffn", "targets": ("mlp",), "top_k": 2},
    "adapter": {"expert_type": "adapter", "targets": ("qkv", "proj")},
    "rome-split": {"expert_type": "lora", "targets": ("qkv", "proj")},
}
DEFAULT_VARIANTS: tuple[str, ...] = ("plain", "rome", "moe-ffn", "moe-ffn-top2", "adapter")
# Table 6 of the paper (ViT-B, CIFAR-10 geometry, GPU): params (M), GMACs, train s/iter, latency ms/img
PAPER_TABLE6: dict[str, tuple[float, float, float, float]] = {
    "plain": (85.15, 5.61, 3.05, 0.53), "moe-ffn-top2": (255.20, 9.29, 8.38, 1.36), "rome": (88.85, 5.84, 3.56, 0.60),
}
LABEL = "moe_costs:"  # prefix of the profiler ranges this script opens


# ------------------------------------------------------------------------------------------------ models


def dataset_info(config: RunConfig) -> DatasetInfo:
    """The preset's dataset geometry from the registry, without loading any data."""
    meta = DATASETS.entry(config.data.dataset).metadata
    classes = int(meta["num_classes"])
    return DatasetInfo(config.data.dataset, classes, int(meta["image_size"]), (0.5,) * 3, (0.25,) * 3,
                       tuple(map(str, range(classes))))


def build_variant(config: RunConfig, info: DatasetInfo, variant: str, device: torch.device) -> nn.Module:
    """One variant, its backbone initialised from ``config.train.seed`` (identical across variants)."""
    options = {} if variant == "plain" else {**config.model.options, **EXPERT_VARIANTS[variant]}
    model_config = dataclasses.replace(config.model, family="plain" if variant == "plain" else "rome", options=options)
    torch.manual_seed(config.train.seed)
    model = create_model(model_config, info).to(device)
    if variant == "rome-split":
        for module in model.modules():
            if isinstance(module, LoRAExpertMixture):
                module.forward = types.MethodType(split_lora_forward, module)  # type: ignore[method-assign]
    return model


def split_lora_forward(self: LoRAExpertMixture, hidden_states: torch.Tensor) -> torch.Tensor:
    """Candidate ``LoRAExpertMixture.forward``: W h + b and B·mixed as the base layer's matmul plus a thin ``addmm``.

    The shipped forward builds [W | B] (d_out × (d_in + K·r)) and [h | mixed] in every forward to run one matmul;
    the concatenations copy the weight and the activations, and the weight's gradient comes back as a strided slice
    of the fused gradient, which AccumulateGrad copies again. Here ``addmm(W h + b, mixed, Bᵀ)`` computes the same
    sum with no copies. The down projection (A and the gates' first layers in one matmul) is unchanged.
    """
    shape = hidden_states.shape
    tokens_in = hidden_states.reshape(shape[0], -1, shape[-1])
    batch, tokens, _ = tokens_in.shape
    down, gate_first = self._down(tokens_in)
    gates = self.gate.from_first_layer(gate_first)
    mixed = (down.view(batch, tokens, self.num_experts, self.rank) * gates.unsqueeze(-1)).reshape(batch * tokens, -1)
    output = torch.addmm(self.base(tokens_in).flatten(0, 1), mixed, self.lora_B.t())
    return output.reshape(*shape[:-1], output.shape[-1])


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def forward_flops(model: nn.Module, images: torch.Tensor) -> int:
    """Forward FLOPs of ``images`` (2 per multiply-add) counted by ``FlopCounterMode``."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(images)
    return counter.get_total_flops()


# ------------------------------------------------------------------------------------------------ timing


@dataclass
class Timing:
    """Seconds per repeat of one job."""

    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def quartiles(self) -> tuple[float, float]:
        if len(self.samples) < 2:
            return self.samples[0], self.samples[0]
        low, _, high = statistics.quantiles(self.samples, n=4, method="inclusive")
        return low, high


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(job: Callable[[], object], device: torch.device, iterations: int = 1) -> float:
    """Mean seconds of ``iterations`` calls of ``job``."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iterations):
        job()
    synchronize(device)
    return (time.perf_counter() - start) / iterations


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               labels: torch.Tensor) -> Callable[[], None]:
    """Forward, clean cross-entropy, backward, AdamW step (the inner training step without the attack)."""
    def step() -> None:
        with record_function(LABEL + "phase:forward"):
            loss = F.cross_entropy(model(images), labels)
        with record_function(LABEL + "phase:backward"):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with record_function(LABEL + "phase:optimizer"):
            optimizer.step()

    return step


def inference(model: nn.Module, images: torch.Tensor) -> Callable[[], None]:
    """One no-grad forward of the model frozen, as evaluation loads it (frozen-model shortcuts apply)."""
    def run() -> None:
        trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
        model.requires_grad_(False)
        try:
            with torch.no_grad():
                model(images)
        finally:
            for parameter in trainable:
                parameter.requires_grad_(True)

    return run


def alternate(jobs: dict[str, Callable[[], object]], repeats: int, warmup: int, device: torch.device,
              iterations: int = 1) -> dict[str, Timing]:
    """Time every job once per repeat, cycling through the jobs, after ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for job in jobs.values():
            job()
    samples: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(repeats):
        for name, job in jobs.items():
            samples[name].append(timed(job, device, iterations))
    return {name: Timing(values) for name, values in samples.items()}


def paired_ratio(timing: Timing, reference: Timing) -> float:
    """Median over repeats of this job's time over the reference's time in the same round."""
    return statistics.median(a / b for a, b in zip(timing.samples, reference.samples, strict=True))


# ------------------------------------------------------------------------------------------------ tables


def render(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    """A right-aligned text table (first column left-aligned), or a markdown table."""
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":--"] + ["--:"] * (len(header) - 1)) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths,
                                                                                                        strict=True)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def timing_cell(timing: Timing, scale: float, digits: int) -> str:
    low, high = timing.quartiles
    return f"{timing.median * scale:.{digits}f} [{low * scale:.{digits}f}-{high * scale:.{digits}f}]"


def cost_table(names: list[str], params: dict[str, int], flops: dict[str, int], timings: dict[str, dict[str, Timing]],
               batch: int, markdown: bool) -> str:
    """Rows = variants; each measure beside its ratio to plain (or to the first variant without plain)."""
    reference = "plain" if "plain" in names else names[0]
    columns: list[tuple[str, int]] = [("step ms", 1), (f"ms/img (batch {batch})", 3), ("ms batch-1", 2)]
    scales = {"step ms": 1e3, f"ms/img (batch {batch})": 1e3 / batch, "ms batch-1": 1e3}
    header = ["variant", "params (M)", "×", "GFLOPs/img", "×"]
    for title, _ in columns:
        header += [f"{title} [IQR]", "×"]
    rows = []
    for name in names:
        row = [name, f"{params[name] / 1e6:.3f}", f"{params[name] / params[reference]:.3f}×",
               f"{flops[name] / 1e9:.4f}", f"{flops[name] / flops[reference]:.3f}×"]
        for title, digits in columns:
            timing = timings[title][name]
            row += [timing_cell(timing, scales[title], digits),
                    f"{paired_ratio(timing, timings[title][reference]):.2f}×"]
        rows.append(row)
    return render(header, rows, markdown)


def paper_line() -> str:
    """The paper's Table 6 as ratios to RANDOM (params, FLOPs, train time/iter, latency/img), for comparison."""
    reference = PAPER_TABLE6["plain"]
    parts = [f"{name} " + " ".join(f"{value / base:.2f}×" for value, base in zip(row, reference, strict=True))
             for name, row in PAPER_TABLE6.items() if name != "plain"]
    return "paper Table 6 (ViT-B, 65 tokens, GPU; params FLOPs train-time latency vs RANDOM): " + "; ".join(parts)


# ------------------------------------------------------------------------------------------------ profiling


BACKWARD_PREFIX = "autograd::engine::evaluate_function: "
REGIONS: tuple[str, ...] = ("target", "gate", "accumulate-grad", "rest")


@contextlib.contextmanager
def labelled_layers(model: nn.Module, targets: tuple[str, ...]) -> Iterator[None]:
    """Open profiler ranges around the ``attn.<target>`` layers (plain Linear or expert mixture) and the gates."""
    stack: list[record_function] = []

    def enter(label: str) -> Callable[..., None]:
        def hook(*_: object) -> None:
            scope = record_function(LABEL + label)
            scope.__enter__()
            stack.append(scope)

        return hook

    def leave(*_: object) -> None:
        stack.pop().__exit__(None, None, None)

    handles = []
    wrapped = []
    for path, module in model.named_modules():
        if any(path.endswith(f"attn.{target}") for target in targets):
            handles += [module.register_forward_pre_hook(enter("target")), module.register_forward_hook(leave)]
        if isinstance(module, LoRAExpertMixture):  # its gate is computed by from_first_layer, not called
            gate = module.gate
            gate.from_first_layer = labelled_call(gate.from_first_layer, LABEL + "gate")  # type: ignore[method-assign]
            wrapped.append(gate)
        elif isinstance(module, ExpertGate):
            handles += [module.register_forward_pre_hook(enter("gate")), module.register_forward_hook(leave)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for gate in wrapped:
            del gate.from_first_layer  # the instance attribute; the class method shows through again


def labelled_call(function: Callable[..., torch.Tensor], label: str) -> Callable[..., torch.Tensor]:
    def call(*args: object) -> torch.Tensor:
        with record_function(label):
            return function(*args)

    return call


@dataclass
class StepProfile:
    """Profiled time per train step (µs): by (phase, region), by op inside the target layers, and self time by op."""

    phases: dict[tuple[str, str], float]
    layer_ops: dict[str, float]
    self_ops: dict[str, float]

    def phase(self, phase: str, regions: Iterable[str] = REGIONS) -> float:
        return sum(self.phases.get((phase, region), 0.0) for region in regions)

    @property
    def total(self) -> float:
        return sum(self.phases.values())


def profile_steps(steps: dict[str, Callable[[], None]], models: dict[str, nn.Module], targets: tuple[str, ...],
                  rounds: int, device: torch.device) -> dict[str, StepProfile]:
    """Profile ``rounds`` rounds of one train step per variant (alternating, after one unprofiled round)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with contextlib.ExitStack() as stack:
        for name in steps:
            models[name].train()
            stack.enter_context(labelled_layers(models[name], targets))
        for step in steps.values():
            step()
        synchronize(device)
        with profile(activities=activities) as profiler:
            for _ in range(rounds):
                for name, step in steps.items():
                    with record_function(LABEL + "variant:" + name):
                        step()
                    synchronize(device)
    return attribute(list(profiler.events()), rounds, device.type == "cuda")


def labels(event: object) -> list[str]:
    """This script's ranges enclosing an event, nearest first (without the prefix)."""
    found = []
    parent = event.cpu_parent  # type: ignore[attr-defined]
    while parent is not None:
        if parent.name.startswith(LABEL):
            found.append(parent.name[len(LABEL):])
        parent = parent.cpu_parent
    return found


def event_time(event: object, on_device: bool) -> float:
    """Inclusive µs: CPU time, or the device time of the kernels of the event and its descendants."""
    if not on_device:
        return event.cpu_time_total  # type: ignore[attr-defined]
    return event.self_device_time_total + sum(event_time(child, True)  # type: ignore[attr-defined]
                                              for child in event.cpu_children)  # type: ignore[attr-defined]


def attribute(events: list, rounds: int, on_device: bool) -> dict[str, StepProfile]:
    """Split each variant's top-level ops (those directly under one of this script's ranges) by phase and region.

    A forward op's region is the nearest ``target``/``gate`` range around it; a backward node (an
    ``evaluate_function`` event) gets the region of the forward op with the same autograd sequence number.
    """
    chains = [labels(event) for event in events]
    regions_of_sequence: dict[int, str] = {}
    for event, chain in zip(events, chains, strict=True):
        if event.sequence_nr >= 0 and "phase:forward" in chain and not event.name.startswith(LABEL):
            regions_of_sequence[event.sequence_nr] = next((n for n in chain if n in ("target", "gate")), "rest")
    phases: dict[str, dict[tuple[str, str], float]] = defaultdict(lambda: defaultdict(float))
    layer_ops: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    self_ops: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for event, chain in zip(events, chains, strict=True):
        variant = next((n.split(":", 1)[1] for n in chain if n.startswith("variant:")), None)
        phase = next((n.split(":", 1)[1] for n in chain if n.startswith("phase:")), None)
        if event.name.startswith(LABEL) or variant is None or phase is None:
            continue
        self_time = event.self_device_time_total if on_device else event.self_cpu_time_total
        self_ops[variant][event.name] += self_time / rounds
        if event.cpu_parent is not None and not event.cpu_parent.name.startswith(LABEL):
            continue  # not top-level: counted inside its parent
        if event.name.startswith(BACKWARD_PREFIX):
            node = event.name[len(BACKWARD_PREFIX):]
            region = "accumulate-grad" if "AccumulateGrad" in node else regions_of_sequence.get(event.sequence_nr,
                                                                                              "rest")
            op = f"bwd {node}"
        else:
            region = next((n for n in chain if n in ("target", "gate")), "rest")
            op = f"fwd {event.name}"
        duration = event_time(event, on_device) / rounds
        phases[variant][phase, region] += duration
        if region in ("target", "gate"):
            layer_ops[variant][("gate: " if region == "gate" else "") + op] += duration
    return {name: StepProfile(dict(phases[name]), dict(layer_ops[name]), dict(self_ops[name])) for name in phases}


def breakdown_table(profiles: dict[str, StepProfile], unprofiled: dict[str, float], targets: tuple[str, ...],
                    markdown: bool) -> str:
    """Phase × region times per step for each profiled variant, and each variant's difference to plain."""
    layers = "+".join(targets)
    rows_spec: list[tuple[str, Callable[[StepProfile], float]]] = [
        (f"forward: {layers} layers (incl. gates)", lambda p: p.phase("forward", ("target", "gate"))),
        ("forward:   of which gates", lambda p: p.phase("forward", ("gate",))),
        ("forward: rest of model + loss", lambda p: p.phase("forward", ("rest",))),
        (f"backward: {layers} layers (incl. gates)", lambda p: p.phase("backward", ("target", "gate"))),
        ("backward:   of which gates", lambda p: p.phase("backward", ("gate",))),
        ("backward: AccumulateGrad", lambda p: p.phase("backward", ("accumulate-grad",))),
        ("backward: rest of model", lambda p: p.phase("backward", ("rest",))),
        ("optimizer: AdamW step", lambda p: p.phase("optimizer")),
        ("total (profiled)", lambda p: p.total),
    ]
    names = list(profiles)
    reference = profiles["plain"]
    others = [name for name in names if name != "plain"]
    header = ["ms / step", *names] + [f"{name} − plain" for name in others] + [f"share of {n} − plain" for n in others]
    rows = []
    for title, measure in rows_spec:
        values = {name: measure(profile_) / 1e3 for name, profile_ in profiles.items()}
        deltas = [values[name] - values["plain"] for name in others]
        overheads = [(profiles[name].total - reference.total) / 1e3 for name in others]
        shares = [f"{d / o:.0%}" if o > 0 and "of which" not in title and "total" not in title else ""
                  for d, o in zip(deltas, overheads, strict=True)]
        rows.append([title, *(f"{values[n]:.2f}" for n in names), *(f"{d:+.2f}" for d in deltas), *shares])
    if unprofiled:
        values = {name: unprofiled[name] * 1e3 for name in names}
        rows.append(["total (unprofiled median)", *(f"{values[n]:.2f}" for n in names),
                     *(f"{values[n] - values['plain']:+.2f}" for n in others), *([""] * len(others))])
    return render(header, rows, markdown)


def op_table(profiles: dict[str, StepProfile], field: str, limit: int, sort_by: str, markdown: bool) -> str:
    """Per-op ms/step of one field of the profiles, the ``limit`` largest for ``sort_by``."""
    tables = {name: getattr(profile_, field) for name, profile_ in profiles.items()}
    ops = sorted(set().union(*tables.values()), key=lambda op: -tables[sort_by].get(op, 0.0))[:limit]
    names = list(profiles)
    header = ["op", *(f"{name} ms" for name in names)] + [f"{n} − plain" for n in names if n != "plain"]
    rows = [[op, *(f"{tables[n].get(op, 0.0) / 1e3:.3f}" for n in names),
             *(f"{(tables[n].get(op, 0.0) - tables['plain'].get(op, 0.0)) / 1e3:+.3f}" for n in names if n != "plain")]
            for op in ops]
    return render(header, rows, markdown)


# ------------------------------------------------------------------------------------------------ main


def check_split(models: dict[str, nn.Module], images: torch.Tensor) -> float:
    """Max |Δ| between ``rome`` and ``rome-split`` outputs with the same random (non-zero) expert weights."""
    rome, split = models["rome"], models["rome-split"]
    generator = torch.Generator().manual_seed(1)
    saved = {name: tensor.clone() for name, tensor in rome.state_dict().items()}
    with torch.no_grad():
        for name, parameter in rome.named_parameters():
            if name.endswith("lora_B"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
        split.load_state_dict(rome.state_dict())
        difference = (rome.eval()(images) - split.eval()(images)).abs().max().item()
        rome.load_state_dict(saved)
        split.load_state_dict(saved)
    return difference


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--backbone", default=None, help="override the preset's backbone (e.g. vit_small)")
    parser.add_argument("--num-experts", type=int, default=None, help="override the preset's K")
    parser.add_argument("--rank", type=int, default=None, help="override the preset's r")
    parser.add_argument("--gate-hidden", type=int, default=None,
                        help="override the gating MLPs' hidden width (0 = one Linear d→K per branch)")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma-separated, from plain,{','.join(EXPERT_VARIANTS)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--single-iters", type=int, default=10, help="batch-1 calls averaged per repeat")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--format", choices=("text", "md"), default="text")
    parser.add_argument("--profile", action="store_true", help="profile train steps of plain and rome (+rome-split)")
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--skip-timing", action="store_true", help="only params, FLOPs and (with --profile) profile")
    args = parser.parse_args()
    args.variants = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = [name for name in args.variants if name != "plain" and name not in EXPERT_VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from plain, {', '.join(EXPERT_VARIANTS)}")
    if args.profile and not {"plain", "rome"} <= set(args.variants):
        parser.error("--profile needs the variants plain and rome")
    return args


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = preset(args.preset)
    if args.backbone:
        config.model.backbone = args.backbone
    overrides = {"num_experts": args.num_experts, "rank": args.rank, "gate_hidden": args.gate_hidden}
    config.model.options = {**config.model.options, **{k: v for k, v in overrides.items() if v is not None}}
    info = dataset_info(config)
    models = {name: build_variant(config, info, name, device) for name in args.variants}
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch_size, 3, info.image_size, info.image_size, generator=generator).to(device)
    labels_ = torch.randint(info.num_classes, (args.batch_size,), generator=generator).to(device)
    single = images[:1]
    rome = RomeOptions(**config.model.options)
    tokens = (info.image_size // config.model.patch_size) ** 2 + 1
    print(f"preset {args.preset}: {config.model.backbone}, patch {config.model.patch_size} on {info.image_size}px "
          f"({tokens} tokens), K={rome.num_experts} r={rome.rank} gate_hidden={rome.gate_hidden} gating={rome.gating}; "
          f"device {device}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"median of {args.repeats} alternating repeats [IQR]; train step = clean cross-entropy + AdamW")
    if "rome-split" in models and "rome" in models:
        print(f"rome-split vs rome, same random experts: max |Δ logits| = {check_split(models, images):.2e}")

    params = {name: count_parameters(model) for name, model in models.items()}
    flops = {name: forward_flops(model.eval(), single) for name, model in models.items()}
    optimizers = {name: build_optimizer(model.parameters(), config.train) for name, model in models.items()}
    steps = {name: train_step(model, optimizers[name], images, labels_) for name, model in models.items()}
    timings: dict[str, dict[str, Timing]] = {}
    if not args.skip_timing:
        for model in models.values():
            model.train()
        timings["step ms"] = alternate(steps, args.repeats, args.warmup, device)
        for model in models.values():
            model.eval()
        timings[f"ms/img (batch {args.batch_size})"] = alternate(
            {name: inference(model, images) for name, model in models.items()}, args.repeats, args.warmup, device)
        timings["ms batch-1"] = alternate({name: inference(model, single) for name, model in models.items()},
                                          args.repeats, args.warmup, device, args.single_iters)
        print(cost_table(args.variants, params, flops, timings, args.batch_size, args.format == "md"))
        print(paper_line())
    else:
        for name in args.variants:
            print(f"{name}: {params[name] / 1e6:.3f} M params, {flops[name] / 1e9:.4f} GFLOPs/img")

    if args.profile:
        profiled = [name for name in args.variants if name in ("plain", "rome", "rome-split")]
        targets: tuple[str, ...] = EXPERT_VARIANTS["rome"]["targets"]  # type: ignore[assignment]
        found = profile_steps({name: steps[name] for name in profiled}, models, targets, args.profile_steps, device)
        profiles = {name: found[name] for name in profiled}
        unprofiled = {name: timings["step ms"][name].median for name in profiled} if timings else {}
        markdown = args.format == "md"
        clock = "device" if device.type == "cuda" else "CPU"
        print(f"\nprofile: {args.profile_steps} alternating train steps per variant, {clock} time per step; "
              f"layers = attn.{{{','.join(targets)}}} of every block")
        print(breakdown_table(profiles, unprofiled, targets, markdown))
        print("\nops inside those layers (fwd: op called in the layer's forward; bwd: autograd node of such an op)")
        print(op_table(profiles, "layer_ops", 20, "rome", markdown))
        print("\ntop ops by self time in rome, whole step")
        print(op_table(profiles, "self_ops", 15, "rome", markdown))


if __name__ == "__main__":
    main()

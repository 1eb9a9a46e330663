"""What a GPU run will cost before anyone books it: per phase, the GPUs it holds, wall-clock hours, GPU-hours and
money at a price per GPU-hour, each from the plan's numbers and a rate that names its source (a published figure,
or a value set in configs/cluster.yaml and flagged as such). After a real run, the measured hours stand in for the
estimate with the ratio measured / estimated beside them.

Plain arithmetic on numbers handed in: the training stage gathers them from the settings (estimate.py), the
commands and the validation report show the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from sftc_core.text import markdown_table

GB = 1e9


@dataclass(frozen=True)
class Rate:
    """A throughput the estimate rests on: its value, unit and where the figure comes from."""

    value: float
    unit: str
    source: str
    published: bool  # False: a configured value nobody has measured for this run

    @property
    def label(self) -> str:
        kind = "published" if self.published else "configured, not measured"
        return f"{self.value:,.4g} {self.unit} ({kind}: {self.source})"


@dataclass(frozen=True)
class Phase:
    """One step of the GPU run: `gpus` held for `wall_hours` (None when it cannot be estimated, `unknown` says why)."""

    name: str
    gpus: int
    wall_hours: float | None
    basis: tuple[str, ...]  # the arithmetic, one line each
    rates: tuple[str, ...]  # the names of the rates it rests on
    unknown: str = ""
    measured_wall_hours: float | None = None
    measured_gpus: int | None = None

    @property
    def gpu_hours(self) -> float | None:
        return None if self.wall_hours is None else self.gpus * self.wall_hours

    @property
    def measured_gpu_hours(self) -> float | None:
        if self.measured_wall_hours is None:
            return None
        return (self.measured_gpus or self.gpus) * self.measured_wall_hours

    @property
    def ratio(self) -> float | None:
        """Measured GPU-hours over estimated ones (None until a real run measured them)."""
        if self.measured_gpu_hours is None or not self.gpu_hours:
            return None
        return self.measured_gpu_hours / self.gpu_hours

    def actual_gpu_hours(self) -> float | None:
        """The measured GPU-hours where a real run gave them, else the estimate."""
        return self.measured_gpu_hours if self.measured_gpu_hours is not None else self.gpu_hours

    def actual_wall_hours(self) -> float | None:
        return self.measured_wall_hours if self.measured_wall_hours is not None else self.wall_hours


@dataclass(frozen=True)
class Estimate:
    phases: tuple[Phase, ...]
    rates: dict[str, Rate]
    price_per_gpu_hour: float
    currency: str
    price_source: str
    uncertainty_factor: float  # the real figures are expected within this factor either way

    def _total(self, values: list[float | None]) -> float:
        return sum(v for v in values if v is not None)

    @property
    def gpu_hours(self) -> float:
        return self._total([p.actual_gpu_hours() for p in self.phases])

    @property
    def wall_hours(self) -> float:
        return self._total([p.actual_wall_hours() for p in self.phases])

    @property
    def cost(self) -> float:
        return self.gpu_hours * self.price_per_gpu_hour

    @property
    def estimated_gpu_hours(self) -> float:
        return self._total([p.gpu_hours for p in self.phases])

    @property
    def unknown(self) -> list[str]:
        return [f"{p.name}: {p.unknown}" for p in self.phases if p.wall_hours is None]

    def measured(self, name: str, wall_hours: float, gpus: int | None = None) -> Estimate:
        """This estimate with a real run's hours for the phase `name`."""
        if name not in {p.name for p in self.phases}:
            raise ValueError(f"no phase {name!r} in the estimate (phases: {', '.join(p.name for p in self.phases)})")
        phases = tuple(
            replace(p, measured_wall_hours=wall_hours, measured_gpus=gpus) if p.name == name else p for p in self.phases
        )
        return replace(self, phases=phases)

    def range(self, value: float) -> tuple[float, float]:
        return value / self.uncertainty_factor, value * self.uncertainty_factor

    def as_dict(self) -> dict:
        """The JSON of `gpu_plan.estimate`: totals (measured hours where a run gave them), their range, each phase."""
        price = self.price_per_gpu_hour
        phases = []
        for p in self.phases:
            entry = {
                "name": p.name,
                "gpus": p.gpus,
                "wall_hours": _round(p.wall_hours),
                "gpu_hours": _round(p.gpu_hours),
                "cost": _round(None if p.gpu_hours is None else p.gpu_hours * price),
                "basis": list(p.basis),
                "rates": list(p.rates),
            }
            if p.unknown:
                entry["unknown"] = p.unknown
            if p.measured_wall_hours is not None:
                entry["measured"] = {
                    "wall_hours": _round(p.measured_wall_hours),
                    "gpus": p.measured_gpus or p.gpus,
                    "gpu_hours": _round(p.measured_gpu_hours),
                    "cost": _round(p.measured_gpu_hours * price),
                    "ratio": _round(p.ratio),
                }
            phases.append(entry)
        measured = any(p.measured_wall_hours is not None for p in self.phases)
        return {
            "gpu_hours": _round(self.gpu_hours),
            "wall_hours": _round(self.wall_hours),
            "cost": _round(self.cost),
            "currency": self.currency,
            "price_per_gpu_hour": price,
            "price_source": self.price_source,
            "measured": measured,
            "estimated_gpu_hours": _round(self.estimated_gpu_hours),
            "uncertainty_factor": self.uncertainty_factor,
            "range": {
                "gpu_hours": [_round(v) for v in self.range(self.gpu_hours)],
                "cost": [_round(v) for v in self.range(self.cost)],
            },
            "phases": phases,
            "rates": {
                name: {"value": r.value, "unit": r.unit, "source": r.source, "published": r.published}
                for name, r in self.rates.items()
            },
            "not_estimated": self.unknown,
        }


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else float(f"{value:.{digits + 1}g}")


def _hours(seconds: float) -> float:
    return seconds / 3600


def transfer_phase(name: str, read_bytes: float, written_bytes: float, gpus: int, storage: Rate, what: str) -> Phase:
    """A step bound by the data volume (conversion, import, export): its bytes through the storage of one node."""
    seconds = (read_bytes + written_bytes) / (storage.value * GB)
    basis = (
        f"{what}: reads {read_bytes / GB:,.0f} GB and writes {written_bytes / GB:,.0f} GB "
        f"at {storage.value:g} GB/s = {seconds / 3600:.2f} h on one node",
        f"{gpus} GPU(s) held: the step takes a whole node of the gpu pool",
    )
    return Phase(name, gpus, _hours(seconds), basis, ("storage",))


def finetune_phase(
    *,
    global_batch_size: int,
    seq_length: int,
    steps: int,
    nodes: int,
    gpus_per_node: int,
    layout: str,
    finetune: Rate,
    storage: Rate,
    checkpoint_bytes: float,
    validation_runs: int,
    validation_batches: int | None,
    example_tokens: tuple[float, str] | None = None,
) -> Phase:
    """Tokens per step = global batch x the tokens of a training example (`example_tokens`: its mean and how it was
    counted), else x the sequence length (every sequence padded to it: an upper bound), over the world's throughput;
    validation (forward only, a third of a training step) and the checkpoint load on top."""
    gpus = nodes * gpus_per_node
    if example_tokens is None:
        tokens_per_step = global_batch_size * seq_length
        per_step = f"global batch {global_batch_size} x sequence length {seq_length} = {tokens_per_step:,}"
        per_step += " (padded: an upper bound)"
    else:
        mean, counted = example_tokens
        tokens_per_step = round(global_batch_size * mean)
        per_step = (
            f"global batch {global_batch_size} x {mean:,.1f} tokens per training example = {tokens_per_step:,} "
            f"({counted}; padded to sequence length {seq_length}: {global_batch_size * seq_length:,})"
        )
    train_s = tokens_per_step * steps / (finetune.value * gpus)
    load_s = checkpoint_bytes / (storage.value * GB * nodes)
    basis = [
        f"tokens per step = {per_step}",
        f"training: {steps:,} steps x {tokens_per_step:,} tokens "
        f"/ ({finetune.value:,.4g} tokens/s per GPU x {gpus} GPUs) = {train_s / 3600:.2f} h",
        f"layout: {layout}; {nodes} node(s) x {gpus_per_node} GPU(s) = {gpus} GPUs",
        f"loading the {checkpoint_bytes / GB:,.0f} GB checkpoint: "
        f"{storage.value:g} GB/s on each of {nodes} node(s) = {load_s / 3600:.2f} h",
    ]
    validation_s = 0.0
    if validation_batches is None:
        basis.append("validation: not counted (limit_val_batches null and no validation.jsonl here to count)")
    elif validation_runs:
        # Forward only: about a third of a training step's work per token.
        validation_s = validation_runs * validation_batches * tokens_per_step / (3 * finetune.value * gpus)
        basis.append(
            f"validation: {validation_runs} run(s) x {validation_batches} batch(es), "
            f"forward only (1/3 of a step) = {validation_s / 3600:.2f} h"
        )
    return Phase("fine-tune", gpus, _hours(train_s + load_s + validation_s), tuple(basis), ("finetune", "storage"))


def generation_phase(
    *,
    prompts: int | None,
    tokens_per_prompt: int,
    nodes: int,
    gpus_per_node: int,
    generation: Rate,
    storage: Rate,
    weight_bytes: float,
    where: str,
) -> Phase:
    """The evaluation: the server loads the weights on every node at once,
    then generates up to `tokens_per_prompt` per prompt."""
    gpus = nodes * gpus_per_node
    if prompts is None:
        return Phase(
            "evaluation",
            gpus,
            None,
            (f"{nodes} node(s) x {gpus_per_node} GPU(s) serving",),
            ("generation", "storage"),
            unknown=f"the number of test prompts is unknown ({where} is not there): materialize nemo_jsonl",
        )
    load_s = weight_bytes / (storage.value * GB * nodes)
    tokens = prompts * tokens_per_prompt
    generate_s = tokens / (generation.value * gpus)
    basis = (
        f"{prompts:,} test prompts ({where}) x up to {tokens_per_prompt} new tokens = {tokens:,} tokens "
        "(prefill not counted)",
        f"generation: {tokens:,} / ({generation.value:,.4g} tokens/s per GPU x {gpus} GPUs) "
        f"= {generate_s / 3600:.2f} h",
        f"loading {weight_bytes / GB:,.0f} GB of weights: "
        f"{storage.value:g} GB/s on each of {nodes} node(s) = {load_s / 3600:.2f} h",
    )
    return Phase("evaluation", gpus, _hours(load_s + generate_s), basis, ("generation", "storage"))


def serving_nodes(weight_bytes: float, gpus_per_node: int, gpu_memory_gb: float, max_weight_fraction: float) -> int:
    """Nodes whose GPUs hold the weights within max_weight_fraction, rounded up to a power of two (TP within a node,
    the node count as pipeline stages or TP groups, the 256 experts dividing evenly)."""
    per_node = gpus_per_node * gpu_memory_gb * GB * max_weight_fraction
    return 2 ** math.ceil(math.log2(max(1.0, weight_bytes / per_node)))


def _money(value: float | None, currency: str) -> str:
    return "" if value is None else f"{value:,.0f} {currency}"


def _h(value: float | None) -> str:
    return "?" if value is None else f"{value:,.1f}"


def _ratio(value: float | None, prefix: str) -> str:
    return "no estimate to compare" if value is None else f"{prefix}{value:.2f}"


def summary_lines(estimate: dict) -> list[str]:
    """The estimate (its JSON, as `as_dict` gives it) for people: totals with their range,
    one line per phase, the rates."""
    currency = estimate["currency"]
    low, high = estimate["range"]["cost"]
    kind = "measured where a run gave them, estimated elsewhere" if estimate["measured"] else "estimated"
    lines = [
        f"GPU run: {_h(estimate['gpu_hours'])} GPU-hours, {_h(estimate['wall_hours'])} h wall clock, "
        f"{_money(estimate['cost'], currency)} at {estimate['price_per_gpu_hour']:g} {currency} per GPU-hour ({kind}; "
        f"range {_money(low, currency)} .. {_money(high, currency)}: x{estimate['uncertainty_factor']:g} either way)"
        # A total without a phase must say so, or it reads as the whole run's.
        + "".join(f"; without the {reason.split(':')[0]}, not estimated" for reason in estimate["not_estimated"]),
        f"price: {estimate['price_source']}",
    ]
    for phase in estimate["phases"]:
        line = (
            f"- {phase['name']}: {phase['gpus']} GPUs x {_h(phase['wall_hours'])} h = {_h(phase['gpu_hours'])} GPU-h, "
            f"{_money(phase['cost'], currency) or '?'}"
        )
        if "measured" in phase:
            m = phase["measured"]
            line += (
                f"; measured {m['gpus']} GPUs x {_h(m['wall_hours'])} h = {_h(m['gpu_hours'])} GPU-h "
                f"({_ratio(m['ratio'], 'measured / estimated ')})"
            )
        if phase.get("unknown"):
            line += f" (not estimated: {phase['unknown']})"
        lines.append(line)
        lines += [f"    {basis}" for basis in phase["basis"]]
    for name, rate in estimate["rates"].items():
        kind = "published" if rate["published"] else "CONFIGURED, not measured"
        lines.append(f"rate {name}: {rate['value']:,.4g} {rate['unit']} ({kind}: {rate['source']})")
    return lines


def markdown(estimate: dict) -> list[str]:
    """The estimate as Markdown lines: totals, a table of phases, how each was reckoned, the rates and their sources."""
    currency = estimate["currency"]
    summary, price, *_ = summary_lines(estimate)
    rows = []
    for phase in estimate["phases"]:
        row = {
            "phase": phase["name"],
            "GPUs": phase["gpus"],
            "wall h": _h(phase["wall_hours"]),
            "GPU-h": _h(phase["gpu_hours"]),
            "cost": _money(phase["cost"], currency) or "not estimated",
        }
        m = phase.get("measured")
        row["measured GPU-h"] = (
            f"{_h(m['gpu_hours'])} ({_ratio(m['ratio'], 'x')}{'' if m['ratio'] is None else ' the estimate'})"
            if m
            else ""
        )
        rows.append(row)
    lines = [f"**{summary}**", "", f"- {price}", "", markdown_table(rows, max_cell=200), ""]
    for phase in estimate["phases"]:
        lines += [
            f"- {phase['name']}: "
            + "; ".join(phase["basis"])
            + (f" (not estimated: {phase['unknown']})" if phase.get("unknown") else "")
        ]
    lines.append("")
    for name, rate in estimate["rates"].items():
        kind = "published" if rate["published"] else "**configured, not measured**"
        lines.append(f"- rate `{name}`: {rate['value']:,.4g} {rate['unit']}, {kind}: {rate['source']}")
    return lines

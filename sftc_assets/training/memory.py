"""Will the GPU plan fit? Memory per GPU for the NeMo fine-tune, host RAM for the NeMo import, disk on the data
volume, each an `Estimate` whose terms show the arithmetic (for the report) against what the cluster has.

GPU memory follows Megatron's layout: a rank holds its pipeline stage's layers, attention and dense MLPs split
over tensor parallelism, routed experts over expert x expert-tensor parallelism, the embedding on the first stage
and the output layer on the last. Activations are counted per micro-batch from the tensors a layer keeps for its
backward pass (bf16), times the micro-batches in flight on that stage under the 1F1B schedule (pipeline - stage);
`recompute: full` keeps only each layer's input plus one layer's activations. Checked against published layouts in
tests/test_training_gpu_plan.py: NeMo's 5-node LoRA recipe fits 80 GB, the same layout with full fine-tuning does not.
"""

from __future__ import annotations

from dataclasses import dataclass

from sftc_assets.training.architecture import BF16_BYTES, Architecture
from sftc_assets.training.nemo_config import stage_layers
from sftc_core.configs import FinetuneConfig
from sftc_core.text import format_bytes

GIB = 1 << 30
# Kept free on every GPU: the CUDA context, NCCL buffers and Megatron / Transformer Engine workspaces (fixed) and the
# caching allocator's fragmentation (a share of the card).
FIXED_OVERHEAD_BYTES = 4 * GIB
FRAGMENTATION_MARGIN = 0.10
# Per trainable parameter beyond its bf16 weight: the fp32 main gradient, and Adam's fp32 master copy and two moments.
GRAD_BYTES = 4
OPTIMIZER_BYTES = 12
# bf16 logits, their fp32 softmax and its fp32 gradient on the last stage (cross-entropy fusion is off for LoRA).
LOGIT_BYTES = 10
# The NeMo import holds the HF model in host memory while it fills the Megatron one; reported peaks for the 671B
# model are 1.2 to 1.6 TB, 0.9x to 1.2x its 1.34 TB in BF16: the upper end.
IMPORT_RAM_FACTOR = 1.2
# NeMo's fine-tune keeps the 2 best checkpoints plus the last (save_top_k=2, save_last) of the trainable weights
# with their optimizer state (bf16 weight + fp32 master and moments).
KEPT_CHECKPOINTS = 3
CHECKPOINT_BYTES_PER_PARAM = BF16_BYTES + OPTIMIZER_BYTES


@dataclass(frozen=True)
class Term:
    name: str
    bytes: int
    how: str  # the arithmetic, in numbers


@dataclass(frozen=True)
class Estimate:
    what: str
    terms: tuple[Term, ...]
    available_bytes: int | None  # None: the cluster config does not say
    available_how: str

    @property
    def needed_bytes(self) -> int:
        return sum(term.bytes for term in self.terms)

    @property
    def fits(self) -> bool | None:
        return None if self.available_bytes is None else self.needed_bytes <= self.available_bytes

    def lines(self) -> list[str]:
        rows = [f"{term.name}: {format_bytes(term.bytes)} = {term.how}" for term in self.terms]
        rows.append(
            f"total: {format_bytes(self.needed_bytes)}"
            + (
                f" against {format_bytes(self.available_bytes)} available ({self.available_how})"
                if self.available_bytes is not None
                else f" ({self.available_how})"
            )
        )
        return rows


def _billions(count: float) -> str:
    return f"{count / 1e9:.2f}B" if count >= 1e8 else f"{count / 1e6:.1f}M"


# --- GPU memory of the fine-tune ------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    tp: int
    pp: int
    cp: int
    ep: int
    etp: int
    dp: int
    expert_dp: int
    sp: int  # the sequence-parallel split of activations outside attention and MLP (tp, or 1 without it)
    micro_batches: int  # per optimizer step and data-parallel rank

    @classmethod
    def of(cls, config: FinetuneConfig) -> _Layout:
        p = config.parallelism
        etp = p.expert_tensor or p.tensor
        return cls(
            tp=p.tensor,
            pp=p.pipeline,
            cp=p.context,
            ep=p.expert,
            etp=etp,
            dp=config.data_parallel_size,
            expert_dp=max(1, config.world_size // (p.expert * etp * p.pipeline)),
            sp=p.tensor if p.sequence_parallel else 1,
            micro_batches=max(1, config.global_batch_size // (config.micro_batch_size * config.data_parallel_size)),
        )


def _layer_activation_elements(arch: Architecture, dense: bool, tokens: int, lay: _Layout) -> int:
    """Elements one layer keeps for its backward pass for one micro-batch of `tokens` (no recompute)."""
    h = arch.hidden
    latents = (arch.q_lora_rank or 0) + arch.kv_lora_rank + arch.qk_rope
    # norm input and output, the MLA latents (split by sequence parallelism);
    # q, k, v and the attention output (by tensor).
    attention = tokens * ((2 * h + latents) // lay.sp + arch.heads * (2 * arch.qk_head + 2 * arch.v_head) // lay.tp)
    if dense:
        return attention + tokens * (
            2 * h // lay.sp + 3 * arch.ffn // lay.tp
        )  # norm in, fc1 in; fc1 out (gate|up), activation
    # Each token is routed to k experts: the rows an expert-tensor rank computes keep their input, their output for the
    # weighted combine, and their slice of fc1's output and activation.
    rows = tokens // lay.sp * arch.experts_per_token * lay.etp
    routed = rows * (2 * h + 3 * arch.moe_ffn // lay.etp)
    shared = tokens * 3 * arch.moe_ffn * arch.shared_experts // lay.tp
    router = tokens * 2 * arch.experts // lay.sp  # fp32 logits: two bf16 slots each
    return attention + tokens * 2 * h // lay.sp + router + shared + routed


def _lora_params(arch: Architecture, config: FinetuneConfig, layer_indices: range, lay: _Layout | None) -> int:
    """Adapter parameters (A: rank x in, B: out x rank) of the targets over `layer_indices`;
    a rank's share with `lay`."""
    rank, total = config.lora.rank, 0
    targets = {target.rsplit(".", 1)[-1] for target in config.lora.target_modules}
    for index in layer_indices:
        dense = index < arch.dense_layers
        for name, shapes in arch.lora_linear_shapes(dense).items():
            if name not in targets:
                continue
            for number, (fan_in, fan_out) in enumerate(shapes):
                expert = not dense and name in ("linear_fc1", "linear_fc2") and number > 0
                share = 1 if lay is None else (lay.ep * lay.etp if expert else lay.tp)
                total += rank * (fan_in + fan_out) // share
    return total


def stage_estimates(arch: Architecture, config: FinetuneConfig) -> list[Estimate]:
    """One estimate per pipeline stage (its busiest rank); empty when the layers do not split over the stages."""
    counts = stage_layers(config, arch.layers)
    if counts is None:
        return []
    lay = _Layout.of(config)
    tokens = config.seq_length * config.micro_batch_size // lay.cp
    available = int(config.gpu_memory_bytes * (1 - FRAGMENTATION_MARGIN)) - FIXED_OVERHEAD_BYTES
    available_how = (
        f"gpu_memory_gb {config.gpu_memory_gb:g} ({format_bytes(config.gpu_memory_bytes)}) "
        f"less {FRAGMENTATION_MARGIN:.0%} for fragmentation and "
        f"{format_bytes(FIXED_OVERHEAD_BYTES)} for the CUDA context, NCCL buffers and workspaces"
    )
    estimates, start = [], 0
    for stage, count in enumerate(counts):
        layers = range(start, start + count)
        start += count
        first, last = stage == 0, stage == len(counts) - 1
        dense_layers = sum(1 for i in layers if i < arch.dense_layers)
        moe_layers = count - dense_layers
        replicated = count * arch.layer_norm_params + moe_layers * arch.router_params
        split = (
            count * arch.attention_params
            + dense_layers * arch.dense_mlp_params
            + moe_layers * arch.shared_expert_params
        )
        split += (arch.embedding_params if first else 0) + (arch.head_params if last else 0)
        experts = moe_layers * arch.routed_expert_params
        params = replicated + split // lay.tp + experts // (lay.ep * lay.etp)
        dense_share = replicated + split // lay.tp
        terms = [
            Term(
                "bf16 weights",
                params * BF16_BYTES,
                f"({count} layers' attention, dense MLPs and shared experts"
                + (" + embedding" if first else "")
                + (" + output layer" if last else "")
                + f" {_billions(split)} / tensor {lay.tp}"
                + f" + routed experts {_billions(experts)} / (expert {lay.ep} x expert_tensor {lay.etp})"
                + f" + norms and routers {_billions(replicated)}) x {BF16_BYTES} B",
            )
        ]
        if config.peft == "lora":
            lora = _lora_params(arch, config, layers, lay)
            per = BF16_BYTES + GRAD_BYTES + OPTIMIZER_BYTES
            terms.append(
                Term(
                    "LoRA adapters and their Adam state",
                    lora * per,
                    f"{_billions(lora)} adapter parameters (rank {config.lora.rank}) x {per} B",
                )
            )
        else:
            terms.append(
                Term("fp32 gradients (full fine-tune)", params * GRAD_BYTES, f"{_billions(params)} x {GRAD_BYTES} B")
            )
            expert_share = experts // (lay.ep * lay.etp)
            optimizer = dense_share * OPTIMIZER_BYTES // lay.dp + expert_share * OPTIMIZER_BYTES // lay.expert_dp
            terms.append(
                Term(
                    "Adam master weights and moments (distributed optimizer)",
                    optimizer,
                    f"{_billions(dense_share)} x {OPTIMIZER_BYTES} B / data-parallel {lay.dp} + "
                    f"{_billions(expert_share)} x {OPTIMIZER_BYTES} B / expert-data-parallel {lay.expert_dp}",
                )
            )
        in_flight = min(lay.pp - stage, lay.micro_batches)
        per_layer = [_layer_activation_elements(arch, i < arch.dense_layers, tokens, lay) for i in layers]
        where = f"seq_length {config.seq_length} x micro_batch {config.micro_batch_size}" + (
            f" / context {lay.cp}" if lay.cp > 1 else ""
        )
        if config.recompute == "full":
            kept = tokens * arch.hidden // lay.sp * count * in_flight + max(per_layer)
            how = (
                f"{where} tokens: each layer's input x {count} layers x {in_flight} micro-batch(es) in flight "
                "+ one layer recomputed"
            )
        else:
            kept = sum(per_layer) * in_flight
            how = (
                f"{where} tokens x {count} layers' saved tensors x {in_flight} micro-batch(es) in flight "
                f"(pipeline {lay.pp} - stage {stage})"
            )
        terms.append(Term("activations", kept * BF16_BYTES, how))
        if last:
            logits = tokens * (arch.vocab // lay.tp) * LOGIT_BYTES
            terms.append(
                Term(
                    "logits and loss",
                    logits,
                    f"{tokens} tokens x vocabulary {arch.vocab} / tensor {lay.tp} x {LOGIT_BYTES} B",
                )
            )
        estimates.append(
            Estimate(f"a rank of pipeline stage {stage} ({count} layers)", tuple(terms), available, available_how)
        )
    return estimates


def gpu_memory(arch: Architecture, config: FinetuneConfig) -> Estimate | None:
    """The stage that needs the most memory per GPU (None when the layers do not split over the stages)."""
    estimates = stage_estimates(arch, config)
    return max(estimates, key=lambda e: e.needed_bytes) if estimates else None


# --- host RAM of the import, disk of the data volume -----------------------------------------------


def import_host_memory(arch: Architecture, available_bytes: int | None, available_how: str) -> Estimate:
    bf16 = arch.main_params * BF16_BYTES
    term = Term(
        "NeMo import (HF model in host memory, converted into Megatron's)",
        int(bf16 * IMPORT_RAM_FACTOR),
        f"{_billions(arch.main_params)} parameters x {BF16_BYTES} B = {format_bytes(bf16)}, x {IMPORT_RAM_FACTOR} "
        "(reported peaks 1.2 to 1.6 TB for the 671B model)",
    )
    return Estimate("the NeMo import on one GPU node", (term,), available_bytes, available_how)


def data_volume(
    arch: Architecture, config: FinetuneConfig, available_bytes: int | None, available_how: str
) -> Estimate:
    main = arch.main_params * BF16_BYTES
    lora = config.peft == "lora"
    trainable = _lora_params(arch, config, range(arch.layers), None) if lora else arch.main_params
    terms = [
        Term(
            "BF16 checkpoint (bf16_checkpoint)",
            arch.bf16_checkpoint_bytes,
            "the conversion's size from the safetensors headers"
            if arch.checkpoint_bf16_bytes
            else f"{_billions(arch.checkpoint_params)} parameters (MTP included) x {BF16_BYTES} B",
        ),
        Term(
            "NeMo checkpoint (nemo_model)",
            main,
            f"{_billions(arch.main_params)} parameters (no MTP layer) x {BF16_BYTES} B",
        ),
        Term(
            "fine-tune checkpoints",
            KEPT_CHECKPOINTS * trainable * CHECKPOINT_BYTES_PER_PARAM,
            f"{KEPT_CHECKPOINTS} kept x {_billions(trainable)} trainable parameters "
            f"x {CHECKPOINT_BYTES_PER_PARAM} B (weights and Adam state)",
        ),
    ]
    if lora:
        terms.append(Term("merged LoRA checkpoint (NeMo)", main, f"{_billions(arch.main_params)} x {BF16_BYTES} B"))
    terms.append(Term("exported HF checkpoint (sft_model)", main, f"{_billions(arch.main_params)} x {BF16_BYTES} B"))
    return Estimate("the checkpoints of the GPU run", tuple(terms), available_bytes, available_how)

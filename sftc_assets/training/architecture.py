"""The base model's architecture known on a CPU: from the checkpoint's own config.json and safetensors headers
where the checkpoint is reachable (no tensor is read: `plan_conversion`), else from the reference config.json of
the release kept under configs/models/. Parameter counts per part follow the Hugging Face tensors of
DeepSeek-V3 exactly (the toy checkpoint's headers are the test), so the GPU plan can size every rank's share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from sftc_assets.checkpoints.convert import FP8_NAMES, plan_conversion
from sftc_assets.checkpoints.fp8 import FP8_BLOCK, SCALE_SUFFIX, scale_grid
from sftc_assets.checkpoints.safetensors_io import read_checkpoint_headers
from sftc_assets.training.nemo_config import model_config_from_hf
from sftc_core.configs import ConfigError, read_model_config

BF16_BYTES = 2
FP32_BYTES = 4


def _count(number: int) -> str:
    return f"{number / 1e9:.2f}B" if number >= 1e8 else f"{number:,}"


@dataclass(frozen=True)
class Architecture:
    """A DeepSeek-V3 (MLA attention, dense then MoE layers, optional multi-token-prediction layers)."""

    source: str  # where it was read, for people
    layers: int
    dense_layers: int
    hidden: int
    ffn: int  # the dense layers' intermediate size
    heads: int
    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope: int
    qk_rope: int
    v_head: int
    experts: int
    experts_per_token: int
    shared_experts: int
    moe_ffn: int
    vocab: int
    mtp_layers: int
    router_bias: bool  # noaux_tc routing keeps a per-expert score bias
    tied_embeddings: bool
    # The side of the square blocks the FP8 weights are scaled by (quantization_config; None: not quantized).
    fp8_block: int | None = None
    max_positions: int | None = None  # max_position_embeddings: the longest sequence the model is built for
    # Read from the checkpoint's headers where it is reachable: its parameters, the bytes of its tensors as stored, and
    # the exact size of its BF16 conversion.
    counted_params: int | None = None
    counted_bytes: int | None = None
    checkpoint_bf16_bytes: int | None = None

    @classmethod
    def from_hf_config(
        cls,
        hf_config: dict,
        source: str,
        counted_params: int | None = None,
        checkpoint_bf16_bytes: int | None = None,
        counted_bytes: int | None = None,
    ) -> Architecture:
        model_config_from_hf(hf_config, source)  # the fields NeMo's importer needs, or a ConfigError naming them
        quantization = hf_config.get("quantization_config") or {}
        fp8 = quantization.get("quant_method") == "fp8"
        return cls(
            source=source,
            layers=hf_config["num_hidden_layers"],
            dense_layers=hf_config["first_k_dense_replace"],
            hidden=hf_config["hidden_size"],
            ffn=hf_config["intermediate_size"],
            heads=hf_config["num_attention_heads"],
            q_lora_rank=hf_config["q_lora_rank"],
            kv_lora_rank=hf_config["kv_lora_rank"],
            qk_nope=hf_config["qk_nope_head_dim"],
            qk_rope=hf_config["qk_rope_head_dim"],
            v_head=hf_config["v_head_dim"],
            experts=hf_config["n_routed_experts"],
            experts_per_token=hf_config["num_experts_per_tok"],
            shared_experts=hf_config["n_shared_experts"],
            moe_ffn=hf_config["moe_intermediate_size"],
            vocab=hf_config["vocab_size"],
            mtp_layers=hf_config.get("num_nextn_predict_layers", 0) or 0,
            router_bias=hf_config.get("topk_method") == "noaux_tc",
            tied_embeddings=bool(hf_config.get("tie_word_embeddings", False)),
            fp8_block=int((quantization.get("weight_block_size") or [FP8_BLOCK])[0]) if fp8 else None,
            max_positions=hf_config.get("max_position_embeddings"),
            counted_params=counted_params,
            counted_bytes=counted_bytes,
            checkpoint_bf16_bytes=checkpoint_bf16_bytes,
        )

    # --- parameters of each part (Hugging Face tensors) ---

    @property
    def moe_layers(self) -> int:
        return self.layers - self.dense_layers

    @property
    def qk_head(self) -> int:
        return self.qk_nope + self.qk_rope

    @property
    def attention_params(self) -> int:
        """One layer's MLA: q down/up (or one q projection), kv down with the rope key, kv up, output, latent norms."""
        h = self.hidden
        if self.q_lora_rank:
            q = h * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * self.heads * self.qk_head
        else:
            q = h * self.heads * self.qk_head
        kv = (
            h * (self.kv_lora_rank + self.qk_rope)
            + self.kv_lora_rank
            + self.kv_lora_rank * self.heads * (self.qk_nope + self.v_head)
        )
        return q + kv + self.heads * self.v_head * h

    @property
    def dense_mlp_params(self) -> int:
        return 3 * self.hidden * self.ffn

    @property
    def routed_expert_params(self) -> int:
        """All routed experts of one MoE layer (gate, up and down projections each)."""
        return self.experts * 3 * self.hidden * self.moe_ffn

    @property
    def shared_expert_params(self) -> int:
        return 3 * self.hidden * self.moe_ffn * self.shared_experts

    @property
    def router_params(self) -> int:
        return self.experts * self.hidden + (self.experts if self.router_bias else 0)

    @property
    def layer_norm_params(self) -> int:
        return 2 * self.hidden

    def layer_params(self, index: int) -> int:
        mlp = (
            self.dense_mlp_params
            if index < self.dense_layers
            else self.routed_expert_params + self.shared_expert_params + self.router_params
        )
        return self.attention_params + mlp + self.layer_norm_params

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def head_params(self) -> int:
        return 0 if self.tied_embeddings else self.vocab * self.hidden

    @property
    def main_params(self) -> int:
        """The model without its multi-token-prediction layers (what NeMo imports and fine-tunes)."""
        return (
            self.embedding_params
            + sum(self.layer_params(i) for i in range(self.layers))
            + self.hidden
            + self.head_params
        )

    @property
    def mtp_unique_params(self) -> int:
        """Each MTP module: one MoE layer, two input norms, the projection of [embedding; hidden], its head's norm."""
        return self.mtp_layers * (self.layer_params(self.layers) + 3 * self.hidden + 2 * self.hidden * self.hidden)

    @property
    def checkpoint_params(self) -> int:
        """Tensors the release stores: the main model and the MTP modules
        with their own copies of embedding and head."""
        return (
            self.main_params
            + self.mtp_unique_params
            + self.mtp_layers * (self.embedding_params + self.vocab * self.hidden)
        )

    @property
    def bf16_checkpoint_bytes(self) -> int:
        return self.checkpoint_bf16_bytes or self.checkpoint_params * BF16_BYTES

    def fp8_linear_shapes(self, dense: bool) -> list[tuple[int, int]]:
        """(rows, columns) of one layer's weights DeepSeek ships in FP8 (fp8.QUANTIZED_LINEARS): the MLA projections and
        the gate, up and down projections of every MLP (in a MoE layer each routed expert and the shared ones)."""
        h = self.hidden
        shapes = [(self.q_lora_rank, h), (self.heads * self.qk_head, self.q_lora_rank)] if self.q_lora_rank else []
        shapes += [
            (self.kv_lora_rank + self.qk_rope, h),
            (self.heads * (self.qk_nope + self.v_head), self.kv_lora_rank),
            (h, self.heads * self.v_head),
        ]
        widths = [self.ffn] if dense else [self.moe_ffn] * self.experts
        if not dense and self.shared_experts:
            widths.append(self.moe_ffn * self.shared_experts)
        return shapes + [shape for width in widths for shape in ((width, h), (width, h), (h, width))]

    def checkpoint_size(self) -> tuple[int, str]:
        """(bytes of the checkpoint's tensors as stored, how that is known): counted in its headers where they were
        read, else computed from the config: BF16 but the FP32 router bias, with a quantization_config the FP8 weights
        at one byte and an FP32 scale per block (the release's layout, the toy's too)."""
        if self.counted_bytes is not None:
            return self.counted_bytes, f"counted in the safetensors headers of {self.source}"
        fp8 = scales = 0
        if self.fp8_block:
            layers = range(self.layers + self.mtp_layers)  # the MTP layers are MoE layers
            shapes = [shape for i in layers for shape in self.fp8_linear_shapes(i < self.dense_layers)]
            fp8 = sum(rows * cols for rows, cols in shapes)
            scales = sum(math.prod(scale_grid(shape, self.fp8_block)) for shape in shapes)
        biases = (self.moe_layers + self.mtp_layers) * self.experts if self.router_bias else 0
        wider = FP32_BYTES - BF16_BYTES
        size = (self.checkpoint_params - fp8) * BF16_BYTES + fp8 + scales * FP32_BYTES + biases * wider
        how = f"{_count(self.checkpoint_params - fp8)} parameters x {BF16_BYTES} B"
        if self.fp8_block:
            how += f" + {_count(fp8)} FP8 weights x 1 B + {_count(scales)} block scales x {FP32_BYTES} B"
        how += f" + {_count(biases)} FP32 router biases x {wider} B more" if biases else ""
        return size, f"computed from {self.source}: {how}"

    def lora_linear_shapes(self, dense: bool) -> dict[str, list[tuple[int, int]]]:
        """(in, out) of every Linear a NeMo LoRA target name covers in one dense or MoE layer
        (routed experts one each)."""
        h = self.hidden
        shapes = {
            "linear_q_down_proj": [(h, self.q_lora_rank)] if self.q_lora_rank else [],
            "linear_q_up_proj": [(self.q_lora_rank, self.heads * self.qk_head)] if self.q_lora_rank else [],
            "linear_kv_down_proj": [(h, self.kv_lora_rank + self.qk_rope)],
            "linear_kv_up_proj": [(self.kv_lora_rank, self.heads * (self.qk_nope + self.v_head))],
            "linear_proj": [(self.heads * self.v_head, h)],
        }
        if dense:
            shapes["linear_fc1"], shapes["linear_fc2"] = [(h, 2 * self.ffn)], [(self.ffn, h)]
        else:
            shared = self.moe_ffn * self.shared_experts
            shapes["linear_fc1"] = [(h, 2 * shared)] + [(h, 2 * self.moe_ffn)] * self.experts
            shapes["linear_fc2"] = [(shared, h)] + [(self.moe_ffn, h)] * self.experts
        return shapes

    def summary(self) -> str:
        mtp = (
            f", {self.mtp_layers} multi-token-prediction layer(s) (+{self.mtp_unique_params / 1e9:.1f}B)"
            if self.mtp_layers
            else ""
        )
        return (
            f"{self.layers} layers ({self.dense_layers} dense, {self.moe_layers} MoE), "
            f"{self.experts} routed + {self.shared_experts} shared experts ({self.experts_per_token} per token), "
            f"{self.heads} heads, hidden {self.hidden}, MLA ranks q {self.q_lora_rank} / kv {self.kv_lora_rank}, "
            f"vocabulary {self.vocab}: {self.main_params / 1e9:.1f}B parameters{mtp}"
        )


def architecture_of(
    checkpoint: Path | None, reference: dict | None, reference_source: str = "the reference config"
) -> Architecture:
    """The checkpoint's architecture where its directory is reachable (headers only), else the reference config's
    (`reference`: its parsed config.json, read from `reference_source`)."""
    if checkpoint is not None and Path(checkpoint).is_dir():
        checkpoint = Path(checkpoint)
        weight_map, headers = read_checkpoint_headers(
            checkpoint
        )  # CheckpointError names the shard or tensor that is wrong
        stored = [headers[shard].tensors[name] for name, shard in weight_map.items()]
        tensors = [t for t in stored if not t.name.endswith(SCALE_SUFFIX)]
        fp8 = any(t.dtype in FP8_NAMES for t in tensors)
        bf16_bytes = plan_conversion(checkpoint).total_size if fp8 else sum(t.nbytes for t in tensors)
        hf_config = read_model_config(checkpoint / "config.json")
        source = f"{checkpoint} (config.json and safetensors headers)"
        counted = sum(t.numel for t in tensors)
        stored_bytes = sum(t.nbytes for t in stored)
        return Architecture.from_hf_config(hf_config, source, counted, bf16_bytes, counted_bytes=stored_bytes)
    if reference is None:
        where = f"{checkpoint} is not reachable from this node and " if checkpoint else ""
        raise ConfigError(
            f"{where}the profile names no model.reference_config; "
            "set it to a config.json under configs/ (models/deepseek-v3.json)"
        )
    return Architecture.from_hf_config(reference, f"{reference_source} (reference config of the release)")

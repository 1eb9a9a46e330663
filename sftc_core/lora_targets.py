"""One table from NeMo's DeepSeek-V3 module names (Megatron's, as configs/nemo/finetune.yaml names LoRA targets) to
the Hugging Face names of the same weights (transformers' DeepseekV3 classes, the PEFT adapter's target_modules).

Both training backends and the GPU plan read it: the NeMo backend trains on the recipe's names, the Hugging Face
backend on their translation here, and the GPU plan checks the recipe's names against its keys. Importable in the
NeMo environment too (no dependency).
"""

from __future__ import annotations

# NeMo 2.7.3's Linear modules of a DeepSeek-V3 layer (MLASelfAttention, then the MLP and the experts) and the
# transformers modules holding the same weights (HFDeepSeekImporter.convert_state maps one to the other).
# linear_fc1 is gate_proj and up_proj fused; transformers 5 keeps the routed experts as fused tensors, so there
# the MLP names are Linear modules of the dense layers and the shared experts only.
NEMO_TO_HF_MODULES: dict[str, tuple[str, ...]] = {
    "linear_q_down_proj": ("q_a_proj",),
    "linear_q_up_proj": ("q_b_proj",),
    "linear_kv_down_proj": ("kv_a_proj_with_mqa",),
    "linear_kv_up_proj": ("kv_b_proj",),
    "linear_proj": ("o_proj",),
    "linear_fc1": ("gate_proj", "up_proj"),
    "linear_fc2": ("down_proj",),
}
HF_TO_NEMO_MODULES = {hf: nemo for nemo, names in NEMO_TO_HF_MODULES.items() for hf in names}


def leaf(target: str) -> str:
    """The module name a target ends with (`*.layers.0.*.linear_proj` -> `linear_proj`)."""
    return target.rsplit(".", 1)[-1]


def hf_targets(nemo_targets: list[str]) -> list[str]:
    """The Hugging Face names of NeMo LoRA targets, in order. A target outside the table (a pattern, a misspelling,
    a transformers name) is kept as it is: the GPU plan's `LoRA targets` check names it for NeMo, and the Hugging Face
    backend refuses it at load, before step 1, unless the model has a Linear module of that name."""
    names: list[str] = []
    for target in nemo_targets:
        names += [name for name in NEMO_TO_HF_MODULES.get(target, (target,)) if name not in names]
    return names

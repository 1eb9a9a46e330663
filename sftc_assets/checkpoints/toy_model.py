"""A tiny DeepSeek-V3 (transformers' own class) with a BPE tokenizer trained on the corpus.

`make_toy_checkpoint` writes it in the Hugging Face layout: BF16 in one file, or (fp8=True) the exact
layout of the DeepSeek-V3 release: the linear weights DeepSeek quantizes as float8_e4m3fn with a float32
`<name>_scale_inv` per 128x128 block, everything else unchanged, sharded with an index, and the release's
`quantization_config` in config.json.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from sftc_assets.checkpoints.fp8 import (
    QUANTIZATION_CONFIG,
    SCALE_SUFFIX,
    is_quantized_weight,
    quantize_fp8_blockwise,
)
from sftc_assets.checkpoints.pretrain import pretrain
from sftc_assets.checkpoints.safetensors_io import (
    INDEX_NAME,
    SAFETENSORS_METADATA,
    SINGLE_FILE_NAME,
)
from sftc_core.configs import ModelConfig, PretrainingConfig
from sftc_core.io import BeforeSwap, atomic_dir, read_jsonl

BOS_TOKEN = "<｜begin▁of▁sentence｜>"
EOS_TOKEN = "<｜end▁of▁sentence｜>"
PAD_TOKEN = "<｜▁pad▁｜>"
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)  # ids 0, 1, 2 as in DeepSeek's tokenizer

FP8_SHARDS = 4


def toy_config(vocab_size: int = 1024):
    """DeepSeek-V3's architecture at toy size, with the release's shape wherever a kernel or a loader depends on it:
    the MLA latent 512 + 64 wide (vLLM's CPU MLA kernel takes no other width), experts routed within groups
    (8 experts in 4 groups, the best 2 groups, 2 experts a token), one dense layer before two MoE layers, and one
    multi-token-prediction layer announced (`num_nextn_predict_layers`, written as `model.layers.3.*`)."""
    from transformers import DeepseekV3Config

    return DeepseekV3Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=192,  # not a multiple of 128: the dense MLP has a 2x1 / 1x2 scale grid
        moe_intermediate_size=48,
        num_hidden_layers=3,
        first_k_dense_replace=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        q_lora_rank=48,
        kv_lora_rank=512,  # the release's: kv_a_proj_with_mqa is 576 rows, 4.5 FP8 blocks
        qk_nope_head_dim=16,
        qk_rope_head_dim=64,  # the release's
        v_head_dim=16,
        n_routed_experts=8,
        num_experts_per_tok=2,
        n_shared_experts=1,
        n_group=4,
        topk_group=2,
        num_mtp_layers=1,  # written to config.json as the release's num_nextn_predict_layers
        # Keys of the release's config.json that transformers' class omits but NeMo's importer reads.
        scoring_func="sigmoid",
        topk_method="noaux_tc",
        max_position_embeddings=2048,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )


def corpus_texts_from(path: Path | str) -> list[str]:
    """Every string field (strings inside lists too) of a JSONL file, or of the `*.jsonl` files of a directory.

    Reads nemo_jsonl lines (`input`, `output`) and thesis records alike; `*.rejects.jsonl` files are skipped.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.glob("*.jsonl") if not p.name.endswith(".rejects.jsonl"))
        if not files:
            raise FileNotFoundError(f"{path}: no *.jsonl files to take the tokenizer corpus from")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"{path}: corpus not found (expected a JSONL file or a directory of them)")
    texts = [text for file in files for row in read_jsonl(file) for text in _strings(row.values())]
    if not texts:
        raise ValueError(f"{path}: no text in the corpus (no string fields in {len(files)} JSONL file(s))")
    return texts


def _strings(values: Iterable) -> Iterable[str]:
    for value in values:
        if isinstance(value, str) and value:
            yield value
        elif isinstance(value, list):
            yield from _strings(value)


def train_tokenizer(corpus_texts: list[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE (any text encodes) with DeepSeek's special tokens and BOS added like DeepSeek's."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_texts, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B", special_tokens=[(BOS_TOKEN, 0)]
    )
    return tokenizer


def tokenizer_config(model_max_length: int) -> dict:
    # PreTrainedTokenizerFast: a class both transformers 5 (ours) and 4.57 (NeMo's environment) load from
    # tokenizer.json; model_input_names as DeepSeek's tokenizer (4.57 would add token_type_ids otherwise).
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": BOS_TOKEN,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS_TOKEN,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": model_max_length,
        "pad_token": PAD_TOKEN,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def _fp8_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The release's tensors: quantized linears + their scales, float32 router bias kept, the rest in bf16."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if is_quantized_weight(name, tensor.shape):
            out[name], out[name + SCALE_SUFFIX] = quantize_fp8_blockwise(tensor)
        else:
            out[name] = _release_dtype(name, tensor)
    return out


def _release_dtype(name: str, tensor: torch.Tensor) -> torch.Tensor:
    # The release keeps e_score_correction_bias in float32 (transformers keeps it so too); the rest is bf16.
    return tensor.float() if name.endswith("e_score_correction_bias") else tensor.to(torch.bfloat16)


def _plan_shards(state: dict[str, torch.Tensor], shards: int) -> list[list[str]]:
    """Size-based shards in name order; each shard closes right after a quantized weight, so its scale opens
    the next shard: the awkward case of the real release (a scale stored apart from its weight), on purpose."""
    names = sorted(state)
    # Sized on the decoder layers, so a big vocabulary (embeddings, lm_head: the first shard) cannot merge shards.
    target = math.ceil(sum(state[n].nbytes for n in names if n.startswith("model.layers.")) / shards)
    plan: list[list[str]] = [[]]
    size = 0
    for name in names:
        plan[-1].append(name)
        size += state[name].nbytes
        if size >= target and state[name].dtype == torch.float8_e4m3fn and len(plan) < shards:
            plan.append([])
            size = 0
    return [names for names in plan if names]


@dataclass(frozen=True)
class Pretraining:
    """What the toy base is pretrained on before it is written (sftc_assets/checkpoints/pretrain.py)."""

    texts: list[str]
    config: PretrainingConfig
    log: Callable[[str], None] | None = None


def make_toy_checkpoint(
    out_dir: Path | str,
    corpus_texts: list[str],
    *,
    seed: int = 0,
    fp8: bool = False,
    vocab_size: int = 1024,
    pretraining: Pretraining | None = None,
    stamp: BeforeSwap | None = None,
) -> dict:
    """Build the toy DeepSeek-V3 and its tokenizer (trained on `corpus_texts`) into `out_dir` (replaced whole,
    atomically); with `pretraining`, the weights are pretrained on its texts first (else left random).

    Deterministic: the same corpus, seed and options give byte-identical files.
    """
    from transformers import GenerationConfig

    if not corpus_texts:
        raise ValueError("corpus_texts is empty: the toy tokenizer needs text (e.g. corpus_texts_from(nemo_jsonl dir))")
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size}: must hold the 256 bytes and {len(SPECIAL_TOKENS)} special tokens")

    tokenizer = train_tokenizer(corpus_texts, vocab_size)
    config = toy_config(vocab_size)
    model, mtp_state = _model_and_mtp_layers(config, seed)
    pretrained = None
    if pretraining is not None:
        bos = tokenizer.token_to_id(BOS_TOKEN)
        encoded = tokenizer.encode_batch(pretraining.texts, add_special_tokens=False)
        documents = [[bos, *encoding.ids] for encoding in encoded]
        pretrained = pretrain(model, documents, bos, pretraining.config, seed, pretraining.log)
    state = _per_expert_state_dict(model)
    parameters = sum(t.numel() for t in state.values())
    for layer in range(config.num_hidden_layers, config.num_hidden_layers + config.num_nextn_predict_layers):
        # The MTP module shares the model's embedding and output head (DeepSeek-V3 report, section 2.2): copies of them.
        mtp_state[f"model.layers.{layer}.embed_tokens.weight"] = state["model.embed_tokens.weight"].clone()
        mtp_state[f"model.layers.{layer}.shared_head.head.weight"] = state["lm_head.weight"].clone()
    mtp_parameters = sum(t.numel() for t in mtp_state.values())
    state.update(mtp_state)

    config_dict = config.to_dict()
    # As the release's config.json: servers pick the model class (and vLLM its runner) by the architecture.
    config_dict["architectures"] = ["DeepseekV3ForCausalLM"]
    config_dict["dtype"] = "bfloat16"
    if fp8:
        state = _fp8_state_dict(state)
        config_dict["quantization_config"] = dict(QUANTIZATION_CONFIG)
    else:
        state = {name: _release_dtype(name, tensor) for name, tensor in state.items()}

    out_dir = Path(out_dir)
    weight_map: dict[str, str] = {}
    with atomic_dir(out_dir, stamp) as tmp:
        if fp8:
            plan = _plan_shards(state, FP8_SHARDS)
            for number, names in enumerate(plan, start=1):
                filename = f"model-{number:05d}-of-{len(plan):05d}.safetensors"
                save_file({n: state[n] for n in names}, tmp / filename, metadata=SAFETENSORS_METADATA)
                weight_map.update(dict.fromkeys(names, filename))
            index = {"metadata": {"total_size": sum(t.nbytes for t in state.values())}, "weight_map": weight_map}
            _write_json(tmp / INDEX_NAME, index)
        else:
            plan = [sorted(state)]
            save_file(state, tmp / SINGLE_FILE_NAME, metadata=SAFETENSORS_METADATA)
        _write_json(tmp / "config.json", config_dict)
        generation = GenerationConfig(bos_token_id=0, eos_token_id=1, pad_token_id=2, do_sample=False)
        generation.save_pretrained(tmp)
        tokenizer.save(str(tmp / "tokenizer.json"))
        _write_json(tmp / "tokenizer_config.json", tokenizer_config(config.max_position_embeddings))

    return {
        "path": str(out_dir),
        "fp8": fp8,
        "seed": seed,
        "parameters": parameters,
        "mtp_parameters": mtp_parameters,
        "tensors": len(state),
        "quantized_tensors": sum(1 for t in state.values() if t.dtype == torch.float8_e4m3fn),
        "shards": len(plan),
        "scales_in_other_shard": sum(
            1
            for name, shard in weight_map.items()
            if name.endswith(SCALE_SUFFIX) and weight_map[name.removesuffix(SCALE_SUFFIX)] != shard
        ),
        "total_bytes": sum(p.stat().st_size for p in out_dir.iterdir() if p.is_file()),
        "weight_bytes": sum(t.nbytes for t in state.values()),
        "vocab_size": vocab_size,
        "tokenizer_vocab": tokenizer.get_vocab_size(),
        "corpus_texts": len(corpus_texts),
        "pretraining": pretrained,
    }


def _model_and_mtp_layers(config, seed: int) -> tuple:
    """The model and its multi-token-prediction layers' own tensors, named as the release names them.

    transformers builds no MTP module, so a model one decoder layer deeper is built: its last layer (a MoE layer,
    FP8 like the others) becomes the MTP layer's, beside the release's enorm, hnorm, eh_proj (BF16 in the release,
    as vLLM's DeepSeekMultiTokenPredictorLayer loads it) and shared_head.norm; the model returned holds the deeper
    one's other weights, so the MTP layer is the same whether the model is pretrained afterwards or not."""
    from transformers import DeepseekV3ForCausalLM

    deeper = copy.deepcopy(config)
    deeper.num_hidden_layers = config.num_hidden_layers + config.num_nextn_predict_layers
    mtp_layers = range(config.num_hidden_layers, deeper.num_hidden_layers)
    mtp_prefixes = tuple(f"model.layers.{layer}." for layer in mtp_layers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        deeper_model = DeepseekV3ForCausalLM(deeper)
        deeper_state = _per_expert_state_dict(deeper_model)
        mtp_state = {name: t for name, t in deeper_state.items() if name.startswith(mtp_prefixes)}
        hidden = config.hidden_size
        for prefix in mtp_prefixes:
            mtp_state[f"{prefix}enorm.weight"] = torch.ones(hidden)
            mtp_state[f"{prefix}hnorm.weight"] = torch.ones(hidden)
            mtp_state[f"{prefix}eh_proj.weight"] = torch.randn(hidden, 2 * hidden) * config.initializer_range
            mtp_state[f"{prefix}shared_head.norm.weight"] = torch.ones(hidden)
        model = DeepseekV3ForCausalLM(config)
    shared = {name: t for name, t in deeper_model.state_dict().items() if not name.startswith(mtp_prefixes)}
    model.load_state_dict(shared)
    return model, mtp_state


def make_toy_base(
    out_dir: Path | str,
    corpus_texts: list[str],
    prompts: list[str],
    model: ModelConfig,
    *,
    fp8: bool = True,
    log: Callable[[str], None] | None = None,
    stamp: BeforeSwap | None = None,
) -> dict:
    """The toy profile's base: its tokenizer trained on `corpus_texts` (the train split's prompts and targets: a
    tokenizer learns no label), its weights pretrained on the training window's `prompts` alone
    (pretrain.pretraining_texts) as `model.pretraining` sets, written in the FP8 release layout (`fp8`)."""
    pretraining = Pretraining(prompts, model.pretraining, log) if model.pretraining is not None else None
    options = {"seed": model.seed, "fp8": fp8, "vocab_size": model.vocab_size, "stamp": stamp}
    return make_toy_checkpoint(out_dir, corpus_texts, pretraining=pretraining, **options)


def _per_expert_state_dict(model) -> dict[str, torch.Tensor]:
    """The on-disk names of the real model: transformers 5 fuses experts in memory and splits them back on save."""
    with tempfile.TemporaryDirectory(prefix="sftc-toy-") as tmp:
        model.save_pretrained(tmp)
        return load_file(Path(tmp) / SINGLE_FILE_NAME)


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")

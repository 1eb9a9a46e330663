"""DeepSeek-V3's multi-token-prediction (MTP) layers: `model.layers.<num_hidden_layers + i>.*`, announced by
`num_nextn_predict_layers` in config.json. The release ships one (layer 61): a full decoder layer with `enorm`,
`hnorm`, `eh_proj`, `embed_tokens` and `shared_head.{norm,head}` around it.

transformers' DeepseekV3ForCausalLM has no MTP module: it loads such a checkpoint and drops those tensors, and a
model it saves has none. `carry_mtp_layers` puts the base's MTP layers back beside a fine-tuned model, so the
fine-tuned checkpoint keeps the release's layout (what vLLM and SGLang load, and skip without speculative decoding).
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from sftc_assets.checkpoints.safetensors_io import (
    INDEX_NAME,
    SAFETENSORS_METADATA,
    read_checkpoint_headers,
    read_tensor,
)

MTP_SHARD = "model-mtp.safetensors"
# The MTP module shares the model's embedding and output head (DeepSeek-V3 report, section 2.2); the release stores
# copies under these names, which take the fine-tuned model's own (its vocabulary may have grown).
SHARED_WITH_MODEL = {"embed_tokens.weight": "model.embed_tokens.weight", "shared_head.head.weight": "lm_head.weight"}


def mtp_prefixes(config: dict) -> list[str]:
    """`model.layers.N.` of each MTP layer the config announces."""
    layers, mtp = config["num_hidden_layers"], config.get("num_nextn_predict_layers", 0) or 0
    return [f"model.layers.{layer}." for layer in range(layers, layers + mtp)]


def carry_mtp_layers(base: Path | str, model_dir: Path | str) -> int:
    """Copy the base checkpoint's MTP tensors into `model_dir` (a model saved by transformers, same config) as the
    shard model-mtp.safetensors, listed in the index (written for a single-file model); returns the tensors copied.

    Their shared embedding and head are the fine-tuned model's. A base without MTP layers copies nothing."""
    base, model_dir = Path(base), Path(model_dir)
    prefixes = mtp_prefixes(json.loads((base / "config.json").read_text(encoding="utf-8")))
    if not prefixes:
        return 0
    base_map, base_headers = read_checkpoint_headers(base)
    model_map, model_headers = read_checkpoint_headers(model_dir)
    wanted = sorted(name for name in base_map if name.startswith(tuple(prefixes)))
    tensors = {}
    for name in wanted:
        own = next((SHARED_WITH_MODEL[s] for s in SHARED_WITH_MODEL if name.endswith("." + s)), None)
        source_map, headers, root = (model_map, model_headers, model_dir) if own else (base_map, base_headers, base)
        key = own or name
        with open(root / source_map[key], "rb") as fh:
            tensors[name] = read_tensor(fh, headers[source_map[key]].tensors[key])
    save_file(tensors, model_dir / MTP_SHARD, metadata=SAFETENSORS_METADATA)
    weight_map = {**model_map, **dict.fromkeys(tensors, MTP_SHARD)}
    total = sum(t.nbytes for h in model_headers.values() for t in h.tensors.values())
    total += sum(t.nbytes for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (model_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return len(tensors)

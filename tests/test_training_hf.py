"""The Hugging Face training backend on the toy DeepSeek-V3: data, embeddings, schedule, real short runs, resume,
CLI."""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_hf_helpers import build_toy_inputs, one_intra_op_thread, write_nemo_jsonl  # noqa: F401 (autouse fixture)
from transformers import AutoModelForCausalLM, AutoTokenizer

from sftc_assets.checkpoints.mtp import mtp_prefixes
from sftc_assets.training import hf_backend
from sftc_assets.training.data import (
    IGNORE_INDEX,
    BatchStream,
    collate,
    epoch_batches,
    load_pairs,
    tokenize_pair,
    tokenize_split,
)
from sftc_assets.training.hf_backend import (
    latest_checkpoint,
    lr_factor,
    run_training,
    target_loss_sum,
    train_step,
    work_dir,
)
from sftc_assets.training.lora_rehearsal import rehearsal_problems, rehearsal_summary, rehearse_lora
from sftc_core.configs import load_finetune_config, load_profile, load_sft_config, profile_path, recipe_lora
from sftc_core.threads import torch_threads
from sftc_jobs.cli import main as sftc_main

PROFILE = load_profile("toy")
# The toy's training section as the settings hand it on: the recipe's LoRA (configs/nemo/finetune.yaml) filled in.
TRAINING = recipe_lora(PROFILE.training, load_finetune_config(), profile_path("toy"))
SFT = load_sft_config()
EVALUATION = PROFILE.evaluation.model_copy(update={"max_new_tokens": 24})


def short_training(**changes):
    """The toy profile's training section scaled down to seconds, a full fine-tune unless `peft` says otherwise
    (the random-weight test model has no language for a LoRA to steer)."""
    values = {
        "max_steps": 12,
        "batch_size": 4,
        "warmup_steps": 2,
        "eval_every": 4,
        "save_every": 4,
        "parse_check_samples": 2,
    }
    values["peft"] = "none"
    return TRAINING.model_copy(update={**values, **changes})


@pytest.fixture(scope="module")
def toy_inputs(tmp_path_factory) -> tuple[Path, Path]:
    return build_toy_inputs(tmp_path_factory.mktemp("toy"), train=48, validation=8)


@pytest.fixture(scope="module")
def tokenizer(toy_inputs):
    return AutoTokenizer.from_pretrained(toy_inputs[0])


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# --- data ---------------------------------------------------------------------------------------


def test_prompt_tokens_carry_ignore_index_and_target_ends_with_eos(toy_inputs, tokenizer):
    pair = load_pairs(toy_inputs[1] / "training.jsonl")[0]
    example, truncated = tokenize_pair(tokenizer, pair["input"], pair["output"], max_seq_length=512)
    prompt_ids = tokenizer(pair["input"])["input_ids"]
    assert not truncated
    assert example.input_ids[: len(prompt_ids)] == prompt_ids
    assert example.labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    target = example.labels[len(prompt_ids) :]
    assert target == example.input_ids[len(prompt_ids) :] and IGNORE_INDEX not in target
    assert target[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(target[:-1]) == pair["output"]


def test_truncation_cuts_the_prompt_from_the_left_and_is_counted(toy_inputs, tokenizer):
    pairs = load_pairs(toy_inputs[1] / "training.jsonl")[:3]
    full, _ = tokenize_pair(tokenizer, pairs[0]["input"], pairs[0]["output"], max_seq_length=512)
    target_len = full.target_tokens
    limit = target_len + 5
    cut, truncated = tokenize_pair(tokenizer, pairs[0]["input"], pairs[0]["output"], max_seq_length=limit)
    assert truncated and len(cut.input_ids) == limit
    assert cut.input_ids == full.input_ids[-limit:]  # the response cue before the target survives
    assert cut.target_tokens == target_len
    split = tokenize_split(tokenizer, pairs, max_seq_length=limit)
    assert split.truncated == 3 and all(len(e.input_ids) <= limit for e in split.examples)
    answers = [len(tokenizer(p["output"], add_special_tokens=False)["input_ids"]) + 1 for p in pairs]
    assert split.longest_answer == max(answers) and split.answers_cut == sum(n > limit for n in answers)
    assert (
        tokenize_split(tokenizer, pairs, max_seq_length=max(answers) - 1).answers_cut
        == sum(n == max(answers) for n in answers)
        >= 1
    )


def test_answers_that_would_lose_their_action_stop_the_run_before_training(toy_inputs, tmp_path):
    short = SFT.model_copy(update={"max_seq_length": 16})
    with pytest.raises(
        ValueError,
        match=r"training answers are longer than max_seq_length 16 \(configs/sft_config.yaml\).*"
        r"raise max_seq_length to at least",
    ):
        run_training(*toy_inputs, tmp_path / "out", short_training(), short, EVALUATION)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_a_loss_that_turns_non_finite_stops_the_run_and_names_the_cause(toy_inputs, tmp_path):
    """An infinite weight gives a non-finite loss at the first step: the run stops there and blames the weights,
    not the learning rate (no update has happened yet)."""
    model_dir = Path(shutil.copytree(toy_inputs[0], tmp_path / "model"))
    state = load_file(model_dir / "model.safetensors")
    state["model.norm.weight"] = torch.full_like(state["model.norm.weight"], float("inf"))
    from safetensors.torch import save_file

    save_file(state, model_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        hf_backend.TrainingDivergedError,
        match=r"step 1: the training loss is (nan|inf), before any update, "
        r"so the weights or the data are: check .*model",
    ):
        run_training(model_dir, toy_inputs[1], tmp_path / "out", short_training(), SFT, EVALUATION)


def test_a_loss_climbing_above_its_start_is_found_and_a_falling_one_is_not():
    assert hf_backend.loss_rise([7.0, 6.9, 6.8, 6.6, 6.5, 6.3, 6.0, 5.8, 5.5, 5.1, 4.9, 4.6]) is None
    noisy = [
        7.0,
        6.4,
        5.0,
        5.5,
        5.9,
        5.8,
        7.5,
        6.6,
        6.2,
        6.4,
        7.6,
        7.2,
    ]  # what a learning rate of 0.5 gave the toy model
    rise = hf_backend.loss_rise(noisy)
    assert rise is not None and rise["step"] == 10 and rise["average"] > rise["start"] * 1.05
    assert hf_backend.loss_rise([7.0] * 5 + [float("nan")] * 5)["step"] == 10
    assert hf_backend.loss_rise([7.0, 6.0]) is None  # too short to say


def test_collate_pads_right_with_masked_labels(toy_inputs, tokenizer):
    pairs = load_pairs(toy_inputs[1] / "training.jsonl")[:2]
    examples = tokenize_split(tokenizer, pairs, 512).examples
    batch = collate(examples, pad_token_id=tokenizer.pad_token_id)
    width = max(len(e.input_ids) for e in examples)
    assert batch["input_ids"].shape == (2, width)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
        assert batch["labels"][row, n:].eq(IGNORE_INDEX).all()
        assert batch["labels"][row, :n].tolist() == example.labels


def test_bad_nemo_line_names_file_record_and_field(tmp_path):
    path = tmp_path / "training.jsonl"
    path.write_text('{"input": "p", "output": "o"}\n\n{"input": "p", "output": ""}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"training\.jsonl:3: field 'output'.*export-nemo"):
        load_pairs(path)


def test_epoch_batches_cover_each_example_once_and_depend_only_on_seed_and_epoch():
    lengths = [(i * 37) % 101 for i in range(203)]
    batches = epoch_batches(lengths, batch_size=8, seed=3, epoch=0)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(203))
    assert batches == epoch_batches(lengths, batch_size=8, seed=3, epoch=0)
    assert batches != epoch_batches(lengths, batch_size=8, seed=4, epoch=0)
    assert batches != epoch_batches(lengths, batch_size=8, seed=3, epoch=1)
    # length bucketing: far less padding than the same batches of a plain shuffle
    padding = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)
    shuffled = sorted(flat, key=lambda i: (i * 7919) % 203)
    plain = [shuffled[i : i + 8] for i in range(0, 203, 8)]
    plain_padding = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in plain)
    assert padding < plain_padding / 3


def test_batch_stream_resumes_at_its_position_across_epochs():
    lengths = list(range(10))
    stream = BatchStream(lengths, batch_size=3, seed=1)
    for _ in range(5):  # into the second epoch (4 batches an epoch)
        stream.next()
    resumed = BatchStream.at(lengths, 3, 1, stream.position)
    assert [stream.next() for _ in range(7)] == [resumed.next() for _ in range(7)]


# --- model pieces -------------------------------------------------------------------------------


def test_target_loss_matches_the_models_own_shifted_loss(toy_inputs, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(toy_inputs[0], dtype=torch.float32)
    pairs = load_pairs(toy_inputs[1] / "training.jsonl")[:3]
    batch = collate(tokenize_split(tokenizer, pairs, 512).examples, tokenizer.pad_token_id)
    with torch.no_grad():
        out = model(**batch)
    count = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    torch.testing.assert_close(target_loss_sum(out.logits, batch["labels"]) / count, out.loss)


def test_gradient_accumulation_equals_one_large_batch(toy_inputs, tokenizer):
    pairs = load_pairs(toy_inputs[1] / "training.jsonl")[:6]
    examples = tokenize_split(tokenizer, pairs, 512).examples
    pad = tokenizer.pad_token_id
    results = []
    for micro in ([examples], [examples[:2], examples[2:]]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(toy_inputs[0], dtype=torch.float32)
        trainable = list(model.parameters())
        optimizer, scheduler = hf_backend._optimizer(model, short_training(), 10)
        loss = train_step(
            model, optimizer, scheduler, [collate(m, pad) for m in micro], trainable, 1.0, torch.device("cpu")
        )
        results.append((loss, model.get_input_embeddings().weight.detach().clone()))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-6)


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    factors = [lr_factor(step, warmup_steps=10, max_steps=110, min_lr_ratio=0.1) for step in range(110)]
    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    decay = factors[10:]
    assert decay[0] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert factors[60] == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the decay
    assert lr_factor(110, 10, 110, 0.1) == pytest.approx(0.1)
    assert lr_factor(500, 10, 110, 0.1) == pytest.approx(0.1)  # never below the floor
    assert lr_factor(0, 20, 10, 0.0) == pytest.approx(0.1)  # warmup longer than the run is capped


def test_cpu_threads_apply_for_the_run_and_are_restored_even_on_error():
    before = torch.get_num_threads()
    with torch_threads(3):
        assert torch.get_num_threads() == 3
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(2):
        raise RuntimeError
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


# --- real runs ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference_run(toy_inputs, tmp_path_factory):
    """An uninterrupted 12-step run; the resume and determinism tests compare against it."""
    model_dir, data_dir = toy_inputs
    output = tmp_path_factory.mktemp("reference") / "sft"
    return run_training(model_dir, data_dir, output, short_training(), SFT, EVALUATION)


def test_short_training_learns_and_writes_a_loadable_checkpoint(reference_run, toy_inputs):
    out, metrics = reference_run.output_dir, reference_run.metrics
    assert metrics["final_val_loss"] < 0.85 * metrics["initial_val_loss"]
    assert metrics["steps"] == 12 and metrics["peft"] == "none" and not (out / "adapter").exists()
    assert metrics["tokens_per_s"] > 0 and metrics["parse_checked"] == 2 and 0 <= metrics["parse_rate"] <= 1
    rows = read_csv(out / "training.csv")
    assert list(rows[0]) == ["step", "loss", "lr", "tokens_per_s"]
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    training = short_training()
    for row in rows:  # the lr column is the schedule
        expected = training.learning_rate * lr_factor(
            int(row["step"]) - 1, training.warmup_steps, 12, training.min_lr_ratio
        )
        assert float(row["lr"]) == pytest.approx(expected)
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert [int(r["step"]) for r in read_csv(out / "val.csv")] == [0, 4, 8, 12]
    assert json.loads((out / "metrics.json").read_text())["final_val_loss"] == metrics["final_val_loss"]
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the published model is the trained one with the base's tokenizer (the tags stay text), loadable by from_pretrained
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(toy_inputs[0]).get_vocab()
    assert len(tokenizer("<support>", add_special_tokens=False)["input_ids"]) > 1
    trained = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(toy_inputs[0], dtype=torch.float32)
    assert not torch.equal(trained.get_input_embeddings().weight, base.get_input_embeddings().weight)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-12", "step-8"]  # keep_checkpoints 2
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left behind


class Killed(RuntimeError):
    pass


def test_resume_after_a_kill_gives_the_same_losses(reference_run, toy_inputs, tmp_path):
    model_dir, data_dir = toy_inputs
    output = tmp_path / "sft"

    def kill_at_step_7(row):
        if row["step"] == 7:
            raise Killed

    with pytest.raises(Killed):
        run_training(model_dir, data_dir, output, short_training(), SFT, EVALUATION, on_step=kill_at_step_7)
    # The run works beside OUTPUT: killed, it leaves its checkpoints there and no OUTPUT at all.
    assert latest_checkpoint(work_dir(output)).name == "step-4" and not output.exists()
    resumed = run_training(model_dir, data_dir, output, short_training(), SFT, EVALUATION, resume=True)
    assert resumed.metrics["resumed_from_step"] == 4
    reference = read_csv(reference_run.output_dir / "training.csv")
    continued = read_csv(output / "training.csv")
    assert [(r["step"], r["loss"], r["lr"]) for r in continued] == [(r["step"], r["loss"], r["lr"]) for r in reference]
    assert read_csv(output / "val.csv") == read_csv(reference_run.output_dir / "val.csv")
    assert_same_weights(output, reference_run.output_dir)


def assert_same_weights(a: Path, b: Path) -> None:
    left, right = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert left.keys() == right.keys()
    assert all(torch.equal(left[k], right[k]) for k in left)


def test_same_seed_same_run_other_seed_other_run(reference_run, toy_inputs, tmp_path):
    model_dir, data_dir = toy_inputs
    again = run_training(model_dir, data_dir, tmp_path / "again", short_training(), SFT, EVALUATION)
    assert [r["loss"] for r in again.train_rows] == [r["loss"] for r in reference_run.train_rows]
    assert_same_weights(tmp_path / "again", reference_run.output_dir)
    other = run_training(model_dir, data_dir, tmp_path / "other", short_training(seed=1, max_steps=3), SFT, EVALUATION)
    assert [r["loss"] for r in other.train_rows] != [r["loss"] for r in reference_run.train_rows[:3]]


def test_resume_with_changed_settings_is_refused(reference_run, tmp_path, toy_inputs):
    output = tmp_path / "sft"
    shutil.copytree(reference_run.output_dir, output)
    with pytest.raises(ValueError, match=r"cannot resume.*\(training\.learning_rate\).*without --resume"):
        run_training(*toy_inputs, output, short_training(learning_rate=1e-2), SFT, EVALUATION, resume=True)
    assert (output / "metrics.json").exists()  # nothing was cleared


def test_lora_on_the_recipes_targets_writes_the_peft_adapter_beside_the_merged_model(toy_inputs, tmp_path):
    """The adapter round trip: peft loads adapter/ onto the base, and merging it there gives the merged checkpoint."""
    from peft import PeftModel

    output = tmp_path / "lora"
    training = short_training(max_steps=4, peft="lora", learning_rate=1e-2, eval_every=4, save_every=4)
    result = run_training(*toy_inputs, output, training, SFT, EVALUATION)
    metrics, recipe = result.metrics, load_finetune_config().lora
    assert metrics["peft"] == "lora"
    assert metrics["lora_targets"] == ["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"]
    assert (metrics["lora_rank"], metrics["lora_alpha"]) == (recipe.rank, recipe.alpha)
    assert 0 < result.metrics["trainable_params"] < result.metrics["total_params"] / 3
    adapter = output / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == sorted(metrics["lora_targets"]) and config["r"] == recipe.rank
    assert not config.get("modules_to_save")
    adapter_weights = load_file(adapter / "adapter_model.safetensors")
    # adapters only, no embedding rows
    assert adapter_weights and all(".lora_A." in k or ".lora_B." in k for k in adapter_weights)
    merged = load_file(output / "model.safetensors")
    assert not [k for k in merged if "lora" in k]  # the served checkpoint is plain weights
    base = AutoModelForCausalLM.from_pretrained(toy_inputs[0], dtype=torch.float32)
    # saved, to compare the on-disk names (transformers fuses the experts in memory)
    PeftModel.from_pretrained(base, adapter).merge_and_unload().save_pretrained(tmp_path / "by_peft")
    by_peft = load_file(tmp_path / "by_peft" / "model.safetensors")
    before = load_file(toy_inputs[0] / "model.safetensors")
    mtp = tuple(mtp_prefixes(json.loads((toy_inputs[0] / "config.json").read_text())))
    # the MTP layer, which transformers does not build, is carried beside the merged model (model-mtp.safetensors)
    assert set(by_peft) == set(merged) == {name for name in before if not name.startswith(mtp)}
    for name, tensor in merged.items():
        torch.testing.assert_close(by_peft[name], tensor, rtol=0, atol=0)
    o_proj, embed = "model.layers.0.self_attn.o_proj.weight", "model.embed_tokens.weight"
    assert not torch.equal(merged[o_proj], before[o_proj].float())
    assert torch.equal(merged[embed], before[embed].float())  # no embedding row trained
    added = AutoTokenizer.from_pretrained(toy_inputs[0]).get_added_vocab()
    assert AutoTokenizer.from_pretrained(output).get_added_vocab() == added


def test_a_misspelt_lora_target_fails_before_the_first_step_naming_it(toy_inputs, tmp_path):
    misspelt = TRAINING.lora.model_copy(update={"target_modules": ["q_a_proj", "kv_b_prj"]})
    training = short_training(peft="lora", lora=misspelt)
    with pytest.raises(ValueError, match=r"LoRA target\(s\) kv_b_prj name no Linear module of the model") as failure:
        run_training(*toy_inputs, tmp_path / "sft", training, SFT, EVALUATION)
    assert "kv_b_proj" in str(failure.value)  # the model's names are listed beside it
    assert not (tmp_path / "sft").exists() and not work_dir(tmp_path / "sft").exists()


@pytest.fixture(scope="module")
def rehearsal(toy_inputs):
    """The toy profile's LoRA rehearsal, scaled down to a few steps on the test's random-weight model."""
    steps = {"max_steps": 6, "warmup_steps": 1, "parse_check_samples": 2, "min_parse_rate": 0.0}
    config = PROFILE.lora_rehearsal.model_copy(update=steps)
    return config, rehearse_lora(*toy_inputs, TRAINING, config, SFT, EVALUATION)


def test_the_lora_rehearsal_runs_the_recipe_and_merges_its_adapter_exactly(toy_inputs, rehearsal):
    config, figures = rehearsal
    recipe = load_finetune_config().lora
    assert (figures["lora_rank"], figures["lora_alpha"], figures["lora_dropout"]) == (
        recipe.rank,
        recipe.alpha,
        recipe.dropout,
    )
    assert figures["lora_targets"] == ["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"]
    model_config = json.loads((toy_inputs[0] / "config.json").read_text())
    built_layers = model_config["num_hidden_layers"]  # the MTP layer beyond them is not built by transformers
    assert figures["adapters"] == len(figures["lora_targets"]) * built_layers
    assert figures["steps"] == 6 and figures["parse_checked"] == 2
    assert figures["val_loss_drop"] == pytest.approx(figures["initial_val_loss"] - figures["final_val_loss"])
    assert figures["val_loss_drop"] > 0  # six steps of the recipe's LoRA already move the loss
    assert figures["merge_max_abs_diff"] == 0.0 and not figures["tensors_only_in_one"]
    assert figures["merged_tensors_compared"] > 0
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(figures["adapter_files"])
    assert not list(Path(tempfile.gettempdir()).glob("sftc-lora-rehearsal-*"))  # nothing left behind
    lenient = config.model_copy(update={"min_val_loss_drop": figures["val_loss_drop"] / 2})
    assert rehearsal_problems(figures, lenient, "toy.yaml") == []
    summary = rehearsal_summary(figures)
    assert f"rank {recipe.rank} / alpha {recipe.alpha} on 5 targets ({figures['adapters']} adapters" in summary


def test_the_lora_rehearsal_names_a_loss_that_barely_falls_and_a_merge_that_differs(rehearsal):
    config, figures = rehearsal
    strict = config.model_copy(update={"min_val_loss_drop": figures["val_loss_drop"] + 1.0})
    (problem,) = rehearsal_problems(figures, strict, "configs/profiles/toy.yaml")
    assert f"min_val_loss_drop {strict.min_val_loss_drop:g}" in problem and "configs/profiles/toy.yaml" in problem
    assert "configs/nemo/finetune.yaml" in problem
    lenient = config.model_copy(update={"min_val_loss_drop": figures["val_loss_drop"] / 2})
    off = {**figures, "merge_max_abs_diff": 0.25, "tensors_only_in_one": ["model.layers.0.self_attn.o_proj.weight"]}
    (problem,) = rehearsal_problems(off, lenient, "toy.yaml")
    assert "does not merge to the merged checkpoint" in problem and "largest difference 0.25" in problem
    assert "model.layers.0.self_attn.o_proj.weight" in problem
    unparsed = config.model_copy(update={"min_val_loss_drop": figures["val_loss_drop"] / 2, "min_parse_rate": 0.5})
    (problem,) = rehearsal_problems({**figures, "parse_rate": 0.5 - 1e-9}, unparsed, "toy.yaml")
    assert "1 of the 2 validation answers of the rehearsed LoRA parse (parse rate 50%" in problem
    assert "lora_rehearsal.min_parse_rate 50%" in problem
    assert figures["longest_checked_answer_tokens"] > figures["max_new_tokens"] == EVALUATION.max_new_tokens
    assert f"the answers need up to {figures['longest_checked_answer_tokens']} tokens" in problem
    assert f"evaluation.max_new_tokens {EVALUATION.max_new_tokens} in toy.yaml cuts them" in problem  # not the LoRA
    (problem,) = rehearsal_problems({**figures, "parse_rate": 0.0, "max_new_tokens": 10**6}, unparsed, "toy.yaml")
    assert "the adapters do not learn the answer's layout; check the rank, alpha and targets" in problem
    assert rehearsal_problems({**figures, "parse_rate": 0.5}, unparsed, "toy.yaml") == []
    diverged = {**figures, "final_val_loss": float("nan"), "val_loss_drop": float("nan")}
    assert len(rehearsal_problems(diverged, lenient, "toy.yaml")) == 1  # a NaN loss did not fall


# --- the command line ---------------------------------------------------------------------------


def test_cli_smoke_test_trains_ten_steps(toy_inputs, data_dir, capsys):
    model_dir, nemo_dir = toy_inputs
    output = data_dir / "models" / "sft"
    rc = sftc_main(
        ["train", "--model", str(model_dir), "--data", str(nemo_dir), "--output", str(output), "--smoke-test"]
    )
    assert rc == 0, capsys.readouterr().err
    printed = json.loads(capsys.readouterr().out)
    assert printed["steps"] == 10 and printed["smoke_test"] is True and printed["train_examples"] <= 16
    assert len(read_csv(output / "training.csv")) == 10
    assert (output / "model.safetensors").is_file()


def test_cli_lora_rehearsal_prints_its_figures_and_fails_on_a_problem(toy_inputs, data_dir, capsys):
    model_dir, nemo_dir = toy_inputs
    rc = sftc_main(
        ["train", "--lora-rehearsal", "--model", str(model_dir), "--data", str(nemo_dir), "--max-steps", "3"]
    )
    printed = json.loads(capsys.readouterr().out)
    # three steps on random weights cannot fall the toy profile's 1.5 nats: the problem is named, exit 1
    assert rc == 1 and printed["steps"] == 3 and printed["merge_max_abs_diff"] == 0.0
    assert any("lora_rehearsal.min_val_loss_drop 1.5" in problem for problem in printed["problems"])
    assert not (data_dir / "models").exists()  # a rehearsal writes nothing
    rc = sftc_main(["train", "--lora-rehearsal", "--model", str(model_dir), "--smoke-test", "--output", "x"])
    assert rc == 2
    assert "--lora-rehearsal runs here and writes nothing: it does not take --output, --smoke-test" in (
        capsys.readouterr().err
    )


def test_cli_defaults_read_the_data_directory_and_missing_inputs_fail_clearly(data_dir, capsys):
    rc = sftc_main(["train", "--max-steps", "2"])
    err = capsys.readouterr().err
    assert rc == 2
    assert str(data_dir / "nemo_jsonl" / "training.jsonl") in err and "nemo_jsonl" in err
    assert not (data_dir / "models").exists()  # nothing written


def test_cli_refuses_a_foreign_output_directory(toy_inputs, tmp_path, capsys):
    output = tmp_path / "not-a-run"
    output.mkdir()
    (output / "notes.txt").write_text("keep me")
    rc = sftc_main(
        [
            "train",
            "--model",
            str(toy_inputs[0]),
            "--data",
            str(toy_inputs[1]),
            "--output",
            str(output),
            "--max-steps",
            "1",
        ]
    )
    assert rc == 2 and "is a non-empty directory that sftc did not write" in capsys.readouterr().err
    assert (output / "notes.txt").read_text() == "keep me"


def test_cli_nemo_backend_goes_to_the_nemo_runner(data_dir, capsys, monkeypatch):
    """TRAIN_BACKEND=nemo takes the NeMo path, whose 5-node default the local launcher (one node) refuses up front."""
    monkeypatch.setenv("TRAIN_BACKEND", "nemo")
    assert sftc_main(["train"]) == 2
    err = capsys.readouterr().err
    assert "finetune: the local launcher runs one node, the step asks for 5; use --launcher slurm or k8s" in err
    assert not (data_dir / "models").exists()


def test_missing_checkpoint_names_the_flag(tmp_path):
    data = write_nemo_jsonl(tmp_path / "nemo", train=4, validation=2)
    with pytest.raises(FileNotFoundError, match=r"config\.json missing.*--model DIR"):
        run_training(tmp_path / "nowhere", data, tmp_path / "out", short_training(), SFT, EVALUATION)
    assert not (tmp_path / "out").exists()


@pytest.mark.gpu
def test_cuda_run_uses_bf16_autocast_and_learns(toy_inputs, tmp_path):
    """Not run on CPU nodes: the CUDA path (bf16 autocast, fp32 master weights; LoRA over a bf16 base)."""
    full = run_training(*toy_inputs, tmp_path / "full", short_training(), SFT, EVALUATION, device="cuda")
    assert full.metrics["device"].startswith("cuda")
    assert full.metrics["final_val_loss"] < 0.85 * full.metrics["initial_val_loss"]
    lora = run_training(
        *toy_inputs,
        tmp_path / "lora",
        short_training(max_steps=4, peft="lora", learning_rate=1e-2),
        SFT,
        EVALUATION,
        device="cuda",
    )
    assert lora.metrics["peft"] == "lora" and lora.metrics["final_val_loss"] < lora.metrics["initial_val_loss"]
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "lora").dtype == torch.bfloat16

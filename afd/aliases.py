"""Other libraries' option names, read as afd's options.

Someone coming from TRL (``TrainingArguments``, ``SFTConfig``, ``RewardConfig``, ``ModelConfig``,
``ScriptArguments``), OpenRLHF or Axolotl keeps their flag names and YAML keys: each is read here,
in one place, as the afd option it means. Every such name is in one of four groups:

- ``RENAMED``: afd's option under another name (``learning_rate`` is ``lr``).
- ``CONVERTED``: something afd says differently (``use_peft: true`` is ``lora_r: 16``, TRL's
  default rank; ``input_template`` is a ``template`` holding ``{}``; ``chosen_key`` is a column).
- ``NO_EFFECT``: options that change nothing afd makes: logging and the hub, speed and memory
  knobs, evaluation scheduling. They are named once, in one sentence, and otherwise ignored.
- ``UNSUPPORTED``: options that would change what is trained, which afd does not do (packing,
  4-bit loading, DoRA, another optimiser). Set to a value that changes nothing
  (``packing: false``) they are named like ``NO_EFFECT``; set to anything else, the stage stops
  before any work with one sentence naming the option and why.

The line between the last two: an option is ignored only when the model afd trains without it is
the model the option asks for (up to speed, memory and logging); otherwise it is refused.

A name that is also one of the stage's own options (``max_length``, ``lora_r``, ``seed``) is
afd's option. A renamed option whose afd option the stage lacks (``model_name_or_path`` given to
``afd bon``) is named as having no effect there.
"""

from __future__ import annotations

from typing import Any, Callable

from afd.errors import ConfigError

RENAMED = {
    # transformers.TrainingArguments
    "learning_rate": "lr", "num_train_epochs": "epochs", "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum", "lr_scheduler_type": "lr_scheduler", "output_dir": "out",
    "activation_checkpointing": "gradient_checkpointing",
    # TRL's ModelConfig, ScriptArguments, SFTConfig (older releases: max_seq_length)
    "model_name_or_path": "model", "torch_dtype": "dtype", "dataset_name": "data",
    "dataset_train_split": "data_split", "max_seq_length": "max_length",
    # OpenRLHF
    "pretrain": "model", "dataset": "data", "dataset_split": "data_split", "save_path": "out",
    "max_epochs": "epochs", "micro_train_batch_size": "batch_size", "max_len": "max_length",
    "prompt_max_len": "max_prompt_length", "lora_rank": "lora_r", "target_modules": "lora_target_modules",
    "l2": "weight_decay", "lr_warmup_ratio": "warmup_ratio", "max_samples": "max_examples",
    # Axolotl
    "base_model": "model", "sequence_len": "max_length", "micro_batch_size": "batch_size",
    "num_epochs": "epochs", "val_set_size": "eval_fraction",
}

NO_EFFECT = (
    # logging, tracking, the hub
    "run_name", "project", "logging_dir", "logging_strategy", "logging_first_step", "logging_nan_inf_filter",
    "log_level", "log_level_replica", "log_on_each_node", "disable_tqdm", "trackio_space_id",
    "trackio_bucket_id", "trackio_static_space_id", "hub_model_id", "hub_strategy", "hub_token",
    "hub_private_repo", "hub_always_push", "hub_revision", "skip_memory_metrics", "include_num_input_tokens_seen",
    "wandb_project", "wandb_entity", "wandb_name", "wandb_run_id", "wandb_log_model", "wandb_watch",
    "wandb_group", "wandb_org", "use_ms", "strict",
    # checkpoints (afd saves every save_steps, keeps two, resumes by itself)
    "save_strategy", "save_total_limit", "save_only_model", "save_on_each_node", "overwrite_output_dir",
    "resume_from_checkpoint", "saves_per_epoch", "ckpt_path", "max_ckpt_num", "max_ckpt_mem",
    "restore_callback_states_from_checkpoint",
    # evaluation (afd evaluates on eval_fraction of the data, at the start, the end and every eval_steps)
    "eval_strategy", "evaluation_strategy", "eval_on_start", "eval_delay", "eval_accumulation_steps",
    "per_device_eval_batch_size", "micro_eval_batch_size", "prediction_loss_only", "batch_eval_metrics",
    "eval_do_concat_batches", "eval_use_gather_object", "include_for_metrics", "metric_for_best_model",
    "greater_is_better", "dataset_test_split", "evals_per_epoch", "eval_packing", "do_train", "do_eval",
    "do_predict", "bf16_full_eval", "fp16_full_eval",
    # speed, memory and processes: the same model, sooner or in less memory
    "tf32", "attn_implementation", "flash_attn", "flash_attention", "xformers_attention",
    "sdp_attention", "torch_compile", "torch_compile_backend", "torch_compile_mode", "use_liger_kernel",
    "liger_kernel_config", "padding_free", "pad_to_multiple_of", "pad_to_sequence_len", "activation_offloading",
    "gradient_checkpointing_kwargs", "activation_checkpointing_kwargs", "auto_find_batch_size",
    "torch_empty_cache_steps", "enable_jit_checkpoint", "use_cache", "average_tokens_across_devices",
    "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers",
    "dataloader_prefetch_factor", "dataloader_drop_last", "dataloader_in_order", "dataloader_multiprocessing_context",
    "dataset_num_proc", "dataset_streaming", "dataset_prepared_path", "remove_unused_columns", "shuffle_dataset",
    "group_by_length", "ddp_backend", "ddp_timeout", "ddp_find_unused_parameters", "ddp_bucket_cap_mb",
    "ddp_broadcast_buffers", "ddp_static_graph", "local_rank", "zero_stage", "full_determinism", "debug",
    "data_seed", "bnb_4bit_quant_type", "use_bnb_nested_quant", "bnb_4bit_quant_storage", "lora_task_type",
    "router_aux_loss_coef", "ignore_bias_buffers", "packing_strategy", "lora_target_linear", "pad_token",
    "disable_dropout", "gradient_checkpointing_use_reentrant", "accelerator_config", "parallelism_config",
    "train_sampling_strategy", "length_column_name", "label_names",
)

# name: (values with which it changes nothing afd does, why any other value is refused)
UNSUPPORTED: dict[str, tuple[tuple, str]] = {
    "packing": ((False, None), "afd pads every example and never packs several into one sequence"),
    "sample_packing": ((False, None), "afd pads every example and never packs several into one sequence"),
    "completion_only_loss": ((True, None), "afd trains on the replies only, never on the prompt"),
    "train_on_inputs": ((False, None), "afd trains on the replies only, never on the prompt"),
    "dataset_text_field": (("text", None), "afd reads prompts with replies (or conversations), not plain text "
                                           "to model"),
    "dataset_config": ((None, "default"), "afd loads a hub dataset's default configuration"),
    "dataset_kwargs": ((None,), "afd has no dataset-preparation hooks"),
    "model_revision": (("main", None), "afd loads a model's main revision (download another into a folder)"),
    "trust_remote_code": ((False, None), "afd loads models without running code from the hub"),
    "load_in_4bit": ((False, None), "afd does not quantise models"),
    "load_in_8bit": ((False, None), "afd does not quantise models"),
    "adapter": ((None, "lora"), "afd trains full models or LoRA adapters (lora_r), not quantised QLoRA ones"),
    "use_rslora": ((False, None), "afd's LoRA is plain LoRA"),
    "use_dora": ((False, None), "afd's LoRA is plain LoRA"),
    "lora_modules_to_save": ((None,), "afd's LoRA trains the adapters only"),
    "lora_target_parameters": ((None,), "afd's LoRA targets modules (lora_target_modules)"),
    "model_init_kwargs": ((None,), "afd loads models with its own options (dtype, device)"),
    "chat_template_path": ((None,), "afd renders prompts with the tokenizer's own chat template"),
    "chat_template": ((None, "tokenizer_default"), "afd renders prompts with the tokenizer's own chat template"),
    "tokenizer_chat_template": ((None,), "afd renders prompts with the tokenizer's own chat template"),
    "special_tokens": ((None,), "afd uses the tokenizer's own special tokens"),
    "eos_token": ((None,), "afd ends every reply with the tokenizer's own EOS token"),
    "truncation_mode": (("keep_start", None), "afd cuts an over-long reply at its end"),
    "loss_type": (("nll", None), "afd's SFT loss is the token-level negative log-likelihood"),
    "loss": (("sigmoid", None), "afd's pairwise loss is -log sigmoid(r_chosen - r_rejected)"),
    "center_rewards_coefficient": ((None, 0), "afd's reward losses have no centring term"),
    "optim": (("adamw_torch", "adamw_torch_fused", "adamw_hf", None), "afd trains with AdamW"),
    "optimizer": (("adamw_torch", "adamw_torch_fused", "adamw_hf", None), "afd trains with AdamW"),
    "adam_beta1": ((0.9, None), "afd uses AdamW's default betas"),
    "adam_beta2": ((0.999, None), "afd uses AdamW's default betas"),
    "adam_betas": (((0.9, 0.999), [0.9, 0.999], None), "afd uses AdamW's default betas"),
    "adam_epsilon": ((1e-8, None), "afd uses AdamW's default epsilon"),
    "max_grad_norm": ((1.0, None), "afd clips gradients at norm 1.0"),
    "max_norm": ((1.0, None), "afd clips gradients at norm 1.0"),
    "label_smoothing_factor": ((0, None), "afd's losses have no label smoothing"),
    "neftune_noise_alpha": ((None,), "afd adds no noise to the embeddings"),
    "lr_scheduler_kwargs": ((None,), "afd's schedules take no extra arguments"),
    "load_best_model_at_end": ((False, None), "afd saves the model at the end of training"),
    "push_to_hub": ((False, None), "afd writes a model folder with its card; upload it with `hf upload`"),
    "deepspeed": ((None,), "afd runs DeepSpeed and FSDP through `accelerate launch --config_file`"),
    "fsdp": ((None, ""), "afd runs DeepSpeed and FSDP through `accelerate launch --config_file`"),
    "fsdp_config": ((None,), "afd runs DeepSpeed and FSDP through `accelerate launch --config_file`"),
    "train_detail": ((None,), "afd trains whole assistant turns, not spans inside them"),
}


def _true(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def _use_peft(value, source):
    # TRL trains LoRA only with use_peft, at its ModelConfig's default rank 16 unless lora_r says otherwise
    return ({}, {"lora_r": 16}) if _true(value) else ({"lora_r": 0}, {})


def _warmup_steps(value, source):
    steps = float(value)
    if 0 <= steps < 1:  # transformers 5 reads a fraction as the warm-up ratio
        return {"warmup_ratio": steps}, {}
    raise ConfigError(f"option 'warmup_steps' ({value}) is a number of steps, which afd does not take; give "
                      f"the warm-up as a share of the steps with warmup_ratio")


def _train_batch_size(value, source):
    # OpenRLHF's global batch: micro_train_batch_size sequences a step, accumulated to train_batch_size
    micro = source.get("micro_train_batch_size", source.get("micro-train-batch-size"))
    if micro in (None, "") or int(value) % int(micro):
        raise ConfigError(f"option 'train_batch_size' ({value}) needs micro_train_batch_size beside it, dividing it")
    return {}, {"grad_accum": int(value) // int(micro)}


def _column(canonical: str) -> Callable:
    return lambda value, source: ({"columns": {canonical: str(value)}}, {}) if value not in (None, "") else ({}, {})


def _report(to: str) -> Callable:
    return lambda value, source: ({"report_to": [to]}, {}) if value not in (None, False, "", "false") else ({}, {})


def _axolotl_datasets(value, source):
    """Axolotl's ``datasets:`` list, one entry: its path, split, type and conversation mapping."""
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], dict):
        raise ConfigError("option 'datasets' must hold exactly one dataset: afd reads one data file per stage")
    entry = dict(value[0])
    out: dict[str, Any] = {}
    if "path" in entry:
        out["data"] = entry.pop("path")
    if "split" in entry:
        out["data_split"] = entry.pop("split")
    kind = entry.pop("type", None)
    formats = {"alpaca": "alpaca", "sharegpt": "sharegpt", "chat_template": "auto", None: "auto"}
    if isinstance(kind, dict) or kind not in formats:
        raise ConfigError(f"option 'datasets' has type {kind!r}, which afd does not read; afd reads chat_template, "
                          f"sharegpt and alpaca datasets")
    out["data_format"] = formats[kind]
    field = entry.pop("field_messages", None)
    if field not in (None, "messages", "conversations"):
        out["columns"] = {"messages": field}
    keys = dict(entry.pop("message_property_mappings", None) or {})
    for old, key in (("message_field_role", "role"), ("message_field_content", "content")):
        if old in entry:
            keys[key] = entry.pop(old)
    if keys:
        out["message_keys"] = keys
    if "roles" in entry:  # Axolotl maps each role to the file's names for it: {assistant: [gpt, bot]}
        roles = entry.pop("roles") or {}
        out["roles"] = {str(name): str(role) for role, names in roles.items()
                        for name in (names if isinstance(names, list) else [names])}
    roles_to_train = entry.pop("roles_to_train", ["assistant"])
    if roles_to_train not in (None, [], ["assistant"], ["gpt", "assistant"], ["assistant", "gpt"]):
        raise ConfigError(f"option 'datasets' has roles_to_train {roles_to_train}; afd trains assistant turns only")
    if roles_to_train:  # Axolotl trains every assistant turn
        out["assistant_only_loss"] = True
    if entry.pop("message_field_training", "train") != "train":
        raise ConfigError("option 'datasets' names another per-turn training field; afd reads the 'train' key "
                          "of each message")
    if entry.pop("message_field_training_detail", None):
        raise ConfigError(f"option 'datasets' has message_field_training_detail; {UNSUPPORTED['train_detail'][1]}")
    entry.pop("train_on_eos", None)  # afd trains each trained turn's end (its EOS)
    entry.pop("ds_type", None)
    entry.pop("chat_template", None)
    if entry:
        raise ConfigError(f"option 'datasets' has key '{sorted(entry)[0]}', which afd does not read")
    return out, {}


CONVERTED: dict[str, Callable[[Any, dict], tuple[dict, dict]]] = {
    # name: (value, the whole source) -> (options it sets, options it sets only where nothing else does)
    "use_peft": _use_peft,
    "fp16": lambda value, source: ({"dtype": "float16"}, {}) if _true(value) else ({}, {}),
    "use_cpu": lambda value, source: ({"device": "cpu"}, {}) if _true(value) else ({}, {}),
    "no_cuda": lambda value, source: ({"device": "cpu"}, {}) if _true(value) else ({}, {}),
    "warmup_steps": _warmup_steps,
    # OpenRLHF: a prompt template "User: {}\nAssistant: ", the chat template, and the data's keys
    "input_template": lambda value, source: ({"template": value}, {}) if value else ({}, {}),
    "apply_chat_template": lambda value, source: ({"template": "chat"}, {}) if _true(value) else ({}, {"template": "raw"}),
    "input_key": _column("prompt"), "prompt_key": _column("prompt"), "output_key": _column("response"),
    "chosen_key": _column("chosen"), "rejected_key": _column("rejected"), "label_key": _column("label"),
    "use_wandb": _report("wandb"), "use_tensorboard": _report("tensorboard"), "train_batch_size": _train_batch_size,
    # Axolotl
    "datasets": _axolotl_datasets,
}

MERGED = ("columns", "message_keys", "roles", "report_to")  # set by several names at once: merged, not replaced
JOINED = ("lora_target_modules",)  # afd writes a list as comma-separated text (PEFT's syntax); the peers as a list


def known(name: str) -> bool:
    return name in RENAMED or name in CONVERTED or name in UNSUPPORTED or name in NO_EFFECT


def _norm(value: Any) -> str:
    if value in ("", [], {}) or value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return ",".join(_norm(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip().lower()
    try:  # "1e-08" and 1e-8, "0.9" and 0.9 read alike
        number = float(text)
        return str(int(number)) if number.is_integer() else repr(number)
    except ValueError:
        return "none" if text == "null" else text


def no_effect_with(name: str, value: Any) -> bool:
    fine, _ = UNSUPPORTED[name]
    return _norm(value) in {_norm(f) for f in fine}


def _as_dict(value: Any) -> Any:
    """A mapping given on the command line (``a=b,c=d``) as a dict; anything else as it is."""
    if isinstance(value, str) and "=" in value:
        return dict(p.split("=", 1) for p in value.split(",") if p.strip())
    return value


def _merge(into: dict, key: str, value: Any) -> None:
    if key in MERGED and key in into:
        old, value = _as_dict(into[key]), _as_dict(value)
        if isinstance(old, dict) and isinstance(value, dict):
            into[key] = {**old, **value}
            return
        if key == "report_to":
            as_list = lambda v: [s.strip() for s in v.split(",")] if isinstance(v, str) else list(v)
            into[key] = [r for r in dict.fromkeys(as_list(old) + as_list(value)) if r != "none"] or ["none"]
            return
    into[key] = value


def translate(data: dict, fields: set[str], where: str) -> tuple[dict, dict, list[str]]:
    """Read ``data`` (one source: a YAML file or the command line; keys with ``-`` or ``_``) as
    afd options of a stage whose options are ``fields``. Returns (options, options set only where
    no source sets them, names of options that mean nothing to this stage). An unsupported
    option with a value that matters raises ``ConfigError``; names neither afd's nor a peer's are
    left for the caller to report as unknown."""
    options: dict[str, Any] = {}
    converted: dict[str, Any] = {}
    soft: dict[str, Any] = {}
    ignored: list[str] = []
    given_as: dict[str, str] = {}
    for raw, value in (data or {}).items():
        name = str(raw).replace("-", "_")
        if name in fields or not known(name):
            target = name
        elif name in RENAMED:
            target = RENAMED[name]
            if target not in fields:
                ignored.append(name)
                continue
        elif name in CONVERTED:
            hard, weak = CONVERTED[name](value, data)
            for key, v in hard.items():
                if key in fields:
                    _merge(converted, key, v)
            soft.update({k: v for k, v in weak.items() if k in fields})
            if not any(k in fields for k in (*hard, *weak)) and (hard or weak):
                ignored.append(name)
            continue
        elif name in UNSUPPORTED:
            if not no_effect_with(name, value):
                raise ConfigError(f"option '{name}' ({value!r}) in {where} is not supported: "
                                  f"{UNSUPPORTED[name][1]}; remove it")
            ignored.append(name)
            continue
        else:
            ignored.append(name)
            continue
        if target in given_as and target not in MERGED:
            raise ConfigError(f"options '{given_as[target]}' and '{name}' in {where} both set afd's option "
                              f"'{target}'; keep one")
        given_as[target] = name
        if target in JOINED and isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        _merge(options, target, value)
    for key, value in converted.items():
        _merge(options, key, value)
    return options, soft, ignored

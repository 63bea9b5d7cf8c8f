"""Composed training settings (issue 21) validated once at start-up (issue 24 items 1 and 12).

The flag set and defaults below were dumped from the parsers as they were before TrainConfig was split into
sub-configs; the composed parsers must reproduce them exactly (names, defaults, choices, types, hidden flags).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass

import pytest

from sftbench.core.cli import Composed, composed, config_defaults, flat_fields, section, setting
from sftbench.core.errors import UserError
from sftbench.data.demo import DEMO_DATA

DEMO = str(DEMO_DATA)

# {option strings: (dest, default, choices, type name, nargs, const, hidden from --help)}
PINNED_TRAIN = {
    '--model_name_or_path': ('model_name_or_path', 'smollm2-135m-instruct-offline', None, 'str', None, None, False),
    '--data_path': ('data_path', DEMO, None, 'str', None, None, False),
    '--output_dir': ('output_dir', 'runs/demo', None, 'str', None, None, False),
    '--resume_from_checkpoint': ('resume_from_checkpoint', None, None, 'str', None, None, False),
    '--start_over': ('start_over', False, None, 'str2bool', '?', True, False),
    '--allow_changed_settings': ('allow_changed_settings', False, None, 'str2bool', '?', True, False),
    '--num_train_epochs': ('num_train_epochs', 5.0, None, 'float', None, None, False),
    '--max_steps': ('max_steps', -1, None, 'int', None, None, False),
    '--per_device_train_batch_size': ('per_device_train_batch_size', 1, None, 'int', None, None, False),
    '--gradient_accumulation_steps': ('gradient_accumulation_steps', 64, None, 'int', None, None, False),
    '--effective_batch': ('effective_batch', None, None, 'int', None, None, False),
    '--learning_rate': ('learning_rate', 4e-05, None, 'float', None, None, False),
    '--weight_decay': ('weight_decay', 0.0, None, 'float', None, None, False),
    '--adam_beta1': ('adam_beta1', 0.9, None, 'float', None, None, False),
    '--adam_beta2': ('adam_beta2', 0.999, None, 'float', None, None, False),
    '--adam_epsilon': ('adam_epsilon', 1e-08, None, 'float', None, None, False),
    '--max_grad_norm': ('max_grad_norm', 1.0, None, 'float', None, None, False),
    '--lr_scheduler_type': ('lr_scheduler_type', 'cosine', ('linear', 'cosine', 'constant', 'constant_with_warmup'), 'str', None, None, False),
    '--warmup_ratio': ('warmup_ratio', 0.0, None, 'float', None, None, False),
    '--warmup_steps': ('warmup_steps', 0, None, 'float', None, None, False),
    '--seed': ('seed', 42, None, 'int', None, None, False),
    '--model_max_length': ('model_max_length', 1024, None, 'int', None, None, False),
    '--max_rounds': ('max_rounds', 6, None, 'int', None, None, False),
    '--truncation_side': ('truncation_side', 'right', ('right', 'left', 'rounds'), 'str', None, None, False),
    '--masking': ('masking', 'assistant', ('assistant', 'homework'), 'str', None, None, False),
    '--chat_template': ('chat_template', None, None, 'str', None, None, False),
    '--skip_bad_records': ('skip_bad_records', False, None, 'str2bool', '?', True, False),
    '--data_cache_dir': ('data_cache_dir', None, None, 'str', None, None, False),
    '--special_tokens_in_content': ('special_tokens_in_content', 'text', ('text', 'refuse'), 'str', None, None, False),
    '--keep_contaminated': ('keep_contaminated', False, None, 'str2bool', '?', True, False),
    '--augment_fraction': ('augment_fraction', 0.0, None, 'float', None, None, False),
    '--augment_types': ('augment_types', 'all', None, 'str', None, None, False),
    '--augment_hold_out_types': ('augment_hold_out_types', 'default', None, 'str', None, None, False),
    '--augment_max_constraints': ('augment_max_constraints', 3, None, 'int', None, None, False),
    '--augment_seed': ('augment_seed', 0, None, 'int', None, None, False),
    '--augment_targets': ('augment_targets', 'data', ('data', 'self'), 'str', None, None, False),
    '--augment_samples': ('augment_samples', 4, None, 'int', None, None, False),
    '--augment_temperature': ('augment_temperature', 0.7, None, 'float', None, None, False),
    '--augment_max_new_tokens': ('augment_max_new_tokens', 1024, None, 'int', None, None, False),
    '--precision': ('precision', 'auto', ('auto', 'bf16', 'fp16', 'fp32'), 'str', None, None, False),
    '--bf16': ('bf16', False, None, 'str2bool', '?', True, False),
    '--fp16': ('fp16', False, None, 'str2bool', '?', True, False),
    '--gradient_checkpointing': ('gradient_checkpointing', False, None, 'str2bool', '?', True, False),
    '--loss_chunk_size': ('loss_chunk_size', 1024, None, 'int', None, None, False),
    '--engine': ('engine', 'auto', ('auto', 'reference', 'fast'), 'str', None, None, False),
    '--token_budget': ('token_budget', 0, None, 'int', None, None, False),
    '--attention': ('attention', 'auto', ('auto', 'varlen', 'buckets', 'flex', 'sdpa'), 'str', None, None, False),
    '--fuse_projections': ('fuse_projections', True, None, 'str2bool', '?', True, False),
    '--no_fuse_projections': ('fuse_projections', True, None, None, 0, False, True),
    '--cuda_graphs': ('cuda_graphs', True, None, 'str2bool', '?', True, False),
    '--no_cuda_graphs': ('cuda_graphs', True, None, None, 0, False, True),
    '--compile': ('compile', 'auto', ('auto', 'on', 'off'), 'str', None, None, False),
    '--vram_target_gib': ('vram_target_gib', 6.0, None, 'float', None, None, False),
    '--method': ('method', 'full', ('full', 'lora'), 'str', None, None, False),
    '--lora_rank': ('lora_rank', 16, None, 'int', None, None, False),
    '--auto_batch': ('auto_batch', False, None, 'str2bool', '?', True, False),
    '--oom_fallback': ('oom_fallback', False, None, 'str2bool', '?', True, False),
    '--device': ('device', 'auto', None, 'str', None, None, False),
    '--memory_cap_gib': ('memory_cap_gib', None, None, 'float', None, None, False),
    '--save_steps': ('save_steps', 20, None, 'int', None, None, False),
    '--save_total_limit': ('save_total_limit', None, None, 'int', None, None, False),
    '--keep_weights_limit': ('keep_weights_limit', None, None, 'int', None, None, False),
    '--logging_steps': ('logging_steps', 1, None, 'int', None, None, False),
    '--report_to': ('report_to', 'none', ('none', 'tensorboard', 'wandb'), 'str', None, None, False),
    '--progress': ('progress', True, None, 'str2bool', '?', True, False),
    '--no_progress': ('progress', True, None, None, 0, False, True),
}
PINNED_PLAN = {
    '--model_name_or_path': ('model_name_or_path', 'smollm2-135m-instruct-offline', None, 'str', None, None, False),
    '--data_path': ('data_path', DEMO, None, 'str', None, None, False),
    '--num_train_epochs': ('num_train_epochs', 5.0, None, 'float', None, None, False),
    '--per_device_train_batch_size': ('per_device_train_batch_size', 1, None, 'int', None, None, False),
    '--gradient_accumulation_steps': ('gradient_accumulation_steps', 64, None, 'int', None, None, False),
    '--model_max_length': ('model_max_length', 1024, None, 'int', None, None, False),
    '--gradient_checkpointing': ('gradient_checkpointing', False, None, 'str2bool', '?', True, False),
    '--loss_chunk_size': ('loss_chunk_size', 1024, None, 'int', None, None, False),
    '--engine': ('engine', 'auto', ('auto', 'reference', 'fast'), 'str', None, None, False),
    '--token_budget': ('token_budget', 0, None, 'int', None, None, False),
    '--vram_target_gib': ('vram_target_gib', 6.0, None, 'float', None, None, False),
    '--method': ('method', 'full', ('full', 'lora'), 'str', None, None, False),
    '--lora_rank': ('lora_rank', 16, None, 'int', None, None, False),
    '--memory_cap_gib': ('memory_cap_gib', None, None, 'float', None, None, False),
    '--avg_tokens': ('avg_tokens', None, None, 'float', None, None, False),
    '--precision': ('precision', 'auto', ('auto', 'bf16', 'fp16', 'fp32'), 'str', None, None, False),
    '--lora_base_dtype': ('lora_base_dtype', 'fp32', ('fp32', 'bf16'), 'str', None, None, False),
    '--optimizer': ('optimizer', 'fused', ('fused', 'foreach'), 'str', None, None, False),
    '--both_engines': ('both_engines', False, None, 'str2bool', '?', True, False),
    '--checkpoint_layers': ('checkpoint_layers', None, None, 'int', None, None, False),
    '--gpu': ('gpu', None, None, 'str', None, None, False),
    '--gpu_mem_gib': ('gpu_mem_gib', None, None, 'float', None, None, False),
    '--num_gpus': ('num_gpus', 1, None, 'int', None, None, False),
    '--tokens_per_s': ('tokens_per_s', None, None, 'float', None, None, False),
    '--json': ('json', False, None, 'str2bool', '?', True, False),
    '--price': ('price', [], None, None, None, None, False),
}
PINNED_INSPECT = {
    'data_path': ('data_path', None, None, None, None, None, False),
    '--tokenizer': ('tokenizer', 'smollm2-135m-instruct-offline', None, 'str', None, None, False),
    '--model_max_length': ('model_max_length', 1024, None, 'int', None, None, False),
    '--max_rounds': ('max_rounds', 6, None, 'int', None, None, False),
    '--masking': ('masking', 'assistant', ('assistant', 'homework'), 'str', None, None, False),
    '--truncation_side': ('truncation_side', 'right', ('right', 'left', 'rounds'), 'str', None, None, False),
    '--chat_template': ('chat_template', None, None, 'str', None, None, False),
    '--skip_bad_records': ('skip_bad_records', False, None, 'str2bool', '?', True, False),
    '--special_tokens_in_content': ('special_tokens_in_content', 'text', ('text', 'refuse'), 'str', None, None, False),
    '--show': ('show', 1, None, 'int', None, None, False),
    '--index': ('index', 0, None, 'int', None, None, False),
}

# TrainConfig().to_dict() before the split: the flat dict every checkpoint's sft_config.json holds
TODAY_DEFAULTS = {
    'model_name_or_path': 'smollm2-135m-instruct-offline',
    'data_path': DEMO,
    'output_dir': 'runs/demo',
    'resume_from_checkpoint': None,
    'start_over': False,
    'allow_changed_settings': False,
    'num_train_epochs': 5.0,
    'max_steps': -1,
    'per_device_train_batch_size': 1,
    'gradient_accumulation_steps': 64,
    'effective_batch': None,
    'learning_rate': 4e-05,
    'weight_decay': 0.0,
    'adam_beta1': 0.9,
    'adam_beta2': 0.999,
    'adam_epsilon': 1e-08,
    'max_grad_norm': 1.0,
    'lr_scheduler_type': 'cosine',
    'warmup_ratio': 0.0,
    'warmup_steps': 0,
    'seed': 42,
    'model_max_length': 1024,
    'max_rounds': 6,
    'truncation_side': 'right',
    'masking': 'assistant',
    'chat_template': None,
    'skip_bad_records': False,
    'data_cache_dir': None,
    'special_tokens_in_content': 'text',
    'keep_contaminated': False,
    'augment_fraction': 0.0,
    'augment_types': 'all',
    'augment_hold_out_types': 'default',
    'augment_max_constraints': 3,
    'augment_seed': 0,
    'augment_targets': 'data',
    'augment_samples': 4,
    'augment_temperature': 0.7,
    'augment_max_new_tokens': 1024,
    'precision': 'auto',
    'bf16': False,
    'fp16': False,
    'gradient_checkpointing': False,
    'loss_chunk_size': 1024,
    'engine': 'auto',
    'token_budget': 0,
    'attention': 'auto',
    'fuse_projections': True,
    'cuda_graphs': True,
    'compile': 'auto',
    'vram_target_gib': 6.0,
    'method': 'full',
    'lora_rank': 16,
    'auto_batch': False,
    'oom_fallback': False,
    'device': 'auto',
    'memory_cap_gib': None,
    'save_steps': 20,
    'save_total_limit': None,
    'keep_weights_limit': None,
    'logging_steps': 1,
    'report_to': 'none',
    'progress': True,
}


def _dump(parser: argparse.ArgumentParser) -> dict:
    out = {}
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction):
            continue
        t = getattr(a.type, "__name__", None) if a.type else None
        out["|".join(a.option_strings) or a.dest] = (
            a.dest, a.default, tuple(a.choices) if a.choices else None, t, a.nargs, a.const, a.help == argparse.SUPPRESS)
    return out


def _train_parser():
    from sftbench.config.train import build_parser

    return build_parser()[0]


def _added_augment_settings() -> dict:
    """{flat name: default} of AugmentConfig fields added after the pin: composed, they reach the trainer as
    --augment_<field> with no edit to TrainConfig (that is the point); nothing else may be added."""
    from sftbench.data.augment import AugmentConfig

    return {f"augment_{f.name}": getattr(AugmentConfig(), f.name) for f in dataclasses.fields(AugmentConfig)
            if f.name != "model" and f"augment_{f.name}" not in TODAY_DEFAULTS}


# ------------------------------------------------------------------------------------ the flags did not change
def test_train_flags_and_defaults_are_the_pinned_set():
    now = _dump(_train_parser())
    assert {k: now.get(k) for k in PINNED_TRAIN} == PINNED_TRAIN
    added = _added_augment_settings()
    assert set(now) - set(PINNED_TRAIN) == ({f"--{n}" for n in added}
                                            | {f"--no_{n}" for n, v in added.items() if v is True})
    for n, v in added.items():
        assert now[f"--{n}"][:2] == (n, v)


def test_plan_flags_and_defaults_are_the_pinned_set():
    from sftbench.plan.config import build_parser

    assert _dump(build_parser()[0]) == PINNED_PLAN


def test_conversation_func_flags_and_defaults_are_the_pinned_set():
    from sftbench.data.cli import build_parser

    assert _dump(build_parser()[0]) == PINNED_INSPECT


def test_help_is_grouped_by_sub_config():
    text = _train_parser().format_help()
    heads = ["data:", "augmentation:", "optimizer:", "precision, memory, speed:", "checkpoints and logs:"]
    at = [text.index("\n" + h + "\n") for h in heads]
    assert at == sorted(at)
    for flag, group in (("--masking", 0), ("--augment_targets", 1), ("--learning_rate", 2), ("--attention", 3),
                        ("--save_total_limit", 4)):
        i = text.index(f"\n  {flag} ")
        assert at[group] < i and (group == 4 or i < at[group + 1]), flag
    # the sub-config's own `--field` mentions read as this CLI's flags
    assert "--augment_targets self: samples per prompt." in " ".join(text.split())
    assert "model's (--model_name_or_path) answers" in " ".join(text.split())


DATED = r"H100|H200|A100|\d{4}-\d{2}-\d{2}|\d x the|%|\d+ s with"


def test_help_texts_say_what_a_flag_does_not_dated_figures():
    for name, leaf in flat_fields(__import__("sftbench.config.train", fromlist=["TrainConfig"]).TrainConfig).items():
        assert not re.search(DATED, leaf.help), (name, leaf.help)


@pytest.mark.parametrize("module, cls", [("sftbench.plan.config", "PlanConfig"), ("sftbench.eval.config", "EvalConfig"),
                                         ("sftbench.eval.config", "SweepConfig"), ("sftbench.data.augment", "AugmentConfig")])
def test_every_cli_help_is_free_of_dated_figures(module, cls):
    import dataclasses
    import importlib

    for f in dataclasses.fields(getattr(importlib.import_module(module), cls)):
        assert not re.search(DATED, f.metadata.get("help", "")), (cls, f.name, f.metadata.get("help"))


# ------------------------------------------------------------------------------------ composition
def test_sub_configs_live_in_the_layer_that_owns_them():
    from sftbench.config.train import EngineConfig, LogConfig, OptimConfig, TrainConfig
    from sftbench.data.augment import AugmentConfig
    from sftbench.data.config import DataConfig

    cfg = TrainConfig()
    assert [(f.name, type(getattr(cfg, f.name))) for f in dataclasses.fields(cfg) if f.metadata.get("section")] == [
        ("data", DataConfig), ("augment", AugmentConfig), ("optim", OptimConfig), ("compute", EngineConfig),
        ("log", LogConfig)]
    assert DataConfig.__module__ == "sftbench.data.config" and AugmentConfig.__module__ == "sftbench.data.augment"
    # the trainer composes the data layer's AugmentConfig with one override: augmentation off
    assert cfg.augment == AugmentConfig(fraction=0.0) and AugmentConfig().fraction == 0.5


def test_flat_access_reads_and_writes_the_owning_sub_config():
    from sftbench.config.train import TrainConfig

    cfg = TrainConfig(learning_rate=1e-3, masking="homework", augment_fraction=0.25, token_budget=4096, seed=7)
    assert (cfg.optim.learning_rate, cfg.data.masking, cfg.augment.fraction, cfg.compute.token_budget, cfg.seed) == (
        1e-3, "homework", 0.25, 4096, 7)
    cfg.save_steps = 3
    cfg.token_budget //= 2
    assert (cfg.log.save_steps, cfg.compute.token_budget, cfg.token_budget) == (3, 2048, 2048)
    assert cfg.learning_rate is cfg.optim.learning_rate
    assert not hasattr(cfg, "augment_model")  # the trainer's augment model is --model_name_or_path
    with pytest.raises(TypeError, match="no_such_flag"):
        TrainConfig(no_such_flag=1)
    with pytest.raises(AttributeError):
        cfg.no_such_flag
    # copies do not share their sub-configs
    other = dataclasses.replace(cfg, learning_rate=5e-5)
    other.masking = "assistant"
    assert (cfg.learning_rate, cfg.masking, other.learning_rate) == (1e-3, "homework", 5e-5)
    assert cfg.effective_warmup_steps(100) == 0 and TrainConfig(warmup_ratio=0.1).effective_warmup_steps(100) == 10


def test_flat_names_are_unique_and_a_duplicate_is_refused():
    from sftbench.config.train import TrainConfig

    leaves = flat_fields(TrainConfig)
    assert list(leaves) == list(dict.fromkeys(leaves)) and set(leaves) == set(TODAY_DEFAULTS) | set(_added_augment_settings())
    sections = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("section")}
    assert not sections & set(leaves)

    @dataclass
    class A:
        lr: float = setting(1.0, "a")

    @composed
    @dataclass
    class B(Composed):
        lr: float = setting(2.0, "b")
        a: A = section(A, "a")

    with pytest.raises(ValueError, match="'lr' is used twice"):
        flat_fields(B)


def test_to_dict_is_todays_flat_dict_and_from_dict_reads_it_back():
    from sftbench.config.train import TrainConfig, parse_train_config

    d = TrainConfig().to_dict()
    assert d == TODAY_DEFAULTS | _added_augment_settings() and list(d) == list(config_defaults(TrainConfig))
    assert config_defaults(TrainConfig) == d
    assert TrainConfig.from_dict(d) == TrainConfig()
    assert TrainConfig.from_dict(TODAY_DEFAULTS) == TrainConfig()  # an older checkpoint's sft_config.json
    cfg = parse_train_config(["--learning_rate", "1e-4", "--augment_fraction", "0.5", "--augment_targets", "self",
                              "--fp16", "True", "--max_rounds", "-1", "--save_total_limit", "2"])
    saved = cfg.to_dict() | {"resolved_model_path": "/x", "world_size": 2}  # what sft_config.json holds besides
    back = TrainConfig.from_dict(saved)
    assert back == cfg and back.to_dict() == cfg.to_dict()
    assert (back.optim.learning_rate, back.augment.targets, back.compute.fp16, back.data.max_rounds) == (
        1e-4, "self", True, -1)


def test_effective_batch_then_a_later_accumulation_wins():
    from sftbench.config.train import parse_train_config

    assert parse_train_config(["--effective_batch", "8", "--gradient_accumulation_steps", "4"]).effective_batch is None
    cfg = parse_train_config(["--gradient_accumulation_steps", "4", "--effective_batch", "8"])
    assert (cfg.effective_batch, cfg.gradient_accumulation_steps) == (8, 4)


# ------------------------------------------------------------------------------------ validation, once, at start-up
BAD = [
    (["--learning_rate", "0"], "--learning_rate 0.0: give a finite learning rate > 0 (e.g. 4e-5)."),
    (["--learning_rate", "-1e-3"], "--learning_rate -0.001: give a finite learning rate > 0 (e.g. 4e-5)."),
    (["--learning_rate", "nan"], "--learning_rate nan: give a finite learning rate > 0 (e.g. 4e-5)."),
    (["--learning_rate", "inf"], "--learning_rate inf: give a finite learning rate > 0 (e.g. 4e-5)."),
    (["--adam_beta1", "1"], "--adam_beta1 1.0: give a value in [0, 1) (AdamW's default is 0.9)."),
    (["--adam_beta2", "-0.5"], "--adam_beta2 -0.5: give a value in [0, 1) (AdamW's default is 0.999)."),
    (["--adam_epsilon", "0"], "--adam_epsilon 0.0: give a finite value > 0 (e.g. 1e-8)."),
    (["--weight_decay", "-0.1"], "--weight_decay -0.1: give a finite value >= 0 (0 = no decay)."),
    (["--warmup_ratio", "5"], "--warmup_ratio 5.0: give a fraction of the optimizer steps in [0, 1]."),
    (["--warmup_steps", "-2"], "--warmup_steps -2.0: give a number of optimizer steps >= 0 (or a ratio in (0, 1))."),
    (["--max_grad_norm", "-1"], "--max_grad_norm -1.0: give a norm >= 0 (0 = no clipping)."),
    (["--num_train_epochs", "0"], "--num_train_epochs 0.0: give a number of passes > 0, or a --max_steps > 0."),
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be >= 1 (got 0)."),
    (["--model_max_length", "0"], "--model_max_length must be >= 1 (got 0)."),
    (["--save_steps", "0"], "--save_steps must be >= 1 (got 0)."),
    (["--logging_steps", "0"], "--logging_steps must be >= 1 (got 0)."),
    (["--token_budget", "-1"], "--token_budget -1: give a number of tokens >= 0 (0 = the engine's default)."),
    (["--lora_rank", "0"], "--lora_rank 0: give a rank >= 1."),
    (["--memory_cap_gib", "0"], "--memory_cap_gib 0.0: give a number of GiB > 0, or none for no cap."),
    (["--memory_cap_gib", "-8"], "--memory_cap_gib -8.0: give a number of GiB > 0, or none for no cap."),
    (["--save_total_limit", "0"], "--save_total_limit 0: no checkpoint would keep its optimizer state, so the run "
                                  "could never resume. Give N >= 1, or none to keep every checkpoint resumable."),
    (["--keep_weights_limit", "0"], "--keep_weights_limit 0: every checkpoint's weights would be deleted (nothing to "
                                    "resume or evaluate). Give N >= 1, or none to keep all weights."),
    (["--augment_fraction", "1.5"], "--augment_fraction 1.5: give a share between 0 and 1."),
    (["--augment_fraction", "-0.5"], "--augment_fraction -0.5: give a share between 0 and 1."),
    (["--augment_fraction", "0.5", "--augment_max_constraints", "0"], "--augment_max_constraints 0: give at least 1."),
    (["--augment_fraction", "0.5", "--augment_targets", "self", "--augment_samples", "0"],
     "--augment_samples 0: give at least 1."),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_invalid_settings_are_refused_at_start_up_naming_the_flag(argv, message, capsys, tmp_path):
    from sftbench.config.train import TrainConfig, build_parser
    from sftbench.core.cli import config_from_namespace
    from train_hw_parallel import main

    with pytest.raises(SystemExit) as ei:
        main(argv + ["--output_dir", str(tmp_path / "out")])
    assert ei.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"train_hw_parallel.py: error: {message}"]
    assert not (tmp_path / "out").exists()  # refused before the run directory is made
    # the check itself, on a config built in code (sftbench.train.loop.train calls it first)
    parser, names = build_parser()
    cfg = config_from_namespace(TrainConfig, parser.parse_args(argv), names)
    with pytest.raises(UserError) as ue:
        cfg.check()
    assert str(ue.value) == message


def test_unknown_augment_type_names_the_trainers_flag():
    from sftbench.config.train import TrainConfig

    with pytest.raises(UserError, match=r"^--augment_types: unknown or unsupported type\(s\) \['bogus'\]"):
        TrainConfig(augment_fraction=0.5, augment_types="bogus").check()
    TrainConfig(augment_types="bogus").check()  # augmentation off: its settings are not used


def test_epochs_zero_is_fine_with_max_steps_and_defaults_pass():
    from sftbench.config.train import TrainConfig, parse_train_config

    TrainConfig().check()
    assert parse_train_config(["--num_train_epochs", "0", "--max_steps", "3"]).max_steps == 3


def test_data_cache_dir_that_is_a_file_is_refused(tmp_path, capsys):
    from sftbench.config.train import parse_train_config
    from train_hw_parallel import main

    f = tmp_path / "notes.txt"
    f.write_text("x")
    for value, what in ((f, "is an existing file"), (f / "sub", f"lies under {f}, which is an existing file")):
        with pytest.raises(SystemExit) as ei:
            main(["--data_cache_dir", str(value), "--output_dir", str(tmp_path / "out")])
        assert ei.value.code == 2
        assert capsys.readouterr().err.splitlines() == [
            f"train_hw_parallel.py: error: --data_cache_dir {value}: {what}, not a folder. Give a folder for the tokenised-data cache "
            f"(it is created if missing), or `none` to disable the cache."]
    assert parse_train_config(["--data_cache_dir", str(tmp_path / "new" / "cache")]).data_cache_dir.endswith("cache")
    assert parse_train_config(["--data_cache_dir", "none"]).data.cache_dir() is None


# ------------------------------------------------------------------------------------ negative numbers are values
def test_negative_numbers_after_a_flag_are_values_in_every_generated_cli(capsys):
    from sftbench.config.train import parse_train_config
    from sftbench.eval import run, sweep
    from sftbench.eval.config import EvalConfig
    from sftbench.plan.config import build_parser as plan_parser

    cfg = parse_train_config(["--max_steps", "-1", "--seed", "-3", "--max_rounds", "-1"])
    assert (cfg.max_steps, cfg.seed, cfg.max_rounds) == (-1, -3, -1)
    assert run.build_parser().parse_args(["m", "o", "--memory_cap_gib", "-1e-3"]).memory_cap_gib == -1e-3
    ns = sweep.build_parser(EvalConfig)[0].parse_args(["r", "o", "--poll_s", "-.5e1", "--seed", "-2"])
    assert (ns.poll_s, ns.seed) == (-5.0, -2)
    assert plan_parser()[0].parse_args(["--memory_cap_gib", "-1E-3"]).memory_cap_gib == -1e-3
    # a value is still needed: a following flag is not taken as one
    with pytest.raises(SystemExit):
        parse_train_config(["--learning_rate", "--seed", "1"])
    assert "expected one argument" in capsys.readouterr().err


def test_augment_cli_reads_a_negative_number_and_refuses_it(tmp_path, capsys):
    from sftbench.data.augment import main

    with pytest.raises(SystemExit) as ei:
        main([str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl"), "--fraction", "-1e-3"])
    assert ei.value.code == 2
    assert "--fraction -0.001: give a share between 0 and 1." in capsys.readouterr().err


# ------------------------------------------------------------------------------------ the data inspector
def test_conversation_func_composes_the_data_config():
    from sftbench.core.cli import config_from_namespace
    from sftbench.data.cli import InspectConfig, build_parser
    from sftbench.data.config import DataConfig

    ap, names = build_parser()
    assert "data_cache_dir" not in names and "keep_contaminated" not in names
    cfg = config_from_namespace(InspectConfig, ap.parse_args(["d.jsonl", "--model_max_length", "77"]), names,
                                data_path="d.jsonl")
    assert cfg.data == DataConfig(data_path="d.jsonl", model_max_length=77)
    assert (cfg.model_max_length, cfg.data_path, cfg.tokenizer) == (77, "d.jsonl", TODAY_DEFAULTS["model_name_or_path"])
    src = open(__import__("sftbench.data.cli", fromlist=["x"]).__file__).read()
    assert "sftbench.config" not in src


def test_argparse_help_strings_of_every_module_and_script_are_free_of_dated_figures():
    """The hand-written argparse CLIs too (scripts/, the search, the sweep...): every `help=` string constant."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    bad = []
    for f in sorted([*root.joinpath("sftbench").rglob("*.py"), *root.joinpath("scripts").glob("*.py")]):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.keyword) and node.arg == "help":
                text = " ".join(c.value for c in ast.walk(node.value)
                                if isinstance(c, ast.Constant) and isinstance(c.value, str))
                if re.search(DATED, text.replace("%(default)s", "").replace("%%", "")):
                    bad.append(f"{f.relative_to(root)}:{node.value.lineno}: {text}")
    assert not bad, "\n".join(bad)


def test_preset_launchers_headers_are_free_of_dated_figures():
    """The sft_*.sh launchers only override flags: their header comments (what a user reads before running one) say
    what the preset does and point at docs/gpu_results.md for measurements, which age there with their dates."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    launchers = sorted(root.joinpath("scripts").glob("sft_*.sh"))
    assert len(launchers) == 3
    for f in launchers:
        comments = " ".join(line for line in f.read_text(encoding="utf-8").splitlines() if line.startswith("#"))
        assert not re.search(DATED + r"|tokens/s|GiB", comments), f.name
        assert "docs/gpu_results.md" in comments, f.name

"""A throwaway tokenizer and a 2-layer Llama for CPU tests and smoke runs (seconds, not minutes).

The tokenizer mimics SmolLM2's special ids: <|endoftext|>=0, <|im_start|>=1, <|im_end|>=2, and
carries the plain ChatML template.  Everything is deterministic for a given seed.
"""

from __future__ import annotations

import os
from pathlib import Path

from sftbench.model.chat_template import ENDOFTEXT, IM_END, IM_START, PLAIN_CHATML

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Write a short poem about the sea, in exactly three lines.",
    "You are a helpful assistant. Answer briefly and politely.",
    "Please answer in JSON format with the keys name and age.",
    "List three fruits: apple, banana, cherry. End your answer with P.S.",
    "What is the capital of France? Paris is the capital of France.",
    "Explain gradient accumulation in one paragraph without commas",
    "user assistant system: hello, how are you today? I am fine, thanks!",
    "0123456789 + - * / = ( ) [ ] { } < > # @ ! ? ' \" ; : , .",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz",
]


def build_tiny_tokenizer(vocab_size: int = 384):
    """A byte-level BPE PreTrainedTokenizerFast trained on a fixed built-in corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[ENDOFTEXT, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=IM_START,
        eos_token=IM_END,
        pad_token=IM_END,
        unk_token=ENDOFTEXT,
        additional_special_tokens=[ENDOFTEXT, IM_START, IM_END],
    )
    fast.chat_template = PLAIN_CHATML
    assert fast.convert_tokens_to_ids([ENDOFTEXT, IM_START, IM_END]) == [0, 1, 2]
    return fast


def build_tiny_model(vocab_size: int, seed: int = 0, num_layers: int = 2, hidden: int = 64):
    """A randomly initialised LlamaForCausalLM with SmolLM2's layout (tied embeddings, GQA)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    return model


def make_tiny_model_dir(path: str | os.PathLike, seed: int = 0, chat_template: bool = True) -> Path:
    """Write tokenizer + tiny model + generation_config to `path` (idempotent) and return it."""
    from transformers import GenerationConfig

    path = Path(path)
    if (path / "config.json").exists() and (path / "model.safetensors").exists():
        return path
    tok = build_tiny_tokenizer()
    if not chat_template:
        tok.chat_template = None
    model = build_tiny_model(len(tok), seed=seed)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=[2, 0], pad_token_id=2)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path

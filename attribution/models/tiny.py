"""Tiny random Hugging Face models of every supported family, with a word-level tokenizer over a few dozen
words: what the exactness tests and the device smoke test (attribution.smoke) run on. Not trained: weights
are random (seeded), so numbers are checked against interventions, never against expected text."""

from __future__ import annotations

import torch

WORDS = (
    "john says i want to be alone right now feels sad happy the capital of state where kobe bryant played "
    "basketball is sacramento albany mary went home and felt tired a cat dog ran fast"
).split()
PROMPTS = ["john says i want to be alone right now john feels", "mary went home and felt", "the cat ran"]
FAMILIES = ("gemma3", "llama", "gpt2", "neox")
D = 32


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


# family: (config class, model class, what differs); vocabulary, ids and init scale are shared below
TINY = {
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        {
            "hidden_size": D,
            "intermediate_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "max_position_embeddings": 64,
            "sliding_window": 4,
            "pad_token_id": 0,
        },
    ),
    "llama": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {
            "hidden_size": D,
            "intermediate_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 64,
            "pad_token_id": 0,
        },
    ),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", {"n_embd": D, "n_layer": 3, "n_head": 4, "n_positions": 64}),
    "neox": (
        "GPTNeoXConfig",
        "GPTNeoXForCausalLM",
        {
            "hidden_size": D,
            "intermediate_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "max_position_embeddings": 64,
        },
    ),
}


def tiny_hf(family: str, seed: int = 0):
    import transformers as tf

    config_cls, model_cls, sizes = TINY[family]
    torch.manual_seed(seed)
    cfg = getattr(tf, config_cls)(
        vocab_size=len(WORDS) + 4, bos_token_id=2, eos_token_id=1, initializer_range=0.3, **sizes
    )
    hf = getattr(tf, model_cls)(cfg)
    hf.tokenizer = tiny_tokenizer()
    return hf

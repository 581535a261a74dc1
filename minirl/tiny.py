"""The embedded default model: a tiny Qwen2.5-VL checkpoint built from scratch, offline.

No model hub is reachable from where minirl is tested, so every test and the demo start from
a directory this module writes: a real transformers `Qwen2_5_VLConfig`, random weights saved
by transformers' own `save_pretrained`, a byte-level BPE tokenizer trained here with the
`tokenizers` library on a corpus the caller passes in, the Qwen chat template and its special
tokens, and the processor config. Everything loads back through the real paths:
`AutoTokenizer`, `AutoProcessor`, `Qwen2_5_VLForConditionalGeneration.from_pretrained` and
`minirl.model.load_model`.

    python -m minirl.tiny --out runs/tiny-model [--corpus train.jsonl] [--size tiny|small|bench]
"""

import argparse
import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AddedToken,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

# Special tokens with Qwen2.5-VL's names. The reasoning tags are ordinary added tokens (not
# "special"), so decoding with skip_special_tokens keeps them in the text the reward reads.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
]
REASONING_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]

# Qwen2-VL's chat template, reduced to what minirl uses (text, image and video parts).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Model sizes. `tiny` is what tests and the demo train on a CPU; `bench` has hidden size 256
# for the rollout benchmark. head_dim is 32 everywhere, so mrope_section sums to 16.
SIZES = {
    "tiny": dict(hidden=128, layers=4, heads=4, kv_heads=2, ffn=384, v_hidden=64, v_depth=2, v_heads=4),
    "small": dict(hidden=192, layers=6, heads=6, kv_heads=2, ffn=512, v_hidden=96, v_depth=2, v_heads=4),
    "bench": dict(hidden=256, layers=8, heads=8, kv_heads=2, ffn=768, v_hidden=128, v_depth=4, v_heads=4),
}


def train_tokenizer(texts, vocab_size: int = 2048) -> Tokenizer:
    """Byte-level BPE (Qwen's scheme) trained on `texts`; special tokens get the first ids."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def make_processor(texts, vocab_size: int = 2048, max_pixels: int = 84 * 84,
                   merge_size: int = 2) -> Qwen2_5_VLProcessor:
    """Tokenizer + image/video processors + chat template, as one Qwen2.5-VL processor.

    min_pixels is lowered to one merge window (28x28 at merge 2) so the low-resolution synthetic
    videos are not upscaled to Qwen's default 100k-pixel minimum.
    """
    tokenizer = Qwen2Tokenizer(
        tokenizer_object=train_tokenizer(texts, vocab_size),
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=SPECIAL_TOKENS[1:],
        chat_template=CHAT_TEMPLATE,
    )
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in REASONING_TOKENS])
    size = {"shortest_edge": (14 * merge_size) ** 2, "longest_edge": max_pixels}
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size, merge_size=merge_size),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(size=size, merge_size=merge_size),
        chat_template=CHAT_TEMPLATE,
    )


def make_config(tokenizer, size: str | dict = "tiny", tie_word_embeddings: bool = False,
                rope_theta: float = 10000.0, merge_size: int = 2) -> Qwen2_5_VLConfig:
    """`size` names an entry of SIZES or is a dict with the same keys (tests use odd shapes)."""
    s = SIZES[size] if isinstance(size, str) else size
    head_dim = s["hidden"] // s["heads"]
    return qwen_config(tokenizer, **s, head_dim=head_dim, tie_word_embeddings=tie_word_embeddings,
                       rope_theta=rope_theta, merge_size=merge_size)


def mrope_sections(head_dim: int) -> list[int]:
    """Split the head_dim/2 rotary frequencies into (time, height, width) like Qwen's [16, 24, 24]."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def qwen_config(
    tokenizer, hidden, layers, heads, kv_heads, ffn, v_hidden, v_depth, v_heads, head_dim,
    tie_word_embeddings=False, tokens_per_second=2, rope_theta=10000.0, merge_size=2,
) -> Qwen2_5_VLConfig:
    """A real transformers Qwen2_5_VLConfig; token ids come from `tokenizer`.

    rope_theta: Qwen2.5-VL's M-RoPE gives time the highest rotary frequencies, then height, and
    width the lowest; with head_dim 32 and theta 1e4 one step in width turns a query by ~0.003 rad,
    so a tiny model cannot tell left from right. A small theta (the perception base uses one)
    gives every axis a usable frequency while staying a valid Qwen2.5-VL config.

    merge_size: patches per side joined into one LLM token. At 4 a 56-px frame is one token whose
    merger MLP sees its 4 x 4 patches in raster order, so where something is becomes the token's
    content instead of a rotary angle (README, "Where a shape is").
    """
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=ffn,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            max_position_embeddings=32768,
            rms_norm_eps=1e-6,
            rope_parameters=dict(rope_type="default", rope_theta=rope_theta, mrope_section=mrope_sections(head_dim)),
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=v_depth,
            hidden_size=v_hidden,
            intermediate_size=2 * v_hidden,
            num_heads=v_heads,
            out_hidden_size=hidden,
            patch_size=14,
            spatial_merge_size=merge_size,
            temporal_patch_size=2,
            window_size=56,
            fullatt_block_indexes=[v_depth - 1],
            tokens_per_second=tokens_per_second,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=tie_word_embeddings,
    )


def build_tiny_model(
    out_dir, texts, size: str | dict = "tiny", seed: int = 0, vocab_size: int = 2048,
    tie_word_embeddings: bool = False, max_pixels: int = 84 * 84, rope_theta: float = 10000.0,
    merge_size: int = 2,
) -> Path:
    """Write a complete, randomly initialised Qwen2.5-VL checkpoint directory to `out_dir`."""
    out_dir = Path(out_dir)
    processor = make_processor(texts, vocab_size, max_pixels, merge_size)
    config = make_config(processor.tokenizer, size, tie_word_embeddings, rope_theta, merge_size)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def default_corpus(path=None) -> list[str]:
    """Texts for the tokenizer: a jsonl's problems/options/reasoning, or the benchmark's own."""
    if path is None:
        from minirl.synth import corpus

        return list(corpus())
    from minirl.data import INSTRUCTION, INSTRUCTION_OPEN, SYSTEM_PROMPT

    texts = [SYSTEM_PROMPT, INSTRUCTION, INSTRUCTION_OPEN]
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            texts += [row.get("problem", ""), row.get("reasoning", ""), *row.get("options", [])]
    return texts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--corpus", default=None, help="jsonl whose texts train the tokenizer")
    parser.add_argument("--size", default="tiny", choices=sorted(SIZES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--max-pixels", type=int, default=84 * 84, help="per-frame pixel budget")
    parser.add_argument("--rope-theta", type=float, default=10000.0, help="M-RoPE base (see qwen_config)")
    parser.add_argument("--merge-size", type=int, default=2, help="patches per side in one token (see qwen_config)")
    args = parser.parse_args()
    out = build_tiny_model(
        args.out, default_corpus(args.corpus), args.size, args.seed, args.vocab_size, max_pixels=args.max_pixels,
        rope_theta=args.rope_theta, merge_size=args.merge_size,
    )
    print(f"wrote {args.size} Qwen2.5-VL checkpoint to {out}")


if __name__ == "__main__":
    main()

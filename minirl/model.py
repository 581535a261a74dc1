"""A Qwen2.5-VL language model written here, with transformers' vision tower as frame encoder.

Why our own decoder: MR-SP must own the attention call (Ulysses all-to-all for training, a shared-prefix KV
cache for rollout) and start from `inputs_embeds` holding cached video embeddings. Both plug in through
`attn_fn`; the model never changes:

    attn_fn(q, k, v, layer_idx) -> out     q: (B, L, Hq, D)  k, v: (B, L, Hkv, D)  out: (B, L, Hq, D)

q and k arrive with 3-D M-RoPE applied. Default: causal SDPA (flash-attn on CUDA if importable). Batches are
right-padded: under a causal mask a pad never changes a real token's output, so no attention mask is needed.

The forward returns hidden states; callers take logits only at the positions they need (`model.logits(h)`), so
full-vocabulary logits over a 100k-token video prompt never exist.

Loading is strict (all expected tensors, none unexpected, equal shapes) and reads both Hugging Face key
layouts and text-only Qwen2/Qwen2.5 checkpoints; `save_pretrained` writes what transformers'
`Qwen2_5_VLForConditionalGeneration.from_pretrained` loads.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoConfig

try:  # optional: used on CUDA in bf16/fp16 when installed, never required
    from flash_attn import flash_attn_func
except ImportError:
    flash_attn_func = None


@dataclass
class TextConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    rms_norm_eps: float
    rope_theta: float
    mrope_section: list[int]
    tie_word_embeddings: bool
    eos_token_id: int | None
    pad_token_id: int | None
    # vision-related ids and rope scaling; None for a text-only checkpoint
    video_token_id: int | None = None
    vision_start_token_id: int | None = None
    spatial_merge_size: int = 2
    tokens_per_second: float = 2.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


MODEL_TYPES = ("qwen2_5_vl", "qwen2_5_vl_text", "qwen2")


def check_config(hf_config) -> None:
    """Refuse, naming the field and the fix, every config value whose math this decoder does not do.

    Loading must never succeed and then compute other logits than transformers. Implemented: the sizes,
    rms_norm_eps, rope_parameters' rope_theta and mrope_section, tie_word_embeddings. Refused unless they hold
    the one value implemented: model_type, hidden_act, use_sliding_window / layer_types, attention_dropout,
    head_dim, rope_type, and the vision tower's out_hidden_size (its embeddings fill hidden_size-wide slots).
    The rest do not change a forward pass: max_position_embeddings (read only by dynamic rope types, refused),
    sliding_window and max_window_layers (read only when use_sliding_window is true), initializer_range,
    use_cache, token ids. (transformers also gives pad_token_id's embedding row no gradient; pads never reach
    the loss here, so only a pad token sampled inside a response trains differently.)
    """
    text = getattr(hf_config, "text_config", None) or hf_config
    vision = getattr(hf_config, "vision_config", None)

    def refuse(field, value, why, fix):
        raise ValueError(f"config {field}={value!r} is not implemented by minirl.model ({why}); {fix}")

    if hf_config.model_type not in MODEL_TYPES:
        refuse("model_type", hf_config.model_type, f"it implements {', '.join(MODEL_TYPES)}",
               "load a Qwen2.5-VL (or text-only Qwen2/Qwen2.5) checkpoint")
    if text.hidden_act != "silu":
        refuse("hidden_act", text.hidden_act, "the MLP is SwiGLU with SiLU",
               "use a checkpoint with hidden_act 'silu' or change MLP.forward")
    if text.use_sliding_window:
        refuse("use_sliding_window", True, "every layer attends to the whole prefix",
               "set use_sliding_window to false in config.json, as Qwen2.5-VL checkpoints ship it")
    if sliding := [i for i, kind in enumerate(text.layer_types or []) if kind != "full_attention"]:
        refuse(f"layer_types[{sliding[0]}]", text.layer_types[sliding[0]], "every layer is full attention",
               "set every layer_types entry to 'full_attention' in config.json")
    if text.attention_dropout:
        refuse("attention_dropout", text.attention_dropout, "attention never drops out; RL needs the rollout "
               "and the update to compute one function", "set attention_dropout to 0.0 in config.json")
    head_dim = text.hidden_size // text.num_attention_heads
    if getattr(text, "head_dim", None) not in (None, head_dim):
        refuse("head_dim", text.head_dim, f"head_dim is hidden_size / num_attention_heads = {head_dim}",
               f"remove head_dim from config.json or set it to {head_dim}")
    rope_type = (text.rope_parameters or {}).get("rope_type", "default")
    if rope_type != "default":
        refuse("rope_parameters.rope_type", rope_type, "only 'default' / 'mrope' rotary frequencies",
               "remove rope scaling from config.json or extend rope_frequencies()")
    if vision is not None and vision.out_hidden_size != text.hidden_size:
        refuse("vision_config.out_hidden_size", vision.out_hidden_size,
               f"video embeddings replace hidden_size = {text.hidden_size} wide token embeddings",
               "set it to text_config.hidden_size")


def parse_config(hf_config) -> TextConfig:
    """Our TextConfig from a transformers config (Qwen2.5-VL, flat or nested, or text-only Qwen2)."""
    check_config(hf_config)
    text = getattr(hf_config, "text_config", None) or hf_config
    vision = getattr(hf_config, "vision_config", None)
    rope = dict(text.rope_parameters or {})
    head_dim = text.hidden_size // text.num_attention_heads
    # A text-only model is M-RoPE with identical (t, h, w) positions: any split works.
    section = list(rope.get("mrope_section") or [head_dim // 2, 0, 0])
    if sum(section) != head_dim // 2:
        raise ValueError(f"mrope_section {section} must sum to head_dim/2 = {head_dim // 2}")
    eos = text.eos_token_id if text.eos_token_id is not None else getattr(hf_config, "eos_token_id", None)
    return TextConfig(
        vocab_size=text.vocab_size, hidden_size=text.hidden_size, intermediate_size=text.intermediate_size,
        num_layers=text.num_hidden_layers, num_heads=text.num_attention_heads,
        num_kv_heads=text.num_key_value_heads or text.num_attention_heads, rms_norm_eps=text.rms_norm_eps,
        rope_theta=rope.get("rope_theta", 10000.0), mrope_section=section,
        tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
        eos_token_id=eos[0] if isinstance(eos, list) else eos, pad_token_id=text.pad_token_id,
        video_token_id=getattr(hf_config, "video_token_id", None),
        vision_start_token_id=getattr(hf_config, "vision_start_token_id", None),
        spatial_merge_size=vision.spatial_merge_size if vision is not None else 2,
        tokens_per_second=vision.tokens_per_second if vision is not None else 2.0,
    )


# ----------------------------------------------------------------------------- positions


def rope_index(input_ids: torch.Tensor, video_grid_thw: torch.Tensor | None, second_per_grid_ts: torch.Tensor | None,
               cfg: TextConfig) -> torch.Tensor:
    """3-D M-RoPE position ids (3, L) of one unpadded sequence, exactly as transformers 5.23. Text tokens
    advance t, h, w together by one. A video's tokens form a (T, H/m, W/m) grid from the current position p:
    t = p + floor(i * tokens_per_second * second_per_grid), h = p + row, w = p + col; the text after it
    resumes at p + max(H, W)/m. Generated tokens continue from max(all positions) + 1 (`next_position`)."""
    ids = input_ids.tolist()
    is_video = [i == cfg.video_token_id for i in ids]
    m = cfg.spatial_merge_size
    pos, chunks, start, video_idx = 0, [], 0, 0
    while start < len(ids):
        end = start
        while end < len(ids) and is_video[end] == is_video[start]:
            end += 1
        if not is_video[start]:
            n = end - start
            chunks.append(torch.arange(pos, pos + n).expand(3, n))
            pos += n
        else:
            if video_grid_thw is None or video_idx >= len(video_grid_thw):
                raise ValueError("the sequence has more video token runs than video_grid_thw rows")
            t, h, w = (int(x) for x in video_grid_thw[video_idx])
            h, w = h // m, w // m
            if end - start != t * h * w:
                raise ValueError(f"video {video_idx} has {end - start} <|video_pad|> tokens but its grid {t}x{h}x{w} "
                                 f"needs {t * h * w}: the prompt and pixel_values_videos come from different videos")
            spg = 1.0 if second_per_grid_ts is None else float(second_per_grid_ts[video_idx])
            interval = torch.tensor(cfg.tokens_per_second * spg)
            tt = (torch.arange(t) * interval).long() + pos
            hh, ww = torch.arange(h) + pos, torch.arange(w) + pos
            grid = torch.stack(torch.meshgrid(tt, hh, ww, indexing="ij"))  # (3, t, h, w)
            chunks.append(grid.reshape(3, -1))
            pos += max(h, w)
            video_idx += 1
        start = end
    return torch.cat(chunks, dim=1) if chunks else torch.zeros(3, 0, dtype=torch.long)


def next_position(position_ids: torch.Tensor) -> int:
    """The position of the first generated token: max over the prompt's (3, L) positions + 1."""
    return int(position_ids.max()) + 1


def rope_frequencies(cfg: TextConfig, device=None) -> torch.Tensor:
    return 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, device=device).float() / cfg.head_dim))


def mrope_cos_sin(position_ids: torch.Tensor, inv_freq: torch.Tensor, section: list[int], dtype):
    """cos/sin (B, L, D) from positions (3, B, L): frequency chunk i takes axis i % 3 (t, h, w)."""
    freqs = position_ids[..., None].float() * inv_freq  # (3, B, L, D/2)
    freqs = torch.cat([chunk[i % 3] for i, chunk in enumerate(freqs.split(section, dim=-1))], dim=-1)
    emb = torch.cat([freqs, freqs], dim=-1)  # (B, L, D)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, L, H, D); cos/sin: (B, L, D)."""
    cos, sin = cos[:, :, None], sin[:, :, None]
    return x * cos + rotate_half(x) * sin


# ----------------------------------------------------------------------------- attention


def sdpa_attention(q, k, v, layer_idx=None):
    """Causal attention over (B, L, H, D) tensors with GQA; the default `attn_fn`."""
    if flash_attn_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        return flash_attn_func(q, k, v, causal=True)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                         enable_gqa=True)  # (B, Hq, L, D)
    return out.transpose(1, 2)


# ----------------------------------------------------------------------------- modules


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class Attention(nn.Module):
    def __init__(self, cfg: TextConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_heads * cfg.head_dim, bias=True)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=True)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=True)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x, cos, sin, attn_fn):
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.num_heads, self.head_dim)  # (B, L, Hq, D)
        k = self.k_proj(x).view(B, L, self.num_kv_heads, self.head_dim)  # (B, L, Hkv, D)
        v = self.v_proj(x).view(B, L, self.num_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = attn_fn(q, k, v, self.layer_idx)  # (B, L, Hq, D)
        return self.o_proj(out.reshape(B, L, -1))


class MLP(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: TextConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, attn_fn):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn_fn)
        return x + self.mlp(self.post_attention_layernorm(x))


VISION_CHUNK = 8192  # patches per vision-tower call without grad (see QwenVL.encode_video)


class QwenVL(nn.Module):
    """Qwen2.5-VL: our decoder + transformers' vision tower (None for text-only checkpoints)."""

    def __init__(self, hf_config):
        super().__init__()
        self.hf_config = hf_config
        self.config = cfg = parse_config(hf_config)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.register_buffer("inv_freq", rope_frequencies(cfg), persistent=False)
        self.visual = None
        if getattr(hf_config, "vision_config", None) is not None:
            from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

            self.visual = Qwen2_5_VisionTransformerPretrainedModel._from_config(hf_config.vision_config)
        self.gradient_checkpointing = False

    @property
    def device(self):
        return self.embed_tokens.weight.device

    @property
    def dtype(self):
        return self.embed_tokens.weight.dtype

    def vision_tower(self):
        """The vision tower, or a clear error for a text-only checkpoint (no video can be encoded)."""
        if self.visual is None:
            raise ValueError("this checkpoint has no vision tower (text-only); it cannot encode videos")
        return self.visual

    def encode_video(self, pixel_values_videos: torch.Tensor, video_grid_thw: torch.Tensor,
                     max_patches: int = VISION_CHUNK) -> torch.Tensor:
        """Merged video-token embeddings (N_tokens, hidden) for one or more videos, in order. Without grad, more than
        `max_patches` patches go through the tower in runs of whole temporal groups of at most that many (one group if a
        group alone is larger): its attention never crosses a temporal group, so the result is the same while the
        activations are a run's, not an hour-long video's (7B: ~70 KB of fp32 per patch, 1M patches at 3,600 frames)."""
        pixels = pixel_values_videos.to(self.device, self.vision_tower().dtype)
        if torch.is_grad_enabled() or len(pixels) <= max_patches:
            return self.visual(pixels, grid_thw=video_grid_thw.to(self.device)).pooler_output.to(self.dtype)
        runs, start = [], 0  # (first row, last row, grid of the run)
        for t, h, w in video_grid_thw.tolist():
            step = max(1, max_patches // (h * w))  # temporal groups per run
            for t0 in range(0, t, step):
                k = min(step, t - t0)
                runs.append((start, start + k * h * w, torch.tensor([[k, h, w]], device=self.device)))
                start += k * h * w
        out = [self.visual(pixels[a:b], grid_thw=grid).pooler_output for a, b, grid in runs]
        return torch.cat(out).to(self.dtype)

    def embed(self, input_ids: torch.Tensor, video_embeds: torch.Tensor | None = None,
              video_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings, the video slots replaced, in order, by `video_embeds`: `video_mask` when given,
        else every <|video_pad|> token. Trainers pass the mask of the *prompt's* video tokens: a sampled
        response may hold the <|video_pad|> id, where it is text, as the sampler embedded it."""
        input_ids = input_ids.to(self.device)
        x = self.embed_tokens(input_ids)
        if video_mask is None:
            video_mask = torch.zeros_like(input_ids, dtype=torch.bool)
            if self.config.video_token_id is not None:
                video_mask = input_ids == self.config.video_token_id
        video_mask = video_mask.to(self.device)
        n_slots = int(video_mask.sum())
        n_embeds = 0 if video_embeds is None else len(video_embeds)
        if n_slots != n_embeds:
            raise ValueError(f"{n_slots} video token slots but {n_embeds} video embeddings were given")
        if video_embeds is not None:  # even when empty: an SP shard without video tokens must still
            # take part in the backward of the collective that produced video_embeds
            x = x.masked_scatter(video_mask[..., None], video_embeds.to(x.dtype))
        return x

    def forward(self, inputs_embeds: torch.Tensor | None, position_ids: torch.Tensor, attn_fn=sdpa_attention,
                input_ids: torch.Tensor | None = None, video_embeds: torch.Tensor | None = None,
                video_mask: torch.Tensor | None = None):
        """inputs_embeds (B, L, C), position_ids (3, B, L) -> final hidden states (B, L, C). Instead of
        inputs_embeds, `input_ids` (B, L) with the `video_embeds` rows of its video slots (`video_mask`, see
        `embed`) may be given: the embedding then happens inside the forward, which is what FSDP needs when
        embed_tokens is sharded (its weights are gathered only here)."""
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids, video_embeds, video_mask)
        cos, sin = mrope_cos_sin(position_ids.to(self.device), self.inv_freq, self.config.mrope_section,
                                 inputs_embeds.dtype)
        x = inputs_embeds
        for layer in self.layers:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, attn_fn, use_reentrant=False)
            else:
                x = layer(x, cos, sin, attn_fn)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()


def prepare_inputs(model: QwenVL, input_ids, pixel_values_videos=None, video_grid_thw=None, second_per_grid_ts=None):
    """(inputs_embeds (1, L, C), position_ids (3, 1, L)) for one unpadded sequence."""
    video_embeds = None
    if pixel_values_videos is not None:
        video_embeds = model.encode_video(pixel_values_videos, video_grid_thw)
    embeds = model.embed(input_ids, video_embeds)[None]
    positions = rope_index(input_ids.cpu(), video_grid_thw, second_per_grid_ts, model.config)[:, None]
    return embeds, positions.to(model.device)


@torch.no_grad()
def generate(model: QwenVL, inputs_embeds, position_ids, max_new_tokens: int, temperature: float = 1.0,
             greedy: bool = False, stop_token_ids=(), generator: torch.Generator | None = None):
    """Naive reference decoding: the sequence recomputed for every token, deliberately slow and obvious;
    optimised samplers are tested against it. One sequence: inputs_embeds (1, L, C), position_ids (3, 1, L).
    Returns (token ids, log-probs of the tokens under the temperature-scaled distribution)."""
    embeds, positions = inputs_embeds, position_ids
    next_pos = next_position(position_ids)
    tokens, logprobs = [], []
    for _ in range(max_new_tokens):
        logits = model.logits(model(embeds, positions)[:, -1])[0]  # (V,)
        logp = torch.log_softmax(logits / (1.0 if greedy else temperature), dim=-1)
        token = int(logits.argmax()) if greedy else int(torch.multinomial(logp.exp(), 1, generator=generator))
        tokens.append(token)
        logprobs.append(float(logp[token]))
        if token in stop_token_ids:
            break
        new = model.embed_tokens(torch.tensor([[token]], device=model.device))
        embeds = torch.cat([embeds, new], dim=1)
        positions = torch.cat([positions, torch.full((3, 1, 1), next_pos, device=positions.device)], dim=2)
        next_pos += 1
    return tokens, logprobs


# ----------------------------------------------------------------------------- checkpoints

# Hugging Face key prefix -> our module prefix, for both layouts (and text-only Qwen2).
_PREFIXES = [("model.language_model.", ""), ("model.visual.", "visual."), ("visual.", "visual."), ("model.", ""),
             ("lm_head.", "lm_head.")]


def hf_to_ours(key: str) -> str:
    for hf, ours in _PREFIXES:
        if key.startswith(hf):
            return ours + key[len(hf):]
    return key


def read_checkpoint_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory: one model.safetensors or a sharded index."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json found")
    return {k: v for f in files for k, v in load_file(path / f).items()}


def load_model(path, dtype=torch.float32, device="cpu") -> QwenVL:
    """Load a Hugging Face checkpoint directory strictly into our QwenVL."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: not a checkpoint directory (no config.json)")
    hf_config = AutoConfig.from_pretrained(path)
    model = QwenVL(hf_config)
    state = {hf_to_ours(k): v for k, v in read_checkpoint_tensors(path).items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # tied: the embedding is the head
    expected = {k: v for k, v in model.state_dict().items() if not (
        model.config.tie_word_embeddings and k == "lm_head.weight")}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not match the model config: missing tensors {missing[:10]}"
                         f"{' ...' if len(missing) > 10 else ''}, unexpected tensors {unexpected[:10]}"
                         f"{' ...' if len(unexpected) > 10 else ''}")
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise ValueError(f"{path}: tensor {k} has shape {tuple(v.shape)}, the config expects "
                             f"{tuple(expected[k].shape)}")
    model.load_state_dict(state, strict=False)  # strictness checked above, with named errors
    return model.to(device=device, dtype=dtype)


def hf_state_dict(model: QwenVL, state: dict | None = None) -> dict[str, torch.Tensor]:
    """Our parameters (or `state`, in our key names) under transformers 5's Qwen2.5-VL keys."""
    text_prefix = "model.language_model." if model.visual is not None else "model."
    out = {}
    for k, v in (model.state_dict() if state is None else state).items():
        if k.startswith("visual."):
            out["model." + k] = v
        elif k.startswith("lm_head."):
            if not model.config.tie_word_embeddings:
                out[k] = v
        else:
            out[text_prefix + k] = v
    return out


def save_pretrained(model: QwenVL, path, max_shard_bytes: int = 5 * 2**30, state_dict: dict | None = None):
    """Write config.json + safetensors (sharded with an index when large) that transformers loads. `state_dict` (our key
    names) overrides the model's own tensors, e.g. a full state dict gathered from an FSDP-sharded model."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in hf_state_dict(model, state_dict).items()}
    shards, current, size = [], {}, 0
    for k, v in state.items():
        nbytes = v.numel() * v.element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[k] = v
        size += nbytes
    shards.append(current)
    if len(shards) == 1:
        save_file(shards[0], path / "model.safetensors", metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, path / name, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, name))
        total = sum(v.numel() * v.element_size() for v in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    model.hf_config.dtype = str(next(iter(state.values())).dtype).removeprefix("torch.")
    model.hf_config.save_pretrained(path)

"""Tiny random-weight Pyramid Flow: same classes as the real pipeline, tiny configs, seeded weights,
tokenizers built in code. Used by tests and by the demo when no checkpoint is configured; its output is
noise-like video and is always labelled as such.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from generation.components import PipelineComponents
from generation.text_encoders import PromptEncoder, TextEncoder

log = logging.getLogger(__name__)

TINY_LABEL = "tiny random weights / 随机权重演示"
TINY_T5_LENGTH = 16

# Same structure as the parity fixtures' tiny modules (tests/fixtures/pyramid_flow/weights.json).
TINY_DIT_CONFIGS: dict[str, dict] = {
    "pyramid_flux": {
        "_class_name": "PyramidFluxTransformer",
        "patch_size": 1, "in_channels": 64, "num_layers": 2, "num_single_layers": 2, "attention_head_dim": 64,
        "num_attention_heads": 2, "joint_attention_dim": 32, "pooled_projection_dim": 24,
        "axes_dims_rope": [16, 24, 24], "use_flash_attn": False, "use_temporal_causal": True,
        "interp_condition_pos": True, "use_gradient_checkpointing": False,
    },
    "pyramid_mmdit": {
        "_class_name": "PyramidDiffusionMMDiT",
        "sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 2, "attention_head_dim": 32,
        "num_attention_heads": 2, "caption_projection_dim": 64, "pooled_projection_dim": 24, "pos_embed_max_size": 16,
        "max_num_frames": 200, "qk_norm": "rms_norm", "pos_embed_type": "sincos", "joint_attention_dim": 32,
        "use_gradient_checkpointing": False, "use_flash_attn": False, "use_temporal_causal": True,
    },
}

TINY_VAE_CONFIG: dict = {
    "_class_name": "CausalVideoVAE",
    "encoder_in_channels": 3, "encoder_out_channels": 16, "encoder_layers_per_block": [2, 2, 2, 2],
    "encoder_block_out_channels": [4, 8, 16, 16], "encoder_spatial_down_sample": [True, True, True, False],
    "encoder_temporal_down_sample": [True, True, True, False], "encoder_norm_num_groups": 2,
    "decoder_in_channels": 16, "decoder_out_channels": 3, "decoder_layers_per_block": [3, 3, 3, 3],
    "decoder_block_out_channels": [4, 8, 16, 16], "decoder_spatial_up_sample": [True, True, True, False],
    "decoder_temporal_up_sample": [True, True, True, False], "decoder_norm_num_groups": 2,
    "sample_size": 256, "downsample_scale": 8,
}

_WORDS = (
    "a the of and with in on at to cat dog panda red blue green sunset wave surfing city night rain snow "
    "flower tree river mountain sea sky bird car girl boy walking running flying dancing hyper quality ultra hd "
    "8k cartoon style worst low blurry absolute black white res extra limbs digits misplaced objects mutated "
    "anatomy monochrome horror , . 猫 狗 熊 猫 海 浪 日 落 城 市 夜 雨 雪 花 树 河 山 天 空 鸟 车 女 孩 男 跑 飞 舞"
).split()


def _word_tokenizer(specials: list[str], template: str, *, bos: str | None, eos: str, pad: str, unk: str,
                    max_length: int):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for tok in specials + _WORDS:
        vocab.setdefault(tok, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True, handle_chinese_chars=True, clean_text=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special_ids = [(t, vocab[t]) for t in specials if t in template]
    tk.post_processor = processors.TemplateProcessing(single=template, special_tokens=special_ids)
    kwargs = {"bos_token": bos} if bos else {}
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=eos, pad_token=pad, unk_token=unk,
                                   model_max_length=max_length, **kwargs)


def tiny_clip_tokenizer():
    # ids: <unk>=0, <|startoftext|>=1, <pad-unused>=2, <|endoftext|>=3 (eos id != 2 so CLIP pools at the first eos)
    return _word_tokenizer(["<unk>", "<|startoftext|>", "<unused>", "<|endoftext|>"],
                           "<|startoftext|> $A <|endoftext|>", bos="<|startoftext|>", eos="<|endoftext|>",
                           pad="<|endoftext|>", unk="<unk>", max_length=77)


def tiny_t5_tokenizer():
    return _word_tokenizer(["<pad>", "</s>", "<unk>"], "$A </s>", bos=None, eos="</s>", pad="<pad>", unk="<unk>",
                           max_length=TINY_T5_LENGTH)


def reseed_(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Overwrite every parameter with a seeded draw: matrices N(0,1)/sqrt(fan_in), 1-D weights 1+0.1N,
    biases 0.1N (the rule the parity fixtures used)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(fan_in))
            elif name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))
    return module


def _tiny_text_encoder(model_name: str, generator: torch.Generator) -> TextEncoder:
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        T5Config,
        T5EncoderModel,
    )

    clip_tok = tiny_clip_tokenizer()
    t5_tok = tiny_t5_tokenizer()

    def clip_config(hidden: int, proj: int) -> CLIPTextConfig:
        return CLIPTextConfig(vocab_size=len(clip_tok), hidden_size=hidden, intermediate_size=2 * hidden,
                              num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
                              projection_dim=proj, bos_token_id=1, eos_token_id=3, pad_token_id=3)

    t5_cfg = T5Config(vocab_size=len(t5_tok), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
                      relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", pad_token_id=0,
                      eos_token_id=1, decoder_start_token_id=0, is_encoder_decoder=False, use_cache=False)
    t5 = reseed_(T5EncoderModel(t5_cfg), generator).eval()
    if model_name == "pyramid_flux":
        clips = [reseed_(CLIPTextModel(clip_config(24, 24)), generator).eval()]
        toks = [clip_tok]
        projected = False
    else:
        clips = [reseed_(CLIPTextModelWithProjection(clip_config(16, 8)), generator).eval(),
                 reseed_(CLIPTextModelWithProjection(clip_config(16, 16)), generator).eval()]
        toks = [clip_tok, tiny_clip_tokenizer()]
        projected = True
    return TextEncoder(model_name=model_name, clip_tokenizers=toks, clip_models=clips, t5_tokenizer=t5_tok,
                       t5_model=t5, projected=projected, t5_max_length=TINY_T5_LENGTH)


def build_tiny_pipeline(
    model_name: str = "pyramid_flux",
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    width: int = 128,
    height: int = 64,
    with_text: bool = True,
    attention_backend: str = "prefix",
) -> PipelineComponents:
    """Tiny DiT + tiny VAE + tiny text models with seeded random weights."""
    from generation.models import build_dit
    from generation.models.vae import CausalVideoVAE, VAEConfig

    if model_name not in TINY_DIT_CONFIGS:
        raise ValueError(f"unknown model name {model_name!r}")
    if width % 64 or height % 64:
        raise ValueError("tiny resolution must be a multiple of 64")
    g = torch.Generator().manual_seed(int(seed))
    dit = reseed_(build_dit(model_name, dict(TINY_DIT_CONFIGS[model_name]), attention_backend=attention_backend), g).eval().requires_grad_(False)
    vae = reseed_(CausalVideoVAE(VAEConfig.from_dict(TINY_VAE_CONFIG)), g).eval().requires_grad_(False)
    text = PromptEncoder(_tiny_text_encoder(model_name, g)) if with_text else None
    device = torch.device(device)
    dit.to(device=device, dtype=dtype)
    vae.to(device=device, dtype=dtype)
    if text is not None:
        for m in text.encoder.modules():
            m.to(device=device, dtype=dtype).requires_grad_(False)
    log.info("built tiny random %s (seed %d) on %s", model_name, seed, device)
    return PipelineComponents(
        model_name=model_name, variant="384p", dit=dit, vae=vae, text=text, dtype=dtype, device=device,
        label=TINY_LABEL, resolution={"384p": (width, height), "768p": (width * 2, height * 2)},
    )


def save_checkpoint(
    components: PipelineComponents, root: Path, *, variant: str = "384p", weights_format: str = "safetensors",
    shards: int = 1,
) -> Path:
    """Write a checkpoint folder in the released layout (used to test loading with tiny models)."""
    from safetensors.torch import save_file

    root = Path(root)

    def write_module(module: nn.Module, folder: Path, config: dict) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
        sd = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
        if weights_format == "bin":
            torch.save(sd, folder / "diffusion_pytorch_model.bin")
        elif shards <= 1:
            save_file(sd, str(folder / "diffusion_pytorch_model.safetensors"))
        else:
            keys = sorted(sd)
            weight_map = {}
            for i in range(shards):
                part = keys[i::shards]
                name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
                save_file({k: sd[k] for k in part}, str(folder / name))
                weight_map.update({k: name for k in part})
            (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
                json.dumps({"metadata": {}, "weight_map": weight_map}), encoding="utf-8")

    write_module(components.dit, root / f"diffusion_transformer_{variant}", TINY_DIT_CONFIGS[components.model_name])
    vae_cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(components.vae.config).items()}
    write_module(components.vae, root / "causal_video_vae", {"_class_name": "CausalVideoVAE", **vae_cfg})
    if components.text is not None:
        enc = components.text.encoder
        if components.model_name == "pyramid_flux":
            pairs = [("text_encoder", "tokenizer", enc.clip_models[0], enc.clip_tokenizers[0]),
                     ("text_encoder_2", "tokenizer_2", enc.t5_model, enc.t5_tokenizer)]
        else:
            pairs = [("text_encoder", "tokenizer", enc.clip_models[0], enc.clip_tokenizers[0]),
                     ("text_encoder_2", "tokenizer_2", enc.clip_models[1], enc.clip_tokenizers[1]),
                     ("text_encoder_3", "tokenizer_3", enc.t5_model, enc.t5_tokenizer)]
        for model_dir, tok_dir, model, tok in pairs:
            model.save_pretrained(str(root / model_dir))
            tok.save_pretrained(str(root / tok_dir))
    return root

"""Text conditioning (SPEC §3): CLIP pooled vector(s) + T5 sequence with mask.

pyramid_flux: CLIP-L `CLIPTextModel` pooler_output [B,768] + T5 last_hidden_state [B,128,4096] + mask.
pyramid_mmdit: CLIP-L and CLIP-G `CLIPTextModelWithProjection` text_embeds concatenated [B,2048] + T5.
`PromptEncoder` adds the prompt suffix, caches the (fixed) negative prompt and returns [neg, pos].
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from generation.latents import default_negative_prompt, prompt_suffix
from generation.sampling.pyramid import TextConditioning

log = logging.getLogger(__name__)

CLIP_MAX_LENGTH = 77
T5_MAX_LENGTH = 128

Encoded = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (embeds [B,L,D], mask [B,L], pooled [B,P])


class TextEncoderError(RuntimeError):
    pass


@dataclass
class TextEncoder:
    """The text models of one checkpoint. `clip_models` has 1 (flux: CLIPTextModel) or 2 (mmdit:
    CLIPTextModelWithProjection L and G) entries; `projected` says which pooled output to use."""

    model_name: str
    clip_tokenizers: list
    clip_models: list[nn.Module]
    t5_tokenizer: object
    t5_model: nn.Module
    projected: bool
    t5_max_length: int = T5_MAX_LENGTH
    clip_max_length: int = CLIP_MAX_LENGTH

    def modules(self) -> list[nn.Module]:
        return [*self.clip_models, self.t5_model]

    @property
    def device(self) -> torch.device:
        return next(self.t5_model.parameters()).device

    @torch.no_grad()
    def encode(self, prompts: list[str], device: torch.device | None = None) -> Encoded:
        """`device`: where the models execute (with offload hooks the parameters may sit elsewhere)."""
        device = device or self.device
        pooled_parts = []
        for tok, model in zip(self.clip_tokenizers, self.clip_models, strict=True):
            ids = tok(prompts, padding="max_length", max_length=self.clip_max_length, truncation=True,
                      return_tensors="pt").input_ids.to(device)
            out = model(ids, output_hidden_states=False)
            pooled_parts.append(out.text_embeds if self.projected else out.pooler_output)
        pooled = torch.cat([p.to(device) for p in pooled_parts], dim=-1)
        t5in = self.t5_tokenizer(prompts, padding="max_length", max_length=self.t5_max_length, truncation=True,
                                 add_special_tokens=True, return_tensors="pt")
        ids = t5in.input_ids.to(device)
        mask = t5in.attention_mask.to(device)
        embeds = self.t5_model(ids, attention_mask=mask).last_hidden_state
        return embeds.to(device), mask.to(device), pooled


@dataclass
class PromptEncoder:
    """Suffix + cached negative prompt around a `TextEncoder`; produces the DiT's [neg, pos] batch."""

    encoder: TextEncoder
    suffix: str = field(default_factory=prompt_suffix)
    negative_prompt: str = field(default_factory=default_negative_prompt)
    _neg_cache: dict[str, Encoded] = field(default_factory=dict, repr=False)

    def __call__(self, prompt: str, negative_prompt: str | None = None, device: torch.device | None = None,
                 cfg: bool = True) -> TextConditioning:
        positive = prompt + self.suffix
        if not cfg:
            e, m, p = self.encoder.encode([positive], device)
            return TextConditioning(e, m, p, cfg=False)
        neg_text = self.negative_prompt if negative_prompt is None else negative_prompt
        cached = self._neg_cache.get(neg_text)
        if cached is None:
            # one batch for [neg, pos] when the negative has not been seen yet
            e, m, p = self.encoder.encode([neg_text, positive], device)
            self._neg_cache = {neg_text: (e[:1].clone(), m[:1].clone(), p[:1].clone())}
            return TextConditioning(e, m, p, cfg=True)
        pos = self.encoder.encode([positive], device)
        neg = tuple(t.to(pos[0].device) for t in cached)
        return TextConditioning.from_pair(neg, pos)  # type: ignore[arg-type]


def _load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    if not folder.is_dir():
        raise TextEncoderError(f"tokenizer folder missing: {folder}")
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the folder named
        raise TextEncoderError(f"cannot load tokenizer from {folder}: {exc}") from exc


def _load_model(cls, folder: Path, dtype: torch.dtype, device: torch.device) -> nn.Module:
    if not folder.is_dir():
        raise TextEncoderError(f"text encoder folder missing: {folder}")
    try:
        model = cls.from_pretrained(str(folder), local_files_only=True, torch_dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - re-raised with the folder named
        raise TextEncoderError(f"cannot load {cls.__name__} from {folder}: {exc}") from exc
    return model.to(device).eval().requires_grad_(False)


def load_text_encoder(
    root: Path, model_name: str, *, dtype: torch.dtype, device: torch.device, t5_max_length: int = T5_MAX_LENGTH
) -> TextEncoder:
    """Load the text towers of a checkpoint from its own sub-folders (local files only)."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel

    root = Path(root)
    log.info("loading text encoders for %s from %s", model_name, root)
    if model_name == "pyramid_flux":
        return TextEncoder(
            model_name=model_name,
            clip_tokenizers=[_load_tokenizer(root / "tokenizer")],
            clip_models=[_load_model(CLIPTextModel, root / "text_encoder", dtype, device)],
            t5_tokenizer=_load_tokenizer(root / "tokenizer_2"),
            t5_model=_load_model(T5EncoderModel, root / "text_encoder_2", dtype, device),
            projected=False,
            t5_max_length=t5_max_length,
        )
    if model_name == "pyramid_mmdit":
        return TextEncoder(
            model_name=model_name,
            clip_tokenizers=[_load_tokenizer(root / "tokenizer"), _load_tokenizer(root / "tokenizer_2")],
            clip_models=[
                _load_model(CLIPTextModelWithProjection, root / "text_encoder", dtype, device),
                _load_model(CLIPTextModelWithProjection, root / "text_encoder_2", dtype, device),
            ],
            t5_tokenizer=_load_tokenizer(root / "tokenizer_3"),
            t5_model=_load_model(T5EncoderModel, root / "text_encoder_3", dtype, device),
            projected=True,
            t5_max_length=t5_max_length,
        )
    raise TextEncoderError(f"unknown model name {model_name!r}")

"""Local MarianMT translation (`Helsinki-NLP/opus-mt-zh-en` folder layout) with transformers.

The model is loaded lazily from a local folder only (`local_files_only=True`, never the hub), kept on
the CPU so the GPU stays free for video, and run on one dedicated worker thread so the event loop is
never blocked and concurrent requests do not fight over CPU cores.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import unicodedata
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bot.prompts.translate.base import TranslationError

log = logging.getLogger("bot.prompts.translate.marian")

_SENTENCE_END = re.compile(r"(?<=[。！？!?；;\n])")


def source_sentences(text: str) -> list[str]:
    """Prepare Chinese input for the MT model: NFKC (full-width → half-width), drop emoji/symbols
    and invisible characters it has no vocabulary for, split into sentences for batched decoding."""
    cleaned = "".join(
        ch
        for ch in unicodedata.normalize("NFKC", text)
        if unicodedata.category(ch) not in ("So", "Sk", "Cf", "Cs", "Co", "Mn")
    )
    parts = (" ".join(p.split()) for p in _SENTENCE_END.split(cleaned))
    return [p for p in parts if p.strip(" 。！？!?；;,，")]


class MarianTranslator:
    name = "marian"

    def __init__(
        self,
        model_dir: str | Path,
        *,
        max_new_tokens: int = 200,
        num_beams: int = 4,
        timeout_s: float = 30.0,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.timeout_s = timeout_s
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="marian")
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None
        self._load_error: str | None = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        """Load tokenizer and model (idempotent, thread-safe). Raises TranslationError('unavailable')."""
        with self._lock:
            if self._model is not None:
                return
            if self._load_error is not None:
                raise TranslationError("unavailable", self._load_error)
            if not (self.model_dir / "config.json").is_file():
                self._load_error = f"no MarianMT model in {self.model_dir}"
                log.error("marian model folder missing: %s", self.model_dir, extra={"backend": self.name})
                raise TranslationError("unavailable", self._load_error)
            try:
                from transformers import MarianMTModel, MarianTokenizer

                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*sacremoses.*")
                    tokenizer = MarianTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
                model = MarianMTModel.from_pretrained(str(self.model_dir), local_files_only=True)
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                self._load_error = f"cannot load {self.model_dir}: {exc}"
                log.exception("marian model failed to load", extra={"backend": self.name})
                raise TranslationError("unavailable", self._load_error) from exc
            self._tokenizer = tokenizer
            self._model = model.to("cpu").eval()
            log.info("marian model loaded from %s", self.model_dir, extra={"backend": self.name})

    async def warm_up(self) -> None:
        """Load the model in the background (e.g. at bot start) so the first prompt is not slow."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self.load)

    def _translate_sync(self, sentences: list[str]) -> str:
        import torch

        self.load()
        batch = self._tokenizer(sentences, return_tensors="pt", padding=True, truncation=True)
        with torch.inference_mode():
            out = self._model.generate(
                **batch, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams, do_sample=False
            )
        decoded = self._tokenizer.batch_decode(out, skip_special_tokens=True)
        return " ".join(" ".join(s.split()) for s in decoded if s.strip())

    async def translate(self, text: str) -> str:
        sentences = source_sentences(text)
        if not sentences:
            raise TranslationError("empty", "nothing to translate after cleaning")
        loop = asyncio.get_running_loop()
        try:
            english = await asyncio.wait_for(
                loop.run_in_executor(self._executor, self._translate_sync, sentences), timeout=self.timeout_s
            )
        except TimeoutError as exc:
            raise TranslationError("timeout", f"no result within {self.timeout_s:.0f}s") from exc
        except TranslationError:
            raise
        except (RuntimeError, ValueError, IndexError) as exc:
            log.exception("marian translation failed", extra={"backend": self.name})
            raise TranslationError("unavailable", str(exc)) from exc
        if not english:
            raise TranslationError("empty", "model produced no text")
        return english

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

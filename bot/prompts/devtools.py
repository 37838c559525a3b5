"""Development helpers for tests and benchmarks — never used by the running bot.

* `build_tiny_marian(folder)`: a tiny random MarianMT in the `opus-mt-zh-en` folder layout with a
  real SentencePiece tokenizer trained offline on a small built-in corpus, loadable by
  `MarianTokenizer`/`MarianMTModel.from_pretrained(..., local_files_only=True)`. Its output is
  gibberish, but always non-empty Latin text, so the plumbing can be checked.
* `ChatCompletionsServer`: a local HTTP server on 127.0.0.1 speaking the chat-completions protocol
  with scripted behaviours (ok, slow, HTTP errors, malformed JSON, missing fields).
"""

from __future__ import annotations

import json
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_CORPUS = [
    "一只柴犬在雪地里奔跑",
    "一隻柴犬在雪地裡奔跑",
    "a shiba inu running in the snow",
    "夕阳下的海边，海浪拍打着礁石",
    "sunset over the sea, waves hitting the rocks",
    "城市夜景，霓虹灯闪烁，雨后的街道",
    "a city at night with neon lights and wet streets after the rain",
    "宇航员在月球上漫步，镜头缓缓推进",
    "an astronaut walking on the moon, the camera slowly pushes in",
    "一条金色的龙在云中飞翔",
    "a golden dragon flying through the clouds",
    "小猫在窗台上晒太阳，阳光明媚",
    "a kitten basking in the sun on the windowsill, bright sunshine",
    "森林里的瀑布，航拍镜头",
    "a waterfall in the forest, aerial shot",
    "the quick brown fox jumps over the lazy dog",
    "cinematic style, shot on 35mm film, vivid colors, soft natural lighting",
]


def _is_plain_latin(piece: str) -> bool:
    core = piece.replace("\u2581", "")
    return bool(core) and core.isascii() and core.isalpha()


def build_tiny_marian(folder: str | Path, *, seed: int = 0, d_model: int = 16, vocab_size: int = 160) -> Path:
    """Write a tiny random MarianMT + tokenizer to `folder` and return it."""
    import sentencepiece as spm
    import torch
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    corpus_file = folder / "corpus.txt"
    corpus_file.write_text("\n".join(_CORPUS * 4) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus_file),
        model_prefix=str(folder / "spm"),
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        hard_vocab_limit=False,
        bos_id=-1,
        eos_id=-1,
        unk_id=0,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    corpus_file.unlink()
    proc = spm.SentencePieceProcessor(model_file=str(folder / "spm.model"))
    pieces = [proc.id_to_piece(i) for i in range(proc.get_piece_size())]
    # Marian vocab layout: </s>=0, <unk>=1, the pieces, <pad> last (also the decoder start token).
    vocab: dict[str, int] = {"</s>": 0, "<unk>": 1}
    for piece in pieces:
        if piece not in vocab and piece != "<unk>":
            vocab[piece] = len(vocab)
    vocab["<pad>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    for name in ("source.spm", "target.spm"):
        (folder / name).write_bytes((folder / "spm.model").read_bytes())
    for name in ("spm.model", "spm.vocab"):
        (folder / name).unlink()

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*sacremoses.*")
        tokenizer = MarianTokenizer(
            source_spm=str(folder / "source.spm"),
            target_spm=str(folder / "target.spm"),
            vocab=str(folder / "vocab.json"),
            source_lang="zh",
            target_lang="en",
        )
    pad_id = vocab["<pad>"]
    config = MarianConfig(
        vocab_size=len(vocab),
        decoder_vocab_size=len(vocab),
        d_model=d_model,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=2 * d_model,
        decoder_ffn_dim=2 * d_model,
        max_position_embeddings=512,
        pad_token_id=pad_id,
        eos_token_id=0,
        decoder_start_token_id=pad_id,
        forced_eos_token_id=0,
    )
    torch.manual_seed(seed)
    model = MarianMTModel(config).eval()
    # Random weights would often stop at once or emit Chinese pieces; steer the output bias so the
    # decoded text is always non-empty Latin gibberish (the model still runs and depends on input).
    allowed = torch.full((len(vocab),), -1e4)
    for piece, idx in vocab.items():
        if _is_plain_latin(piece):
            allowed[idx] = 0.0
    with torch.no_grad():
        model.final_logits_bias.copy_(allowed.unsqueeze(0))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@dataclass(frozen=True, slots=True)
class Reply:
    """One scripted answer. kind: "ok" (chat answer with `content`, after `delay_s`), "status" (HTTP
    `status` error), "malformed" (truncated JSON), "missing" (no message/content), "empty" (empty
    content) or "json" (`body` as given, e.g. a moderation answer)."""

    kind: str = "ok"
    content: str = ""
    delay_s: float = 0.0
    status: int = 200
    body: Any = None


@dataclass(slots=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None


@dataclass
class _State:
    script: deque[Reply] = field(default_factory=deque)
    default: Reply = field(default_factory=Reply)
    requests: list[RecordedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _echo_translation(body: dict[str, Any] | None) -> str:
    try:
        user = [m for m in body["messages"] if m.get("role") == "user"][-1]["content"]  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        user = ""
    return f"translated: {len(user)} chars"


class ChatCompletionsServer:
    """`with ChatCompletionsServer() as srv:` → `srv.base_url` (".../v1"); queue replies with
    `srv.push(Reply(...))`; unscripted requests get `srv.default` (an ok answer)."""

    def __init__(self) -> None:
        self.state = _State()
        state = self.state

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr
                return

            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    body = None
                with state.lock:
                    state.requests.append(RecordedRequest(self.path, dict(self.headers.items()), body))
                    reply = state.script.popleft() if state.script else state.default
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                content = reply.content or _echo_translation(body)
                if reply.kind == "status":
                    payload = json.dumps({"error": {"message": "scripted failure"}}).encode()
                    self._send(reply.status, payload)
                elif reply.kind == "malformed":
                    self._send(200, b'{"choices": [{"message": {"content": "unterminated')
                elif reply.kind == "missing":
                    self._send(200, json.dumps({"id": "x", "choices": [{"index": 0}]}).encode())
                elif reply.kind == "json":
                    self._send(reply.status, json.dumps(reply.body, ensure_ascii=False).encode("utf-8"))
                elif reply.kind == "empty":
                    self._send(200, self._answer(""))
                else:
                    self._send(200, self._answer(content))

            @staticmethod
            def _answer(content: str) -> bytes:
                return json.dumps(
                    {
                        "id": "chatcmpl-local",
                        "object": "chat.completion",
                        "model": "local",
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": content},
                                "finish_reason": "stop",
                            }
                        ],
                    },
                    ensure_ascii=False,
                ).encode("utf-8")

            def _send(self, status: int, payload: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="chat-server", daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self.state.lock:
            return list(self.state.requests)

    def push(self, *replies: Reply) -> None:
        with self.state.lock:
            self.state.script.extend(replies)

    def set_default(self, reply: Reply) -> None:
        with self.state.lock:
            self.state.default = reply

    def __enter__(self) -> ChatCompletionsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

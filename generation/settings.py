"""Typed settings of the generation area (the `generation:` section of config.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ModelName = Literal["pyramid_flux", "pyramid_mmdit"]
Variant = Literal["384p", "768p"]
DType = Literal["auto", "bf16", "fp32", "fp16"]
PlacementName = Literal["auto", "gpu", "text_offload", "model_offload", "sequential_offload"]
AttentionBackend = Literal["prefix", "dense"]


class GenerationSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Checkpoint root holding diffusion_transformer_<variant>/, causal_video_vae/, text_encoder*/, tokenizer*/.
    # None → the tiny random-weight demo model (output is labelled as such).
    checkpoint: Path | None = None
    model_name: ModelName | None = None  # detected from the checkpoint when None
    variant: Variant = "384p"
    dtype: DType = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    device: str = "auto"  # auto: cuda when available, else cpu
    # auto: the memory planner picks the fastest placement that fits the free GPU memory (or memory_cap_gib)
    placement: PlacementName = "auto"
    memory_cap_gib: float | None = Field(default=None, gt=0)  # plan under (and cap the allocator to) this
    cuda_graphs: bool = True  # replay DiT forwards from CUDA graphs when the DiT stays resident on a GPU
    # tiled VAE decode (256 px tiles, the reference's save_memory mode); None: the memory planner decides
    # (untiled when it fits, which is faster); without the planner, tiled. The image encode is always tiled.
    vae_tiling: bool | None = None
    # decode each finished latent frame while later frames are generated; None: on when the VAE stays
    # resident on a GPU
    stream_decode: bool | None = None
    decode_side_stream: bool = True  # run that streamed decode on its own CUDA stream (overlaps the DiT)
    # run the DiT blocks under torch.compile (fused elementwise kernels). The worker compiles at start-up
    # (25-40 s on an H100) and falls back to eager if compiling fails. Needs Triton (CUDA) or a C++
    # compiler (CPU). "auto": on CUDA devices only (H200, miniflux 384p: 12.93 -> 10.81 s a video).
    compile_dit: bool | Literal["auto"] = "auto"
    # where torch.compile keeps its caches across restarts (generation/compile_cache.py); null: torch's
    # default folder in /tmp. TORCHINDUCTOR_CACHE_DIR / TRITON_CACHE_DIR in the environment win.
    compile_cache_dir: Path | None = Path("var/cache/torch-compile")
    # one GEMM for the projections that share an input (q/k/v, and the MLP input of FLUX single blocks)
    # while the DiT is resident; no memory added (generation/models/fusion.py)
    fuse_projections: bool = True
    # also replay CUDA graphs under sequential offload: the uploads of the streamed blocks (from pinned host
    # memory, into the graph's own memory) are captured with the kernels, so a replay re-uploads them and
    # the host no longer launches every kernel; dropped after each job. H200, 4.5 GiB cap: 42.2 s a video,
    # the same frames as without (benchmarks/RESULTS.md).
    offload_cuda_graphs: bool = True
    # 0: each CFG row's text pads are cut out of its attention ranges, so CUDA graphs are per prompt length:
    # every new token count captures a video's graphs again (H200, 384p: 15.6-16.2 s a video against 10.8 s
    # replayed). N > 0: the pads are masked by key instead, the text kept to a multiple of N tokens, and one
    # set of graphs serves every prompt of a bucket (the text keys are attended apart and merged exactly).
    # Same velocity (tests/test_dit_fast_paths.py). Measured: 14.2 s a video in a bucket seen before.
    text_bucket: int = Field(default=32, ge=0)
    # Opt-in step caching (`SamplerOptions.step_cache`): 0 = off, every step computed (the default, exact).
    # E.g. 0.05: a step reuses the last velocity when it changed by less than 5 %; faster, slightly different
    # pictures, and the caption says so. See benchmarks/RESULTS.md for what it saves and changes.
    step_cache: float = Field(default=0.0, ge=0.0, le=0.5)
    attention_backend: AttentionBackend = "prefix"  # exact per-time-group attention, or the dense mask
    bit_faithful_bf16: bool = True  # round latents/timesteps to the model dtype like the reference

    # Sampling defaults (reference demo values).
    num_inference_steps: tuple[int, int, int] = (20, 20, 20)
    video_num_inference_steps: tuple[int, int, int] = (10, 10, 10)
    i2v_num_inference_steps: tuple[int, int, int] = (10, 10, 10)
    guidance_scale: float = Field(default=7.0, ge=0.0, le=30.0)
    video_guidance_scale: float = Field(default=5.0, ge=0.0, le=30.0)
    i2v_video_guidance_scale: float = Field(default=4.0, ge=0.0, le=30.0)
    use_linear_guidance: bool = False
    fps: int = 24

    output_dir: Path = Path("var/videos")
    negative_prompt: str | None = None  # None → the reference default negative prompt
    prompt_suffix: str | None = None  # None → the reference suffix ", hyper quality, Ultra HD, 8K"
    max_prompt_chars: int = 500
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000

    # Tiny random model used when no checkpoint is configured.
    tiny_width: int = 128
    tiny_height: int = 64
    tiny_model_name: ModelName = "pyramid_flux"
    tiny_seed: int = 0
    # default steps with the tiny model (its output is noise anyway; keeps the CPU demo quick)
    tiny_num_inference_steps: tuple[int, int, int] = (3, 3, 3)
    tiny_video_num_inference_steps: tuple[int, int, int] = (2, 2, 2)

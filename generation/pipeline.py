"""`PyramidFlowGenerator`: request → text encode → pyramid sampling → VAE decode → MP4 + cover.

Implements generation.api.VideoGenerator. All request checks run before any model work and raise
InvalidRequest with a Chinese message. Progress is reported after every denoising step; the cancel
check runs at every step.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch._dynamo.exc import TorchDynamoException

from generation.api import (
    CancelFn,
    GenerationCancelled,
    GenerationRequest,
    GenerationResult,
    InvalidRequest,
    Progress,
    ProgressFn,
)
from generation.compile_cache import use_compile_cache
from generation.components import VARIANT_MAX_TEMP, PipelineComponents
from generation.decode import DECODE_TILE, StreamingFrameDecoder, decode_to_frames, encode_image_latent
from generation.finisher import VideoFinisher
from generation.images import load_image_for_video
from generation.latents import latent_norm
from generation.limits import DURATION_TO_TEMP
from generation.memory import Placement, PlacementManager, cap_cuda_memory
from generation.models.fusion import fuse_projections, unfuse_projections
from generation.models.graphed import GraphedDiT
from generation.models.linear_gelu import use_gelu_epilogue
from generation.planner import (
    Footprint,
    PlacementPlan,
    fallback,
    gpu_budget,
    plan_placement,
    working_set,
)
from generation.sampling.noise import GeneratorNoise, NoiseSource
from generation.sampling.pyramid import SamplerOptions, prepare_initial_noise, sample_i2v, sample_t2v
from generation.sampling.schedule import build_schedule
from generation.settings import GenerationSettings
from generation.text_encoders import T5_MAX_LENGTH

log = logging.getLogger(__name__)

SAMPLING_SHARE = 0.9  # fraction of the progress bar spent in sampling; the rest is decoding/encoding


@dataclass(frozen=True, slots=True)
class Job:
    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    temp: int
    seed: int
    image: np.ndarray | None
    options: SamplerOptions


def graph_capacity(resolutions: list[str], text_bucket: int) -> int:
    """CUDA graphs to keep: one per (unit, stage) of the longest video of each resolution, per text bucket.
    An LRU smaller than that recaptures every layout of a long video on every job (768p at 31 units has
    93), and with `text_bucket` the prompts of two buckets would keep evicting each other's graphs."""
    layouts = 3 * sum(VARIANT_MAX_TEMP[r] for r in resolutions)
    return layouts * (-(-T5_MAX_LENGTH // text_bucket) if text_bucket else 1)


class PyramidFlowGenerator:
    name = "pyramid_flow"

    def __init__(
        self, components: PipelineComponents, settings: GenerationSettings, *, placement: PlacementManager | None = None
    ) -> None:
        self.c = components
        self.settings = settings
        self.norm = latent_norm(components.model_name)
        self.schedule = build_schedule()
        self._lock = threading.Lock()
        self.plan: PlacementPlan | None = None  # set when the planner chose the placement
        self.finisher = VideoFinisher()  # labels + AIGC metadata (+ the content check when the worker sets one)
        device = components.device
        if settings.memory_cap_gib is not None and device.type == "cuda":
            cap_cuda_memory(device, settings.memory_cap_gib)
        if placement is None:
            if settings.placement == "auto":
                self.plan = self._plan(Placement.GPU)
                placement = PlacementManager(self.plan.placement, device, resident_blocks=self.plan.resident_blocks)
            else:
                placement = PlacementManager(Placement(settings.placement), device)
        self._place(placement)

    def _plan(self, start: Placement) -> PlacementPlan:
        c = self.c
        text_models = c.text.encoder.modules() if c.text else []
        longest = max(VARIANT_MAX_TEMP[r] for r in ("384p", "768p") if c.supports(r))
        plan = plan_placement(Footprint.of(c.dit, text_models, c.vae), working_set(c.model_name, c.variant, longest),
                              gpu_budget(c.device, self.settings.memory_cap_gib), start=start)
        level = logging.INFO if plan.fits else logging.WARNING
        log.log(level, "memory plan: %s%s", plan.describe(),
                f" (rejected: {'; '.join(plan.rejected)})" if plan.rejected else "",
                extra={"placement": plan.placement.value})  # fmt: skip
        return plan

    def _place(self, placement: PlacementManager) -> None:
        c = self.c
        self.placement = placement
        streamed = [c.dit] + (c.text.encoder.modules() if c.text else [])
        resident_dit = placement.placement in (Placement.GPU, Placement.TEXT_OFFLOAD)
        fuse = resident_dit and self.settings.fuse_projections
        if not fuse:  # block streaming and model moves handle the parameters one by one
            unfuse_projections(c.dit)
        placement.prepare(streamed=streamed, swapped=[c.vae])
        # On CUDA the tanh-GELU projections take cuBLASLt's GELU epilogue (`linear_gelu`); the single blocks'
        # MLP input then gets its own GEMM instead of sharing q/k/v's
        epilogue = placement.device.type == "cuda" and getattr(c.dit, "gelu_epilogue", False)
        use_gelu_epilogue(c.dit, epilogue)
        if fuse:
            fuse_projections(c.dit, single_mlp=not epilogue)
        streamed_dit = placement.placement is Placement.SEQUENTIAL_OFFLOAD and self.settings.offload_cuda_graphs
        # Under model offload the DiT comes to the GPU for each job and leaves after it, so its graphs are
        # captured per job and dropped before it leaves (they point at its weights' addresses). Capturing a
        # 384p video's 48 layouts costs a few seconds; eager forwards cost three times the replayed ones.
        # Graphs under sequential offload are dropped after each job too: their pool would otherwise hold
        # the sampling activations while the VAE decodes on a card that has no room for both.
        self._graphs_per_job = placement.placement is Placement.MODEL_OFFLOAD or streamed_dit
        use_graphs = self.settings.cuda_graphs and placement.device.type == "cuda" and (
            resident_dit or streamed_dit or self._graphs_per_job)
        if hasattr(c.dit, "text_bucket"):
            c.dit.text_bucket = self.settings.text_bucket
        compile_dit = self.settings.compile_dit
        wanted = compile_dit is True or (compile_dit == "auto" and placement.device.type == "cuda")
        if wanted and hasattr(c.dit, "compile_blocks") and not c.dit.compiled:
            c.dit.compile_blocks()
        capacity = graph_capacity([r for r in ("384p", "768p") if c.supports(r)], self.settings.text_bucket)
        self.dit: torch.nn.Module = GraphedDiT(c.dit, max_graphs=capacity) if use_graphs else c.dit
        stream = self.settings.stream_decode
        tiling = self.settings.vae_tiling
        planned = self.plan.decode_tile if self.plan is not None else DECODE_TILE
        self.decode_tile: int | None
        if tiling is None:  # the plan's choice (tiled without a plan)
            self.decode_tile = planned
        elif tiling:  # tiles whatever the plan: its tile size, or the default where it chose none
            self.decode_tile = planned or DECODE_TILE
        else:
            self.decode_tile = None
        self.stream_decode = (resident_dit and placement.device.type == "cuda") if stream is None else (
            stream and resident_dit)
        if self.plan is not None and not self.plan.stream_decode:  # the plan has no room for both at once
            self.stream_decode = False

    def _fall_back(self) -> bool:
        """After an out-of-memory error: move to the next slower placement. False when none is left."""
        if self.plan is None or (nxt := fallback(self.plan)) is None:
            return False
        for s in self.placement.streamers:
            s.remove()
        if isinstance(self.dit, GraphedDiT):
            self.dit.clear()
        torch.cuda.empty_cache()
        self.plan = self._plan(nxt)
        self._place(PlacementManager(self.plan.placement, self.c.device, resident_blocks=self.plan.resident_blocks))
        return True

    def warm_up(self) -> float:
        """Compile the DiT blocks (with `compile_dit`) by one small first-frame forward, so the first job does
        not wait for it. Seconds spent; 0 when there is nothing to compile. A machine that cannot compile
        (no Triton, no C compiler) is logged and runs eagerly: the worker never fails on it."""
        dit = self.c.dit
        if not getattr(dit, "compiled", False):
            return 0.0
        t0 = time.perf_counter()
        w, h = self.c.size_for(self.c.variant) if self.c.supports(self.c.variant) else self.c.size_for("384p")
        try:
            with torch.no_grad(), self.placement.use(dit):
                dit(*dit.probe_inputs(h // 32, w // 32))
        except Exception:
            log.exception("compiling the DiT blocks failed; running them eagerly")
            dit.compile_blocks(False)
        spent = time.perf_counter() - t0
        log.info("DiT warm-up (torch.compile) took %.1f s, compiled=%s", spent, dit.compiled)
        return spent

    def prewarm(self, prompt: str = "a cat walking on the grass", negative_prompt: str | None = None) -> float:
        """Capture the DiT's CUDA graphs for every (unit, stage) layout of the default video before any job:
        one short job (one step per stage, decoded, the frames dropped) at the model's own resolution, 5 s,
        with the default negative prompt, so prompts of that text bucket replay from the first video on.
        Seconds spent; 0 where no graphs are kept between jobs (CPU, offloaded DiT). A failure is logged and
        left to the first job: the worker never fails on it."""
        if not isinstance(self.dit, GraphedDiT) or self._graphs_per_job or self.c.text is None:
            return 0.0
        t0 = time.perf_counter()
        resolution = self.c.variant if self.c.supports(self.c.variant) else "384p"
        try:
            job = self.validate(GenerationRequest(prompt=prompt, resolution=resolution,  # type: ignore[arg-type]
                                                  duration_s=5, negative_prompt=negative_prompt))  # fmt: skip
            steps = tuple(1 for _ in job.options.first_frame_steps), tuple(1 for _ in job.options.video_steps)
            job = dataclasses.replace(job, options=dataclasses.replace(
                job.options, first_frame_steps=steps[0], video_steps=steps[1]))  # fmt: skip
            with self._lock:
                self.render(job, noise=GeneratorNoise(0))
        except Exception:
            log.exception("capturing the DiT graphs ahead of the first job failed; the first job captures them")
            return time.perf_counter() - t0
        spent = time.perf_counter() - t0
        log.info("DiT graphs of the default video captured in %.1f s (%d graphs)", spent, self.dit.graph_count)
        return spent

    @property
    def label(self) -> str:
        return self.c.label

    def _label(self, timings: dict[str, float]) -> str:
        """The video's label for its caption: the model's, plus a note when steps reused a velocity."""
        if timings.get("reused_steps"):
            return "；".join(p for p in (self.c.label, STEP_CACHE_NOTE) if p)
        return self.c.label

    def supports(self, resolution: str) -> bool:
        return self.c.supports(resolution)

    # ------------------------------------------------------------------ validation
    def validate(self, request: GenerationRequest) -> Job:
        s = self.settings
        prompt = (request.prompt or "").strip()
        if not prompt and request.image_path is None:
            raise InvalidRequest("请在 /video 后面写上想要的画面描述。")
        if len(prompt) > s.max_prompt_chars:
            raise InvalidRequest(f"提示词太长了（{len(prompt)} 字），请控制在 {s.max_prompt_chars} 字以内。")
        if not self.supports(request.resolution):
            raise InvalidRequest(f"当前模型不支持 {request.resolution} 分辨率，请换一个分辨率再试。")
        width, height = self.c.size_for(request.resolution)
        max_temp = VARIANT_MAX_TEMP[request.resolution]
        if request.temp is not None:
            temp = int(request.temp)
        elif request.duration_s in DURATION_TO_TEMP:
            temp = DURATION_TO_TEMP[request.duration_s]
        else:
            raise InvalidRequest("视频时长只支持 5 秒或 10 秒。")
        if temp > max_temp:
            longest = round((1 + 8 * (max_temp - 1)) / self.settings.fps)
            raise InvalidRequest(f"{request.resolution} 最长只能生成 {longest} 秒左右的视频，请缩短时长。")
        i2v = request.image_path is not None
        if temp < (2 if i2v else 1):
            raise InvalidRequest("视频长度太短了。")
        if i2v:
            steps = request.num_inference_steps or s.i2v_num_inference_steps
            video_steps = steps
            guidance = request.guidance_scale if request.guidance_scale is not None else s.guidance_scale
            video_guidance = (request.video_guidance_scale if request.video_guidance_scale is not None
                              else s.i2v_video_guidance_scale)
        else:
            steps = request.num_inference_steps or s.num_inference_steps
            video_steps = request.video_num_inference_steps or s.video_num_inference_steps
            guidance = request.guidance_scale if request.guidance_scale is not None else s.guidance_scale
            video_guidance = (request.video_guidance_scale if request.video_guidance_scale is not None
                              else s.video_guidance_scale)
        for st in (*steps, *video_steps):
            if not 1 <= int(st) <= 100:
                raise InvalidRequest("采样步数需要在 1 到 100 之间。")
        if len(steps) != 3 or len(video_steps) != 3:
            raise InvalidRequest("采样步数需要给出 3 个阶段的值。")
        for gscale in (guidance, video_guidance):
            if not 0 <= gscale <= 30:
                raise InvalidRequest("引导强度需要在 0 到 30 之间。")
        image = None
        if i2v:
            image = load_image_for_video(request.image_path, width, height, max_bytes=s.max_image_bytes,
                                         max_pixels=s.max_image_pixels)
        latent_dtype = None if s.bit_faithful_bf16 else torch.float32
        options = SamplerOptions(
            first_frame_steps=tuple(int(x) for x in steps),
            video_steps=tuple(int(x) for x in video_steps),
            guidance_scale=float(guidance),
            video_guidance_scale=float(video_guidance),
            use_linear_guidance=s.use_linear_guidance,
            latent_dtype=latent_dtype,
            step_cache=s.step_cache,
        )
        return Job(prompt=prompt, negative_prompt=request.negative_prompt, width=width, height=height, temp=temp,
                   seed=int(request.seed), image=image, options=options)

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        request: GenerationRequest,
        out_dir: Path,
        *,
        progress: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
    ) -> GenerationResult:
        job = self.validate(request)
        with self._lock:
            return self._run(job, Path(out_dir), progress, should_cancel, GeneratorNoise(job.seed),
                             produce_id=request.produce_id)

    def run_job(self, job: Job, out_dir: Path, *, noise: NoiseSource, progress: ProgressFn | None = None,
                should_cancel: CancelFn | None = None) -> GenerationResult:
        """Run an already validated job with an explicit noise source (tests, parity)."""
        with self._lock:
            return self._run(job, Path(out_dir), progress, should_cancel, noise)

    def _run(self, job: Job, out_dir: Path, progress: ProgressFn | None, should_cancel: CancelFn | None,
             noise: NoiseSource, *, produce_id: str | None = None) -> GenerationResult:
        jid = uuid.uuid4().hex[:12]
        t0 = time.perf_counter()
        log.info("job %s: start %s %dx%d temp=%d seed=%d", jid, "i2v" if job.image is not None else "t2v",
                 job.width, job.height, job.temp, job.seed)
        frames, timings = self.render(job, noise=noise, progress=progress, should_cancel=should_cancel)
        t1 = time.perf_counter()
        out_dir.mkdir(parents=True, exist_ok=True)
        done = self.finisher.finish(frames, out_dir / f"{jid}.mp4", out_dir / f"{jid}.jpg", fps=self.settings.fps,
                                    produce_id=produce_id)
        video_path, cover_path = done.video_path, done.cover_path
        t_end = time.perf_counter()
        timings.update(done.timings)
        timings["encode_s"] = t_end - t1
        timings["total_s"] = t_end - t0
        timings["video_s"] = frames.shape[0] / self.settings.fps
        if progress is not None:
            progress(Progress(unit=job.temp - 1, units=job.temp, stage=2, step=0, steps=0, fraction=1.0,
                              message="完成"))
        log.info("job %s: done %s in %.1fs", jid, video_path, timings["total_s"])
        return GenerationResult(
            video_path=video_path, cover_path=cover_path, seconds=timings["total_s"],
            frames=int(frames.shape[0]), width=int(frames.shape[2] - frames.shape[2] % 2),
            height=int(frames.shape[1] - frames.shape[1] % 2), label=self._label(timings), extra=timings,
        )

    def render(self, job: Job, *, noise: NoiseSource, progress: ProgressFn | None = None,
               should_cancel: CancelFn | None = None) -> tuple[np.ndarray, dict[str, float]]:
        """Encode text (and image), sample, decode: uint8 frames [F, H, W, 3] and stage timings. Out of GPU
        memory under a planned placement, the job restarts once per slower placement, with the same noise; a
        compile failure of the DiT blocks restarts it once, eagerly."""
        while True:
            try:
                return self._render_once(job, noise=noise, progress=progress, should_cancel=should_cancel)
            except torch.cuda.OutOfMemoryError:
                before = self.placement.placement.value
                if not self._fall_back():
                    raise
                log.warning("out of GPU memory under %s; retrying under %s", before, self.placement.placement.value)
            except TorchDynamoException:
                # `compile_dit` compiles at start-up, but a later layout can still fail to compile (a Triton
                # or compiler problem): the blocks then run eagerly from now on, and the job starts again
                if not getattr(self.c.dit, "compiled", False):
                    raise
                log.exception("compiling the DiT blocks failed during a job; running them eagerly from now on")
                self.c.dit.compile_blocks(False)
            if isinstance(noise, GeneratorNoise):
                noise = GeneratorNoise(noise.seed)

    def _render_once(self, job: Job, *, noise: NoiseSource, progress: ProgressFn | None = None,
                     should_cancel: CancelFn | None = None) -> tuple[np.ndarray, dict[str, float]]:
        c = self.c
        if c.text is None:
            raise RuntimeError("this generator has no text encoder loaded")
        t0 = time.perf_counter()
        device = self.placement.device
        cancel = should_cancel or (lambda: False)
        with torch.no_grad():  # not inference_mode: the DiT plan cache reads tensor version counters
            with self.placement.use(*c.text.encoder.modules()):
                text = c.text(job.prompt, job.negative_prompt, device=device, cfg=job.options.guidance_scale > 0)
            t_text = time.perf_counter()
            latent_h, latent_w = job.height // 8, job.width // 8
            init = prepare_initial_noise(noise, batch=1, temp=job.temp, latent_height=latent_h, latent_width=latent_w,
                                         num_stages=self.schedule.num_stages, device=device,
                                         dtype=job.options.latent_dtype or c.dtype)
            image_latent = None
            if job.image is not None:
                with self.placement.use(c.vae):
                    image_latent = encode_image_latent(c.vae, job.image, self.norm, noise, device=device,
                                                       dtype=c.dtype, tiling=self.settings.vae_tiling is not False)

            def report(p: Progress) -> None:
                if progress is not None:
                    progress(Progress(unit=p.unit, units=p.units, stage=p.stage, step=p.step, steps=p.steps,
                                      fraction=p.fraction * SAMPLING_SHARE, message="生成中"))

            stream = None
            on_unit = None
            if self.stream_decode:
                stream = StreamingFrameDecoder(c.vae, self.norm, tiling=self.decode_tile is not None, dtype=c.dtype,
                                               tile_size=self.decode_tile or DECODE_TILE,
                                               side_stream=self.settings.decode_side_stream)
                if image_latent is not None:
                    stream.push(image_latent)

                def on_unit(_k: int, x: torch.Tensor) -> None:
                    stream.push(x)

            stats: dict[str, int] = {}
            with self.placement.use(c.dit):
                try:
                    if image_latent is None:
                        latents = sample_t2v(self.dit, text, init, options=job.options, noise=noise,
                                             schedule=self.schedule, progress=report, should_cancel=cancel,
                                             on_unit=on_unit, stats=stats)
                    else:
                        latents = sample_i2v(self.dit, text, image_latent, init, options=job.options, noise=noise,
                                             schedule=self.schedule, progress=report, should_cancel=cancel,
                                             on_unit=on_unit, stats=stats)
                finally:
                    if self._graphs_per_job and isinstance(self.dit, GraphedDiT):
                        self.dit.clear()  # before the DiT leaves the GPU: the graphs hold its addresses
            t_sample = time.perf_counter()
            if cancel():
                raise GenerationCancelled("cancelled before decoding")
            if progress is not None:
                progress(Progress(unit=job.temp - 1, units=job.temp, stage=2, step=0, steps=0,
                                  fraction=SAMPLING_SHARE, message="解码视频"))
            if stream is not None:
                frames = stream.frames()
            else:
                with self.placement.use(c.vae):
                    frames = decode_to_frames(c.vae, latents, self.norm, tiling=self.decode_tile is not None,
                                              dtype=c.dtype, tile_size=self.decode_tile)
        t_decode = time.perf_counter()
        return frames, {"text_s": t_text - t0, "sample_s": t_sample - t_text, "decode_s": t_decode - t_sample,
                        "dit_calls": float(stats.get("dit_calls", 0)),
                        "reused_steps": float(stats.get("reused_steps", 0))}  # fmt: skip


# caption note of a video made with `step_cache` (the pictures differ a little from every step computed)
STEP_CACHE_NOTE = "加速模式：部分步骤复用上一步结果"


def build_components(settings: GenerationSettings) -> PipelineComponents:
    from generation.loading import load_pipeline, resolve_device, resolve_dtype
    from generation.tiny import build_tiny_pipeline

    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    if settings.checkpoint is None:
        comps = build_tiny_pipeline(settings.tiny_model_name, settings.tiny_seed, dtype=dtype, device=device,
                                    width=settings.tiny_width, height=settings.tiny_height,
                                    attention_backend=settings.attention_backend)
        if comps.text is not None:
            if settings.negative_prompt is not None:
                comps.text.negative_prompt = settings.negative_prompt
            if settings.prompt_suffix is not None:
                comps.text.suffix = settings.prompt_suffix
        return comps
    return load_pipeline(settings.checkpoint, settings.variant, settings.model_name, dtype=dtype, device=device,
                         negative_prompt=settings.negative_prompt, prompt_suffix=settings.prompt_suffix,
                         attention_backend=settings.attention_backend)


def build_generator(settings: GenerationSettings) -> PyramidFlowGenerator:
    """The configured generator; the tiny random model (labelled) when settings.checkpoint is None
    (then with the tiny default step counts; steps given in a request are still honoured)."""
    if settings.compile_dit is True or (settings.compile_dit == "auto" and torch.cuda.is_available()):
        use_compile_cache(settings.compile_cache_dir)
    components = build_components(settings)
    if settings.checkpoint is None:
        settings = settings.model_copy(update={
            "num_inference_steps": settings.tiny_num_inference_steps,
            "video_num_inference_steps": settings.tiny_video_num_inference_steps,
            "i2v_num_inference_steps": settings.tiny_video_num_inference_steps,
        })
    return PyramidFlowGenerator(components, settings)

"""A compile cache that outlives the process, so a restarted worker does not compile the DiT again.

torch.compile keeps Inductor's FX-graph and autograd caches and Triton's kernels under
`TORCHINDUCTOR_CACHE_DIR` / `TRITON_CACHE_DIR` (by default a folder in /tmp, which many systems clear at
boot and containers lose on restart). `use_compile_cache` points both at a folder the operator keeps
(`generation.compile_cache_dir`, default `var/cache/torch-compile`) unless they are already set in the
environment, and turns the FX-graph and autograd caches on. Nothing is downloaded; the folder only ever
holds what this machine compiled.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def use_compile_cache(folder: Path | None) -> Path | None:
    """Use `folder` for the compile caches of this process (None: leave torch's defaults). Returns the
    folder in use, or None."""
    if folder is None:
        return None
    folder = Path(folder).expanduser().resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("compile cache %s cannot be created (%s); torch's default is used", folder, exc)
        return None
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(folder / "triton"))
    try:
        from torch._inductor import config as inductor_config

        inductor_config.fx_graph_cache = True
        if hasattr(inductor_config, "autograd_cache"):
            inductor_config.autograd_cache = True
    except Exception as exc:  # an older or stripped torch: the env folders still apply
        log.debug("inductor cache flags not set: %s", exc)
    log.info("compile cache: %s", os.environ["TORCHINDUCTOR_CACHE_DIR"])
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])

"""Spatial tiling with the reference's seam blending (SPEC section 7.4).

Tiles start every `stride` input pixels while the start is inside the image. Processed tiles are
blended row by row, left to right, first with the (already blended, uncropped) tile above and then with
the one to the left, over `blend` rows/columns with weight y/blend for the current tile, and each tile
is then cropped to `keep` rows/columns before concatenation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

OVERLAP_FACTOR = 0.25


@dataclass(frozen=True, slots=True)
class TilePlan:
    tile_in: int  # tile edge on the input side
    stride_in: int  # distance between tile starts on the input side
    blend_out: int  # blended rows/columns on the output side
    keep_out: int  # rows/columns kept per tile on the output side

    @staticmethod
    def for_decode(tile_sample: int, downsample_scale: int) -> TilePlan:
        tile_latent = int(tile_sample / downsample_scale)
        blend = int(tile_sample * OVERLAP_FACTOR)
        return TilePlan(tile_latent, int(tile_latent * (1 - OVERLAP_FACTOR)), blend, tile_sample - blend)

    @staticmethod
    def for_encode(tile_sample: int, downsample_scale: int) -> TilePlan:
        tile_latent = int(tile_sample / downsample_scale)
        blend = int(tile_latent * OVERLAP_FACTOR)
        return TilePlan(tile_sample, int(tile_sample * (1 - OVERLAP_FACTOR)), blend, tile_latent - blend)

    def needed(self, height: int, width: int) -> bool:
        """The reference tiles only when the input exceeds one tile in either direction."""
        return height > self.tile_in or width > self.tile_in

    def starts(self, size: int) -> list[int]:
        if self.stride_in <= 0:
            raise ValueError(f"tile size too small: stride {self.stride_in}")
        return list(range(0, size, self.stride_in))

    def split(self, x: Tensor) -> list[list[Tensor]]:
        """Cut `[..., H, W]` into the grid of (possibly smaller, at the edges) input tiles."""
        h, w = x.shape[-2], x.shape[-1]
        return [
            [x[..., i : i + self.tile_in, j : j + self.tile_in] for j in self.starts(w)]
            for i in self.starts(h)
        ]

    def merge(self, tiles: Iterable[list[Tensor]]) -> Tensor:
        """Blend processed tiles (`[..., h, w]` each) and stitch them into one tensor. Rows are consumed one
        at a time and only the previous row is kept for blending, so a generator of rows keeps at most two
        rows of processed tiles alive."""
        prev: list[Tensor] = []
        rows_out = []
        for i, row in enumerate(tiles):
            done_row: list[Tensor] = []
            for j, tile in enumerate(row):
                if i > 0:
                    tile = blend_edge(prev[j], tile, self.blend_out, dim=-2)
                if j > 0:
                    tile = blend_edge(done_row[j - 1], tile, self.blend_out, dim=-1)
                done_row.append(tile)
            prev = done_row
            rows_out.append(torch.cat([t[..., : self.keep_out, : self.keep_out] for t in done_row], dim=-1))
        return torch.cat(rows_out, dim=-2)

    def apply(self, x: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        """`fn` on every tile, row by row, blended as the rows come (two rows of results alive at most)."""
        return self.merge([fn(t) for t in row] for row in self.split(x))


def blend_edge(prev: Tensor, cur: Tensor, extent: int, dim: int) -> Tensor:
    """new[y] = prev[-n + y] * (1 - y/n) + cur[y] * (y/n) for y < n along `dim`; the rest of `cur` unchanged."""
    n = min(prev.shape[dim], cur.shape[dim], extent)
    if n <= 0:
        return cur
    ratio = torch.arange(n, dtype=torch.float64) / n
    shape = [1] * cur.dim()
    shape[dim] = n
    w_cur = ratio.to(device=cur.device, dtype=cur.dtype).reshape(shape)
    w_prev = (1 - ratio).to(device=cur.device, dtype=cur.dtype).reshape(shape)
    head = prev.narrow(dim, prev.shape[dim] - n, n) * w_prev + cur.narrow(dim, 0, n) * w_cur
    return torch.cat([head, cur.narrow(dim, n, cur.shape[dim] - n)], dim=dim)

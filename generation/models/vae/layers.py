"""Building blocks of the causal video VAE.

Tensors are `[B, C, T, H, W]`. Every temporal convolution is causal: output frame t only sees input
frames <= t. To decode (or encode) a video piece by piece, each `CausalConv3d` can keep the tail of its
time-padded input in a `CausalCache`; the next piece is prefixed with that tail instead of zero frames,
which makes piecewise processing equal to processing the whole video at once (GroupNorm and attention
act per frame, so they need no state).

Parameter names follow the released checkpoint (`conv.weight`, `norm1`, `downsamplers.0.conv.conv` ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NORM_EPS = 1e-6  # every norm of this VAE, the mid-block attention norm included


class CausalCache:
    """Stream state: for each causal conv, the input frames its next output still needs.

    An empty cache means "the next piece is the start of the video" (zero padding in time, and the
    temporal upsamplers drop their first output frame, as for a whole video).
    """

    def __init__(self) -> None:
        self._tails: dict[int, Tensor] = {}

    def tail(self, module: nn.Module) -> Tensor | None:
        return self._tails.get(id(module))

    def has(self, module: nn.Module) -> bool:
        return id(module) in self._tails

    def store(self, module: nn.Module, tail: Tensor) -> None:
        self._tails[id(module)] = tail

    def __len__(self) -> int:
        return len(self._tails)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._tails.values())


class CausalConv3d(nn.Module):
    """3-D conv with (k_t - 1) zero frames in front (or the cached tail) and k//2 zeros around H, W."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: tuple[int, int, int] = (1, 1, 1),
    ) -> None:
        super().__init__()
        self.kernel_t = kernel_size
        self.stride_t = stride[0]
        self.time_pad = kernel_size - 1
        pad_hw = kernel_size // 2
        # Spatial zero padding happens inside the conv; time padding is done by hand (causal).
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride=stride, padding=(0, pad_hw, pad_hw))

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        if self.time_pad == 0:
            return self.conv(x)
        prev = cache.tail(self) if cache is not None else None
        if prev is None:
            b, c, _, h, w = x.shape
            front = x.new_zeros((b, c, self.time_pad, h, w))
        else:
            front = prev
        x = torch.cat([front, x], dim=2)
        if cache is not None:
            length = x.shape[2]
            n_out = (length - self.kernel_t) // self.stride_t + 1 if length >= self.kernel_t else 0
            cache.store(self, x[:, :, n_out * self.stride_t:].clone())
        return self.conv(x)


class CausalGroupNorm(nn.GroupNorm):
    """GroupNorm applied to every frame separately (time folded into the batch)."""

    def forward(self, x: Tensor) -> Tensor:
        b, c, t, h, w = x.shape
        if t == 1:
            return super().forward(x.reshape(b, c, h, w)).reshape(b, c, 1, h, w)
        y = x.transpose(1, 2).reshape(b * t, c, h, w)
        y = super().forward(y)
        return y.reshape(b, t, c, h, w).transpose(1, 2).contiguous()


class CausalResnetBlock3D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = CausalGroupNorm(groups, in_channels, eps=NORM_EPS)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3)
        self.norm2 = CausalGroupNorm(groups, out_channels, eps=NORM_EPS)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3)
        self.conv_shortcut = CausalConv3d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)), cache)
        h = self.conv2(F.silu(self.norm2(h)), cache)
        shortcut = self.conv_shortcut(x, cache) if self.conv_shortcut is not None else x
        return shortcut + h


class SpatialDownsample(nn.Module):
    """Stride-2 conv in H and W (key `downsamplers.0.conv.conv`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = CausalConv3d(channels, channels, 3, stride=(1, 2, 2))

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        return self.conv(x, cache)


class TemporalDownsample(nn.Module):
    """Stride-2 causal conv in time: T -> (T - 1) // 2 + 1 (key `temporal_downsamplers.0.conv.conv`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = CausalConv3d(channels, channels, 3, stride=(2, 1, 1))

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        return self.conv(x, cache)


class SpatialUpsample(nn.Module):
    """Conv to 4C channels, then depth-to-space: channel c*4 + 2*py + px -> pixel (2y+py, 2x+px)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = CausalConv3d(channels, channels * 4, 3)

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        y = self.conv(x, cache)
        b, c4, t, h, w = y.shape
        c = c4 // 4
        y = y.view(b, c, 2, 2, t, h, w).permute(0, 1, 4, 5, 2, 6, 3)
        return y.reshape(b, c, t, h * 2, w * 2)


class TemporalUpsample(nn.Module):
    """Conv to 2C channels, then depth-to-time: channel c*2 + p -> frame 2t + p.

    At the start of a video (no cached context) the first output frame is dropped: T -> 2T - 1.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = CausalConv3d(channels, channels * 2, 3)

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        first_piece = cache is None or not cache.has(self.conv)
        y = self.conv(x, cache)
        b, c2, t, h, w = y.shape
        c = c2 // 2
        y = y.view(b, c, 2, t, h, w).transpose(2, 3).reshape(b, c, t * 2, h, w)
        return y[:, :, 1:] if first_piece else y


class FrameAttention(nn.Module):
    """Single-head self-attention over the H*W positions of each frame, with a residual.

    Key layout of the diffusers "deprecated attention block": group_norm, to_q, to_k, to_v, to_out.0.
    """

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.group_norm = CausalGroupNorm(groups, channels, eps=NORM_EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: Tensor) -> Tensor:
        b, c, t, h, w = x.shape
        tokens = self.group_norm(x).permute(0, 2, 3, 4, 1).reshape(b * t, h * w, c)
        q = self.to_q(tokens).unsqueeze(1)
        k = self.to_k(tokens).unsqueeze(1)
        v = self.to_v(tokens).unsqueeze(1)
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        out = self.to_out[0](out)
        out = out.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)
        return out + x


class MidBlock(nn.Module):
    """resnet -> per-frame attention -> resnet."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.attentions = nn.ModuleList([FrameAttention(channels, groups)])
        self.resnets = nn.ModuleList(
            [CausalResnetBlock3D(channels, channels, groups), CausalResnetBlock3D(channels, channels, groups)]
        )

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        x = self.resnets[0](x, cache)
        x = self.attentions[0](x)
        return self.resnets[1](x, cache)


class DownBlock(nn.Module):
    """Resnets, then optional spatial and temporal downsampling (`DownEncoderBlockCausal3D`)."""

    def __init__(
        self, in_channels: int, out_channels: int, num_layers: int, groups: int, spatial: bool, temporal: bool
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [CausalResnetBlock3D(in_channels if i == 0 else out_channels, out_channels, groups)
             for i in range(num_layers)]
        )
        self.downsamplers = nn.ModuleList([SpatialDownsample(out_channels)]) if spatial else None
        self.temporal_downsamplers = nn.ModuleList([TemporalDownsample(out_channels)]) if temporal else None

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x, cache)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x, cache)
        if self.temporal_downsamplers is not None:
            x = self.temporal_downsamplers[0](x, cache)
        return x


class UpBlock(nn.Module):
    """Resnets, then optional spatial and temporal upsampling (`UpDecoderBlockCausal3D`)."""

    def __init__(
        self, in_channels: int, out_channels: int, num_layers: int, groups: int, spatial: bool, temporal: bool
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [CausalResnetBlock3D(in_channels if i == 0 else out_channels, out_channels, groups)
             for i in range(num_layers)]
        )
        self.upsamplers = nn.ModuleList([SpatialUpsample(out_channels)]) if spatial else None
        self.temporal_upsamplers = nn.ModuleList([TemporalUpsample(out_channels)]) if temporal else None

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x, cache)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, cache)
        if self.temporal_upsamplers is not None:
            x = self.temporal_upsamplers[0](x, cache)
        return x

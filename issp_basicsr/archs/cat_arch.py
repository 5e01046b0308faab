"""CAT-R: the Cross Aggregation Transformer with regular rectangle windows (Chen et al., NeurIPS 2022).

Written here from the paper's description; the sizes and layer names follow the authors' released SR options
(``network_g: type: CAT, block_name: CATB_regular``). The network, from input to output:

* shallow feature: a 3x3 conv to ``embed_dim`` channels (``conv_first``);
* deep feature: ``len(depth)`` residual groups, each ``depth[i]`` cross aggregation blocks (CATB) and a conv,
  with a skip over the group; a LayerNorm before the first group (``before_RG``) and after the last (``norm``),
  a conv after the body and a skip over the whole body (``conv_after_body``);
* reconstruction: conv to 64 channels + LeakyReLU, pixel-shuffle upsampler, conv to RGB.

A CATB is a pre-norm transformer block. Its attention, rectangle-window self-attention (Rwin-SA), splits the
channels (and the heads) in two halves: the first half attends inside horizontal rectangles of ``sh x sw``
pixels (``split_size_0 x split_size_1``, 4 x 16 for CAT-R), the second inside vertical ones of ``sw x sh``.
Every second block shifts both halves by half a window along each axis (the axial shift; the windows that wrap
around are masked as in Swin). Each half adds a dynamic position bias, a small MLP from the relative offset
(dy, dx) to one bias per head. The locality complementary module (LCM), a 3x3 depthwise conv on V (before the
window split), is added to the attention output before the output projection. Then an MLP (GELU, ratio 4).

Inputs of any size are accepted: ``forward`` pads the image symmetrically (mirrored, edge pixel repeated, as the
authors' test code does) to a multiple of every window side, and crops the output back. The option files
therefore have no ``window_size`` key, so ``ISSPSRModel.test`` does not pad a second time.
"""
import functools
import math

import torch
import torch.utils.checkpoint
from basicsr.archs.arch_util import Upsample, trunc_normal_
from basicsr.archs.swinir_arch import DropPath
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from ..errors import OptionError

MASKED = -100.0  # attention logit added between tokens that a shifted window brings together from far apart


# -------------------------------------------------------------------------------------------- window helpers
def window_partition(x, window):
    """(B, H, W, C) -> (B * number of windows, wh * ww, C), windows in row-major order inside each image."""
    b, h, w, c = x.shape
    wh, ww = window
    x = x.view(b, h // wh, wh, w // ww, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, c)


def window_reverse(windows, window, height, width):
    """Inverse of :func:`window_partition`: (B * windows, wh * ww, C) -> (B, H, W, C)."""
    wh, ww = window
    c = windows.shape[-1]
    x = windows.view(-1, height // wh, width // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, height, width, c)


def _shift_regions(window, shift):
    """The regions along one axis of a map rolled by ``-shift``: the bulk, the last window's own part, and the
    part that wrapped around from the start (one region when there is no shift)."""
    if shift == 0:
        return (slice(None), )
    return slice(0, -window), slice(-window, -shift), slice(-shift, None)


@functools.lru_cache(maxsize=8)
def shifted_window_mask(height, width, window, shift, device=None):
    """(windows, N, N) additive mask for windows of a map rolled by ``-shift``: 0 between tokens that were
    neighbours before the roll, ``MASKED`` between tokens that the roll brought in from the opposite edge.

    Cached (the last few sizes): every shifted block of a network with the same windows shares one mask, which
    for a 256 x 256 map is 16 MB; callers must not modify it."""
    regions = torch.zeros(1, height, width, 1, device=device)
    label = 0
    for rows in _shift_regions(window[0], shift[0]):
        for cols in _shift_regions(window[1], shift[1]):
            regions[:, rows, cols, :] = label
            label += 1
    labels = window_partition(regions, window).squeeze(-1)  # windows, N
    different = labels.unsqueeze(1) != labels.unsqueeze(2)
    return torch.zeros(different.shape, device=device).masked_fill_(different, MASKED)


def symmetric_pad(x, multiple):
    """Pad (B, C, H, W) at the bottom and right to multiples of ``multiple`` by mirroring the image with its edge
    pixel repeated (``cat([x, flip(x)])``, extended periodically so any pad size works)."""
    height, width = x.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    for dim, size, pad in ((-2, height, pad_h), (-1, width, pad_w)):
        if pad:
            index = torch.arange(size + pad, device=x.device) % (2 * size)
            index = torch.where(index < size, index, 2 * size - 1 - index)
            x = x.index_select(dim, index)
    return x


# ---------------------------------------------------------------------------------------------- the layers
class Mlp(nn.Module):
    """Linear, GELU, Linear (with dropout after each)."""

    def __init__(self, dim, hidden_dim, drop=0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DynamicPosBias(nn.Module):
    """Dynamic relative position bias: an MLP from a relative offset (dy, dx) to one attention bias per head
    (``pos_proj``, then three LayerNorm-ReLU-Linear stages, the last to ``num_heads``)."""

    def __init__(self, pos_dim, num_heads):
        super().__init__()
        self.pos_proj = nn.Linear(2, pos_dim)
        self.pos1 = nn.Sequential(nn.LayerNorm(pos_dim), nn.ReLU(), nn.Linear(pos_dim, pos_dim))
        self.pos2 = nn.Sequential(nn.LayerNorm(pos_dim), nn.ReLU(), nn.Linear(pos_dim, pos_dim))
        self.pos3 = nn.Sequential(nn.LayerNorm(pos_dim), nn.ReLU(), nn.Linear(pos_dim, num_heads))

    def forward(self, offsets):
        return self.pos3(self.pos2(self.pos1(self.pos_proj(offsets))))


class RectangleWindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping ``window = (height, width)`` rectangles, with a dynamic
    position bias. Takes q, k, v as (B, H, W, dim) maps (H, W multiples of the window), returns (B, H, W, dim)."""

    def __init__(self, dim, num_heads, window, qk_scale=None, attn_drop=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.window = tuple(window)
        self.scale = qk_scale or (dim // num_heads)**-0.5
        # the position MLP's width: a sixteenth of this half's channels (5 for CAT-R's 90), at least 1
        self.pos = DynamicPosBias(max(dim // 16, 1), num_heads)
        self.attn_drop = nn.Dropout(attn_drop)
        wh, ww = self.window
        # every relative offset (dy, dx) in a window, and for each token pair the row of its offset
        dy, dx = torch.meshgrid(torch.arange(1 - wh, wh), torch.arange(1 - ww, ww), indexing='ij')
        self.register_buffer('offsets', torch.stack([dy, dx], -1).reshape(-1, 2).float(), persistent=False)
        ys, xs = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing='ij')
        ys, xs = ys.reshape(-1), xs.reshape(-1)
        pair = (ys[:, None] - ys[None, :] + wh - 1) * (2 * ww - 1) + (xs[:, None] - xs[None, :] + ww - 1)
        self.register_buffer('offset_index', pair, persistent=False)

    def position_bias(self):
        """(heads, N, N): the bias of every token pair of a window."""
        n = self.window[0] * self.window[1]
        return self.pos(self.offsets)[self.offset_index.reshape(-1)].view(n, n, -1).permute(2, 0, 1)

    def forward(self, q, k, v, mask=None):
        b, height, width, c = q.shape
        heads, n = self.num_heads, self.window[0] * self.window[1]
        q, k, v = (window_partition(t, self.window).view(-1, n, heads, c // heads).transpose(1, 2) for t in (q, k, v))
        attn = (q * self.scale) @ k.transpose(-2, -1) + self.position_bias().unsqueeze(0)
        if mask is not None:  # (windows, N, N), the same for every image of the batch
            attn = (attn.view(b, -1, heads, n, n) + mask.unsqueeze(1).unsqueeze(0)).view(-1, heads, n, n)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(-1, n, c)
        return window_reverse(x, self.window, height, width)


class CATBlock(nn.Module):
    """Cross aggregation transformer block with regular rectangle windows (CATB-regular).

    ``x = x + proj(Rwin-SA(norm1(x)) + LCM(V))``, then ``x = x + mlp(norm2(x))``. The first half of the channels
    (``attns[0]``) uses ``split_size`` windows (horizontal for CAT-R's (4, 16)), the second half (``attns[1]``)
    the transposed ones; ``shifted`` blocks roll each half by half its window before attending.
    """

    def __init__(self, dim, num_heads, split_size, shifted=False, mlp_ratio=4.0, qkv_bias=True, qk_scale=None,
                 drop=0.0, attn_drop=0.0, drop_path=0.0):
        super().__init__()
        sh, sw = split_size
        self.windows = ((sh, sw), (sw, sh))
        self.shifts = ((sh // 2, sw // 2), (sw // 2, sh // 2)) if shifted else ((0, 0), (0, 0))
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attns = nn.ModuleList([
            RectangleWindowAttention(dim // 2, num_heads // 2, window, qk_scale, attn_drop) for window in self.windows
        ])
        self.get_v = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)  # the locality complementary module
        self.proj = nn.Linear(dim, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def rwin_sa(self, x, x_size):
        """Rectangle-window self-attention plus the LCM, before the output projection: (B, L, C) -> (B, L, C)."""
        height, width = x_size
        b, _, c = x.shape
        q, k, v = self.qkv(x).view(b, height, width, 3 * c).chunk(3, dim=-1)
        halves = []
        for part, attn, shift in zip((slice(0, c // 2), slice(c // 2, c)), self.attns, self.shifts):
            qh, kh, vh = q[..., part], k[..., part], v[..., part]
            if shift != (0, 0):
                qh, kh, vh = (torch.roll(t, (-shift[0], -shift[1]), dims=(1, 2)) for t in (qh, kh, vh))
                out = attn(qh, kh, vh, shifted_window_mask(height, width, attn.window, shift, x.device))
                out = torch.roll(out, shift, dims=(1, 2))
            else:
                out = attn(qh, kh, vh)
            halves.append(out)
        lcm = self.get_v(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return (torch.cat(halves, dim=-1) + lcm).reshape(b, height * width, c)

    def forward(self, x, x_size):
        x = x + self.drop_path(self.proj(self.rwin_sa(self.norm1(x), x_size)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _residual_conv(dim, resi_connection):
    if resi_connection == '1conv':
        return nn.Conv2d(dim, dim, 3, 1, 1)
    return nn.Sequential(  # '3conv': fewer parameters
        nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(negative_slope=0.2, inplace=True),
        nn.Conv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(negative_slope=0.2, inplace=True),
        nn.Conv2d(dim // 4, dim, 3, 1, 1))


class ResidualGroup(nn.Module):
    """``depth`` CAT blocks (every second one shifted), a conv, and a skip over the group."""

    def __init__(self, dim, depth, num_heads, split_size, drop_paths, resi_connection='1conv', use_chk=False,
                 **block):
        super().__init__()
        self.use_chk = use_chk
        self.blocks = nn.ModuleList([
            CATBlock(dim, num_heads, split_size, shifted=i % 2 == 1, drop_path=drop_paths[i], **block)
            for i in range(depth)
        ])
        self.conv = _residual_conv(dim, resi_connection)

    def forward(self, x, x_size):
        height, width = x_size
        res = x
        for block in self.blocks:
            if self.use_chk and x.requires_grad:
                x = torch.utils.checkpoint.checkpoint(block, x, x_size, use_reentrant=False)
            else:
                x = block(x, x_size)
        image = x.transpose(1, 2).reshape(x.shape[0], -1, height, width)
        return res + self.conv(image).flatten(2).transpose(1, 2)


class ImageToTokens(nn.Module):
    """(B, C, H, W) -> (B, H * W, C)."""

    def forward(self, x):
        return x.flatten(2).transpose(1, 2)


# ---------------------------------------------------------------------------------------------- the network
def _check(condition, key, message):
    if not condition:
        raise OptionError(f'network_g:{key}: {message}')


@ARCH_REGISTRY.register()
class CAT(nn.Module):
    """Cross Aggregation Transformer for image SR, regular rectangle windows (CAT-R).

    The keys are those of the authors' option files. CAT-R: ``embed_dim=180, depth=[6]*6, num_heads=[6]*6,
    split_size_0=[4]*6, split_size_1=[16]*6, mlp_ratio=4, resi_connection='1conv', upsampler='pixelshuffle'``.

    Args:
        upscale: 2, 3, 4 or 8 (any power of 2, or 3).
        in_chans: image channels (3: the DIV2K RGB mean is subtracted; otherwise none).
        img_size: the training patch size of the released files; accepted and unused (masks are built per size).
        embed_dim: channels of the deep features.
        depth: CAT blocks per residual group.
        num_heads: heads per group (even: half per window orientation).
        split_size_0, split_size_1: per group, the short and the long side of the rectangle windows.
        mlp_ratio: hidden channels of the MLP over ``embed_dim``.
        qkv_bias, qk_scale: bias of the qkv projection; the attention scale (default head_dim ** -0.5).
        drop_rate, attn_drop_rate, drop_path_rate: dropout, attention dropout, stochastic depth (0 .. rate
            linearly over all blocks; 0.1 by default, as released).
        img_range: the model sees ``(x - mean) * img_range``.
        resi_connection: '1conv' or '3conv', the conv at the end of each group and after the body.
        upsampler: 'pixelshuffle' (the SR head).
        block_name: 'CATB_regular' (CAT-R); the axial variant of CAT-A is not implemented here.
        use_chk: gradient checkpointing of every block (less memory, more time).
    """

    def __init__(self, upscale=2, in_chans=3, img_size=64, embed_dim=180, depth=(6, 6, 6, 6, 6, 6),
                 num_heads=(6, 6, 6, 6, 6, 6), split_size_0=(4, 4, 4, 4, 4, 4), split_size_1=(16, 16, 16, 16, 16, 16),
                 mlp_ratio=4.0, qkv_bias=True, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1,
                 img_range=1.0, resi_connection='1conv', upsampler='pixelshuffle', block_name='CATB_regular',
                 use_chk=False):
        super().__init__()
        groups = len(depth)
        for key, values in (('num_heads', num_heads), ('split_size_0', split_size_0), ('split_size_1', split_size_1)):
            _check(len(values) == groups, key, f'one value per residual group ({groups}, as depth), got {list(values)}')
        _check(block_name == 'CATB_regular', 'block_name',
               f"only 'CATB_regular' (CAT-R) is implemented, got {block_name!r}")
        _check(upsampler == 'pixelshuffle', 'upsampler', f"only 'pixelshuffle' (SR) is implemented, got {upsampler!r}")
        _check(resi_connection in ('1conv', '3conv'), 'resi_connection', f"'1conv' or '3conv', got {resi_connection!r}")
        _check(upscale == 3 or (upscale >= 2 and upscale & (upscale - 1) == 0), 'upscale',
               f'a power of 2 or 3, got {upscale!r}')
        _check(embed_dim % 2 == 0, 'embed_dim', f'must be even (two halves of channels), got {embed_dim}')
        for i, heads in enumerate(num_heads):
            _check(heads >= 2 and heads % 2 == 0 and (embed_dim // 2) % (heads // 2) == 0, 'num_heads',
                   f'group {i}: {heads} heads must be even and divide embed_dim {embed_dim} into equal halves')
            _check(min(split_size_0[i], split_size_1[i]) >= 1, 'split_size_0',
                   f'group {i}: window sides must be >= 1, got {split_size_0[i]} x {split_size_1[i]}')

        num_feat = 64
        self.upscale = upscale
        self.img_range = img_range
        mean = (0.4488, 0.4371, 0.4040) if in_chans == 3 else (0.0, ) * in_chans
        self.register_buffer('mean', torch.tensor(mean).view(1, in_chans, 1, 1), persistent=False)
        # the image is padded to a multiple of every window side (horizontal and vertical) of every group
        self.pad_multiple = math.lcm(*split_size_0, *split_size_1)

        # shallow feature extraction
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        # deep feature extraction
        self.before_RG = nn.Sequential(ImageToTokens(), nn.LayerNorm(embed_dim))
        blocks = sum(depth)  # stochastic depth: 0 at the first block, drop_path_rate at the last
        rates = [drop_path_rate * i / max(blocks - 1, 1) for i in range(blocks)]
        self.layers = nn.ModuleList()
        for i in range(groups):
            first = sum(depth[:i])
            self.layers.append(
                ResidualGroup(embed_dim, depth[i], num_heads[i], (split_size_0[i], split_size_1[i]),
                              rates[first:first + depth[i]], resi_connection, use_chk, mlp_ratio=mlp_ratio,
                              qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate, attn_drop=attn_drop_rate))
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = _residual_conv(embed_dim, resi_connection)
        # reconstruction
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
        self.upsample = Upsample(upscale, num_feat)
        self.conv_last = nn.Conv2d(num_feat, in_chans, 3, 1, 1)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward_features(self, x):
        height, width = x.shape[-2:]
        tokens = self.before_RG(x)
        for layer in self.layers:
            tokens = layer(tokens, (height, width))
        tokens = self.norm(tokens)
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, height, width)

    def forward(self, x):
        height, width = x.shape[-2:]
        x = symmetric_pad((x - self.mean) * self.img_range, self.pad_multiple)
        x = self.conv_first(x)
        x = self.conv_after_body(self.forward_features(x)) + x
        x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        x = x / self.img_range + self.mean
        return x[..., :height * self.upscale, :width * self.upscale]

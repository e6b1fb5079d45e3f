"""Images -> token streams: patch embedding, a class token placed in the sequence, position
embeddings resampled when the resolution changes.

The tokenisation of ViT (Dosovitskiy et al., "An Image is Worth 16x16 Words", 2021) as Vision
Mamba uses it (Zhu et al., "Vision Mamba", 2024): a strided convolution cuts the image into
patches (``stride < patch_size`` gives overlapping patches, Vim's "finer granularity"
models), the patches are read in raster order, and a learned class token is inserted in the
*middle* of the sequence (index ``n // 2`` of ``n`` patches), where a bidirectional scan sees
half of the image before it from either direction. Learned absolute position embeddings
cover the class token too (the layout of the released Vim checkpoints: one table of
``n + 1`` rows with the class token's row at ``n // 2``). A different resolution resamples the
patch rows of the table on the 2-D grid (bicubic, the way timm resamples ViT tables) and keeps
the class token's row. ``patch_size=1`` gives one token per pixel (sequential-pixel models).

Axis legend: b batch, c channels, h/w image height/width, gh/gw patch grid, n patches,
l tokens (n + prefix), d model width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PatchEmbed", "ImageEncoder", "cls_index", "grid_size", "resample_pos_embed", "square_grid", "to_2tuple"]

CLS_POSITIONS = ("middle", "head", "none")


def to_2tuple(v: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``224 -> (224, 224)``; pairs pass through."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"expected an int or a (height, width) pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def grid_size(img_size: tuple[int, int], patch_size: tuple[int, int], stride: tuple[int, int]) -> tuple[int, int]:
    """Patch grid (gh, gw) of a strided, unpadded patch convolution."""
    return tuple((s - p) // st + 1 for s, p, st in zip(img_size, patch_size, stride))  # type: ignore[return-value]


def cls_index(n_patches: int, position: str = "middle") -> int | None:
    """Where the class token sits among ``n_patches + 1`` tokens: ``n // 2`` (middle), 0 (head)
    or None (no class token)."""
    if position == "middle":
        return n_patches // 2
    if position == "head":
        return 0
    if position == "none":
        return None
    raise ValueError(f"cls position must be one of {CLS_POSITIONS}, got {position!r}")


def resample_pos_embed(
    pos_embed: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], position: str = "middle"
) -> Tensor:
    """A (1, n_old [+1], d) position table for the grid ``new_grid``: the patch rows resampled
    bicubically on the 2-D grid, the class token's row (``position``) kept and moved to its
    new index. Identity when the grids agree."""
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    if old_grid == new_grid:
        return pos_embed
    n_old = old_grid[0] * old_grid[1]
    i_old = cls_index(n_old, position)
    extra = 0 if i_old is None else 1
    if pos_embed.shape[1] != n_old + extra:
        raise ValueError(
            f"position table has {pos_embed.shape[1]} rows; a {old_grid[0]}x{old_grid[1]} grid with "
            f"cls position {position!r} needs {n_old + extra}"
        )
    d = pos_embed.shape[-1]
    if i_old is None:
        patches, cls = pos_embed, None
    else:
        patches = torch.cat([pos_embed[:, :i_old], pos_embed[:, i_old + 1 :]], 1)  # (1, n_old, d)
        cls = pos_embed[:, i_old : i_old + 1]  # (1, 1, d)
    grid = patches.reshape(1, old_grid[0], old_grid[1], d).permute(0, 3, 1, 2).float()  # (1, d, gh, gw)
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", align_corners=False, antialias=True)
    patches = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], d).to(pos_embed.dtype)
    if cls is None:
        return patches
    i_new = cls_index(new_grid[0] * new_grid[1], position)
    return torch.cat([patches[:, :i_new], cls, patches[:, i_new:]], 1)


class PatchEmbed(nn.Module):
    """(b, c, h, w) -> (b, n, d) patch tokens in raster order through ``proj`` (a strided Conv2d)."""

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        stride: int | tuple[int, int] | None = None,
        in_chans: int = 3,
        embed_dim: int = 192,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        self.stride = to_2tuple(stride if stride is not None else patch_size)
        if any(p > s for p, s in zip(self.patch_size, self.img_size)):
            raise ValueError(f"patch_size {self.patch_size} is larger than img_size {self.img_size}")
        self.in_chans = in_chans
        self.grid_size = grid_size(self.img_size, self.patch_size, self.stride)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.stride, bias=bias)

    def feat_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        """Patch grid of an image of ``img_size`` (h, w)."""
        return grid_size(tuple(img_size), self.patch_size, self.stride)  # type: ignore[arg-type]

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"images must be (batch, {self.in_chans}, height, width); got {tuple(x.shape)}"
                + (f" ({x.shape[1]} channels: convert the images to {self.in_chans})" if x.dim() == 4 else "")
            )
        h, w = x.shape[-2:]
        if h < self.patch_size[0] or w < self.patch_size[1]:
            raise ValueError(f"image {h}x{w} is smaller than one {self.patch_size[0]}x{self.patch_size[1]} patch")
        return self.proj(x).flatten(2).transpose(1, 2)  # (b, d, gh, gw) -> (b, n, d)


class ImageEncoder(nn.Module):
    """Images (b, c, h, w) -> tokens (b, l, d): patches + class token (``cls_position``) + positions.

    Parameters: ``patch_embed.proj`` (Conv2d), ``cls_token`` (1, 1, d), ``pos_embed``
    (1, n + 1, d) laid out as the tokens are (class row at :attr:`cls_index`).
    ``dynamic_img_size``: any image at least one patch large is accepted and the position
    table is resampled to its grid on the fly; otherwise the image must be ``img_size``
    (resample the stored table once with :meth:`set_input_size`).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        stride: int | tuple[int, int] | None = None,
        in_chans: int = 3,
        embed_dim: int = 192,
        cls_position: str = "middle",
        pos_embed: bool = True,
        dynamic_img_size: bool = False,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        cls_index(1, cls_position)  # validates
        self.cls_position = cls_position
        self.embed_dim = embed_dim
        self.dynamic_img_size = dynamic_img_size
        self.patch_embed = PatchEmbed(img_size, patch_size, stride, in_chans, embed_dim)
        self.num_prefix_tokens = 0 if cls_position == "none" else 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if self.num_prefix_tokens else None
        n = self.patch_embed.num_patches + self.num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, n, embed_dim)) if pos_embed else None
        self.pos_drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        nn.init.trunc_normal_(self.cls_token, std=0.02) if self.cls_token is not None else None
        nn.init.trunc_normal_(self.pos_embed, std=0.02) if self.pos_embed is not None else None

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.patch_embed.grid_size

    def cls_index(self, grid: tuple[int, int] | None = None) -> int | None:
        """Index of the class token among the tokens of an image with patch ``grid``."""
        g = grid or self.patch_embed.grid_size
        return cls_index(g[0] * g[1], self.cls_position)

    def set_input_size(self, img_size: int | tuple[int, int]) -> None:
        """Make ``img_size`` the native size: resample the stored position table to its grid."""
        pe = self.patch_embed
        new_img = to_2tuple(img_size)
        new_grid = grid_size(new_img, pe.patch_size, pe.stride)
        if self.pos_embed is not None:
            with torch.no_grad():
                table = resample_pos_embed(self.pos_embed.data, pe.grid_size, new_grid, self.cls_position)
            self.pos_embed = nn.Parameter(table)
        pe.img_size, pe.grid_size = new_img, new_grid
        pe.num_patches = new_grid[0] * new_grid[1]

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """x (b, c, h, w) -> (tokens (b, l, d), patch grid (gh, gw))."""
        if x.dim() == 4 and not self.dynamic_img_size and tuple(x.shape[-2:]) != self.patch_embed.img_size:
            h, w = self.patch_embed.img_size
            raise ValueError(
                f"image size {x.shape[-2]}x{x.shape[-1]} does not match the model's {h}x{w}; resize the "
                "images, or build the model with dynamic_img_size=True (or call set_input_size)"
            )
        t = self.patch_embed(x)  # (b, n, d)
        grid = self.patch_embed.feat_size(tuple(x.shape[-2:]))
        i = self.cls_index(grid)
        if i is not None:
            cls = self.cls_token.expand(t.shape[0], -1, -1).to(t.dtype)  # (b, 1, d)
            t = torch.cat([t[:, :i], cls, t[:, i:]], 1)  # (b, n + 1, d)
        if self.pos_embed is not None:
            pos = resample_pos_embed(self.pos_embed, self.patch_embed.grid_size, grid, self.cls_position)
            t = t + pos.to(t.dtype)
        return self.pos_drop(t), grid


def square_grid(n: int) -> tuple[int, int]:
    """The square (s, s) grid of n patches (checkpoints store no grid shape)."""
    s = math.isqrt(n)
    if s * s != n:
        raise ValueError(f"{n} patches do not form a square grid; pass the grid explicitly")
    return s, s

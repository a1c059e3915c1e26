"""Figures of the evaluation report, drawn with PIL alone (no plotting library needed):
line plots, grouped bar charts, labelled grids of frames, and GIFs. Every writer is atomic
(temporary file, then rename).

    image = line_plot([Series("ours", x, y), Series("copy-last", x, y2)], title=..., ...)
    save_image(image, "open_loop.png")
    save_image(frame_grid([real (T, H, W, 3), dream (T, H, W, 3)], ["real", "dream"]), "strip.png")
    save_gif(frames (T, H, W, 3), "dream.gif", fps=10)
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Colour-blind-safe palette (Okabe & Ito, 2008), in the order series are drawn.
PALETTE = ((0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0),
           (86, 180, 233), (240, 228, 66), (0, 0, 0))
BACKGROUND, INK, GRID = (255, 255, 255), (30, 30, 30), (225, 225, 225)
FONT_SIZE = 13


def _font(size: int = FONT_SIZE) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def save_image(image: Image.Image | np.ndarray, path: str | os.PathLike) -> Path:
    """Write an image (PIL, or uint8 (H, W, 3)) as PNG, atomically."""
    path = Path(path)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(_check_frames(image, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_gif(frames: np.ndarray, path: str | os.PathLike, fps: float = 10.0,
             scale: int = 1) -> Path:
    """Write uint8 frames (T, H, W, 3) as a looping GIF, each pixel `scale`x`scale`."""
    frames = _check_frames(frames, 4)
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    images = [Image.fromarray(f) for f in frames]
    try:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                       duration=max(20, round(1000 / fps)), loop=0)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _check_frames(frames: np.ndarray, ndim: int) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != ndim or frames.shape[-1] != 3:
        shape = "(H, W, 3)" if ndim == 3 else "(T, H, W, 3)"
        raise ValueError(f"expected uint8 frames {shape}, got {frames.dtype} {frames.shape}")
    return frames


# ---------------------------------------------------------------------- frames
def frame_grid(rows: Sequence[np.ndarray], row_labels: Sequence[str] | None = None,
               col_labels: Sequence[str] | None = None, scale: int = 2, gap: int = 2,
               title: str | None = None) -> Image.Image:
    """Rows of frames, each uint8 (T_i, H, W, 3), laid out left to right, frames scaled up
    `scale`x with nearest neighbour (pixels stay crisp), labels on the left and on top."""
    rows = [_check_frames(r, 4) for r in rows]
    if not rows:
        raise ValueError("frame_grid needs at least one row")
    H, W = rows[0].shape[1:3]
    if any(r.shape[1:3] != (H, W) for r in rows):
        raise ValueError(f"frames differ in size: {[r.shape[1:3] for r in rows]}")
    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max((_text_size(probe, s, font)[0] for s in row_labels or []), default=0)
    label_w = label_w + 8 if label_w else 0
    top = (FONT_SIZE + 6 if col_labels else 0) + (FONT_SIZE + 8 if title else 0)
    cols = max(len(r) for r in rows)
    fh, fw = H * scale, W * scale
    image = Image.new("RGB", (label_w + cols * (fw + gap) + gap, top + len(rows) * (fh + gap)
                              + gap), BACKGROUND)
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((gap, 2), title, fill=INK, font=font)
    if col_labels:
        y = top - FONT_SIZE - 4
        for j, text in enumerate(col_labels):
            tw, _ = _text_size(draw, text, font)
            draw.text((label_w + gap + j * (fw + gap) + max(0, (fw - tw) // 2), y), text,
                      fill=INK, font=font)
    for i, row in enumerate(rows):
        y = top + gap + i * (fh + gap)
        if row_labels:
            draw.text((2, y + fh // 2 - FONT_SIZE // 2), row_labels[i], fill=INK, font=font)
        for j, frame in enumerate(row):
            tile = frame.repeat(scale, axis=0).repeat(scale, axis=1)
            image.paste(Image.fromarray(tile), (label_w + gap + j * (fw + gap), y))
    return image


# ---------------------------------------------------------------------- charts
@dataclass
class Series:
    """One line of a line plot; `band` = (low, high) arrays shade a range around it."""

    name: str
    x: Sequence[float]
    y: Sequence[float]
    dashed: bool = False
    band: tuple[Sequence[float], Sequence[float]] | None = None
    markers: bool = True


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(k * step, 10) for k in range(first, last + 1)]


def _fmt(v: float) -> str:
    return f"{v:g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


class _Axes:
    """Maps data coordinates to pixels inside a plot box; log2 x when asked."""

    def __init__(self, box: tuple[int, int, int, int], xlim, ylim, log_x: bool):
        self.box, self.log_x = box, log_x
        self.x0, self.x1 = (math.log2(v) for v in xlim) if log_x else xlim
        self.y0, self.y1 = ylim
        if self.x1 == self.x0:
            self.x1 = self.x0 + 1
        if self.y1 == self.y0:
            self.y1 = self.y0 + 1

    def px(self, x: float, y: float) -> tuple[float, float]:
        left, top, right, bottom = self.box
        xv = math.log2(x) if self.log_x else x
        return (left + (xv - self.x0) / (self.x1 - self.x0) * (right - left),
                bottom - (y - self.y0) / (self.y1 - self.y0) * (bottom - top))


def line_plot(series: Sequence[Series], *, title: str = "", xlabel: str = "", ylabel: str = "",
              log_x: bool = False, ylim: tuple[float, float] | None = None,
              size: tuple[int, int] = (640, 400)) -> Image.Image:
    """Lines (with round-valued axes, a grid and a legend) of several series. `log_x` spaces
    x by log2 (horizons 1, 8, 32, 128; step counts 1..16). Non-finite points are skipped."""
    font = _font()
    image = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    xs = [float(v) for s in series for v in s.x]
    ys = [float(v) for s in series for v in s.y if math.isfinite(float(v))]
    ys += [float(v) for s in series if s.band for part in s.band for v in part
           if math.isfinite(float(v))]
    if not xs or not ys:
        draw.text((10, 10), f"{title}: no data", fill=INK, font=font)
        return image
    if ylim is None:
        pad = 0.05 * (max(ys) - min(ys) or 1.0)
        low = min(ys) - pad if min(ys) < 0 else max(0.0, min(ys) - pad)
        yticks = _nice_ticks(low, max(ys) + pad)
    else:
        yticks = _nice_ticks(*ylim)
    ylim = (yticks[0], yticks[-1])
    if log_x:
        xticks = sorted(set(xs))
        if len(xticks) > 10:
            xticks = [2.0**k for k in range(int(math.log2(min(xs))), int(math.log2(max(xs))) + 1)]
        xlim = (min(xs), max(xs))
    else:
        xticks = _nice_ticks(min(xs), max(xs))
        xlim = (xticks[0], xticks[-1])
    W, H = size
    ytick_w = max(_text_size(draw, _fmt(t), font)[0] for t in yticks)
    box = (ytick_w + 30, 34, W - 16, H - 48)
    ax = _Axes(box, xlim, ylim, log_x)
    draw.text((box[0], 8), title, fill=INK, font=_font(FONT_SIZE + 2))
    for t in yticks:
        _, y = ax.px(xlim[0], t)
        draw.line([(box[0], y), (box[2], y)], fill=GRID)
        tw, th = _text_size(draw, _fmt(t), font)
        draw.text((box[0] - tw - 6, y - th / 2 - 2), _fmt(t), fill=INK, font=font)
    for t in xticks:
        x, _ = ax.px(t, ylim[0])
        draw.line([(x, box[1]), (x, box[3])], fill=GRID)
        tw, _ = _text_size(draw, _fmt(t), font)
        draw.text((x - tw / 2, box[3] + 6), _fmt(t), fill=INK, font=font)
    draw.rectangle(box, outline=INK)
    tw, _ = _text_size(draw, xlabel, font)
    draw.text(((box[0] + box[2]) / 2 - tw / 2, H - 20), xlabel, fill=INK, font=font)
    if ylabel:
        tw, th = _text_size(draw, ylabel, font)
        label = Image.new("RGB", (tw + 4, th + 6), BACKGROUND)
        ImageDraw.Draw(label).text((2, 0), ylabel, fill=INK, font=font)
        label = label.rotate(90, expand=True)
        image.paste(label, (2, int((box[1] + box[3]) / 2 - label.height / 2)))
    # bands first, so that no band hides a line drawn before it
    for i, s in enumerate(series):
        if s.band is not None:
            light = tuple(int(c + (255 - c) * 0.8) for c in PALETTE[i % len(PALETTE)])
            lo = [ax.px(x, _clip(v, ylim)) for x, v in zip(s.x, s.band[0], strict=True)]
            hi = [ax.px(x, _clip(v, ylim)) for x, v in zip(s.x, s.band[1], strict=True)]
            if len(lo) >= 2:
                draw.polygon(lo + hi[::-1], fill=light)
    for i, s in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        points = [ax.px(x, _clip(y, ylim)) for x, y in zip(s.x, s.y, strict=True)
                  if math.isfinite(float(y))]
        _polyline(draw, points, colour, s.dashed)
        if s.markers and len(points) <= 40:
            for x, y in points:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    draw.rectangle(box, outline=INK)  # the bands were painted over the frame
    _legend(draw, [(s.name, PALETTE[i % len(PALETTE)], s.dashed) for i, s in enumerate(series)],
            box, font)
    return image


def _clip(v: float, lim: tuple[float, float]) -> float:
    return min(max(float(v), lim[0]), lim[1])


def _polyline(draw: ImageDraw.ImageDraw, points, colour, dashed: bool) -> None:
    if len(points) < 2:
        return
    if not dashed:
        draw.line(points, fill=colour, width=2, joint="curve")
        return
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:], strict=True):
        length = math.hypot(x1 - x0, y1 - y0)
        n = max(1, int(length // 6))
        for k in range(0, n, 2):
            a, b = k / n, min(1.0, (k + 1) / n)
            draw.line([(x0 + (x1 - x0) * a, y0 + (y1 - y0) * a),
                       (x0 + (x1 - x0) * b, y0 + (y1 - y0) * b)], fill=colour, width=2)


def _legend(draw: ImageDraw.ImageDraw, entries, box, font) -> None:
    if not entries:
        return
    width = max(_text_size(draw, name, font)[0] for name, _, _ in entries) + 34
    x, y = box[2] - width - 6, box[1] + 6
    draw.rectangle([x, y, x + width, y + len(entries) * (FONT_SIZE + 5) + 6], fill=BACKGROUND,
                   outline=GRID)
    for i, (name, colour, dashed) in enumerate(entries):
        cy = y + 6 + i * (FONT_SIZE + 5) + FONT_SIZE // 2
        _polyline(draw, [(x + 6, cy), (x + 24, cy)], colour, dashed)
        draw.text((x + 30, cy - FONT_SIZE // 2 - 2), name, fill=INK, font=font)


def bar_plot(categories: Sequence[str], groups: dict[str, Sequence[float]], *, title: str = "",
             ylabel: str = "", ylim: tuple[float, float] = (0.0, 1.0),
             size: tuple[int, int] | None = None) -> Image.Image:
    """Grouped vertical bars: one group of bars per category, one bar per entry of `groups`
    (e.g. {"real": per-action accuracy, "dream": ...}); NaN bars are left out. Category
    labels are written at an angle below the axis."""
    font = _font()
    n_cat, n_grp = len(categories), len(groups)
    size = size or (max(480, 40 + n_cat * (14 * n_grp + 14)), 440)
    image = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    W, H = size
    yticks = _nice_ticks(*ylim)
    ytick_w = max(_text_size(draw, _fmt(t), font)[0] for t in yticks)
    label_h = max((_text_size(draw, c, font)[0] for c in categories), default=0)
    box = (ytick_w + 30, 34, W - 10, H - int(label_h * 0.75) - 20)
    ax = _Axes(box, (0, max(n_cat, 1)), (yticks[0], yticks[-1]), False)
    draw.text((box[0], 8), title, fill=INK, font=_font(FONT_SIZE + 2))
    for t in yticks:
        _, y = ax.px(0, t)
        draw.line([(box[0], y), (box[2], y)], fill=GRID)
        tw, th = _text_size(draw, _fmt(t), font)
        draw.text((box[0] - tw - 6, y - th / 2 - 2), _fmt(t), fill=INK, font=font)
    if ylabel:
        tw, th = _text_size(draw, ylabel, font)
        label = Image.new("RGB", (tw + 4, th + 6), BACKGROUND)
        ImageDraw.Draw(label).text((2, 0), ylabel, fill=INK, font=font)
        label = label.rotate(90, expand=True)
        image.paste(label, (2, int((box[1] + box[3]) / 2 - label.height / 2)))
    slot = (box[2] - box[0]) / max(n_cat, 1)
    bar_w = slot * 0.8 / max(n_grp, 1)
    for c, category in enumerate(categories):
        for g, values in enumerate(groups.values()):
            v = float(values[c])
            if not math.isfinite(v):
                continue
            x0 = box[0] + c * slot + slot * 0.1 + g * bar_w
            _, y = ax.px(0, _clip(v, ylim))
            _, y0 = ax.px(0, ylim[0])
            draw.rectangle([x0, y, x0 + bar_w - 1, y0], fill=PALETTE[g % len(PALETTE)])
        tw, th = _text_size(draw, category, font)
        label = Image.new("RGBA", (tw + 4, th + 6), (0, 0, 0, 0))
        ImageDraw.Draw(label).text((2, 0), category, fill=INK, font=font)
        label = label.rotate(45, expand=True)
        cx = int(box[0] + (c + 0.5) * slot)
        image.paste(label, (cx - label.width + 6, box[3] + 4), label)
    draw.rectangle(box, outline=INK)
    _legend(draw, [(name, PALETTE[g % len(PALETTE)], False) for g, name in enumerate(groups)],
            box, font)
    return image


def stack_images(images: Sequence[Image.Image], gap: int = 8) -> Image.Image:
    """Images one above the other (e.g. several plots in one PNG)."""
    width = max(im.width for im in images)
    out = Image.new("RGB", (width, sum(im.height for im in images) + gap * (len(images) - 1)),
                    BACKGROUND)
    y = 0
    for im in images:
        out.paste(im, (0, y))
        y += im.height + gap
    return out

"""Blinks that close: the upper lid is a layer that slides down over the eye.

A warp alone cannot close an eye: the lid would have to cover the eyeball, and a smooth map can only squeeze
the eyeball between the lids (the iris stays visible, lashes and lid skin smear). So the renderer keeps the
eye where the warp puts an open eye and draws the lid over it: from the top of the eye down to the lid's
edge, skin, and along the edge a lash line. The iris disappears under the lid as in a real blink; at full
closure the lid's edge lies on the lower lid.

The skin is the portrait's own, from around the eye: the lid's skin above the eye (what is neither that skin
nor the cheek's below, grown from the face mesh's eye outline, is the eye: sclera, iris, lashes, a drawn lid
line) stretched down over it, cleaned of the lashes and hairs that would run down it as streaks as the lid
closes, and toned towards the cheek's colour (a closed lid catches the light). The mesh's lid lines
alone do not outline the eye: they often sit inside it, a few pixels on photos and far inside a cartoon's
drawn lids, and would leave white showing.

Everything is in the portrait's own pixels, one eye at a time, in the eye's frame: u runs from the first
corner of the mesh's lid contours to the last (0..1 between them), v is the distance down the face, pixels.
The layer takes portrait positions (where the warp takes an output pixel's colour for an open eye), so it
composes with any warp:

    lids = [EyeLid.of(image, landmarks, eye, unit) for eye in EYES]      # once per portrait
    src, cover, tone, ink, clean = lids[0].to(device).layer(pos, closure) # pos: (..., 2) portrait pixels, torch
    lid_rgb = lids[0].paint(image sampled at src, tone, ink, clean)       # laid over the frame by `cover`
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from a2pcli import facemesh as fm

# (upper lid, lower lid, lower edge of the brow) contours of each eye, subject's right to left
RIGHT_EYE = (fm.RIGHT_EYE_UPPER, fm.RIGHT_EYE_LOWER, fm.RIGHT_BROW[5:])
LEFT_EYE = (fm.LEFT_EYE_UPPER, fm.LEFT_EYE_LOWER, fm.LEFT_BROW[5:])
EYES = (RIGHT_EYE, LEFT_EYE)
SAMPLES = 64  # along the eye's width, over U_RANGE
U_RANGE = (-0.4, 1.4)  # the eye's extent is looked for this far past the mesh's eye corners (cartoon eyes)
REACH = (0.15, 0.45, 0.25)  # ... at most this far from the mesh's eye outline: eye widths sideways, openings up, down
SKIN_DISTANCE = 3.5  # a pixel is skin within this many standard deviations of the lid's (or cheek's) colour
SKIN_MIN_STD = 6.0  # grey levels: the least spread a skin colour model is given
SKIN_BAND = (0.3, 0.55)  # the lid's skin is sampled between these fractions of the way from the brow to the eye
LID_SPAN = 2.0  # the lid's skin that stretches over the eye starts this many eye depths above it ...
LID_BROW = 0.8  # ... or this fraction of the way up to the brow, if less (the brow never moves)
SMOOTH_TOLERANCE = 0.1  # openings: how far the eye's top and bottom may stray out of a smooth curve
GROW = (2.0, 0.015)  # the eye's mask grows by this many pixels plus face units: its soft rim and the lash roots
# are covered too (a lid that stops a pixel short leaves the eye's outline drawn round a closed eye)
LASH_UNITS = (0.012, 0.03)  # face units: the drawn lash line's least and greatest thickness
LASH_DARKEST = 0.25  # the lash colour: the median of this darkest fraction of the eye's top rim
LID_TONE = 0.6  # the closed lid's colour moves this far towards the cheek's skin colour: the mean of the skin
TONE_BAND = (1.2, 2.0)  # just under the eye and the upper cheek's, this many eye openings below the lower lid
TONE_REACH = 0.6  # ... fully from this fraction of the way down from where its stretched skin begins to its edge
LASH_OPACITY = 0.9  # the drawn lash line over the lid's skin
LASH_SKIN = 0.45  # ... its colour at most this bright relative to the lid's skin
EDGE_PX = 0.8  # softness of the lid's edge, pixels
SIDE_FADE = 0.2  # of the lid's span: above the eye, its restyled skin fades out over this much at either end
MIN_OPENING = 0.02  # face units: an eye opened less than this has no eyeball to cover
# The closed lid's skin: the stretched lid skin, cleaned. Stretched as it is, everything that runs up the lid
# (lashes curling above the eye, mascara, a drawn lid line, hairs) becomes a streak down the closed lid, and the
# lash roots a dark band along it. The cleaned skin is sampled from the upper part of the stretched band only,
# away from the lashes, through a running median across the eye (a lash is a few columns wide), then smoothed
# (a closed lid is smooth: its crease unfolds); it takes over from the stretched skin as the lid closes.
CLEAN_BAND = 0.6  # of the stretched band, from its top: where the cleaned skin is sampled
CLEAN_ROWS = 16  # rows of the cleaned skin, top of the closed lid to its edge
CLEAN_MEDIAN = 5  # samples either side (of SAMPLES over U_RANGE): the running median across the eye
CLEAN_SMOOTH = (2.0, 1.5)  # samples: Gaussian smoothing of the cleaned skin across and down the lid
CLEAN_BLEND = 0.35  # of the closed lid, from its top: the cleaned skin fades in over this (no edge at the top)
CLEAN_WEIGHT = 0.7  # ... up to this weight over the stretched skin (which keeps some of the skin's grain)
# How much of the eye the lid covers for a commanded lid gap (a ratio of the portrait's), so that MediaPipe reads
# the rendered eye as that open: measured on rendered eyes of seven portraits (photos, paintings, a cartoon), the
# openness MediaPipe reads falls from 0.99 at a coverage of 0.15 (the lid has only reached the lashes) through
# 0.89, 0.77, 0.55 and 0.36 at 0.3, 0.45, 0.6 and 0.75 to 0.32 when closed (real closed eyes read 0.23-0.43:
# the mesh's lid points never quite meet). A ratio at or below CLOSED_RATIO is a closed eye: fully covered.
CLOSED_RATIO = 0.35
COVERAGE_KNOTS = ((CLOSED_RATIO, 0.40, 0.55, 0.77, 0.885, 0.97, 1.0), (1.0, 0.75, 0.6, 0.45, 0.3, 0.15, 0.0))


def coverage(ratio: np.ndarray) -> np.ndarray:
    """The fraction of the eye the lid covers for a lid gap `ratio` of the portrait's (any shape): 0 when as
    open (or wider), 1 at CLOSED_RATIO or less (COVERAGE_KNOTS between)."""
    return np.interp(ratio, *COVERAGE_KNOTS).astype(np.float32)


def _along(u: np.ndarray, v: np.ndarray, grid: np.ndarray) -> np.ndarray:
    order = np.argsort(u)
    return np.interp(grid, u[order], v[order])


class _Frame:
    """An eye's frame: u along the corners (0..1), v pixels down the face."""

    def __init__(self, pts: np.ndarray, upper: np.ndarray):
        self.o = pts[upper[0]]
        end = pts[upper[-1]]
        self.width = float(max(np.linalg.norm(end - self.o), 1.0))
        self.ax = (end - self.o) / self.width
        nrm = np.array([-self.ax[1], self.ax[0]])
        self.nrm = -nrm if nrm[1] < 0 else nrm  # down the face (image y grows downwards)

    def uv(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = xy - self.o
        return d @ self.ax / self.width, d @ self.nrm

    def xy(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return self.o + u[..., None] * self.width * self.ax + v[..., None] * self.nrm


def _sample(image: np.ndarray, xy: np.ndarray, border=None) -> np.ndarray:
    import cv2

    xy = xy.astype(np.float32)
    mode = cv2.BORDER_REPLICATE if border is None else cv2.BORDER_CONSTANT
    return cv2.remap(image, xy[..., 0], xy[..., 1], cv2.INTER_LINEAR, borderMode=mode,
                     borderValue=border or 0).astype(np.float32)


def _skin_model(px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median colour and a robust spread (1.4826 MAD: stray lashes or a shadow in the sample do not widen it)."""
    px = px.reshape(-1, 3)
    med = np.median(px, 0)
    return med, np.maximum(1.4826 * np.median(np.abs(px - med), 0), SKIN_MIN_STD)


def _eye_mask(image: np.ndarray, frame: _Frame, poly: np.ndarray, near: tuple, skins: list) -> tuple[tuple, np.ndarray]:
    """The eye's pixels: connected to the mesh's eye outline `poly` (K, 2), not skin-coloured (`skins`: the
    lid's and the cheek's colour models), and `near` it: near = (u_out, upper (SAMPLES,), lower (SAMPLES,))
    bounds v between two curves along u over [-u_out, 1 + u_out] (held at the corners beyond 0..1). Returns
    the box (x0, y0, x1, y1) of the portrait it was looked for in and its (h, w) uint8 0/1 mask."""
    import cv2

    u_out, v_lo, v_hi = near
    grid = np.linspace(0.0, 1.0, len(v_lo))
    corners = frame.xy(np.array([-u_out, 1 + u_out, 1 + u_out, -u_out, 0.5, 0.5]),
                       np.array([v_lo.min(), v_lo.min(), v_hi.max(), v_hi.max(), v_lo.min(), v_hi.max()]))
    h, w = image.shape[:2]
    x0, y0 = np.maximum(np.floor(corners.min(0)).astype(int) - 1, 0)
    x1, y1 = np.minimum(np.ceil(corners.max(0)).astype(int) + 2, [w, h])
    box = image[y0:y1, x0:x1].astype(np.float32)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    u, v = frame.uv(np.stack([xx, yy], -1).astype(np.float64))
    inside = (np.abs(u - 0.5) <= 0.5 + u_out) & (v >= np.interp(u, grid, v_lo)) & (v <= np.interp(u, grid, v_hi))
    seed = np.zeros(box.shape[:2], np.uint8)
    cv2.fillPoly(seed, [np.round(poly - [x0, y0]).astype(np.int32)], 1)
    skin = np.zeros(box.shape[:2], bool)
    for mean, std in skins:
        skin |= np.sqrt((((box - mean) / std) ** 2).sum(-1) / 3.0) < SKIN_DISTANCE
    cand = ((~skin) & inside) | (seed > 0)
    _, labels = cv2.connectedComponents(cand.astype(np.uint8), connectivity=8)
    keep = np.unique(labels[seed > 0])
    mask = np.isin(labels, keep[keep > 0]).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    return (int(x0), int(y0), int(x1), int(y1)), mask


def _extent(frame: _Frame, box: tuple, mask: np.ndarray, u: np.ndarray, v_range: tuple[float, float]):
    """Top and bottom v of `mask` along the columns u of the eye's frame; an empty column gets NaN."""
    steps = np.arange(*v_range, 0.5)
    xy = frame.xy(np.repeat(u[:, None], len(steps), 1), np.repeat(steps[None], len(u), 0)) - np.array(box[:2])
    inside = _sample(mask.astype(np.float32), xy, border=0.0) > 0.5
    found = inside.any(1)
    top = np.where(found, steps[np.argmax(inside, 1)], np.nan)
    bottom = np.where(found, steps[len(steps) - 1 - np.argmax(inside[:, ::-1], 1)] + 0.5, np.nan)
    return top, bottom


def _grown(mask: np.ndarray, px: int) -> np.ndarray:
    import cv2

    return cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1,) * 2))


def _clean(curve: np.ndarray, empty: np.ndarray | None, r: int = 2) -> np.ndarray:
    """A column-wise edge (or colour; (SAMPLES, ...) along its first axis) without its single-column spikes and
    steps: a running median over 2r + 1 columns, then a light smoothing. Columns marked `empty` are kept."""
    n = len(curve)
    pad = np.pad(curve, [(r, r)] + [(0, 0)] * (curve.ndim - 1), mode="edge")
    med = np.median(np.stack([pad[k : k + n] for k in range(2 * r + 1)]), 0)
    k = np.exp(-0.5 * (np.arange(-3, 4) / 1.5) ** 2)
    k /= k.sum()
    pad = np.pad(med, [(3, 3)] + [(0, 0)] * (curve.ndim - 1), mode="edge")
    smooth = sum(w * pad[j : j + n] for j, w in enumerate(k))
    return smooth if empty is None else np.where(empty, curve, smooth)


def _cleaned_skin(image: np.ndarray, frame: _Frame, u: np.ndarray, skin: np.ndarray, top: np.ndarray) -> np.ndarray:
    """(CLEAN_ROWS, SAMPLES, 3) float32: the closed lid's skin along u (columns), from its top (row 0) to its
    edge, from the top CLEAN_BAND of the band between `skin` and `top`: without lashes and hairs (a running
    median across the eye), smoothed."""
    import cv2

    t = np.linspace(0.0, CLEAN_BAND, CLEAN_ROWS)
    v = skin[None, :] + t[:, None] * (top - skin)[None, :]
    px = _sample(image, frame.xy(np.repeat(u[None], CLEAN_ROWS, 0), v))
    r, n = CLEAN_MEDIAN, px.shape[1]
    pad = np.pad(px, ((0, 0), (r, r), (0, 0)), mode="edge")
    px = np.median(np.stack([pad[:, k : k + n] for k in range(2 * r + 1)]), 0).astype(np.float32)
    return cv2.GaussianBlur(px, (0, 0), sigmaX=CLEAN_SMOOTH[0], sigmaY=CLEAN_SMOOTH[1],
                            borderType=cv2.BORDER_REPLICATE)


def _smooth_fit(u: np.ndarray, v: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """A quadratic in u through the columns `ok` of v, robust to a few strays (Tukey reweighting)."""
    if ok.sum() < 4:
        return v.copy()
    w = ok.astype(np.float64)
    for _ in range(4):
        coef = np.polyfit(u, v, 2, w=np.sqrt(w))
        r = v - np.polyval(coef, u)
        s = 4.685 * max(1.4826 * float(np.median(np.abs(r[ok]))), 0.5)
        w = ok * np.clip(1 - (r / s) ** 2, 0, None) ** 2
    return np.polyval(coef, u)


@dataclass
class EyeLid:
    origin: np.ndarray  # (2,) the first eye corner, portrait pixels
    axis: np.ndarray  # (2,) unit vector to the other corner
    normal: np.ndarray  # (2,) unit vector down the face
    width: float  # pixels between the corners
    top: np.ndarray  # (SAMPLES,) v of the eye's top along u (over U_RANGE): where the lid's edge starts
    bottom: np.ndarray  # (SAMPLES,) v of the eye's bottom: where the lid's edge ends at full closure
    skin: np.ndarray  # (SAMPLES,) v where the lid's skin that stretches down over the eye begins
    lash: np.ndarray  # (SAMPLES,) pixels: thickness of the lash line drawn along the lid's edge
    lash_rgb: np.ndarray  # (3,) 0..255
    tone_rgb: np.ndarray  # (3,) 0..255: the skin colour the closed lid is drawn towards (the cheek's)
    opening: float  # face units: the widest gap of the mesh's lid lines
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 of `mask` in the portrait
    mask: np.ndarray  # (h, w) uint8 0/1: the eye's pixels
    reach: np.ndarray  # (4, 2) portrait pixels: corners of the region the lid can cover
    clean: np.ndarray  # (CLEAN_ROWS, SAMPLES, 3) 0..255: the closed lid's cleaned skin (_cleaned_skin)

    @classmethod
    def of(cls, image: np.ndarray, landmarks: np.ndarray, eye: tuple, unit: float) -> EyeLid:
        """image: (H, W, 3) uint8 portrait; landmarks: (478, 2+) its pixels; eye: RIGHT_EYE or LEFT_EYE;
        unit: pixels per face unit."""
        upper_i, lower_i, brow_i = eye
        pts = landmarks[:, :2].astype(np.float64)
        frame = _Frame(pts, upper_i)
        grid = np.linspace(0.0, 1.0, SAMPLES)
        upper = _along(*frame.uv(pts[upper_i]), grid)
        lower = np.maximum(_along(*frame.uv(pts[lower_i]), grid), upper)
        brow = _along(*frame.uv(pts[brow_i]), grid)
        gmax = float((lower - upper).max())
        above = np.maximum(upper - brow, 1.0)  # pixels from the brow down to the eye
        mid = (grid > 0.2) & (grid < 0.8)

        def band(v0: np.ndarray, v1: np.ndarray) -> np.ndarray:  # pixels between two curves, middle columns
            t = np.linspace(0.0, 1.0, 6)
            v = v0[mid, None] + (v1 - v0)[mid, None] * t[None]
            return _sample(image, frame.xy(np.repeat(grid[mid, None], len(t), 1), v)).reshape(-1, 3)

        skins = [_skin_model(band(brow + SKIN_BAND[0] * above, brow + SKIN_BAND[1] * above)),
                 _skin_model(band(lower + 0.6 * gmax, lower + gmax))]
        near = (REACH[0], upper - REACH[1] * gmax, lower + REACH[2] * gmax)
        box, mask = _eye_mask(image, frame, np.concatenate([pts[upper_i], pts[lower_i[::-1]]]), near, skins)

        # the lid covers the inpainted pixels (the eye grown by its rim) from the top down
        u = np.linspace(*U_RANGE, SAMPLES)
        grow = int(round(GROW[0] + GROW[1] * unit))
        v_range = (float(near[1].min()) - 2 * grow, float(near[2].max()) + 2 * grow)
        top, bottom = _extent(frame, box, _grown(mask, grow), u, v_range)
        centre = np.interp(u, grid, 0.5 * (upper + lower))
        empty = np.isnan(top)
        top, bottom = _clean(np.where(empty, centre, top), empty), _clean(np.where(empty, centre, bottom), empty)
        # a leak into a shadow or a corner's pink makes a bump: keep each edge near a smooth curve
        tol = SMOOTH_TOLERANCE * gmax
        top = np.where(empty, top, np.maximum(top, _smooth_fit(u, top, ~empty) - tol))
        bottom = np.where(empty, bottom, np.minimum(bottom, _smooth_fit(u, bottom, ~empty) + tol))
        depth = np.maximum(bottom - top, 0.0)

        # the lash line: the darkest of the eye's top rim (lashes, or a drawn lid line)
        rows = np.nonzero((depth > 0) & (u > 0.2) & (u < 0.8))[0]
        rim = [frame.xy(np.full(6, u[k]), top[k] + np.linspace(0.0, max(2.0, 0.25 * depth[k]), 6)) for k in rows]
        rim_px = _sample(image, np.stack(rim)).reshape(-1, 3) if rim else band(upper - 1, upper + 1)
        luma = rim_px @ np.array([0.299, 0.587, 0.114])
        lash_rgb = np.minimum(np.median(rim_px[luma <= np.quantile(luma, LASH_DARKEST)], 0), LASH_SKIN * skins[0][0])
        thick = np.clip(0.12 * float(depth.max()), LASH_UNITS[0] * unit, LASH_UNITS[1] * unit)
        lash = thick * np.clip(depth / max(0.5 * float(depth.max()), 1e-3), 0.0, 1.0) + 0.5
        brow_u = np.interp(u, grid, brow)
        skin = top - np.minimum(LID_SPAN * float(depth.max()), LID_BROW * np.maximum(top - brow_u, 0.0))
        cols = u[depth > 0] if (depth > 0).any() else np.array([0.0, 1.0])
        u0, u1, v0, v1 = cols.min(), cols.max(), float(skin.min()) - 2, float(bottom.max()) + 2
        reach = frame.xy(np.array([u0, u1, u1, u0]), np.array([v0, v0, v1, v1]))
        clean = _cleaned_skin(image, frame, u, skin, top)
        # the closed lid's tone: between the skin just under the eye (often in shadow) and the lit upper cheek
        tone_rgb = 0.5 * (skins[1][0] + _skin_model(band(lower + TONE_BAND[0] * gmax, lower + TONE_BAND[1] * gmax))[0])
        f32 = np.float32
        return cls(frame.o.astype(f32), frame.ax.astype(f32), frame.nrm.astype(f32), frame.width,
                   top.astype(f32), bottom.astype(f32), skin.astype(f32), lash.astype(f32), lash_rgb.astype(f32),
                   tone_rgb.astype(f32), gmax / max(unit, 1e-6), box, mask, reach.astype(f32), clean.astype(f32))

    def boxes(self, corners: np.ndarray, margin: float = 3.0) -> np.ndarray:
        """(B, 4) int x0, y0, x1, y1 where the lid can show in B frames whose eye corners (the first and last
        points of the upper lid contour) are at `corners` (B, 2, 2): the region it can cover, carried by the
        similarity that takes the portrait's eye corners to them, plus `margin` pixels."""
        a0 = complex(*self.origin)
        a1 = a0 + complex(*self.axis) * self.width
        b0 = corners[:, 0, 0] + 1j * corners[:, 0, 1]
        b1 = corners[:, 1, 0] + 1j * corners[:, 1, 1]
        z = b0[:, None] + (b1 - b0)[:, None] / (a1 - a0) * ((self.reach[:, 0] + 1j * self.reach[:, 1])[None] - a0)
        lo = np.floor(np.stack([z.real.min(1), z.imag.min(1)], 1) - margin)
        hi = np.ceil(np.stack([z.real.max(1), z.imag.max(1)], 1) + margin) + 1
        return np.concatenate([lo, hi], 1).astype(np.int64)

    @property
    def usable(self) -> bool:
        return self.opening >= MIN_OPENING

    def to(self, device) -> _Lid:
        import torch

        def t(a):
            return torch.as_tensor(np.asarray(a, np.float32), device=device)

        u = np.linspace(*U_RANGE, SAMPLES)
        on = u[self.bottom > self.top]
        side = np.zeros(SAMPLES)
        if len(on):
            x = np.clip(np.minimum(u - on.min(), on.max() - u) / max(SIDE_FADE * (on.max() - on.min()), 1e-6), 0, 1)
            side = x * x * (3 - 2 * x)
        return _Lid(t(self.origin), t(self.axis), t(self.normal), self.width,
                    torch.stack([t(self.top), t(self.bottom), t(self.skin), t(self.lash), t(side)]), t(self.lash_rgb),
                    t(self.tone_rgb), max(0.5 * float((self.bottom - self.top).max()), 1.0),
                    t(self.clean).permute(2, 0, 1)[None].contiguous())


@dataclass
class _Lid:
    """An EyeLid's numbers as torch tensors on the render device."""

    origin: object
    axis: object
    normal: object
    width: float
    curves: object  # (5, SAMPLES): top, bottom, skin, lash, side (0..1: 0 at the lid's ends)
    lash_rgb: object  # (3,)
    tone_rgb: object  # (3,)
    depth: float  # pixels: half the eye's greatest depth (a lid that has come this far down is fully toned)
    clean: object  # (1, 3, CLEAN_ROWS, SAMPLES): the closed lid's cleaned skin

    def paint(self, skin, tone, ink, clean):
        """The lid's colour from the stretched skin (..., 3) and layer()'s tone and ink (...) and cleaned skin
        (..., 4: colour and weight)."""
        skin = skin + (clean[..., :3] - skin) * clean[..., 3:]
        skin = skin + (self.tone_rgb - skin) * tone[..., None]
        return skin + (self.lash_rgb - skin) * ink[..., None]

    def layer(self, pos, closure):
        """pos: (..., 2) portrait pixels, torch float32 -> where the lid's colour comes from (..., 2), the lid's
        coverage (...) 0..1, how far its colour is toned towards the cheek's (...) (a closed lid catches the
        light, its crease flattens), the lash line's opacity (...) 0..1 and the cleaned skin with its weight
        (..., 4), for a lid that covers `closure` (0..1, a number or a tensor that broadcasts against pos[..., 0])
        of the eye. paint() makes the colour."""
        import torch

        d = pos - self.origin
        u = (d @ self.axis) / self.width
        v = d @ self.normal
        k = self.curves.shape[1] - 1
        x = ((u - U_RANGE[0]) / (U_RANGE[1] - U_RANGE[0])).clamp(0.0, 1.0) * k
        i0 = x.floor().clamp(max=k - 1).long()
        w = x - i0
        c = self.curves[:, i0] * (1 - w) + self.curves[:, i0 + 1] * w  # (5, ...)
        top, bottom, skin, lash, side = c[0], c[1], c[2], c[3], c[4]
        travel = closure * (bottom - top)  # how far the lid's edge has come down
        edge = top + travel
        # the lid's skin, from `skin` down to the eye's top, stretched down to the edge
        stretch = (top - skin) / (edge - skin).clamp_min(1e-3)
        v_src = torch.where(v <= skin, v, skin + (v - skin) * stretch)
        src = self.origin + u[..., None] * self.width * self.axis + v_src[..., None] * self.normal
        above = edge - v  # pixels above the lid's edge
        cover = (above / EDGE_PX + 0.5).clamp(0.0, 1.0) * (travel / EDGE_PX).clamp(0.0, 1.0)
        # over the eye the lid covers fully; above it, where it only restyles skin, it fades out towards its ends
        # (else its stretched, toned skin ends in hard vertical sides)
        over_eye = ((v - top) / (0.5 * self.depth) + 1.0).clamp(0.0, 1.0)
        cover = cover * (side + (1.0 - side) * over_eye)
        ink = ((lash - above) / (0.5 * lash)).clamp(0.0, 1.0) * (travel / lash).clamp(0.0, LASH_OPACITY)
        tone = ((v - skin) / (TONE_REACH * (edge - skin)).clamp_min(1e-3)).clamp(0.0, 1.0)
        tone = LID_TONE * tone * (travel / self.depth).clamp(0.0, 1.0)
        # the cleaned skin: down the closed lid from its top (t 0) to its edge (t 1), fading in from its top
        t = ((v - skin) / (edge - skin).clamp_min(1e-3)).clamp(0.0, 1.0)
        gx = (u - U_RANGE[0]) / (U_RANGE[1] - U_RANGE[0]) * 2.0 - 1.0
        grid = torch.stack([gx.clamp(-1.0, 1.0).expand_as(t), t * 2.0 - 1.0], -1).reshape(1, -1, 1, 2)
        rgb = torch.nn.functional.grid_sample(self.clean, grid, mode="bilinear", padding_mode="border",
                                              align_corners=True)[0, :, :, 0].T.reshape(*t.shape, 3)
        blend = (t / CLEAN_BLEND).clamp(0.0, 1.0)
        weight = CLEAN_WEIGHT * blend * blend * (3.0 - 2.0 * blend) * (travel / self.depth).clamp(0.0, 1.0)
        return src, cover, cover * tone, cover * ink, torch.cat([rgb, weight[..., None]], -1)

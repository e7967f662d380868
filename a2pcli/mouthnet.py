"""The mouth model: a small image network that paints the mouth of a rendered frame (lips, teeth, tongue,
the shading of the cavity) where the warp alone cannot: a mouth that opens wider than the portrait's, or
an open one that closes.

    model = load_model()                                   # the shipped model (or a folder from `a2p train mouth`)
    delta = model.paint(warped, lips, interior, portrait)   # (B, 3, S, S) to add to the warped crops

It works on a square crop around the mouth, the same for training and rendering (`crop_affine`): CROP
face units wide, `size` pixels, centred on the target's outer lip line and turned with the head's roll.
Its input, per frame (IN_CHANNELS, `assemble`):
  - the warped portrait in the crop (RGB): what the dense warp made of the portrait's own mouth;
  - the target lip shape: the inner and outer lip polygons, rasterised (`lip_masks`);
  - where the portrait's own mouth interior landed in the warp (its inner-lip polygon, warped);
  - the portrait's mouth in its own crop (RGB and its inner-lip polygon): its lip colour, its teeth
    where it shows them.
It returns a colour change, applied only inside the painted region (the outer lip polygon grown by
`region_grow` face units, and the warped interior), faded to zero at the crop's border, so the frame
outside the mouth stays the warp's, pixel for pixel.

A model folder holds `config.json` (MouthConfig as "model", and "meta": training data and metrics) and
`model.safetensors` (the network's weights).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from a2pcli import facemesh as fm
from a2pcli.errors import ModelError
from a2pcli.modelfolder import (CONFIG_FILE, WEIGHTS_FILE, load_weights_strictly, read_model_config,
                                read_model_tensors, resolve_model_folder, write_model_folder)

MODEL_NAME = "mouth"  # the shipped model in the registry
FORMAT = "a2p.mouth"
FORMAT_VERSION = 1
VERIFY_HINT = "run `a2p models verify mouth` (the shipped model), or re-export the model folder with `a2p train mouth`"
_KIND = "mouth"  # names the model in its errors

# the lip polygons, each a closed contour from the subject's right mouth corner along the upper lip and back
# along the lower one
OUTER_POLYGON = np.concatenate([fm.LIPS_OUTER_UPPER, fm.LIPS_OUTER_LOWER[-2:0:-1]])
INNER_POLYGON = np.concatenate([fm.LIPS_INNER_UPPER, fm.LIPS_INNER_LOWER[-2:0:-1]])
IN_CHANNELS = 10  # warped RGB, inner and outer lip masks, warped interior, portrait RGB, portrait inner mask
OUT_CHANNELS = 3  # colour change, RGB
BORDER_FADE = 3  # crop pixels over which the painted region fades out at the crop's border


@dataclass(frozen=True)
class MouthConfig:
    """The network and its crop: these are its constructor arguments, saved as config.json's "model"."""

    size: int = 64  # crop side, pixels
    crop_units: float = 0.8  # crop side, face units (the outer eye corners are 1 apart): mouth and lips
    channels: tuple[int, ...] = (16, 32, 64)  # per level of the U-net, after the input's space-to-depth
    unshuffle: int = 2  # space-to-depth factor at the input (and depth-to-space at the output)
    region_grow: float = 0.05  # face units beyond the outer lip line that the model may still paint

    @property
    def px_per_unit(self) -> float:
        return self.size / self.crop_units

    @staticmethod
    def from_dict(d: dict) -> MouthConfig:
        d = dict(d)
        d["channels"] = tuple(d.get("channels", MouthConfig.channels))
        extra = set(d) - set(MouthConfig.__dataclass_fields__)
        if extra:
            raise ValueError(f"unknown config keys {sorted(extra)}")
        cfg = MouthConfig(**d)
        if cfg.size % (cfg.unshuffle * 2 ** len(cfg.channels)) or not 0.2 <= cfg.crop_units <= 3 or cfg.size > 512:
            raise ValueError(f"size {cfg.size} / crop_units {cfg.crop_units} / levels do not fit together")
        return cfg


# --- the crop ----------------------------------------------------------------------------------------


def crop_affine(landmarks: np.ndarray, rotation: np.ndarray, scale: np.ndarray, cfg: MouthConfig) -> np.ndarray:
    """(B, 2, 3) affine maps from crop pixels (x, y, 1) to image pixels.

    landmarks: (B, 478, 2+) pixels; rotation: (B, 3, 3) head rotation; scale: (B,) pixels per face unit.
    The crop is centred on the mean of the outer lip line, its x axis along the head's own x axis (roll)."""
    lm = np.asarray(landmarks, np.float64)
    centre = lm[:, OUTER_POLYGON, :2].mean(1)
    ax = np.asarray(rotation, np.float64)[:, :2, 0]
    ax = ax / np.maximum(np.linalg.norm(ax, axis=1, keepdims=True), 1e-9)
    down = np.stack([-ax[:, 1], ax[:, 0]], 1)
    px = cfg.crop_units * np.asarray(scale, np.float64) / cfg.size  # image pixels per crop pixel
    half = (cfg.size - 1) / 2.0
    a = np.empty((len(lm), 2, 3))
    a[:, :, 0] = ax * px[:, None]
    a[:, :, 1] = down * px[:, None]
    a[:, :, 2] = centre - (a[:, :, 0] + a[:, :, 1]) * half
    return a


def invert_affine(a: np.ndarray) -> np.ndarray:
    """(B, 2, 3) -> (B, 2, 3) inverse maps (closed form: LAPACK's per-call overhead dwarfs a 2x2 inverse)."""
    p, q, r, s = a[:, 0, 0], a[:, 0, 1], a[:, 1, 0], a[:, 1, 1]
    det = p * s - q * r
    m = np.stack([np.stack([s, -q], 1), np.stack([-r, p], 1)], 1) / det[:, None, None]
    return np.concatenate([m, -(m @ a[:, :, 2:])], 2)


def to_crop(points: np.ndarray, a: np.ndarray) -> np.ndarray:
    """(B, K, 2) image pixels -> crop pixels under the crop maps `a` (B, 2, 3)."""
    inv = invert_affine(a)
    return points[..., :2] @ inv[:, :, :2].transpose(0, 2, 1) + inv[:, None, :, 2]


def crop_grid(a: np.ndarray, size: int) -> np.ndarray:
    """(B, S, S, 2) float32 image positions (x, y) of the crop's pixels."""
    r = np.arange(size, dtype=np.float64)
    gx, gy = np.meshgrid(r, r)
    pts = np.stack([gx, gy, np.ones_like(gx)], -1)  # (S, S, 3)
    return np.einsum("yxk,bck->byxc", pts, a).astype(np.float32)


def lip_masks(landmarks: np.ndarray, a: np.ndarray, size: int) -> np.ndarray:
    """(B, 2, S, S) float32 0..1: the inner and the outer lip polygons of `landmarks` (B, 478, 2+) drawn in
    the crops `a` (anti-aliased)."""
    import cv2

    sub = 8  # cv2's fixed-point sub-pixel positions: 3 bits
    out = np.zeros((len(landmarks), 2, size, size), np.float32)
    polys = to_crop(landmarks[:, np.concatenate([INNER_POLYGON, OUTER_POLYGON])], a)
    for b in range(len(landmarks)):
        for c, pts in enumerate((polys[b, : len(INNER_POLYGON)], polys[b, len(INNER_POLYGON) :])):
            if not np.isfinite(pts).all():
                continue
            pts = np.round(np.clip(pts, -4 * size, 5 * size) * sub).astype(np.int32)
            mask = np.zeros((size, size), np.uint8)
            cv2.fillPoly(mask, [pts], 255, cv2.LINE_AA, shift=3)
            out[b, c] = mask / 255.0
    return out


LIP_LINES = (fm.LIPS_OUTER_UPPER, fm.LIPS_INNER_UPPER, fm.LIPS_INNER_LOWER, fm.LIPS_OUTER_LOWER)  # top to bottom


def _line_y(pts: np.ndarray, x: np.ndarray) -> np.ndarray:
    """y of a lip line (K, 2), corner to corner, at abscissae x (clamped at the corners; x made ascending)."""
    xs = np.maximum.accumulate(pts[:, 0]) if pts[-1, 0] >= pts[0, 0] else np.maximum.accumulate(pts[::-1, 0])
    ys = pts[:, 1] if pts[-1, 0] >= pts[0, 0] else pts[::-1, 1]
    return np.interp(x, xs + np.arange(len(xs)) * 1e-4, ys)


def lip_bands(target: np.ndarray, portrait: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Where the portrait's own lips land on the target's lip shape, in crop pixels.

    target, portrait: (4, K, 2) the lip lines (LIP_LINES: outer upper, inner upper, inner lower, outer lower), each
    in its own crop. Each lip is mapped as a band: a crop pixel at a fraction u of the way between the mouth corners
    and a fraction v of the way across the target's upper (or lower) lip comes from the same u and v of the
    portrait's. Returns the source positions (S, S, 2) in the portrait's crop and the lips' coverage (S, S) 0..1
    (anti-aliased at the outer lines and at the inner ones, where the mouth interior begins)."""
    r = np.arange(size, dtype=np.float64)
    x, y = np.meshgrid(r, r)
    corners_t = target[0, [0, -1], 0]
    corners_p = portrait[0, [0, -1], 0]
    u = (x - corners_t[0]) / (corners_t[1] - corners_t[0] if abs(corners_t[1] - corners_t[0]) > 1e-6 else 1e-6)
    xp = corners_p[0] + np.clip(u, 0.0, 1.0) * (corners_p[1] - corners_p[0])
    lines_t = [_line_y(line, x[0])[None, :] for line in target]  # (1, S) each, per column
    lines_p = [_line_y(line, xp.ravel()).reshape(xp.shape) for line in portrait]
    src = np.stack([xp, y], -1)
    cover = np.zeros((size, size))
    for top, bottom in ((0, 1), (2, 3)):  # the upper lip, the lower lip
        t0, t1 = lines_t[top], lines_t[bottom]
        v = (y - t0) / np.maximum(t1 - t0, 1e-3)
        inside = np.clip(y - t0 + 0.5, 0.0, 1.0) * np.clip(t1 - y + 0.5, 0.0, 1.0) * (t1 - t0 > 0.05)
        band_y = lines_p[top] + np.clip(v, 0.0, 1.0) * (lines_p[bottom] - lines_p[top])
        src[..., 1] = np.where(inside > 0, band_y, src[..., 1])
        cover = np.maximum(cover, inside)
    cover *= (u > -0.02) & (u < 1.02)
    return src.astype(np.float32), cover.astype(np.float32)


def portrait_crop(image: np.ndarray, landmarks: np.ndarray, rotation: np.ndarray, scale: float,
                  cfg: MouthConfig) -> np.ndarray:
    """(4, S, S) float32: the portrait's mouth in its own crop, RGB 0..255, and its inner-lip polygon 0..1.
    image: (H, W, 3) uint8; landmarks: (478, 2+) pixels."""
    import cv2

    a = crop_affine(landmarks[None], rotation[None], np.array([scale]), cfg)
    rgb = cv2.warpAffine(image, a[0], (cfg.size, cfg.size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REPLICATE)
    inner = lip_masks(landmarks[None], a, cfg.size)[0, 0]
    return np.concatenate([rgb.transpose(2, 0, 1).astype(np.float32), inner[None]], 0)


# --- the network ---------------------------------------------------------------------------------------


def build_network(cfg: MouthConfig):
    """A small U-net: space-to-depth, len(channels) levels of two 3x3 convolutions, a bottleneck, a decoder
    with skip connections, depth-to-space. (B, IN_CHANNELS, S, S) -> (B, OUT_CHANNELS, S, S)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    def act():
        return nn.LeakyReLU(0.2, inplace=True)

    class MouthNet(nn.Module):
        def __init__(self, c: MouthConfig):
            super().__init__()
            u, ch = c.unshuffle, c.channels
            self.u = u
            self.down = nn.ModuleList()
            prev = IN_CHANNELS * u * u
            for i, k in enumerate(ch):
                self.down.append(nn.Sequential(nn.Conv2d(prev, k, 3, 1 if i == 0 else 2, 1), act(),
                                               nn.Conv2d(k, k, 3, 1, 1), act()))
                prev = k
            self.bottom = nn.Sequential(nn.Conv2d(prev, prev, 3, 2, 1), act(), nn.Conv2d(prev, prev, 3, 1, 1), act())
            self.up = nn.ModuleList()
            for k in reversed(ch):
                self.up.append(nn.Sequential(nn.Conv2d(prev + k, k, 3, 1, 1), act()))
                prev = k
            self.out = nn.Conv2d(prev, OUT_CHANNELS * u * u, 3, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.u > 1:
                x = F.pixel_unshuffle(x, self.u)
            skips = []
            for block in self.down:
                x = block(x)
                skips.append(x)
            x = self.bottom(x)
            for block, skip in zip(self.up, reversed(skips)):
                x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
                x = block(torch.cat([x, skip], 1))
            x = self.out(x)
            return F.pixel_shuffle(x, self.u) if self.u > 1 else x

    return MouthNet(cfg)


def assemble(warped, lips, interior, portrait):
    """The network's input, (B, IN_CHANNELS, S, S), values about -0.5..0.5.
    warped: (B, 3, S, S) 0..255; lips: (B, 2, S, S) 0..1; interior: (B, 1, S, S) 0..1; portrait: (4, S, S) or
    (B, 4, S, S), RGB 0..255 and mask 0..1."""
    import torch

    b = warped.shape[0]
    if portrait.dim() == 3:
        portrait = portrait[None].expand(b, -1, -1, -1)
    return torch.cat([warped / 255.0 - 0.5, lips - 0.5, interior - 0.5, portrait[:, :3] / 255.0 - 0.5,
                      portrait[:, 3:] - 0.5], 1)


def paint_region(lips, interior, cfg: MouthConfig):
    """(B, 1, S, S) 0..1: where the model may paint. The outer lip polygon (lips[:, 1]) grown by about
    `region_grow` face units with a soft edge, joined with the warped interior, faded at the crop border."""
    import torch
    from torch.nn import functional as F

    sigma = max(cfg.region_grow * cfg.px_per_unit / 2.0, 0.5)
    r = int(np.ceil(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=lips.dtype, device=lips.device) / sigma) ** 2)
    k = k / k.sum()
    m = torch.maximum(lips[:, 1:2], interior)
    m = F.conv2d(F.pad(m, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    m = F.conv2d(F.pad(m, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    grown = torch.clamp(2.5 * m, 0.0, 1.0)
    s = lips.shape[-1]
    v = torch.arange(s, dtype=lips.dtype, device=lips.device)
    edge = torch.clamp(torch.minimum(v, s - 1 - v) / BORDER_FADE, 0.0, 1.0)
    return grown * (edge[None, :] * edge[:, None])[None, None]


# --- the model ---------------------------------------------------------------------------------------------


@dataclass
class MouthModel:
    config: MouthConfig
    net: object  # torch module, eval mode, on `device`
    device: str = "cpu"
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    def to(self, device: str) -> MouthModel:
        if str(device) == self.device:
            return self
        return MouthModel(self.config, self.net.to(device), str(device), self.meta, self.path)

    def paint(self, warped, lips, interior, portrait):
        """The colour change to add to the warped crops, (B, 3, S, S) in 0..255 units, zero outside the
        painted region. Tensors on the model's device; see `assemble` for the layouts."""
        import torch

        with torch.inference_mode():
            delta = self.net(assemble(warped, lips, interior, portrait))
            return delta * 255.0 * paint_region(lips, interior, self.config)


# --- saving and loading --------------------------------------------------------------------------------


def save_model(folder: Path, cfg: MouthConfig, state: dict, meta: dict) -> None:
    """Write config.json and model.safetensors into `folder` (each atomically). `state`: the net's state_dict."""
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in state.items()}
    write_model_folder(folder, FORMAT, FORMAT_VERSION, tensors, {"model": asdict(cfg), "meta": meta})



def read_config(folder: Path) -> tuple[MouthConfig, dict]:
    return read_model_config(folder, FORMAT, FORMAT_VERSION, MouthConfig.from_dict, _KIND, VERIFY_HINT,
                             version_noun="mouth model")


def load_folder(folder: Path, device: str = "cpu") -> MouthModel:
    """A model folder (config.json + model.safetensors) -> MouthModel, loaded strictly."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError("not a mouth model folder", subject=str(folder), remedy=VERIFY_HINT)
    cfg, doc = read_config(folder)
    wpath = folder / WEIGHTS_FILE
    state = read_model_tensors(wpath, _KIND, VERIFY_HINT)
    net = load_weights_strictly(build_network(cfg), state, wpath, _KIND, VERIFY_HINT).to(device)
    for p in net.parameters():
        p.requires_grad_(False)
    return MouthModel(cfg, net, str(device), doc.get("meta", {}), folder)


def load_model(name_or_path: str | Path | None = None, device: str = "cpu") -> MouthModel:
    """None or "mouth": the shipped model (files checked against the registry's sha256); else a folder
    written by `a2p train mouth`. ModelError (exit 4) naming the file and `a2p models verify` when one is
    missing or corrupt."""
    return load_folder(resolve_model_folder(name_or_path, MODEL_NAME), device)

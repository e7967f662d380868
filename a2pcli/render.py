"""The embedded renderer: a dense warp of the portrait driven by landmark correspondences, plus a mouth
painted by the mouth model (a2pcli.mouthnet). The same torch code runs on CPU and GPU, in batches.

Per frame, the backward map (output pixel -> portrait pixel) is a thin-plate spline through control
points whose displacements are known:
- face points (MediaPipe contours and a spread of surface points) move as the retargeted landmarks do;
- a shell around the face (the face oval pushed outwards) moves rigidly with the head: hair, ears;
- a ring further out and the border of the working region stay put: torso and background.
The spline is evaluated on a coarse grid, upsampled, faded to zero at the border of the working
region (so the rest of the picture is untouched and no seam can show), and sampled bilinearly.
With a still background (a2pcli.backdrop: the person found once per portrait), the person is warped
premultiplied by its alpha over a still plate, so that only head, hair and neck move. The warp keeps the eyes
as open as the portrait's; an eyelid layer (a2pcli.eyelids) closes them, drawn from the portrait's own lid skin.
Where the target lips part further than the portrait's, and on every frame of a portrait that shows its
mouth interior (which must close), the mouth model paints the mouth: from a crop of the warped frame around
the target lips, the target lip shape, and the portrait's own mouth (mouthnet's module doc); its colour
change is resampled into the frame, so that nothing outside the mouth changes.

    r = WarpRenderer(image, face, plan, device="cpu", mouth=mouthnet.load_model())
    frames = r.render(targets.slice(0, 16))   # (16, H, W, 3) uint8
"""

from __future__ import annotations

import collections
import functools
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from a2pcli import facemesh as fm
from a2pcli.eyelids import EYES, EyeLid
from a2pcli.eyelids import coverage as lid_coverage
from a2pcli.mouth import lip_and_skin_colour, lip_gap, open_mouth_gap
from a2pcli.retarget import FaceTargets, PortraitFace

SHELL_LEVELS = (1.3, 1.8)  # the face oval scaled about its centre: rigid head points (hair, ears)
SHELL_MAX_Y = 0.45  # face units: oval points below this (the jaw and chin) get no shell: the neck stays put
RING_RADIUS = 3.0  # face units: static anchors around the face (torso, background)
RING_POINTS = 16
TORSO_Y, TORSO_HALF_WIDTH = 1.75, 1.6  # face units, portrait's face frame: a static row at the neck's base
ROI_HALF = 3.6  # face units: half side of the working region around the face centre
BORDER_POINTS = 5  # static anchors per side of the working region
WINDOW = 0.12  # fraction of the working region over which the warp fades out at its border
TPS_REG_SURFACE = 3e-2  # thin-plate smoothing at face-surface and shell points: keeps head turns fold-free
TPS_REG_FEATURE = 2e-3  # at lid points and anchors: close to exact, so the eyes follow the motion
TPS_REG_LIPS = 2e-4  # at lip points: nearly exact, so lips meet when they close
MOUTH_RAMP = 0.012  # face units of extra lip gap over which the mouth model's painting fades in
MOUTH_MIN_STRENGTH = 0.01  # frames painted less than this are left to the warp
INTERIOR_BLUR = 2.0  # crop pixels: the warp's streaks of stretched lip between the inner lip lines are smoothed
YCBCR = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])  # BT.601
# Spacing of the warp field's nodes, face units: fine across the face and finest over the lids and lips,
# whose points move in opposite directions a few pixels apart; coarse over hair and background.
# The warp field is evaluated on a coarse grid over the working region and on fine patches over the mouth
# (with the jaw) and each eye (with its brow), where points a few pixels apart move in opposite directions.
STEP_COARSE, STEP_MOUTH, STEP_EYE = 1 / 5, 1 / 24, 1 / 28  # face units between nodes
PATCH_MARGIN = 0.12  # face units around a patch's range of motion over the whole video
PATCH_MAX_NODES = 900  # per patch: its spacing grows beyond this (a head that travels far)
PATCH_FEATHER = 3  # node spacings over which a patch blends into the coarse field
MIN_COVER = 0.05  # the lid layer is drawn where it covers at least this fraction of an eye (else the warp's lids)


@dataclass(frozen=True)
class WorkingRegion:
    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def w(self) -> int:
        return self.x1 - self.x0

    @property
    def h(self) -> int:
        return self.y1 - self.y0


def working_region(face: PortraitFace, size: tuple[int, int], margin: float = 0.0) -> WorkingRegion:
    """The square around the face (clipped to the image) outside which the renderer changes nothing."""
    w, h = size
    cx, cy = face.translation[:2]
    half = (ROI_HALF + margin) * face.scale
    x0, y0 = max(0, int(np.floor(cx - half))), max(0, int(np.floor(cy - half)))
    x1, y1 = min(w, int(np.ceil(cx + half))), min(h, int(np.ceil(cy + half)))
    return WorkingRegion(x0, y0, x1, y1)


def _shell_canon(face: PortraitFace) -> np.ndarray:
    oval = face.canon[fm.FACE_OVAL]
    centre = oval.mean(0)
    keep = oval[oval[:, 1] < SHELL_MAX_Y]
    shells = [centre + k * (keep - centre) * np.array([1.0, 1.0, 0.0]) + keep * np.array([0.0, 0.0, 1.0])
              for k in SHELL_LEVELS]
    return np.concatenate(shells).astype(np.float32)


def _static_points(face: PortraitFace, roi: WorkingRegion) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, RING_POINTS, endpoint=False)
    ring = face.translation[None, :2] + RING_RADIUS * face.scale * np.stack([np.cos(a), np.sin(a)], 1)
    t = np.linspace(0, 1, BORDER_POINTS)
    xs, ys = roi.x0 + t * (roi.w - 1), roi.y0 + t * (roi.h - 1)
    border = np.concatenate([
        np.stack([xs, np.full_like(xs, roi.y0)], 1), np.stack([xs, np.full_like(xs, roi.y1 - 1)], 1),
        np.stack([np.full_like(ys[1:-1], roi.x0), ys[1:-1]], 1), np.stack([np.full_like(ys[1:-1], roi.x1 - 1), ys[1:-1]], 1),
    ])
    from a2pcli.headpose import apply_pose

    xs_t = np.linspace(-TORSO_HALF_WIDTH, TORSO_HALF_WIDTH, 9)
    row = np.stack([xs_t, np.full_like(xs_t, TORSO_Y), np.zeros_like(xs_t)], 1).astype(np.float32)
    torso = apply_pose(row[None], face.rotation[None], face.translation[None], np.array([face.scale], np.float32))
    return np.concatenate([ring, border, torso[0, :, :2]]).astype(np.float32)


@dataclass
class Patch:
    """A uniform grid of field nodes over a box of the working region, and how to upsample it."""

    x0: int
    y0: int
    x1: int
    y1: int
    nx: int
    ny: int

    @classmethod
    def over(cls, box: tuple[float, float, float, float], step: float, size: tuple[int, int],
             max_nodes: int | None = None) -> Patch:
        w, h = size
        x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
        x1, y1 = min(w, int(np.ceil(box[2])) + 1), min(h, int(np.ceil(box[3])) + 1)
        x1, y1 = max(x1, x0 + 2), max(y1, y0 + 2)
        step = max(1.0, step)
        if max_nodes:
            step = max(step, np.sqrt((x1 - x0) * (y1 - y0) / max_nodes))
        nx, ny = int(np.ceil((x1 - x0 - 1) / step)) + 1, int(np.ceil((y1 - y0 - 1) / step)) + 1
        return cls(x0, y0, x1, y1, max(nx, 2), max(ny, 2))

    @property
    def nodes(self) -> np.ndarray:
        gy, gx = np.meshgrid(np.linspace(self.y0, self.y1 - 1, self.ny), np.linspace(self.x0, self.x1 - 1, self.nx),
                             indexing="ij")
        return np.stack([gx, gy], -1).reshape(-1, 2).astype(np.float32)

    @property
    def pixel_to_node(self) -> tuple[np.ndarray, np.ndarray]:
        """Fractional node coordinates of every pixel of the box: (h, w) x, (h, w) y."""
        w, h = self.x1 - self.x0, self.y1 - self.y0
        fx = np.arange(w, dtype=np.float32) * (self.nx - 1) / max(w - 1, 1)
        fy = np.arange(h, dtype=np.float32) * (self.ny - 1) / max(h - 1, 1)
        return np.broadcast_to(fx[None], (h, w)).copy(), np.broadcast_to(fy[:, None], (h, w)).copy()

    def upsample(self, nodes: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Node values (ny, nx, C) float32 bilinearly at the pixels [x0, x1) x [y0, y1) of the working region
        (inside this box): what `cv2.remap` with `pixel_to_node` gives, without reading the maps."""
        import cv2

        sx = (self.nx - 1) / max(self.x1 - self.x0 - 1, 1)
        sy = (self.ny - 1) / max(self.y1 - self.y0 - 1, 1)
        m = np.array([[sx, 0.0, sx * (x0 - self.x0)], [0.0, sy, sy * (y0 - self.y0)]])
        return cv2.warpAffine(nodes, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REPLICATE)

    def feather(self, nodes: float = PATCH_FEATHER) -> np.ndarray:
        """(h, w) blend weight: 1 inside, 0 at the box border."""
        fx, fy = self.pixel_to_node
        d = np.minimum.reduce([fx, fy, self.nx - 1 - fx, self.ny - 1 - fy]) / nodes
        t = np.clip(d, 0, 1)
        return (t * t * (3 - 2 * t)).astype(np.float32)


class WarpRenderer:
    """Renders frames of one portrait for batches of retargeted landmarks (see the module doc).

    `plan` is the whole target sequence (or a representative part): it decides where the warp field needs
    fine nodes and how far the head travels. `mouth`: the mouth model (mouthnet.MouthModel) that paints the
    mouth; None renders the warp alone."""

    def __init__(self, image: np.ndarray, face: PortraitFace, plan: FaceTargets, device: str = "cpu",
                 still_background: bool = True, mouth=None):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.gpu = self.device.type != "cpu"
        if not self.gpu:
            # The tensors here are small: one intra-op thread is several times faster than a pool that waits
            # on a busy core, and it leaves the other core to the video encoder.
            torch.set_num_threads(1)
        self.image = np.ascontiguousarray(image)
        self.face = face
        h, w = image.shape[:2]
        self.size = (w, h)
        self.unit = unit = float(face.scale)
        travel = float(np.abs(plan.translation[:, :2] - face.translation[None, :2]).max(initial=0.0)) / unit
        self.roi = roi = working_region(face, (w, h), margin=travel)
        self.origin = np.array([roi.x0, roi.y0], np.float32)
        self.crop = np.ascontiguousarray(image[roi.y0 : roi.y1, roi.x0 : roi.x1])
        dev, f32 = self.device, torch.float32
        self.notes: list[str] = []
        crop_lm = face.landmarks - np.array([roi.x0, roi.y0, 0], np.float32)
        self.backdrop = self._separate(crop_lm) if still_background else None
        self.lids = [EyeLid.of(self.crop, crop_lm, eye, unit) for eye in EYES]
        self.lids = [lid if lid.usable else None for lid in self.lids]
        self.lids_t = [lid.to(dev) if lid else None for lid in self.lids]

        # control points: face points, rigid shell, static anchors (working-region pixels)
        from a2pcli.headpose import apply_pose

        self.shell_canon = _shell_canon(face)
        shell_src = apply_pose(self.shell_canon[None], face.rotation[None], face.translation[None],
                               np.array([face.scale], np.float32))[0, :, :2]
        static = _static_points(face, roi)
        src_pts = np.concatenate([face.landmarks[fm.WARP_POINTS, :2], shell_src, static]) - self.origin
        self.n_moving = len(fm.WARP_POINTS) + len(shell_src)
        self.ctrl_src = torch.from_numpy(src_pts.astype(np.float32)).to(dev)
        self.static = self.ctrl_src[self.n_moving :]
        features = np.isin(fm.WARP_POINTS, np.concatenate([fm.LIPS, fm.EYELIDS, fm.EYE_RINGS]))
        reg = np.full(len(src_pts), TPS_REG_SURFACE, np.float32)
        reg[: len(features)][features] = TPS_REG_FEATURE
        reg[: len(features)][np.isin(fm.WARP_POINTS, fm.LIPS)] = TPS_REG_LIPS
        reg[self.n_moving :] = TPS_REG_FEATURE
        self.reg = torch.diag(torch.from_numpy(reg)).to(dev)

        # the warp field's nodes: a coarse grid over the working region, fine patches over mouth and eyes
        self.patches = self._plan_patches(plan)
        self.lid_sizes = self._plan_lid_boxes(plan)
        nodes = [p.nodes for p in self.patches]
        self.node_slices = np.cumsum([0] + [len(n) for n in nodes])
        self.grid = torch.from_numpy(np.concatenate(nodes)).to(dev)  # (G, 2)

        def ramp(n: int) -> np.ndarray:
            v = np.arange(n, dtype=np.float32)
            t = np.clip(np.minimum(v, n - 1 - v) / max(1.0, WINDOW * n), 0, 1)
            return t * t * (3 - 2 * t)

        window = ramp(roi.h)[:, None] * ramp(roi.w)[None, :]
        ident = np.stack(np.meshgrid(np.arange(roi.w, dtype=np.float32), np.arange(roi.h, dtype=np.float32)), -1)
        self.feathers = [None] + [p.feather() for p in self.patches[1:]]
        if self.gpu:
            self.upsample_grids = []
            for p in self.patches:
                fx, fy = p.pixel_to_node
                up = np.stack([fx / max(p.nx - 1, 1) * 2 - 1, fy / max(p.ny - 1, 1) * 2 - 1], -1)
                self.upsample_grids.append(torch.from_numpy(up.astype(np.float32)).to(dev)[None])
            self.feathers_t = [None] + [torch.from_numpy(f).to(dev)[None, None] for f in self.feathers[1:]]
            self.window_t = torch.from_numpy(window).to(dev)[None, None]
            self.ident_t = torch.from_numpy(ident).to(dev).permute(2, 0, 1)[None]  # (1, 2, h, w)
            self.src_t = torch.from_numpy(self.crop).to(dev).permute(2, 0, 1)[None].to(f32)
            self.crop_t = self.src_t
            if self.backdrop is not None:  # the premultiplied person and its alpha; the plate stays still
                layer = torch.from_numpy(self.backdrop.layer).to(dev).permute(2, 0, 1)[None].to(f32)
                self.src_t = layer * torch.tensor([1.0, 1.0, 1.0, 1 / 255], device=dev).view(1, 4, 1, 1)
                self.plate_t = torch.from_numpy(self.backdrop.plate).to(dev).permute(2, 0, 1)[None].to(f32)
            self.full_t = torch.from_numpy(self.image.copy()).to(dev)
        else:
            self.unfeathers = [None] + [1.0 - f for f in self.feathers[1:]]
            self.window = np.repeat(window[..., None], 2, 2)
            self.ident = ident

        # mouth
        self.portrait_gap = float(lip_gap(face.canon[None])[0])
        self.open_portrait = open_mouth_gap(self.image, face) > 0
        self.mouth = self.mouth_cfg = None
        if mouth is not None:
            self.mouth = mouth.to(str(self.device))
            self._setup_mouth(self.mouth.config)

    def _setup_mouth(self, cfg) -> None:
        """For the mouth model (a2pcli.mouthnet, its crop `cfg`): the portrait's own mouth crop, and its
        inner-lip polygon over the working region (warped with the frame, it shows the model where the
        portrait's own interior landed)."""
        import cv2

        from a2pcli import mouthnet

        torch, face = self.torch, self.face
        self.mouth_cfg = cfg
        self.lip_rgb = lip_and_skin_colour(self.image, face.landmarks)[0].astype(np.float64)
        own = mouthnet.portrait_crop(self.image, face.landmarks, face.rotation, face.scale, cfg)
        self.portrait_mouth = torch.from_numpy(own).to(self.device)
        a = mouthnet.crop_affine(face.landmarks[None], face.rotation[None], np.array([face.scale]), cfg)
        self.portrait_affine = a[0]
        self.portrait_lines = np.stack([mouthnet.to_crop(face.landmarks[None, line], a)[0]
                                        for line in mouthnet.LIP_LINES])
        poly = face.landmarks[mouthnet.INNER_POLYGON, :2] - self.origin
        mask = np.zeros((self.roi.h, self.roi.w), np.uint8)
        cv2.fillPoly(mask, [np.round(poly * 8).astype(np.int32)], 255, cv2.LINE_AA, shift=3)
        self.interior = mask.astype(np.float32) / 255.0
        if self.gpu:
            self.mouth_src_t = torch.cat([self.crop_t, torch.from_numpy(self.interior).to(self.device)[None, None]], 1)
            self.image_t = self.full_t.permute(2, 0, 1)[None].float()  # (1, 3, H, W)

    def _plan_patches(self, plan: FaceTargets) -> list[Patch]:
        unit, roi = self.unit, self.roi
        lm = plan.landmarks[..., :2] - self.origin  # (T, 478, 2)
        m = PATCH_MARGIN * unit
        size = (roi.w, roi.h)

        def box(idx: np.ndarray) -> tuple[float, float, float, float]:
            v = lm[:, idx]
            return (float(v[..., 0].min()) - m, float(v[..., 1].min()) - m, float(v[..., 0].max()) + m,
                    float(v[..., 1].max()) + m)

        mouth = np.concatenate([fm.LIPS, fm.CHIN, fm.FACE_OVAL[13:24]])
        right_eye = np.concatenate([fm.RIGHT_EYE_UPPER, fm.RIGHT_EYE_LOWER, fm.RIGHT_EYE_RING_LOWER, fm.RIGHT_BROW])
        left_eye = np.concatenate([fm.LEFT_EYE_UPPER, fm.LEFT_EYE_LOWER, fm.LEFT_EYE_RING_LOWER, fm.LEFT_BROW])
        coarse = Patch.over((0, 0, roi.w - 1, roi.h - 1), STEP_COARSE * unit, size)
        return [coarse,
                Patch.over(box(mouth), STEP_MOUTH * unit, size, PATCH_MAX_NODES),
                Patch.over(box(right_eye), STEP_EYE * unit, size, PATCH_MAX_NODES),
                Patch.over(box(left_eye), STEP_EYE * unit, size, PATCH_MAX_NODES)]

    def _targets(self, tgt: FaceTargets) -> "torch.Tensor":
        from a2pcli.headpose import apply_pose

        n = len(tgt)
        shell = apply_pose(np.repeat(self.shell_canon[None], n, 0), tgt.rotation, tgt.translation, tgt.scale)[..., :2]
        pts = np.concatenate([tgt.landmarks[:, fm.WARP_POINTS, :2], shell], 1) - self.origin
        torch = self.torch
        pts = torch.from_numpy(np.ascontiguousarray(pts, dtype=np.float32)).to(self.device)
        return torch.cat([pts, self.static[None].expand(n, -1, -1)], 1)  # (B, N, 2)

    def coarse_field(self, tgt: FaceTargets) -> "torch.Tensor":
        """Backward displacement at the nodes, (B, G, 2) pixels: output + field = portrait position.

        A thin-plate spline through the control points, solved per frame in face units."""
        torch = self.torch
        ctrl = self._targets(tgt)
        b, n, _ = ctrl.shape
        u = 1.0 / self.unit
        p = ctrl * u
        disp = (self.ctrl_src[None] - ctrl) * u  # (B, N, 2)
        dev = self.device
        k = _tps_kernel(_sqdist(p, p)) + self.reg
        pm = torch.cat([torch.ones(b, n, 1, device=dev), p], 2)  # (B, N, 3)
        a = torch.cat([torch.cat([k, pm], 2), torch.cat([pm.transpose(1, 2), torch.zeros(b, 3, 3, device=dev)], 2)], 1)
        rhs = torch.cat([disp, torch.zeros(b, 3, 2, device=dev)], 1)
        coef = _solve(a, rhs)
        return _tps_at_nodes(self.grid * u, p, coef) * self.unit  # (B, G, 2): the patches' nodes one after the other

    # ---- frames -----------------------------------------------------------------------------------

    def render_batches(self, tgt: FaceTargets, batch: int, workers: int | None = None) -> Iterator[np.ndarray]:
        """(B, H, W, 3) uint8 frames of `tgt`, `batch` frames at a time, in order. On a CPU, batches are
        rendered by `workers` threads at once (default: one per core, at most CPU_WORKERS_MAX): the warp's
        work (OpenCV, NumPy, torch) runs outside the GIL, and one batch alone keeps about one core busy.
        At most `workers` + 1 batches are held at a time."""
        n = len(tgt)
        spans = [(s, min(n, s + batch)) for s in range(0, n, batch)]
        workers = cpu_workers() if workers is None else max(1, int(workers))
        if self.gpu or workers == 1 or len(spans) < 2:
            for s, e in spans:
                yield self.render(tgt.slice(s, e))
            return
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="a2p-render")
        try:
            queue = collections.deque()
            todo = iter(spans)
            for s, e in itertools.islice(todo, workers + 1):
                queue.append(pool.submit(self.render, tgt.slice(s, e)))
            while queue:
                frames = queue.popleft().result()
                for s, e in itertools.islice(todo, 1):
                    queue.append(pool.submit(self.render, tgt.slice(s, e)))
                yield frames
        finally:  # an error, Ctrl-C or a consumer that stops early: the batches not started are dropped
            pool.shutdown(wait=True, cancel_futures=True)

    def render(self, tgt: FaceTargets) -> np.ndarray:
        """(B, H, W, 3) uint8 whole frames."""
        from a2pcli.headpose import canonical

        canon = canonical(tgt.landmarks, tgt.rotation, tgt.translation, tgt.scale)
        tgt, lids = self._open_lids(tgt, canon)
        with self.torch.inference_mode():
            field = self.coarse_field(tgt)
            plan = self._mouth_plan(tgt) if self.mouth is not None else None
            if self.gpu:
                return self._render_gpu(field, plan, lids)
            return self._render_cpu(field.numpy(), plan, lids)

    def _patch_fields(self, field):
        """Split (B, G, 2) node values into one (B, ny, nx, 2) grid per patch."""
        out = []
        for p, a, b in zip(self.patches, self.node_slices[:-1], self.node_slices[1:]):
            out.append(field[:, a:b].reshape(len(field), p.ny, p.nx, 2))
        return out

    def _dense_cpu(self, grids: list[np.ndarray], i: int, box: WorkingRegion | None = None) -> np.ndarray:
        """(h, w, 2) float32: for each pixel of frame i's working region (or of `box` in it), the portrait
        position it shows (working-region pixels)."""
        import cv2

        b = box or WorkingRegion(0, 0, self.roi.w, self.roi.h)
        dense = self.patches[0].upsample(grids[0][i], b.x0, b.y0, b.x1, b.y1)
        for p, g, f, rest in zip(self.patches[1:], grids[1:], self.feathers[1:], self.unfeathers[1:]):
            x0, y0, x1, y1 = max(p.x0, b.x0), max(p.y0, b.y0), min(p.x1, b.x1), min(p.y1, b.y1)
            if x1 <= x0 or y1 <= y0:
                continue
            sub = dense[y0 - b.y0 : y1 - b.y0, x0 - b.x0 : x1 - b.x0]
            cut = (slice(y0 - p.y0, y1 - p.y0), slice(x0 - p.x0, x1 - p.x0))
            sub[:] = cv2.blendLinear(p.upsample(g[i], x0, y0, x1, y1), np.ascontiguousarray(sub), f[cut], rest[cut])
        if box is None:
            cv2.multiply(dense, self.window, dst=dense)
            cv2.add(dense, self.ident, dst=dense)
        else:
            dense *= self.window[b.y0 : b.y1, b.x0 : b.x1]
            dense += self.ident[b.y0 : b.y1, b.x0 : b.x1]
        return dense

    def _render_cpu(self, field: np.ndarray, plan: _MouthPlan | None, lids: list) -> np.ndarray:
        import cv2

        roi = self.roi
        grids = self._patch_fields(field)
        frames = np.empty((len(field), self.size[1], self.size[0], 3), np.uint8)
        frames[:] = self.image[None]
        slot = {} if plan is None else {int(i): j for j, i in enumerate(plan.index)}
        crops = []
        for i in range(len(field)):
            dense = self._dense_cpu(grids, i)
            region = frames[i, roi.y0 : roi.y1, roi.x0 : roi.x1]
            self._sample_cpu(dense, region)
            for w in lids:
                if w.frame == i:
                    x0, y0 = w.origin
                    w.pos = np.ascontiguousarray(dense[y0 : y0 + w.size[1], x0 : x0 + w.size[0]])
            if i in slot:
                crops.append(self._mouth_crop_cpu(dense, plan.affine[slot[i]]))
        self._lids_cpu(frames, lids)
        if crops:
            torch = self.torch
            warped = torch.from_numpy(np.stack([c[0] for c in crops])).permute(0, 3, 1, 2).float()
            interior = torch.from_numpy(np.stack([c[1] for c in crops]))[:, None]
            lips_rgb = np.stack([cv2.remap(self.image, at[..., 0], at[..., 1], cv2.INTER_LINEAR,
                                           borderMode=cv2.BORDER_REPLICATE) for at in plan.lip_src])
            lips_rgb = torch.from_numpy(lips_rgb).permute(0, 3, 1, 2).float()
            delta = self._mouth_delta(warped, interior, lips_rgb, plan).permute(0, 2, 3, 1).numpy()
            for j, i in enumerate(plan.index):
                _add_crop(frames[i], delta[j], plan.affine[j])
        return frames

    def _render_gpu(self, field, plan: _MouthPlan | None, lids: list) -> np.ndarray:
        torch = self.torch
        fnn = torch.nn.functional
        roi = self.roi
        b = len(field)
        grids = [g.permute(0, 3, 1, 2) for g in self._patch_fields(field)]
        dense = fnn.grid_sample(grids[0], self.upsample_grids[0].expand(b, -1, -1, -1), mode="bilinear",
                                align_corners=True)
        for p, g, up, f in zip(self.patches[1:], grids[1:], self.upsample_grids[1:], self.feathers_t[1:]):
            sub = dense[:, :, p.y0 : p.y1, p.x0 : p.x1]
            fine = fnn.grid_sample(g, up.expand(b, -1, -1, -1), mode="bilinear", align_corners=True)
            sub += (fine - sub) * f
        pos = self.ident_t + dense * self.window_t
        scale = torch.tensor([2.0 / max(roi.w - 1, 1), 2.0 / max(roi.h - 1, 1)], device=self.device)
        grid = pos.permute(0, 2, 3, 1) * scale - 1.0
        out = fnn.grid_sample(self.src_t.expand(b, -1, -1, -1), grid, mode="bilinear", padding_mode="border",
                              align_corners=True)
        if self.backdrop is not None:  # the warped person over the still background
            out = out[:, :3] + (1 - out[:, 3:4]) * self.plate_t
        else:
            out = out[:, :3]
        self._lids_gpu(pos, out, lids)
        if plan is not None:
            self._paint_gpu(out, pos, plan)
        region = out.clamp_(0, 255).round_().to(torch.uint8).permute(0, 2, 3, 1)
        frames = self.full_t[None].repeat(b, 1, 1, 1)
        frames[:, roi.y0 : roi.y1, roi.x0 : roi.x1] = region
        return frames.cpu().numpy()

    # ---- background and eyelids -------------------------------------------------------------------

    def _separate(self, crop_lm: np.ndarray):
        """The person and the still background of the working region (backdrop.separate), or None with a note."""
        from a2pcli.backdrop import separate

        bd, why = separate(self.crop, crop_lm, self.unit)
        if bd is None:
            self.notes.append(f"the background moves with the head near it ({why})")
        return bd

    def _sample_cpu(self, dense: np.ndarray, region: np.ndarray) -> None:
        """The portrait sampled at `dense` (h, w, 2 working-region pixels) into `region`: the warped person
        (premultiplied) over the still background plate when there is one."""
        import cv2

        if self.backdrop is None:
            cv2.remap(self.crop, dense, None, cv2.INTER_LINEAR, dst=region, borderMode=cv2.BORDER_REPLICATE)
            return
        warped = cv2.remap(self.backdrop.layer, dense, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        self.backdrop.composite(warped, region)

    def _plan_lid_boxes(self, plan: FaceTargets) -> list[tuple[int, int] | None]:
        """Per eye, the (w, h) pixels of the box that holds its lid in any frame of `plan` (within its patch)."""
        sizes = []
        for (upper, _, _), lid, patch in zip(EYES, self.lids, self.patches[2:]):
            if lid is None:
                sizes.append(None)
                continue
            boxes = lid.boxes(plan.landmarks[:, [upper[0], upper[-1]], :2] - self.origin)
            w, h = (boxes[:, 2:] - boxes[:, :2]).max(0)
            sizes.append((int(min(w, patch.x1 - patch.x0)), int(min(h, patch.y1 - patch.y0))))
        return sizes

    def _open_lids(self, tgt: FaceTargets, canon: np.ndarray) -> tuple[FaceTargets, list[_LidWork]]:
        """The targets with each upper lid kept at the portrait's distance from the lower one (the lid layer
        closes the eye, not the warp), and the lid layer's work: every frame and eye the lid covers."""
        work, lm = [], None
        for e, ((upper, lower, _), lid, size) in enumerate(zip(EYES, self.lids, self.lid_sizes)):
            if lid is None:
                continue
            gap0 = self.face.canon[lower[1:-1], 1] - self.face.canon[upper[1:-1], 1]
            gap = canon[:, lower[1:-1], 1] - canon[:, upper[1:-1], 1]  # (B, inner points)
            short = np.clip(gap0[None] - gap, 0.0, None)
            cover = lid_coverage(gap.mean(1) / max(float(gap0.mean()), 1e-6))
            todo = np.nonzero(cover >= MIN_COVER)[0]
            if not len(todo):
                continue
            lm = tgt.landmarks.copy() if lm is None else lm
            # up the face (the pose's y axis) by the shortfall, face units -> pixels
            lm[todo[:, None], upper[None, 1:-1]] -= ((short * tgt.scale[:, None])[..., None]
                                                     * tgt.rotation[:, None, :, 1])[todo]
            boxes = lid.boxes(tgt.landmarks[todo][:, [upper[0], upper[-1]], :2] - self.origin)
            patch = self.patches[2 + e]
            for i, b in zip(todo, boxes):  # a box of the eye's fixed size, centred on this frame's, in the patch
                cx, cy = (b[0] + b[2] - size[0]) // 2, (b[1] + b[3] - size[1]) // 2
                origin = (int(np.clip(cx, patch.x0, patch.x1 - size[0])), int(np.clip(cy, patch.y0, patch.y1 - size[1])))
                work.append(_LidWork(int(i), e, float(cover[i]), origin, size))
        return (tgt if lm is None else FaceTargets(lm, tgt.rotation, tgt.translation, tgt.scale)), work

    def _lid_layers(self, work: list[_LidWork], pos):
        """For each eye, its items and the lid layer over them: pos (N, h, w, 2) portrait positions, torch."""
        torch = self.torch
        for e, lid in enumerate(self.lids_t):
            items = [w for w in work if w.eye == e]
            if lid is None or not items:
                continue
            p = pos(items)
            closure = torch.tensor([w.cover for w in items], device=self.device, dtype=torch.float32).view(-1, 1, 1)
            yield items, lid, p, lid.layer(p, closure)

    def _lids_cpu(self, frames: np.ndarray, work: list[_LidWork]) -> None:
        """The lids over `frames` (B, H, W, 3) uint8, in place; each item holds its frame's portrait positions."""
        import cv2

        roi = self.roi
        for items, lid, _, (src, cover, tone, ink, clean) in self._lid_layers(
                work, lambda items: self.torch.from_numpy(np.stack([w.pos for w in items]))):
            skins = np.stack([cv2.remap(self.crop, s, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                              for s in src.numpy()])
            skins = lid.paint(self.torch.from_numpy(skins.astype(np.float32)), tone, ink, clean).numpy()
            cover = cover.numpy()[..., None]
            for w, skin, a in zip(items, skins, cover):
                x0, y0 = roi.x0 + w.origin[0], roi.y0 + w.origin[1]
                sub = frames[w.frame, y0 : y0 + w.size[1], x0 : x0 + w.size[0]]
                sub[:] = np.clip(sub + (skin - sub) * a + 0.5, 0, 255).astype(np.uint8)

    def _lids_gpu(self, pos, out, work: list[_LidWork]) -> None:
        """pos: (B, 2, h, w) working-region pixels; out: (B, C, h, w) float frames, lids drawn in place."""
        torch = self.torch
        roi = self.roi
        scale = torch.tensor([2.0 / max(roi.w - 1, 1), 2.0 / max(roi.h - 1, 1)], device=self.device)

        def boxes(items):
            return torch.stack([pos[w.frame, :, w.origin[1] : w.origin[1] + w.size[1],
                                    w.origin[0] : w.origin[0] + w.size[0]].permute(1, 2, 0) for w in items])

        for items, lid, _, (src, cover, tone, ink, clean) in self._lid_layers(work, boxes):
            skins = torch.nn.functional.grid_sample(self.crop_t.expand(len(items), -1, -1, -1), src * scale - 1.0,
                                                    mode="bilinear", padding_mode="border", align_corners=True)
            skins = lid.paint(skins.permute(0, 2, 3, 1), tone, ink, clean).permute(0, 3, 1, 2)
            for w, skin, a in zip(items, skins, cover):
                x0, y0 = w.origin
                sub = out[w.frame, :3, y0 : y0 + w.size[1], x0 : x0 + w.size[0]]
                sub.add_((skin - sub) * a[None])

    # ---- mouth ------------------------------------------------------------------------------------

    def mouth_strength(self, tgt: FaceTargets) -> np.ndarray:
        """(B,) float32 0..1: how much of the mouth model's painting each frame gets. A closed portrait: where
        the lips part further than the portrait's (fading in over MOUTH_RAMP); a portrait that shows its mouth
        interior: every frame (its interior must close, open or change)."""
        from a2pcli.headpose import canonical

        if self.open_portrait:
            return np.ones(len(tgt), np.float32)
        gap = lip_gap(canonical(tgt.landmarks, tgt.rotation, tgt.translation, tgt.scale))
        return np.clip((gap - self.portrait_gap) / MOUTH_RAMP, 0.0, 1.0).astype(np.float32)

    def _mouth_plan(self, tgt: FaceTargets) -> _MouthPlan | None:
        """The frames the mouth model paints (mouth_strength), their crops and target lip masks, or None."""
        from a2pcli import mouthnet

        strength = self.mouth_strength(tgt)
        todo = np.flatnonzero(strength > MOUTH_MIN_STRENGTH)
        if len(todo) == 0:
            return None
        cfg = self.mouth_cfg
        lm = tgt.landmarks[todo]
        a = mouthnet.crop_affine(lm, tgt.rotation[todo], tgt.scale[todo], cfg)
        src, cover = [], []
        lines = mouthnet.to_crop(lm[:, np.concatenate(mouthnet.LIP_LINES)], a)
        lines = lines.reshape(len(todo), len(mouthnet.LIP_LINES), -1, 2)
        for j in range(len(todo)):
            at, c = mouthnet.lip_bands(lines[j], self.portrait_lines, cfg.size)
            pa = self.portrait_affine.astype(np.float32)
            src.append(at @ pa[:, :2].T + pa[:, 2])
            cover.append(c)
        return _MouthPlan(todo, a, mouthnet.lip_masks(lm, a, cfg.size), strength[todo], np.stack(src), np.stack(cover))

    def _mouth_delta(self, warped, interior, lips_rgb, plan: _MouthPlan):
        """The change to the warped crops (M, 3, S, S): the mouth model paints the mouth, then the portrait's own
        lips, mapped band by band onto the target's lip shape (mouthnet.lip_bands), cover it up to the inner lip
        line, so that closing lips close over whatever the portrait showed between them; times the strength.
        warped, lips_rgb: (M, 3, S, S) 0..255; interior: (M, 1, S, S)."""
        torch = self.torch
        dev = warped.device
        lips = torch.from_numpy(plan.lips).to(dev)
        # the model's painting up to a pixel beyond the outer lip line (further out it would tint smooth skin)
        near = torch.nn.functional.max_pool2d(lips[:, 1:2], 3, stride=1, padding=1)
        base = warped
        if not self.open_portrait:  # between the inner lip lines the warp only stretches lip: smooth its streaks
            base = warped + lips[:, :1] * (_blur(warped, INTERIOR_BLUR) - warped)
        painted = base + self.mouth.paint(base, lips, interior, self.portrait_mouth) * near
        painted = painted + lips[:, :1] * (self._own_hues(painted) - painted)  # inside the inner lip line
        cover = torch.from_numpy(plan.lip_cover).to(dev)[:, None] * (1.0 - lips[:, :1])
        final = painted + cover * (lips_rgb - painted)
        return (final - warped) * torch.from_numpy(plan.strength).to(dev).view(-1, 1, 1, 1)

    def _own_hues(self, rgb):
        """(M, 3, S, S) 0..255 with its chroma (BT.601 Cb, Cr) projected onto the portrait's lip hue, negative
        projections made neutral: the painted mouth keeps the portrait's palette (teeth stay neutral, a cavity
        takes the lips' hue) instead of drifting to hues the portrait's mouth does not have (an olive cavity
        on a cartoon)."""
        torch = self.torch
        m = torch.tensor(YCBCR, dtype=rgb.dtype, device=rgb.device)
        ycc = torch.einsum("ij,bjhw->bihw", m, rgb)
        hue = torch.tensor(YCBCR[1:] @ self.lip_rgb, dtype=rgb.dtype, device=rgb.device)
        hue = hue / hue.norm().clamp_min(1e-6)
        along = (ycc[:, 1:] * hue.view(1, 2, 1, 1)).sum(1, keepdim=True).clamp_min(0.0)
        ycc = torch.cat([ycc[:, :1], along * hue.view(1, 2, 1, 1)], 1)
        return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(m), ycc)

    def _mouth_crop_cpu(self, dense: np.ndarray, a: np.ndarray,
                        box: WorkingRegion | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The warped portrait (S, S, 3) uint8 and the warped interior mask (S, S) float32 in the crop `a`
        (crop -> frame pixels), sampled from the portrait through the frame's dense map (of `box` only, when
        given)."""
        import cv2

        from a2pcli import mouthnet

        pos = mouthnet.crop_grid(a[None], self.mouth_cfg.size)[0] - self.origin
        if box is not None:
            pos -= (box.x0, box.y0)
        m = cv2.remap(dense, pos[..., 0], pos[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        rgb = cv2.remap(self.crop, m[..., 0], m[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        inside = cv2.remap(self.interior, m[..., 0], m[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        return rgb, inside

    def _paint_gpu(self, out, pos, plan: _MouthPlan) -> None:
        """Add the mouth model's painting to `out` (B, 3, h, w) in place; `pos`: (B, 2, h, w) the frames'
        portrait positions (working-region pixels)."""
        from a2pcli import mouthnet

        torch = self.torch
        fnn = torch.nn.functional
        roi, dev, s = self.roi, self.device, self.mouth_cfg.size
        idx = torch.from_numpy(plan.index).to(dev)
        norm = torch.tensor([2.0 / max(roi.w - 1, 1), 2.0 / max(roi.h - 1, 1)], device=dev)
        at = torch.from_numpy(mouthnet.crop_grid(plan.affine, s) - self.origin).to(dev)  # (M, S, S, 2)
        m = fnn.grid_sample(pos[idx], at * norm - 1.0, mode="bilinear", padding_mode="border", align_corners=True)
        src = fnn.grid_sample(self.mouth_src_t.expand(len(idx), -1, -1, -1), m.permute(0, 2, 3, 1) * norm - 1.0,
                              mode="bilinear", padding_mode="border", align_corners=True)
        h_img, w_img = self.image.shape[:2]
        at = torch.from_numpy(plan.lip_src).to(dev)
        at = at * torch.tensor([2.0 / max(w_img - 1, 1), 2.0 / max(h_img - 1, 1)], device=dev) - 1.0
        lips_rgb = fnn.grid_sample(self.image_t.expand(len(idx), -1, -1, -1), at, mode="bilinear",
                                   padding_mode="border", align_corners=True).round()
        delta = self._mouth_delta(src[:, :3].round(), src[:, 3:4], lips_rgb, plan)
        # back into the working region: its normalised coordinates -> frame pixels -> the crop's normalised ones
        w, h = roi.w, roi.h
        to_frame = np.array([[(w - 1) / 2, 0, (w - 1) / 2 + roi.x0], [0, (h - 1) / 2, (h - 1) / 2 + roi.y0], [0, 0, 1]])
        theta = 2.0 / (s - 1) * (mouthnet.invert_affine(plan.affine) @ to_frame)
        theta[:, :, 2] -= 1.0
        grid = fnn.affine_grid(torch.from_numpy(theta.astype(np.float32)).to(dev), [len(idx), 3, h, w],
                               align_corners=True)
        out[idx] += fnn.grid_sample(delta, grid, mode="bilinear", padding_mode="zeros", align_corners=True)

    def mouth_crops(self, tgt: FaceTargets, cfg) -> dict[str, np.ndarray]:
        """The mouth model's inputs for every frame of `tgt`, from the warp alone (training data; CPU):
        affine (B, 2, 3) crop -> frame pixels, warped (B, S, S, 3) uint8, interior (B, S, S) uint8,
        lips (B, 2, S, S) uint8 (inner, outer), portrait (4, S, S) float32 (mouthnet.portrait_crop)."""
        from a2pcli import mouthnet

        if self.mouth_cfg != cfg:
            self._setup_mouth(cfg)
        with self.torch.inference_mode():
            grids = self._patch_fields(self.coarse_field(tgt).numpy())
        a = mouthnet.crop_affine(tgt.landmarks, tgt.rotation, tgt.scale, cfg)
        warped = np.empty((len(tgt), cfg.size, cfg.size, 3), np.uint8)
        interior = np.empty((len(tgt), cfg.size, cfg.size), np.uint8)
        for i in range(len(tgt)):
            box = self._crop_box(a[i])
            warped[i], inside = self._mouth_crop_cpu(self._dense_cpu(grids, i, box), a[i], box)
            interior[i] = np.round(inside * 255)
        lips = np.round(mouthnet.lip_masks(tgt.landmarks, a, cfg.size) * 255).astype(np.uint8)
        return {"affine": a, "warped": warped, "interior": interior, "lips": lips,
                "portrait": self.portrait_mouth.cpu().numpy()}


    def _crop_box(self, a: np.ndarray) -> WorkingRegion:
        """The part of the working region (its pixels) that the crop `a` covers, with a pixel to spare."""
        s = self.mouth_cfg.size
        corners = a @ np.array([[0, s - 1, 0, s - 1], [0, 0, s - 1, s - 1], [1, 1, 1, 1]], np.float64)
        lo = np.floor(corners.min(1) - self.origin).astype(int) - 1
        hi = np.ceil(corners.max(1) - self.origin).astype(int) + 2
        x0, y0 = np.clip(lo, 0, [self.roi.w - 1, self.roi.h - 1])
        x1, y1 = np.clip(hi, [x0 + 1, y0 + 1], [self.roi.w, self.roi.h])
        return WorkingRegion(int(x0), int(y0), int(x1), int(y1))


@dataclass
class _LidWork:
    """One eye's lid in one frame of a batch: its coverage and the box (working-region pixels) it is drawn in."""

    frame: int
    eye: int
    cover: float
    origin: tuple[int, int]  # x0, y0
    size: tuple[int, int]  # w, h
    pos: np.ndarray | None = None  # (h, w, 2) the box's portrait positions, once the frame's warp is known


@dataclass
class _MouthPlan:
    index: np.ndarray  # (M,) frames of the batch the mouth model paints
    affine: np.ndarray  # (M, 2, 3) their crops: crop -> frame pixels
    lips: np.ndarray  # (M, 2, S, S) float32 target inner and outer lip polygons in the crops
    strength: np.ndarray  # (M,) float32 0..1: how much of the painting is applied
    lip_src: np.ndarray  # (M, S, S, 2) float32: portrait pixels the lips of each crop pixel come from
    lip_cover: np.ndarray  # (M, S, S) float32 0..1: where the target's lips are (mouthnet.lip_bands)


def _add_crop(frame: np.ndarray, delta: np.ndarray, a: np.ndarray) -> None:
    """frame (H, W, 3) uint8 += delta (S, S, 3) float32 resampled from its crop `a` (crop -> frame pixels),
    in place."""
    import cv2

    s = delta.shape[0]
    corners = a @ np.array([[0, s - 1, 0, s - 1], [0, 0, s - 1, s - 1], [1, 1, 1, 1]], np.float64)  # (2, 4)
    h, w = frame.shape[:2]
    x0, y0 = np.maximum(np.floor(corners.min(1)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(corners.max(1)).astype(int) + 1, [w, h])
    if x1 <= x0 or y1 <= y0:
        return
    m = a.copy()
    m[:, 2] -= (x0, y0)
    d = cv2.warpAffine(delta, m, (int(x1 - x0), int(y1 - y0)), flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT)
    box = frame[y0:y1, x0:x1]
    box[:] = np.clip(box + d + 0.5, 0, 255).astype(np.uint8)


def _blur(x: "torch.Tensor", sigma: float) -> "torch.Tensor":
    """Separable Gaussian blur of (B, C, H, W), borders replicated."""
    import torch
    from torch.nn import functional as F

    r = int(np.ceil(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) / sigma) ** 2)
    k = (k / k.sum()).repeat(x.shape[1], 1)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(-1, 1, 1, 2 * r + 1), groups=x.shape[1])
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(-1, 1, 2 * r + 1, 1), groups=x.shape[1])


def _solve(a: "torch.Tensor", b: "torch.Tensor") -> "torch.Tensor":
    """Batched small linear solves. On CPU through NumPy: torch's batched CPU LU fails under some thread
    settings ("pivots given to lu_solve must all be greater or equal to 1")."""
    import torch

    if a.device.type == "cpu":
        with _one_blas_thread():  # a few small systems: threads only wait on each other and on the encoder
            return torch.from_numpy(np.linalg.solve(a.double().numpy(), b.double().numpy()).astype(np.float32))
    return torch.linalg.solve(a, b)


@functools.lru_cache(maxsize=1)
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _one_blas_thread():
    """NumPy's BLAS limited to one thread for a moment: on the CPU path the small batched solves ran 4-6 times
    slower with two BLAS threads competing with torch's, OpenCV's and the encoder's threads."""
    return _blas_controller().limit(limits=1, user_api="blas")


def _sqdist(a: "torch.Tensor", b: "torch.Tensor") -> "torch.Tensor":
    """(B, M, 2), (B, N, 2) -> (B, M, N) squared distances (|a|^2 + |b|^2 - 2 a.b, clamped at 0)."""
    import torch

    aa = a.square().sum(-1, keepdim=True)
    bb = b.square().sum(-1)[:, None, :]
    return torch.baddbmm(aa + bb, a, b.transpose(1, 2), alpha=-2.0).clamp_min_(0.0)


CPU_WORKERS_MAX = 4  # threads rendering batches at once on a CPU


def cpu_workers() -> int:
    """Threads for CPU rendering: the cores this process may use, at most CPU_WORKERS_MAX."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(CPU_WORKERS_MAX, cores))


TPS_NODE_CHUNK_CPU = 192  # nodes per step on a CPU: the (B, chunk, N) kernel block stays in cache


def _tps_at_nodes(g: "torch.Tensor", p: "torch.Tensor", coef: "torch.Tensor") -> "torch.Tensor":
    """The thin-plate spline with centres p (B, N, 2) and coefficients coef (B, N + 3, 2) at the nodes
    g (G, 2) -> (B, G, 2). The squared distances come from one small matmul ([g, |g|^2, 1] . [-2p, 1, |p|^2]);
    on a CPU the nodes go in chunks so that each kernel block is made, used and dropped while in cache
    (the whole (B, G, N) block made in several passes over memory took most of the warp's time)."""
    import torch

    b, n, _ = p.shape
    ones = torch.ones_like(g[:, :1])
    g_aug = torch.cat([g, g.square().sum(-1, keepdim=True), ones], 1)  # (G, 4)
    p_aug = torch.cat([-2.0 * p, torch.ones_like(p[..., :1]), p.square().sum(-1, keepdim=True)], 2)  # (B, N, 4)
    p_aug = p_aug.transpose(1, 2).contiguous()  # (B, 4, N)
    w = coef[:, :n] * 0.5  # r^2 log r = (r2 log r2) / 2
    out = torch.cat([ones, g], 1) @ coef[:, n:]  # the affine part, (B, G, 2)
    chunk = TPS_NODE_CHUNK_CPU if g.device.type == "cpu" else len(g)
    for s in range(0, len(g), chunk):
        r2 = torch.matmul(g_aug[s : s + chunk], p_aug).clamp_min_(1e-12)  # (B, chunk, N)
        out[:, s : s + chunk] += r2.log().mul_(r2) @ w
    return out


def _tps_kernel(r2: "torch.Tensor") -> "torch.Tensor":
    """Thin-plate kernel r^2 log r (as r2 log r2 / 2), in place on r2's copy."""
    return r2.clamp_min(1e-12).log_().mul_(r2).mul_(0.5)



"""The embedded renderer: a dense warp of the portrait driven by landmark correspondences, plus a
synthesised mouth interior. No weights; the same torch code runs on CPU and GPU, in batches.

Per frame, the backward map (output pixel -> portrait pixel) is a thin-plate spline through control
points whose displacements are known:
- face points (MediaPipe contours and a spread of surface points) move as the retargeted landmarks do;
- a shell around the face (the face oval pushed outwards) moves rigidly with the head: hair, ears;
- a ring further out and the border of the working region stay put: torso and background.
The spline is evaluated on a coarse grid, upsampled, faded to zero at the border of the working
region (so the rest of the picture is untouched and no seam can show), and sampled bilinearly.
Where the target lips part further than the portrait's, the opening is filled with a mouth interior
(dark cavity, upper teeth, a hint of lower teeth when wide open) coloured from the portrait's lips and lit
by its skin, blended at the inner lip line.

    r = WarpRenderer(image, face, device="cpu")
    frames = r.render(targets[0:16])          # (16, H, W, 3) uint8
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from a2pcli import facemesh as fm
from a2pcli.eyelids import EYES, EyeLid
from a2pcli.eyelids import coverage as lid_coverage
from a2pcli.mouth import inner_lip_polygon, lip_and_skin_colour, lip_gap, open_mouth_gap
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
MOUTH_FEATHER = 0.7  # px: softness of the inner lip line
OPEN_FULL = 0.035  # face units of extra lip gap at which the synthesised interior is fully shown
SEAL_DARK = 0.55  # the line where closing lips meet, relative to the lip colour
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

    def feather(self, nodes: float = PATCH_FEATHER) -> np.ndarray:
        """(h, w) blend weight: 1 inside, 0 at the box border."""
        fx, fy = self.pixel_to_node
        d = np.minimum.reduce([fx, fy, self.nx - 1 - fx, self.ny - 1 - fy]) / nodes
        t = np.clip(d, 0, 1)
        return (t * t * (3 - 2 * t)).astype(np.float32)


class WarpRenderer:
    """Renders frames of one portrait for batches of retargeted landmarks (see the module doc).

    `plan` is the whole target sequence (or a representative part): it decides where the warp field needs
    fine nodes and how far the head travels."""

    def __init__(self, image: np.ndarray, face: PortraitFace, plan: FaceTargets, device: str = "cpu",
                 still_background: bool = True):
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
        self.maps = [p.pixel_to_node for p in self.patches]
        self.feathers = [None] + [p.feather() for p in self.patches[1:]]
        if self.gpu:
            self.upsample_grids = []
            for p, (fx, fy) in zip(self.patches, self.maps):
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
            self.feathers = [None] + [f[..., None] for f in self.feathers[1:]]
            self.window = window[..., None]
            self.ident = ident

        # mouth
        lip, lum = lip_and_skin_colour(self.image, face.landmarks)
        self.lip_rgb = torch.tensor(lip, device=dev, dtype=f32)
        self.teeth_rgb = torch.tensor([0.85, 0.82, 0.76], device=dev, dtype=f32) * float(np.clip(lum / 0.6, 0.4, 1.0))
        self.portrait_gap = float(lip_gap(face.canon[None])[0])
        # the parting of the portrait's inner lip lines per point (face units): on closed lips it is lip,
        # and the synthesised interior opens only between what parts beyond it
        self.seal = np.clip(face.canon[fm.LIPS_INNER_LOWER, 1] - face.canon[fm.LIPS_INNER_UPPER, 1], 0.0, None)
        # an open-mouthed portrait: where the closing lips would squeeze its interior into a thin band,
        # the band is painted over with lip colour (a warped mask of the interior tells where it lands)
        self.interior = None
        if open_mouth_gap(self.image, face) > 0:
            import cv2

            poly = inner_lip_polygon(face.landmarks)
            mask = np.zeros((roi.h, roi.w), np.float32)
            cv2.fillPoly(mask, [np.round((poly - self.origin) * 4).astype(np.int32)], 1.0, cv2.LINE_AA, shift=2)
            self.interior = cv2.GaussianBlur(mask, (0, 0), 1.0)
            if self.gpu:
                self.src_t = torch.cat([self.src_t, torch.from_numpy(self.interior).to(dev)[None, None]], 1)
        self.mouth_side = min(int(np.ceil(1.0 * unit)) | 1, roi.w, roi.h)

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
        g = self.grid[None] * u
        kg = _tps_kernel(_sqdist(g.expand(b, -1, -1), p))
        field = kg @ coef[:, :n] + torch.cat([torch.ones_like(g[..., :1]), g], 2) @ coef[:, n:]
        return field * self.unit  # (B, G, 2): the patches' nodes one after the other

    # ---- frames -----------------------------------------------------------------------------------

    def render(self, tgt: FaceTargets) -> np.ndarray:
        """(B, H, W, 3) uint8 whole frames."""
        from a2pcli.headpose import canonical

        canon = canonical(tgt.landmarks, tgt.rotation, tgt.translation, tgt.scale)
        gap = lip_gap(canon)
        tgt, lids = self._open_lids(tgt, canon)
        closing = None
        if self.interior is not None:
            closing = np.clip(1.0 - gap / self.portrait_gap, 0.0, 1.0).astype(np.float32)
        with self.torch.inference_mode():
            field = self.coarse_field(tgt)
            mouth = self._mouth_layer(tgt, gap)
            if self.gpu:
                return self._render_gpu(field, mouth, closing, lids)
            return self._render_cpu(field.numpy(), mouth, closing, lids)

    def _seal_colour(self) -> np.ndarray:
        return self.lip_rgb.cpu().numpy() * 255.0

    def _patch_fields(self, field):
        """Split (B, G, 2) node values into one (B, ny, nx, 2) grid per patch."""
        out = []
        for p, a, b in zip(self.patches, self.node_slices[:-1], self.node_slices[1:]):
            out.append(field[:, a:b].reshape(len(field), p.ny, p.nx, 2))
        return out

    def _render_cpu(self, field: np.ndarray, mouth, closing, lids: list) -> np.ndarray:
        import cv2

        roi = self.roi
        grids = self._patch_fields(field)
        frames = np.empty((len(field), self.size[1], self.size[0], 3), np.uint8)
        frames[:] = self.image[None]
        for i in range(len(field)):
            dense = cv2.remap(grids[0][i], *self.maps[0], cv2.INTER_LINEAR)
            for p, g, (mx, my), f in zip(self.patches[1:], grids[1:], self.maps[1:], self.feathers[1:]):
                sub = dense[p.y0 : p.y1, p.x0 : p.x1]
                sub += (cv2.remap(g[i], mx, my, cv2.INTER_LINEAR) - sub) * f
            dense *= self.window
            dense += self.ident
            region = frames[i, roi.y0 : roi.y1, roi.x0 : roi.x1]
            self._sample_cpu(dense, region)
            for w in lids:
                if w.frame == i:
                    x0, y0 = w.origin
                    w.pos = np.ascontiguousarray(dense[y0 : y0 + w.size[1], x0 : x0 + w.size[0]])
            if closing is not None and closing[i] > 0.01:
                m = cv2.remap(self.interior, dense, None, cv2.INTER_LINEAR)[..., None] * closing[i]
                seal = self._seal_colour() * (1 - (1 - SEAL_DARK) * m**4)
                region[:] = np.clip(region * (1 - m) + seal * m + 0.5, 0, 255).astype(np.uint8)
        self._lids_cpu(frames, lids)
        if mouth is not None:
            side = self.mouth_side
            for j, (i, x0, y0) in enumerate(zip(*mouth.where)):
                cut = frames[i, roi.y0 + y0 : roi.y0 + y0 + side, roi.x0 + x0 : roi.x0 + x0 + side]
                a = mouth.alpha[j].numpy()[..., None]
                c = mouth.colour[j].numpy().transpose(1, 2, 0)
                cut[:] = np.clip(cut * (1 - a) + c * a + 0.5, 0, 255).astype(np.uint8)
        return frames

    def _render_gpu(self, field, mouth, closing, lids: list) -> np.ndarray:
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
            out = torch.cat([out[:, :3] + (1 - out[:, 3:4]) * self.plate_t, out[:, 4:]], 1)
        self._lids_gpu(pos, out, lids)
        if closing is not None:
            m = out[:, 3:] * torch.from_numpy(closing).to(self.device).view(-1, 1, 1, 1)
            seal = self.lip_rgb.view(1, 3, 1, 1) * 255.0 * (1 - (1 - SEAL_DARK) * m**4)
            out = out[:, :3] * (1 - m) + seal * m
        if mouth is not None:
            side = self.mouth_side
            for j, (i, x0, y0) in enumerate(zip(*mouth.where)):
                cut = out[i, :, y0 : y0 + side, x0 : x0 + side]
                a = mouth.alpha[j][None]
                cut.mul_(1 - a).add_(mouth.colour[j] * a)
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
        for items, lid, _, (src, cover, tone, ink) in self._lid_layers(
                work, lambda items: self.torch.from_numpy(np.stack([w.pos for w in items]))):
            skins = np.stack([cv2.remap(self.crop, s, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                              for s in src.numpy()])
            skins = lid.paint(self.torch.from_numpy(skins.astype(np.float32)), tone, ink).numpy()
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

        for items, lid, _, (src, cover, tone, ink) in self._lid_layers(work, boxes):
            skins = torch.nn.functional.grid_sample(self.crop_t.expand(len(items), -1, -1, -1), src * scale - 1.0,
                                                    mode="bilinear", padding_mode="border", align_corners=True)
            skins = lid.paint(skins.permute(0, 2, 3, 1), tone, ink).permute(0, 3, 1, 2)
            for w, skin, a in zip(items, skins, cover):
                x0, y0 = w.origin
                sub = out[w.frame, :3, y0 : y0 + w.size[1], x0 : x0 + w.size[0]]
                sub.add_((skin - sub) * a[None])

    # ---- mouth ------------------------------------------------------------------------------------

    def _mouth_layer(self, tgt: FaceTargets, gap: np.ndarray):
        """The synthesised interior for frames whose lips part further than the portrait's, or None.
        Returns alpha (M, S, S) and colour (M, 3, S, S) 0..255 for M frames at working-region offsets."""
        torch = self.torch

        if self.interior is not None:
            return None  # the portrait shows its own mouth interior (teeth, a smile): the warp stretches it
        excess = np.clip((gap - self.portrait_gap) / OPEN_FULL, 0.0, 1.0)
        todo = np.nonzero(excess > 0.01)[0]
        if len(todo) == 0:
            return None
        dev, f32 = self.device, torch.float32
        side = self.mouth_side
        lm = tgt.landmarks[todo][:, :, :2] - self.origin
        centre = 0.5 * (lm[:, fm.LIPS_INNER_UPPER].mean(1) + lm[:, fm.LIPS_INNER_LOWER].mean(1))
        x0 = np.clip(np.round(centre[:, 0] - side / 2).astype(int), 0, self.roi.w - side)
        y0 = np.clip(np.round(centre[:, 1] - side / 2).astype(int), 0, self.roi.h - side)
        nb = len(todo)
        ar = torch.arange(side, device=dev, dtype=f32)
        py, px = torch.meshgrid(ar, ar, indexing="ij")
        org = torch.from_numpy(np.stack([x0, y0], 1).astype(np.float32)).to(dev)
        pix = (torch.stack([px, py], -1)[None] + org[:, None, None, :]).reshape(nb, -1, 2)  # (nb, P, 2)

        upper = torch.from_numpy(np.ascontiguousarray(lm[:, fm.LIPS_INNER_UPPER], np.float32)).to(dev)
        lower = torch.from_numpy(np.ascontiguousarray(lm[:, fm.LIPS_INNER_LOWER], np.float32)).to(dev)
        c_r = 0.5 * (upper[:, :1] + lower[:, :1])  # (nb, 1, 2)
        axis = 0.5 * (upper[:, -1:] + lower[:, -1:]) - c_r
        length = axis.norm(dim=2, keepdim=True).clamp_min(1.0)  # (nb, 1, 1)
        ax = axis / length
        nrm = torch.cat([-ax[..., 1:], ax[..., :1]], 2)  # points down the face

        def local(q):
            d = q - c_r
            return (d * ax).sum(-1) / length[..., 0], (d * nrm).sum(-1)

        uu, vu = local(upper)
        ul, vl = local(lower)
        pu, pv = local(pix)  # (nb, P)
        # lip that the portrait's inner lip lines enclose stays lip: each line is moved in by half of it
        half = torch.from_numpy(np.ascontiguousarray(0.5 * self.seal[None] * tgt.scale[todo, None], np.float32)).to(dev)
        v_up = _interp(pu, torch.cummax(uu, 1).values, vu + half)
        v_lo = _interp(pu, torch.cummax(ul, 1).values, vl - half)
        gap = (v_lo - v_up).clamp_min(0.0)
        f, unit = MOUTH_FEATHER, self.unit
        inside = torch.sigmoid((pv - v_up) / f) * torch.sigmoid((v_lo - pv) / f) * ((pu > 0) & (pu < 1)).to(f32)
        bump = torch.clamp(1 - ((pu - 0.5) / 0.42) ** 4, 0.0, 1.0)
        h_up = torch.clamp(0.4 * gap, max=0.07 * unit) * bump
        h_lo = torch.clamp(gap - 0.16 * unit, 0.0, 0.05 * unit) * bump
        teeth_up = torch.sigmoid((v_up + h_up - pv) / f) * (h_up > 0.5).to(f32)
        teeth_lo = torch.sigmoid((pv - (v_lo - h_lo)) / f) * (h_lo > 0.5).to(f32)
        depth = torch.clamp(torch.minimum(pv - v_up, v_lo - pv) / (0.5 * gap + 1.0), 0.0, 1.0)
        cavity = self.lip_rgb.view(1, 3, 1) * (0.32 - 0.22 * depth)[:, None]
        shade = 0.72 + 0.28 * torch.clamp((pv - v_up) / (0.35 * h_up + 1.0), 0.0, 1.0)  # shadow under the lip
        teeth = self.teeth_rgb.view(1, 3, 1) * (0.55 + 0.45 * bump)[:, None]
        colour = cavity * (1 - teeth_up[:, None]) + teeth * (shade * teeth_up)[:, None]
        colour = colour * (1 - teeth_lo[:, None]) + teeth * (0.8 * teeth_lo)[:, None]
        alpha = inside * torch.from_numpy(excess[todo].astype(np.float32)).to(dev)[:, None]
        return _MouthLayer(alpha.reshape(nb, side, side), (colour * 255.0).reshape(nb, 3, side, side),
                           (todo, x0, y0))


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
class _MouthLayer:
    alpha: object  # torch (M, S, S)
    colour: object  # torch (M, 3, S, S)
    where: tuple  # frame indices in the batch, x0, y0 in the working region


def _solve(a: "torch.Tensor", b: "torch.Tensor") -> "torch.Tensor":
    """Batched small linear solves. On CPU through NumPy: torch's batched CPU LU fails under some thread
    settings ("pivots given to lu_solve must all be greater or equal to 1")."""
    import torch

    if a.device.type == "cpu":
        return torch.from_numpy(np.linalg.solve(a.double().numpy(), b.double().numpy()).astype(np.float32))
    return torch.linalg.solve(a, b)


def _sqdist(a: "torch.Tensor", b: "torch.Tensor") -> "torch.Tensor":
    """(B, M, 2), (B, N, 2) -> (B, M, N) squared distances (|a|^2 + |b|^2 - 2 a.b, clamped at 0)."""
    import torch

    aa = a.square().sum(-1, keepdim=True)
    bb = b.square().sum(-1)[:, None, :]
    return torch.baddbmm(aa + bb, a, b.transpose(1, 2), alpha=-2.0).clamp_min_(0.0)


def _tps_kernel(r2: "torch.Tensor") -> "torch.Tensor":
    """Thin-plate kernel r^2 log r (as r2 log r2 / 2), in place on r2's copy."""
    return r2.clamp_min(1e-12).log_().mul_(r2).mul_(0.5)


def _interp(x: "torch.Tensor", xp: "torch.Tensor", fp: "torch.Tensor") -> "torch.Tensor":
    """Batched piecewise-linear interpolation, clamped at the ends. x: (B, P); xp, fp: (B, K), xp ascending."""
    import torch

    k = xp.shape[1]
    i = torch.searchsorted(xp.contiguous(), x.contiguous()).clamp(1, k - 1)
    x0, x1 = xp.gather(1, i - 1), xp.gather(1, i)
    f0, f1 = fp.gather(1, i - 1), fp.gather(1, i)
    t = ((x - x0) / (x1 - x0).clamp_min(1e-6)).clamp(0.0, 1.0)
    return f0 + t * (f1 - f0)

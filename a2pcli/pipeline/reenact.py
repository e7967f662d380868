"""vid2vid and pose2vid: portrait + driving motion -> video. The two differ only in the driving signal.

    result = vid2vid("face.png", "actor.mp4", "out.mp4", DriveJob())           # its audio kept
    result = pose2vid("face.png", "actor.pose", "out.mp4", DriveJob(), audio="speech.wav")
    result = reenact(portrait, motion, "out.mp4", DriveJob())                  # a loaded Portrait and Motion

The driving face's change since `retarget.ref_frame` is applied to the portrait (retarget.retarget), resampled
to the output frame rate, cut to the audio when there is one, rendered and encoded.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from a2pcli.audio import AudioTrack
from a2pcli.errors import InputError, NoFaceError
from a2pcli.motion import Motion
from a2pcli.pipeline.items import Item, run_items
from a2pcli.pipeline.models import Models
from a2pcli.pipeline.options import POSE_SUFFIXES, DriveJob, check_drive_job, check_input_file, resolved
from a2pcli.pipeline.plan import check_output, name_videos
from a2pcli.pipeline.portrait import Portrait, load_portrait
from a2pcli.pipeline.renderers import make_renderer
from a2pcli.pipeline.results import RunResult, VideoResult
from a2pcli.pipeline.write import write_output
from a2pcli.progress import Reporter
from a2pcli.retarget import FaceTargets, RetargetOptions

MOTION_MAGIC = (b"PK", b"\x93NUMPY")  # a .pose (npz) archive, an .npy template: recognised by content


def driving_motion(source: Path, reporter: Reporter | None = None) -> tuple[Motion, list[str]]:
    """A .pose file, an AniPortrait .npy template, or a video (landmarks extracted now), starting at the first
    frame that has a face; and notes."""
    from a2pcli.media import is_image

    reporter = reporter or Reporter()
    with open(source, "rb") as f:
        magic = f.read(6)
    if magic.startswith(MOTION_MAGIC[0]) or magic == MOTION_MAGIC[1]:
        from a2pcli.motion import load_motion

        motion = load_motion(source)
    else:
        if is_image(source):
            raise InputError("the driving input is an image", subject=str(source),
                             remedy="pass a video, a .pose file, or an AniPortrait .npy template")
        from a2pcli.extract import extract_motion

        motion, _ = extract_motion(source, reporter=reporter)
    return from_first_face(motion, source)


def from_first_face(motion: Motion, source) -> tuple[Motion, list[str]]:
    valid = np.asarray(motion.valid, bool)
    if not valid.any():
        raise NoFaceError("no frame of the driving motion has a face", subject=str(source),
                          remedy="use a driving video where a face is visible")
    first = int(np.argmax(valid))
    if first == 0:
        return motion, []
    note = f"the driving motion's first {first} frames have no face: motion starts at frame {first}"
    return motion.slice(first, len(motion)), [note]


def motion_targets(portrait: Portrait, motion: Motion, options: RetargetOptions = RetargetOptions(),
                   reference=None) -> FaceTargets:
    """The portrait's landmarks in every frame of `motion` (at its frame rate): retarget.retarget on the
    portrait's face. `reference`: headpose.FaceReference (default: the shipped one)."""
    from a2pcli.headpose import load_reference
    from a2pcli.retarget import retarget

    return retarget(portrait.face, motion, options, (reference or load_reference()).mean)


def drive_targets(portrait: Portrait, motion: Motion, job: DriveJob, reference,
                  audio: AudioTrack | None = None) -> tuple[FaceTargets, float, list[str]]:
    """The portrait's landmarks in every output frame, the output frame rate, and notes: `motion` retargeted,
    resampled to `job.fps` (None: the motion's own), cut to the shorter of motion and audio."""
    notes = []
    tgt = motion_targets(portrait, motion, job.retarget, reference)
    fps = float(job.fps or motion.fps)
    n = len(tgt) if fps == motion.fps else max(1, int(round(len(tgt) * fps / motion.fps)))
    if audio is not None:
        n_audio = max(1, int(np.floor(audio.duration_s * fps + 1e-6)))
        if n_audio < n:
            notes.append(f"the audio ({audio.duration_s:.2f} s) is shorter than the motion ({n / fps:.2f} s): "
                         f"the video is cut to the audio")
            n = n_audio
        elif n_audio > n:
            notes.append(f"the audio ({audio.duration_s:.2f} s) is longer than the motion ({n / fps:.2f} s): "
                         f"the audio is cut to the video")
    tgt = tgt.resample(n, motion.fps, fps) if fps != motion.fps else tgt.slice(0, n)
    return tgt, fps, notes


def reenact(portrait: Portrait, motion: Motion, output: Path | str, job: DriveJob = DriveJob(), *,
            audio: AudioTrack | None = None, inputs: dict | None = None, command: str = "pose2vid",
            notes: tuple[str, ...] | list[str] = (), reporter: Reporter | None = None,
            models: Models | None = None) -> VideoResult:
    """Render `motion` on a loaded `portrait` into the video `output` (written atomically), with `audio` muxed.
    `inputs` (by name) are what the result and the sidecar name; `notes` go first in the result's."""
    from a2pcli.motion import checked_motion

    check_drive_job(job)
    job = resolved(job)
    motion = checked_motion(motion, "the driving motion")
    reporter = reporter or Reporter()
    models = models or Models()
    renderer = make_renderer(job.render, job.video, models)
    output = Path(output)
    inputs = inputs or {"portrait": portrait.source}

    def render(tmp: Path) -> dict:
        t0 = time.perf_counter()
        tgt, fps, drive_notes = drive_targets(portrait, motion, job, models.reference(), audio)
        summary = renderer.render(portrait, tgt, fps, tmp, audio, reporter, job.video.frames_dir)
        elapsed = round(time.perf_counter() - t0, 3)
        return {**summary, "notes": [*notes, *portrait.notes, *drive_notes, *summary["notes"]], "elapsed_s": elapsed,
                "frames_per_s": round(summary["frames"] / max(elapsed, 1e-9), 1)}

    summary = write_output(output, render, command, inputs, job)
    return VideoResult.from_summary(output, inputs, renderer.name, summary)


def _audio_track(path: Path) -> AudioTrack:
    from a2pcli.audio import probe_audio

    track = probe_audio(path)
    if track is None:
        raise InputError("has no audio stream", subject=str(path), remedy="pass a file with sound")
    return track


def _driving_audio(driving: Path, motion: Motion) -> tuple[AudioTrack | None, list[str]]:
    """The driving video's own sound (none for a .pose, a template, a silent or soundless video)."""
    from a2pcli.audio import probe_audio
    from a2pcli.media import is_image

    if motion.frame_size == (0, 0) or is_image(driving) or driving.suffix.lower() in POSE_SUFFIXES:
        return None, []
    track = probe_audio(driving)
    if track is not None and not track.has_sound:
        return None, ["the driving video's audio is silent: the output has no audio"]
    return track, []


def drive_inputs(command: str, portrait, driver, audio=None) -> dict:
    """The inputs by name: portrait, driving (vid2vid) or motion (pose2vid), audio (pose2vid --audio)."""
    if isinstance(portrait, Portrait):
        portrait = portrait.image
    found = {"portrait": portrait if isinstance(portrait, np.ndarray) else Path(portrait)}
    if not isinstance(driver, Motion):
        found["driving" if command == "vid2vid" else "motion"] = Path(driver)
    if audio is not None:
        found["audio"] = Path(audio)
    return found


def check_drive(command: str, portrait, driver, output: Path, job: DriveJob, audio=None) -> None:
    """The input files exist and the output may be written: before any work."""
    check_drive_job(job)
    if not isinstance(portrait, (np.ndarray, Portrait)):
        check_input_file(Path(portrait), "portrait")
    if not isinstance(driver, Motion):
        if command == "vid2vid":
            check_input_file(Path(driver), "driving video")
        else:
            check_input_file(Path(driver), "motion file", POSE_SUFFIXES)
    if audio is not None:
        check_input_file(Path(audio), "audio")
    check_output(output, drive_inputs(command, portrait, driver, audio), job.output, job.video.frames_dir)


def _drive(command: str, portrait, driver, output: Path, job: DriveJob, audio, reporter: Reporter,
           models: Models | None) -> VideoResult:
    check_drive(command, portrait, driver, output, job, audio)
    inputs = drive_inputs(command, portrait, driver, audio)
    track = _audio_track(Path(audio)) if audio is not None else None
    if isinstance(driver, Motion):
        from a2pcli.motion import checked_motion

        motion, notes = from_first_face(checked_motion(driver, "the driving motion"), "the driving motion")
    else:
        motion, notes = driving_motion(Path(driver), reporter)
        if command == "vid2vid" and track is None:
            track, more = _driving_audio(Path(driver), motion)
            notes += more
    if not isinstance(portrait, Portrait):
        portrait = load_portrait(portrait, job.portrait, reporter)
    return reenact(portrait, motion, output, job, audio=track, inputs=inputs, command=command, notes=notes,
                   reporter=reporter, models=models)


def vid2vid(portrait, driving, output: Path | str, job: DriveJob = DriveJob(), *, reporter: Reporter | None = None,
            models: Models | None = None) -> VideoResult:
    """`portrait` (an image file, an (H, W, 3) uint8 RGB array or a loaded Portrait) moves like the face in `driving`
    (a video, its .pose from extract_pose, or a Motion); the driving video's sound is kept. Raises an A2PError
    subclass naming the input at fault."""
    return _drive("vid2vid", portrait, driving, Path(output), job, None, reporter or Reporter(), models)


def pose2vid(portrait, motion, output: Path | str, job: DriveJob = DriveJob(), *, audio: Path | str | None = None,
             reporter: Reporter | None = None, models: Models | None = None) -> VideoResult:
    """`portrait` follows a stored motion (a .pose file, an AniPortrait .npy head-pose template, or a Motion), with
    `audio` (a file with sound) muxed; the shorter of motion and audio decides the length."""
    return _drive("pose2vid", portrait, motion, Path(output), job, audio, reporter or Reporter(), models)


def reenact_one(command: str, portrait: Path, driver: Path, output: Path | None, job: DriveJob = DriveJob(), *,
                audio: Path | None = None, reporter: Reporter | None = None, models: Models | None = None) -> RunResult:
    """The CLI's form: one item (`<portrait>_<driver>.mp4` beside the portrait unless `output` says otherwise),
    its failure reported in the run's result instead of raised."""
    reporter = reporter or Reporter()
    out = name_videos([(Path(portrait), Path(driver))], output)[0]
    check_drive_job(job)
    return run_items([Item(drive_inputs(command, portrait, driver, audio), out)],
                     lambda item: _drive(command, portrait, driver, out, job, audio, reporter, models), reporter)

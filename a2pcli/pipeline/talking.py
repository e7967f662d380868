"""audio2video: portrait + speech -> talking-head video.

    result = audio2video("face.png", "speech.wav", "talk.mp4", TalkJob(seed=3))
    run = audio2video_pairs([a.png, b.png], [one.wav, two.wav], Path("outdir"), job)   # every pair

Per speech input: read the audio, turn it into motion (audio2motion's lips and audio2pose's head motion, or
AniPortrait's audio2mesh and audio2pose); per portrait: find its face; per pair: the target landmarks (lips,
blinks, breathing, head motion: talk.talk_targets), rendered and encoded. In a run of several pairs each speech
input is read and turned into motion once, each portrait found once, the models loaded once.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from a2pcli.audio import SAMPLE_RATE, AudioTrack
from a2pcli.errors import A2PError, InputError
from a2pcli.pipeline.items import Item, run_items
from a2pcli.pipeline.models import Models
from a2pcli.pipeline.options import MotionSource, TalkJob, check_input_file, check_talk_job, resolved
from a2pcli.pipeline.plan import check_output, frames_dir_for, name_videos
from a2pcli.pipeline.portrait import Portrait, load_portrait
from a2pcli.pipeline.renderers import make_renderer
from a2pcli.pipeline.results import RunResult, VideoResult
from a2pcli.pipeline.write import write_output
from a2pcli.progress import Reporter
from a2pcli.retarget import FaceTargets

COMMAND = "audio2video"


@dataclass
class Speech:
    """One speech input, read and turned into motion: what every portrait that speaks it shares."""

    track: AudioTrack  # the audio stream muxed into the video
    samples: np.ndarray  # (N,) float32 mono at SAMPLE_RATE
    frames: int  # video frames it lasts at the job's fps
    lips: np.ndarray | None = None  # (frames, 478, 3) audio2motion expression deltas (motion a2p)
    head: np.ndarray | None = None  # (frames, 5) audio2pose head motion (motion a2p, unless --still, --pose, rule)
    aniportrait: object = None  # aniportrait.motion.SpeechMotion (motion aniportrait)
    notes: list[str] = field(default_factory=list)


class TalkRun:
    """audio2video for any number of pairs, sharing models, speech and portraits between them."""

    def __init__(self, job: TalkJob, reporter: Reporter | None = None, models: Models | None = None):
        check_talk_job(job)
        self.job = resolved(job)
        self.reporter = reporter or Reporter()
        self.models = models or Models()
        self.renderer = make_renderer(self.job.render, self.job.video, self.models)
        self._speech: tuple[object, Speech | A2PError] | None = None  # the last speech input read
        self._portraits: dict[object, Portrait | A2PError] = {}
        self._template = None
        self._files = contextlib.ExitStack()  # temporary wav files of speech given as samples

    def close(self) -> None:
        self._files.close()

    def prepare(self) -> None:
        """Load what every pair needs (the speech models, the --pose template) before the first pair."""
        if self.job.motion == MotionSource.a2p:
            from a2pcli.talk import uses_head_model

            self.reporter.stage("load the speech model", total=1)
            if self.job.talk.template is not None:  # first: a bad file is refused before the model loads
                from a2pcli.motion import load_motion

                self._template = load_motion(self.job.talk.template)
            self.models.audio2motion(self.job.model)
            if uses_head_model(self.job.talk):
                self.models.audio2pose(head_model_name(self.job.talk.head))
            self.reporter.advance()
            self.reporter.end_stage()

    # -- the stages --

    def speech(self, audio) -> Speech:
        """`audio` (a file, or (N,) float32 samples at SAMPLE_RATE) read and turned into motion, once."""
        if self._speech is None or not _same(self._speech[0], audio):
            try:
                self._speech = (audio, self._read_speech(audio))
            except A2PError as exc:
                self._speech = (audio, exc)
        found = self._speech[1]
        if isinstance(found, A2PError):
            raise found
        return found

    def _read_speech(self, audio) -> Speech:
        from a2pcli.audio import (
            SPEECH_ARRAY_NAME,
            check_speech_length,
            load_audio,
            probe_audio,
            speech_samples,
            write_wav,
        )

        job, reporter = self.job, self.reporter
        reporter.stage("read the audio", total=1)
        if isinstance(audio, np.ndarray):
            samples = speech_samples(audio)
            check_speech_length(samples, SPEECH_ARRAY_NAME)
            folder = Path(self._files.enter_context(tempfile.TemporaryDirectory(prefix="a2p-speech-")))
            track = probe_audio(write_wav(folder / "speech.wav", samples))
        else:
            track = probe_audio(Path(audio))
            if track is None:
                raise InputError("has no audio stream", subject=str(audio),
                                 remedy="pass a speech file or a video with sound")
            samples = load_audio(Path(audio), SAMPLE_RATE)
            check_speech_length(samples, audio)
        n = max(1, int(round(len(samples) / SAMPLE_RATE * job.fps)))
        reporter.advance()
        speech = Speech(track, samples, n)
        if job.motion == MotionSource.aniportrait:  # AniPortrait's audio2mesh + audio2pose
            from a2pcli.aniportrait.motion import load_pose_template, speech_motion

            t = job.talk
            reporter.stage("speech to motion", total=1)
            speech.aniportrait = speech_motion(
                samples, job.render.diffusion.weights, job.seed,
                load_pose_template(t.template) if t.template is not None else None, t.still, t.pose_scale,
                t.expression_scale, job.render.device, reporter)
            speech.notes = list(speech.aniportrait.notes)
            if t.template is not None and t.template_region != "pose":
                speech.notes.append("--motion aniportrait takes only the head pose from --pose: --template-region "
                                    "is ignored")
        else:
            from a2pcli import features
            from a2pcli.talk import uses_head_model

            reporter.stage("speech to motion", total=1)
            logmel = features.log_mel(samples)  # once, for both models
            speech.lips = self.models.audio2motion(job.model).predict(samples, job.fps, n, logmel=logmel)
            if uses_head_model(job.talk):
                head = self.models.audio2pose(head_model_name(job.talk.head))
                speech.head = head.generate(samples, job.fps, n, seed=job.seed, logmel=logmel)
        reporter.advance()
        return speech

    def portrait(self, source, keep: bool = False) -> Portrait:
        """`source` (a file, an image array, or a Portrait already loaded) at its output framing, found once
        when `keep`."""
        if isinstance(source, Portrait):
            return source
        key = id(source) if isinstance(source, np.ndarray) else Path(source)
        found = self._portraits.get(key)
        if found is None:
            try:
                found = load_portrait(source, self.job.portrait, self.reporter)
            except A2PError as exc:
                found = exc
            if keep:
                self._portraits[key] = found
        if isinstance(found, A2PError):
            raise found
        return found

    def targets(self, portrait: Portrait, speech: Speech):
        """The portrait's landmarks in every frame of `speech`, and notes."""
        job = self.job
        if speech.aniportrait is not None:
            h, w = portrait.image.shape[:2]
            return speech.aniportrait.targets(portrait.face.landmarks, w, h, job.fps, speech.frames), speech.notes
        from a2pcli.mouth import closed_rest, open_mouth_gap
        from a2pcli.talk import talk_targets

        a2m = self.models.audio2motion(job.model)
        gap = open_mouth_gap(portrait.image, portrait.face)
        rest = closed_rest(gap, a2m.opening_shape(), portrait.face.canon)
        return talk_targets(portrait.face, speech.samples, job.fps, speech.frames, speech.lips, job.talk,
                            self.models.reference().mean, self._template, rest, speech.head, image=portrait.image)

    # -- one pair --

    def render(self, portrait_source, audio, output: Path, keep_portrait: bool = False,
               frames_dir: Path | None = None) -> VideoResult:
        portrait = self.portrait(portrait_source, keep_portrait)  # the portrait first: the first problem is reported
        speech = self.speech(audio)
        tgt, notes = self.targets(portrait, speech)
        inputs = talk_inputs(portrait_source, audio, self.job)

        def render(tmp: Path) -> dict:
            summary = self.renderer.render(portrait, tgt, self.job.fps, tmp, speech.track, self.reporter, frames_dir)
            return {**summary, "notes": portrait.notes + notes + summary["notes"]}

        summary = write_output(output, render, COMMAND, inputs, self.job)
        return VideoResult.from_summary(output, talk_inputs(portrait_source, audio), self.renderer.name, summary)


def head_model_name(head: str) -> str | None:
    """TalkOptions.head -> what audio2pose.load_model takes (None: the shipped model)."""
    from a2pcli.talk import HEAD_MODEL

    return None if head == HEAD_MODEL else head


def _input(source):
    if isinstance(source, Portrait):
        return source.image
    return source if isinstance(source, np.ndarray) else Path(source)


def talk_inputs(portrait, audio, job: TalkJob | None = None) -> dict:
    """A pair's inputs by name; with `job`, also the files its options name (the --pose template): what its
    checks and its sidecar cover."""
    found = {"portrait": _input(portrait), "audio": _input(audio)}
    if job is not None and job.talk.template is not None:
        found["pose"] = Path(job.talk.template)
    return found


def check_pair(portrait, audio, output: Path, job: TalkJob, frames_dir: Path | None = None) -> None:
    """A pair's input files exist and its output may be written: before any work."""
    if not isinstance(portrait, (np.ndarray, Portrait)):
        check_input_file(Path(portrait), "portrait")
    if not isinstance(audio, np.ndarray):
        check_input_file(Path(audio), "audio")
    check_output(output, talk_inputs(portrait, audio, job), job.output, frames_dir)


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return a is b
    return Path(a) == Path(b)


def talk_motion(portrait, audio, job: TalkJob = TalkJob(), *, reporter: Reporter | None = None,
                models: Models | None = None) -> tuple[Portrait, FaceTargets, list[str]]:
    """What audio2video renders, without rendering it: the portrait at its output framing, its landmarks and head
    pose in every frame of the speech (retarget.FaceTargets), and notes."""
    run = TalkRun(job, reporter, models)
    try:
        run.prepare()
        found = run.portrait(portrait)
        speech = run.speech(audio)
        tgt, notes = run.targets(found, speech)
        return found, tgt, notes
    finally:
        run.close()


def audio2video(portrait, audio, output: Path | str, job: TalkJob = TalkJob(), *, reporter: Reporter | None = None,
                models: Models | None = None) -> VideoResult:
    """`portrait` (an image file, an (H, W, 3) uint8 RGB array, or a loaded Portrait) speaks `audio` (a file ffmpeg
    decodes, or (N,) float32 mono samples at audio.SAMPLE_RATE): a video at `output`, written atomically. Raises an
    A2PError subclass (errors.py) naming the input at fault. Pass one `models` to several calls to load the
    models once."""
    output = Path(output)
    run = TalkRun(job, reporter, models)
    try:
        frames_dir = run.job.video.frames_dir
        check_pair(portrait, audio, output, run.job, frames_dir)
        run.prepare()
        return run.render(portrait, audio, output, frames_dir=frames_dir)
    finally:
        run.close()


def audio2video_pairs(portraits: list[Path], audios: list[Path], output: Path | None, job: TalkJob = TalkJob(), *,
                      reporter: Reporter | None = None, models: Models | None = None) -> RunResult:
    """Every portrait speaks every audio file, one video each (`<portrait>_<audio>.mp4` beside the portrait, in
    the `output` directory, or `output` itself for one pair). A failing pair is reported and the others are made."""
    pairs = [(Path(p), Path(a)) for a in audios for p in portraits]
    outputs = name_videos(pairs, output)
    several = len(pairs) > 1
    run = TalkRun(job, reporter, models)
    items = [Item({"portrait": p, "audio": a}, out) for (p, a), out in zip(pairs, outputs)]

    def frames_dir(item: Item) -> Path | None:
        return frames_dir_for(run.job.video.frames_dir, item.output, several)

    def check(item: Item) -> None:
        check_pair(item.inputs["portrait"], item.inputs["audio"], item.output, run.job, frames_dir(item))

    def make(item: Item) -> VideoResult:
        return run.render(item.inputs["portrait"], item.inputs["audio"], item.output, keep_portrait=len(audios) > 1,
                          frames_dir=frames_dir(item))

    try:
        return run_items(items, make, run.reporter, check, before=run.prepare)
    finally:
        run.close()

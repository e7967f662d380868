"""Where each output of a run goes, and whether it may be written there, decided before any work.

    name_videos([(portrait, driver), ...], -o)  -> <portrait>_<driver>.mp4 beside the portrait, in an -o
                                                   directory, or -o itself (one pair only)
    name_poses([video, ...], -o)                -> <video>.pose likewise
    check_output(output, inputs, job.output, frames_dir)   the rules every output obeys

The rules: an output is never one of the run's inputs, nor a link to one (not even with --overwrite); an
output that exists is replaced only with --overwrite, and so are its sidecar (`--meta`) and the frames
already in a `--frames-dir`; two items never write the same file.
"""

from __future__ import annotations

import os
from pathlib import Path

from a2pcli.encode import FRAME_NAME
from a2pcli.errors import InputError, OutputError
from a2pcli.pipeline.options import OutputOptions
from a2pcli.pipeline.sidecar import sidecar_path

VIDEO_SUFFIX = ".mp4"
POSE_SUFFIX = ".pose"


def _is_dir_arg(output: Path) -> bool:
    return output.is_dir() or str(output).endswith(("/", os.sep))


def _unique(outputs: list[Path], labels: list[str]) -> None:
    seen: dict[Path, str] = {}
    for out, label in zip(outputs, labels):
        key = Path(os.path.abspath(out))
        if key in seen:
            raise InputError(f"{seen[key]} and {label} would both write {out.name}", subject=str(out),
                             remedy="rename one of the inputs, or render them in separate runs")
        seen[key] = label


def name_videos(pairs: list[tuple[Path, Path]], output: Path | None) -> list[Path]:
    """One video per (portrait, driver) pair: `<portrait>_<driver>.mp4` beside the portrait, in an -o
    directory, or -o itself (one pair only). Two pairs that would write the same file are an error."""
    names = [f"{Path(p).stem}_{Path(d).stem}{VIDEO_SUFFIX}" for p, d in pairs]
    if output is None:
        outs = [Path(p).with_name(n) for (p, _), n in zip(pairs, names)]
    elif Path(output).is_dir():
        outs = [Path(output) / n for n in names]
    elif len(pairs) > 1:
        what = "portraits" if len({d for _, d in pairs}) == 1 else "portraits or audio files"
        raise InputError(f"with several {what}, -o must be an existing directory", subject=str(output))
    else:
        outs = [Path(output)]
    _unique(outs, [f"{p} with {d}" for p, d in pairs])
    return outs


def name_poses(inputs: list[Path], output: Path | None) -> list[Path]:
    """Where each input's .pose goes: beside it, into the -o directory, or the -o file (one input)."""
    if output is None:
        outs = [Path(p).with_suffix(POSE_SUFFIX) for p in inputs]
    elif _is_dir_arg(Path(output)):
        if not Path(output).is_dir():
            raise OutputError("output directory does not exist", subject=str(output), remedy="create it first")
        outs = [Path(output) / (Path(p).stem + POSE_SUFFIX) for p in inputs]
    elif len(inputs) > 1:
        raise InputError("with several inputs, -o must be an existing directory", subject=str(output),
                         remedy="mkdir it first")
    else:
        outs = [Path(output)]
    _unique(outs, [str(p) for p in inputs])
    return outs


def frames_dir_for(frames_dir: Path | None, output: Path, several: bool) -> Path | None:
    """The --frames-dir of one output: the folder itself, or with several outputs a folder per output in it."""
    if frames_dir is None:
        return None
    return Path(frames_dir) / Path(output).stem if several else Path(frames_dir)


def _same_file(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def _not_an_input(path: Path, inputs: dict, what: str) -> None:
    for name, src in inputs.items():
        if isinstance(src, (str, os.PathLike)) and _same_file(path, Path(src)):
            raise OutputError(f"{what} would replace the {name} it is made from", subject=str(path),
                              remedy="choose another output name (-o): an input is never overwritten")


def check_frames_dir(frames_dir: Path, inputs: dict, overwrite: bool) -> None:
    if frames_dir.exists() and not frames_dir.is_dir():
        raise OutputError("--frames-dir names a file, expected a folder", subject=str(frames_dir))
    if not frames_dir.is_dir():
        return
    frames = sorted(p.name for p in frames_dir.iterdir() if FRAME_NAME.match(p.name))
    for name, src in inputs.items():
        if isinstance(src, (str, os.PathLike)) and FRAME_NAME.match(Path(src).name) and \
                _same_file(Path(src).parent, frames_dir):
            raise OutputError(f"the frames would replace the {name} {Path(src).name}", subject=str(frames_dir),
                              remedy="choose another --frames-dir")
    if frames and not overwrite:
        raise OutputError(f"--frames-dir already holds frames ({frames[0]}...)", subject=str(frames_dir),
                          remedy="pass --overwrite to replace them, or choose an empty folder")


def check_output(output: Path, inputs: dict, opts: OutputOptions, frames_dir: Path | None = None) -> None:
    """The rules every output obeys (module docstring), checked before any work. `inputs`: every file the
    output is made from, by name (image or audio arrays are skipped)."""
    from a2pcli.outputs import check_output as check_writable

    output = Path(output)
    _not_an_input(output, inputs, "the output")
    check_writable(output, opts.overwrite)
    if opts.meta:
        meta = sidecar_path(output)
        _not_an_input(meta, inputs, "the --meta sidecar")
        if meta.is_dir():
            raise OutputError("is a directory, expected the --meta sidecar's name", subject=str(meta))
        if (meta.exists() or meta.is_symlink()) and not opts.overwrite:
            raise OutputError("the --meta sidecar already exists", subject=str(meta),
                              remedy="pass --overwrite to replace it")
    if frames_dir is not None:
        check_frames_dir(Path(frames_dir), inputs, opts.overwrite)

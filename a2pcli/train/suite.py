"""`a2p train all`: every component of a2pcli.train.components trained into <models>/<name>/.

    train_all(AllOptions(...), reporter) -> summary dict

  1. Checks before any work: the options, the data folders, the models folder, --gpus.
  2. The data, once, in this process: each component's `prepare` fills the shared data cache
     (a2pcli.train.clips), which the trainers then read. A component whose data cannot be prepared (no usable
     clip for it) is reported as failed and not trained; the others go on.
  3. The training, each component in a process of its own (a2pcli.train.worker): with --gpus, one component
     per GPU at a time (the process sees only its GPU, through CUDA_VISIBLE_DEVICES), the next component
     starting on the first GPU that frees; otherwise one after the other on --device. Their progress comes
     back as JSON lines and is shown under the component's name; a component that fails is reported and the
     others finish.
The summary holds each component's status, device, times (prepare and train seconds), output folder and its
own summary (or its error and exit code).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from a2pcli.errors import EXIT_FAILED, A2PError, EnvironmentProblem, InputError
from a2pcli.progress import Reporter
from a2pcli.train import core
from a2pcli.train.components import COMPONENTS, Component, load_entry
from a2pcli.train.worker import options_to_json

STDERR_TAIL = 20  # lines of a component process's other stderr output kept, to explain a crash


@dataclass(frozen=True)
class AllOptions:
    """What the user chose for `a2p train all`."""

    data: tuple[Path, ...]
    output: Path  # the models folder: one folder per component in it
    preset: str = "default"
    val_speakers: tuple[str, ...] | None = None
    seed: int = 0
    device: str = "auto"  # where the components train one after the other (without gpus)
    gpus: str | None = None  # "0,2" or "all": one component per GPU at a time
    resume: bool = False  # continue each component from <models>/<name>/checkpoints/last.pt when it is there
    only: tuple[str, ...] | None = None  # these components (default: every one)


@dataclass(frozen=True)
class Slot:
    """Where a component trains: the --device of its process and what its environment adds."""

    label: str  # for messages: "cpu", "GPU 2"
    device: str
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    """One component's result."""

    status: str = "waiting"  # "ok" or "failed" in the end
    stage: str = ""  # where it failed: "prepare" or "train"
    device: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    data: dict | None = None  # what its `prepare` found (e.g. clips, seconds)
    summary: dict | None = None
    error: str | None = None
    exit_code: int = 0


def train_all(opts: AllOptions, reporter: Reporter | None = None,
              components: dict[str, Component] | None = None) -> dict:
    """Check, prepare the data once, train every component; returns the summary (see the module docstring).
    InputError/EnvironmentProblem before any work when the options cannot run; failures of single components
    are in the summary ("failed": their names)."""
    reporter = reporter or Reporter()
    t0 = time.perf_counter()
    chosen = select_components(opts, COMPONENTS if components is None else components)
    check_all_options(opts, chosen)
    slots = plan_slots(opts)
    created = _make_folder(opts.output)
    outcomes = {name: Outcome() for name in chosen}
    try:
        for name, comp in chosen.items():
            prepare_component(name, comp, component_options(opts, name, opts.device), outcomes[name], reporter)
        jobs = [(n, chosen[n]) for n in chosen if outcomes[n].status != "failed"]
        run_jobs(jobs, opts, slots, outcomes, reporter)
    finally:
        if created is not None and not any(o.status == "ok" for o in outcomes.values()):
            _remove_empty(created, opts.output)
    return summarise(opts, outcomes, slots, time.perf_counter() - t0)


# --- checks ------------------------------------------------------------------------------------------------


def select_components(opts: AllOptions, components: dict[str, Component]) -> dict[str, Component]:
    if core.launch_from_env().world_size > 1:
        raise InputError("`train all` starts its own processes", subject="torchrun",
                         remedy="run `a2p train all` without torchrun (use torchrun for one component)")
    if opts.only is None:
        return dict(components)
    unknown = [n for n in opts.only if n not in components]
    if unknown or not opts.only:
        raise InputError(f"no component {', '.join(unknown) or '(none named)'}", subject="--only",
                         remedy=f"name some of: {', '.join(components)}")
    return {n: c for n, c in components.items() if n in opts.only}


def check_all_options(opts: AllOptions, chosen: dict[str, Component]) -> None:
    """The options every component gets, checked against each component; the models folder."""
    lacking = [n for n, c in chosen.items() if opts.preset not in c.presets]
    if lacking:
        raise InputError(f"component(s) {', '.join(lacking)} have no preset {opts.preset!r}", subject="--preset",
                         remedy="use a preset every component has (tiny, default)")
    for name, comp in chosen.items():
        core.check_options(component_options(opts, name, opts.device), comp.presets)
    core.check_output_folder(opts.output)
    for name in chosen:
        if (Path(opts.output) / name).exists() and not (Path(opts.output) / name).is_dir():
            raise InputError("is a file; each component's model is a folder", subject=str(Path(opts.output) / name),
                             remedy="choose another -o")


def parse_gpus(spec: str, count: int) -> list[int]:
    """--gpus "0,2" or "all" -> GPU indices (as torch numbers them); InputError when malformed."""
    text = spec.strip().lower()
    if text == "all":
        return list(range(count))
    parts = [p.strip() for p in text.split(",")]
    if not parts or not all(p.isdigit() for p in parts):
        raise InputError(f"expected GPU numbers separated by commas, or all; got {spec!r}", subject="--gpus",
                         remedy="e.g. --gpus 0,1,2")
    gpus = [int(p) for p in parts]
    if len(set(gpus)) != len(gpus):
        raise InputError(f"names a GPU twice ({spec})", subject="--gpus", remedy="name each GPU once")
    return gpus


def plan_slots(opts: AllOptions) -> list[Slot]:
    """Where the components train: one slot per --gpus GPU (at the same time), else one slot on --device."""
    if opts.gpus is None:
        return [Slot(opts.device, opts.device)]
    from a2pcli.device import visible_cuda_count

    if opts.device != "auto":
        raise InputError("--gpus and --device both choose the device", subject=f"--device {opts.device}",
                         remedy="give one of them")
    count = visible_cuda_count()
    if count == 0:
        import torch

        why = "a CPU-only build" if not torch.version.cuda else f"CUDA {torch.version.cuda}, no GPU visible"
        raise EnvironmentProblem(f"torch sees no GPU (torch {torch.__version__}, {why})", subject=f"--gpus {opts.gpus}",
                                 remedy="leave out --gpus to train the components one after another (on the CPU); "
                                 "`a2p doctor` says why no GPU is seen")
    gpus = parse_gpus(opts.gpus, count)
    if max(gpus) >= count:
        raise InputError(f"no GPU {max(gpus)}: torch sees {count} (0 to {count - 1})", subject=f"--gpus {opts.gpus}",
                         remedy="name GPUs torch sees (see `a2p doctor`)")
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    physical = [visible[g] if len(visible) > g else str(g) for g in gpus]
    return [Slot(f"GPU {g}", "cuda", {"CUDA_VISIBLE_DEVICES": p}) for g, p in zip(gpus, physical)]


def component_options(opts: AllOptions, name: str, device: str) -> core.TrainOptions:
    out = Path(opts.output) / name
    resume = out if opts.resume else None  # its own folder: continued when it holds a checkpoint, else started
    return core.TrainOptions(data=tuple(opts.data), output=out, preset=opts.preset, val_speakers=opts.val_speakers,
                             resume=resume, seed=opts.seed, device=device)


# --- the data, once ----------------------------------------------------------------------------------------


def prepare_component(name: str, comp: Component, topts: core.TrainOptions, outcome: Outcome,
                      reporter: Reporter) -> None:
    """The component's data into the shared cache, in this process; a failure marks the component failed."""
    if comp.prepare is None:
        return
    t0 = time.perf_counter()
    relay = _Relay(reporter, name)
    try:
        data = load_entry(comp.prepare)(topts, Reporter(relay))
        if isinstance(data, dict) and data:
            outcome.data = data
            relay({"event": "info", "message": "data ready: " + ", ".join(f"{k} {v}" for k, v in data.items())})
    except A2PError as exc:
        _fail(outcome, "prepare", exc.one_line(), exc.exit_code, name, reporter)
    except Exception as exc:  # noqa: BLE001 - one component's failure must not stop the others
        _fail(outcome, "prepare", f"unexpected {type(exc).__name__}: {exc}", EXIT_FAILED, name, reporter)
    outcome.seconds["prepare"] = round(time.perf_counter() - t0, 1)


def _fail(outcome: Outcome, stage: str, error: str, code: int, name: str, reporter: Reporter) -> None:
    outcome.status, outcome.stage, outcome.error, outcome.exit_code = "failed", stage, error, code
    with _Relay.lock:
        reporter.warn(f"{name} failed ({stage}, exit {code}): {error}")


# --- the training, one process per component ---------------------------------------------------------------


class _Relay:
    """A sink that passes a component's events on to the run's reporter under the component's name."""

    lock = threading.Lock()  # one relay at a time: components run in threads

    def __init__(self, reporter: Reporter, name: str):
        self.reporter, self.name = reporter, name

    def __call__(self, ev: dict) -> None:
        with self.lock:
            relay_event(self.reporter, self.name, ev)


def relay_event(reporter: Reporter, name: str, ev: dict) -> None:
    """Show one of a component's events (a dict of a2pcli.progress) through `reporter`, its stage named
    "<name>: <stage>", its messages starting with "<name>: ". The reporter's stage is set for the one event
    and cleared again, since several components' stages interleave."""
    kind = ev.get("event")
    if kind in ("stage", "progress"):
        stage, total = f"{name}: {ev.get('stage')}", ev.get("total")
        reporter.stage_name = None
        if kind == "stage":
            reporter.stage(stage, total)
        else:
            reporter.stage_name, reporter.total, reporter.done = stage, total, max(0, int(ev.get("done") or 0) - 1)
            reporter.advance()
        reporter.stage_name = None
    elif kind == "warning":
        reporter.warn(f"{name}: {ev.get('message', '')}")
    elif kind == "info":
        reporter.info(f"{name}: {ev.get('message', '')}")


def run_jobs(jobs: list[tuple[str, Component]], opts: AllOptions, slots: list[Slot], outcomes: dict[str, Outcome],
             reporter: Reporter) -> None:
    """Train the jobs, each slot taking the next waiting job when it is free."""
    waiting: queue.Queue = queue.Queue()
    for job in jobs:
        waiting.put(job)
    running: dict[str, subprocess.Popen] = {}
    threads_per_process = max(1, (os.cpu_count() or 1) // len(slots))

    def serve(slot: Slot) -> None:
        while True:
            try:
                name, comp = waiting.get_nowait()
            except queue.Empty:
                return
            topts = component_options(opts, name, slot.device)
            env = dict(slot.env)
            if len(slots) > 1 and "OMP_NUM_THREADS" not in os.environ:
                env["OMP_NUM_THREADS"] = str(threads_per_process)  # the CPU is shared by the processes
            train_component(name, comp, topts, slot, env, outcomes[name], reporter, running)

    threads = [threading.Thread(target=serve, args=(s,), daemon=True) for s in slots[: max(1, len(jobs))]]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    except BaseException:
        for proc in list(running.values()):
            proc.terminate()
        raise


def train_component(name: str, comp: Component, topts: core.TrainOptions, slot: Slot, env: dict[str, str],
                    outcome: Outcome, reporter: Reporter, running: dict[str, subprocess.Popen]) -> None:
    """Run the component's trainer in a process of its own and wait for it; fills `outcome`."""
    job = json.dumps({"entry": comp.train, "options": options_to_json(topts)})
    full_env = {k: v for k, v in os.environ.items() if k not in _TORCHRUN_VARS}
    full_env.update(env)
    relay = _Relay(reporter, name)
    outcome.device = slot.label
    relay({"event": "info", "message": f"training on {slot.label} -> {topts.output}"})
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "a2pcli.train.worker", job], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=full_env)
    running[name] = proc
    tail: list[str] = []
    reader = threading.Thread(target=_read_events, args=(proc.stderr, relay, tail), daemon=True)
    reader.start()
    out = proc.stdout.read()
    code = proc.wait()
    reader.join()
    running.pop(name, None)
    outcome.seconds["train"] = round(time.perf_counter() - t0, 1)
    result = _last_result(out)
    if result is not None and result.get("status") == "ok" and code == 0:
        outcome.status, outcome.summary = "ok", result.get("summary")
        relay({"event": "info", "message": f"done in {outcome.seconds['train']:.0f} s"})
        return
    if result is not None and result.get("status") == "failed":
        error, exit_code = str(result.get("error")), int(result.get("exit_code") or EXIT_FAILED)
    else:
        exit_code = code if code > 0 else EXIT_FAILED
        last = tail[-1] if tail else "no output"
        error = f"its process ended with exit code {code} ({last})"
    _fail(outcome, "train", error, exit_code, name, reporter)


_TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
                  "TORCHELASTIC_RUN_ID")


def _read_events(stream, relay: _Relay, tail: list[str]) -> None:
    """A component process's stderr: JSON event lines are relayed, other lines kept (the last few)."""
    for line in stream:
        line = line.strip()
        if not line:
            continue
        try:
            ev = json.loads(line)
        except ValueError:
            ev = None
        if isinstance(ev, dict) and "event" in ev:
            relay(ev)
        else:
            tail.append(line)
            del tail[:-STDERR_TAIL]


def _last_result(stdout: str) -> dict | None:
    for line in reversed(stdout.strip().splitlines()):
        try:
            result = json.loads(line)
        except ValueError:
            continue
        if isinstance(result, dict) and "status" in result:
            return result
    return None


# --- folder and summary ------------------------------------------------------------------------------------


def _make_folder(output: Path) -> Path | None:
    """Create the models folder (before the components' processes, which each add their folder to it);
    returns the outermost folder created, None when it existed."""
    missing = None
    for p in (Path(output).absolute(), *Path(output).absolute().parents):
        if p.exists():
            break
        missing = p
    Path(output).mkdir(parents=True, exist_ok=True)
    return missing


def _remove_empty(created: Path, output: Path) -> None:
    """Remove the folders this run created while they are empty (no component trained)."""
    p = Path(output).absolute()
    while True:
        try:
            p.rmdir()
        except OSError:
            return
        if p == created:
            return
        p = p.parent


def summarise(opts: AllOptions, outcomes: dict[str, Outcome], slots: list[Slot], elapsed_s: float) -> dict:
    comps = {}
    for name, o in outcomes.items():
        row = {"status": o.status, "device": o.device, "seconds": o.seconds, "data": o.data,
               "output": str(Path(opts.output) / name)}
        if o.status == "ok":
            row["summary"] = o.summary
        else:
            row.update({"stage": o.stage, "error": o.error, "exit_code": o.exit_code})
        comps[name] = row
    return {"output": str(opts.output), "preset": opts.preset, "devices": [s.label for s in slots],
            "components": comps, "trained": [n for n, o in outcomes.items() if o.status == "ok"],
            "failed": [n for n, o in outcomes.items() if o.status != "ok"], "elapsed_s": round(elapsed_s, 1)}


"""`a2p models`: list, verify, pull and import the models a2p uses (see `a2pcli.registry`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from a2pcli import cache, registry
from a2pcli.cli.app import finish, session
from a2pcli.cli.cmd_render import not_available
from a2pcli.cli.options import JsonOut, Progress, ProgressMode, Quiet
from a2pcli.errors import EXIT_FAILED, InputError
from a2pcli.progress import Reporter

MB = 1_000_000  # sizes are shown in decimal megabytes
STATUS_STYLE = {registry.PRESENT: "green", registry.MISSING: "yellow", registry.MISMATCH: "bold red"}

ModelName = Annotated[str, typer.Argument(help="A model name from `a2p models list`.", show_default=False)]


def _print_json(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def _model_row(entry: registry.ModelEntry) -> dict:
    status = registry.entry_status(registry.check_entry(entry))
    return {
        "name": entry.name,
        "kind": entry.kind,
        "description": entry.description,
        "size_bytes": entry.size,
        "size_mb": round(entry.size / MB, 2),
        "size_is_download_estimate": entry.size_estimated,
        "licence": entry.licence,
        "status": status,
        "folder": str(entry.folder()),
    }


def _print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table()
    table.add_column("name", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("MB", justify="right", no_wrap=True)  # "~": what `models pull` would download
    table.add_column("licence", ratio=1)
    table.add_column("status", no_wrap=True)
    table.add_column("where", overflow="fold", ratio=1)
    for r in rows:
        status = f"[{STATUS_STYLE.get(r['status'], '')}]{r['status']}[/]"
        table.add_row(r["name"], r["kind"], ("~" if r["size_is_download_estimate"] else "") + f"{r['size_mb']:.2f}", r["licence"], status, r["folder"])
    console = Console()
    console.print(table)
    console.print(f"cache: {cache.cache_dir()}", highlight=False, soft_wrap=True)


def list_models(json_out: JsonOut = False) -> None:
    """List the known models: kind, size, licence, status, folder.

    Embedded models ship inside a2p; fetched ones live in the cache (shown below the table, set by A2P_CACHE_DIR).
    Status: present, missing (not pulled yet) or hash mismatch; `a2p models verify` re-hashes everything.
    A size marked ~ is what `a2p models pull` would download (the files are not there yet).
    """
    rows = [_model_row(e) for e in registry.load_registry().values()]
    if json_out:
        _print_json({"cache_dir": str(cache.cache_dir()), "models": rows})
    else:
        _print_table(rows)


def _fails(entry: registry.ModelEntry, status: str) -> bool:
    """A mismatch always fails; a missing file only for embedded models (fetched ones may not be pulled yet)."""
    return status == registry.MISMATCH or (status == registry.MISSING and entry.embedded)


def _verify_one(entry: registry.ModelEntry, json_out: bool) -> tuple[dict, list[registry.FileStatus]]:
    """Re-hash every file of `entry`: its JSON record, and the files that fail."""
    statuses = registry.check_entry(entry, rehash=True)
    if not json_out:
        for s in statuses:
            detail = f"  ({s.detail})" if s.detail else ""
            typer.echo(f"  {s.status:<14}{s.path}{detail}")
    failed = [s for s in statuses if _fails(entry, s.status)]
    files = [{"path": str(s.path), "status": s.status, "detail": s.detail} for s in statuses]
    record = {"name": entry.name, "kind": entry.kind, "status": registry.entry_status(statuses), "ok": not failed,
              "files": files}
    return record, failed


def _remedy(entry: registry.ModelEntry) -> str:
    return "Reinstall a2p" if entry.embedded else f"Delete the file and run `a2p models pull {entry.name}`"


def verify(
    names: Annotated[
        Optional[list[str]], typer.Argument(help="Models to check (default: all).", show_default=False)
    ] = None,
    json_out: JsonOut = False,
) -> None:
    """Re-hash model files against the registry's sha256.

    Checks the named models (all by default) and exits 1 when a file is corrupt, or when a file
    of an embedded model is missing (a fetched model that is not pulled yet is reported, not failed).
    """
    entries = [registry.get(n) for n in names] if names else list(registry.load_registry().values())
    records, failures = [], []
    for entry in entries:
        if not json_out:
            typer.echo(f"{entry.name} ({entry.kind}, {entry.folder()})")
        record, failed = _verify_one(entry, json_out)
        records.append(record)
        failures += [(entry, s) for s in failed]
    if json_out:
        _print_json({"ok": not failures, "models": records})
    for entry, s in failures:
        sys.stderr.write(f"error: {s.path}: {s.status}. {_remedy(entry)}\n")
    if failures:
        raise typer.Exit(EXIT_FAILED)


PULLABLE = {"aniportrait"}  # registry models that `pull` and `import` know how to fetch


def pull(
    name: ModelName,
    progress: Progress = ProgressMode.auto,
    quiet: Quiet = False,
    json_out: JsonOut = False,
) -> None:
    """Download a model into the shared cache.

    aniportrait: AniPortrait's checkpoints, the SD1.5 UNet config, sd-vae-ft-mse, the CLIP image
    encoder and wav2vec2-base-960h from Hugging Face, at pinned revisions (HF_ENDPOINT selects a
    mirror). An interrupted download resumes where it stopped; each file's sha256 is checked
    against the Hub's and recorded, then checked on every load and by `a2p models verify`.
    Safe to run from several processes at once.
    """
    registry.get(name)
    if name not in PULLABLE:
        raise not_available("models pull", f"downloading {name}")
    from a2pcli.aniportrait import hub

    with session("models pull", progress, quiet) as sink:
        try:
            summary = hub.pull(Reporter(sink))
        except KeyboardInterrupt:
            sys.stderr.write(f"interrupted: `a2p models pull {name}` resumes the download where it stopped\n")
            raise
    finish(sink, summary, json_out, _human(summary), quiet)


def import_(
    name: ModelName,
    folder: Annotated[
        Path, typer.Argument(help="An existing AniPortrait pretrained_model folder.", show_default=False)
    ],
    copy: Annotated[
        bool, typer.Option("--copy", help="Copy the files (default: hard links where the filesystem allows).")
    ] = False,
    progress: Progress = ProgressMode.auto,
    quiet: Quiet = False,
    json_out: JsonOut = False,
) -> None:
    """Adopt an existing AniPortrait pretrained_model folder.

    Its files (AniPortrait's names and layout) are checked (keys of every checkpoint), hard-linked
    into the cache (copied across filesystems or with --copy) and their sha256 recorded, instead
    of being downloaded again. A hard link keeps the data when the folder is later moved or deleted.
    """
    registry.get(name)
    if not folder.is_dir():
        raise InputError("folder not found", subject=str(folder), remedy="pass AniPortrait's pretrained_model folder")
    if name not in PULLABLE:
        raise not_available("models import", f"importing {name}")
    from a2pcli.aniportrait import hub

    with session("models import", progress, quiet) as sink:
        summary = hub.import_folder(folder, copy=copy, reporter=Reporter(sink))
    finish(sink, summary, json_out, _human(summary), quiet)


def _human(summary: dict) -> str:
    counts: dict[str, int] = {}
    for f in summary["files"]:
        counts[f["action"]] = counts.get(f["action"], 0) + 1
    what = ", ".join(f"{n} {a}" for a, n in counts.items())
    return (f"{summary['model']}: {len(summary['files'])} files ({what}), {summary['bytes'] / MB:,.1f} MB "
            f"in {summary['folder']}")


def register(app: typer.Typer) -> None:
    models_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)
    models_app.command("list")(list_models)
    models_app.command("verify")(verify)
    models_app.command("pull")(pull)
    models_app.command("import")(import_)
    app.add_typer(models_app, name="models", help="List, verify and fetch the models a2p uses.")

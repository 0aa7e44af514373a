"""``cloudvac import-vcycle``: VCycle's configuration converted to cloudvac's."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from cloudvac.cli.base import app, err

__all__ = ["app", "import_vcycle"]

VCYCLE_CONF = Path("/etc/vcycle.conf")
VCYCLE_DIR = Path("/etc/vcycle.d")


@app.command(name="import-vcycle")
def import_vcycle(
    out: Annotated[Path, typer.Option("--out", help="Directory to write cloudvac's *.conf "
                                      "files into (created if missing).")],
    vcycle_conf: Annotated[Path | None, typer.Option(
        "--vcycle-conf", help=f"VCycle's main file, read last (default: {VCYCLE_CONF}).")]
    = None,
    vcycle_dir: Annotated[Path | None, typer.Option(
        "--vcycle-dir", help=f"VCycle's drop-in directory, its *.conf read first, by name "
        f"(default: {VCYCLE_DIR}).")] = None,
    secrets_dir: Annotated[Path | None, typer.Option(
        "--secrets-dir", help="Where to write the secret files (mode 0600) the configuration"
        " names (default: OUT/secrets).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite files that exist.")]
    = False,
) -> None:
    """Convert VCycle's configuration into cloudvac files and 0600 secret files, and report
    every option not carried over and every meaning that changed."""
    from cloudvac.config.vcycle_import import ImportRefused, convert, report, vcycle_files, write

    for given, what in ((vcycle_conf, "--vcycle-conf"), (vcycle_dir, "--vcycle-dir")):
        if given is not None and not given.exists():
            err.print(f"[red]error:[/red] {what} {escape(str(given))}: no such file or "
                      "directory", highlight=False, soft_wrap=True)
            raise typer.Exit(2)
    conf = vcycle_conf if vcycle_conf is not None else VCYCLE_CONF
    directory = vcycle_dir if vcycle_dir is not None else VCYCLE_DIR
    paths = vcycle_files(conf, directory)
    if not paths:
        err.print(f"[red]error:[/red] no VCycle configuration: neither {escape(str(conf))} "
                  f"nor {escape(str(directory))}/*.conf exists", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    target = (secrets_dir if secrets_dir is not None else out / "secrets").absolute()
    conversion = convert(paths, target)
    lines = report(conversion)
    typer.echo("Read: " + ", ".join(map(str, conversion.read)))
    if not conversion.spaces:
        typer.echo("\n".join(lines))
        err.print("[red]error:[/red] no space could be converted (see above); nothing "
                  "written", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    try:
        written = write(conversion, out, force)
    except ImportRefused as exc:
        existing = ", ".join(map(str, exc.existing))
        err.print(f"[red]error:[/red] refusing to overwrite {escape(existing)}; nothing "
                  "written (use --force to overwrite)", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        err.print(f"[red]error:[/red] cannot write {escape(str(exc.filename or out))}: "
                  f"{escape(exc.strerror or type(exc).__name__)}", highlight=False,
                  soft_wrap=True)
        raise typer.Exit(2) from None
    secret = {s.path for s in conversion.secrets}
    typer.echo("Wrote: " + ", ".join(f"{p}{' (mode 0600)' if p in secret else ''}"
                                     for p in written))
    typer.echo("\n".join(lines))
    typer.echo(f"\nSpaces converted: {', '.join(conversion.spaces)}. Next: read the notes "
               f"above, then run: cloudvac validate --config-dir {out}")

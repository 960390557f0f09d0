"""Commands that talk DICOM to a peer: C-ECHO and C-STORE of files."""

from __future__ import annotations

from pathlib import Path

import typer

from dicomnode.cli.app import CONFIG, app, node_config


def _peers(to: list[str], node, ca: Path | None, cert: Path | None, key: Path | None):
    """``--to`` values as destinations (TLS when --tls-* given); exit 2 on a malformed one."""
    from dicomnode.dicom.peers import TLSClient
    from dicomnode.dicom.scu import parse_peer

    try:
        tls = TLSClient(ca=ca, cert=cert, key=key) if (ca or cert or key) else None
        return [parse_peer(text, default_ae_title=node.node.ae_title).model_copy(update={"tls": tls})
                for text in to]
    except ValueError as exc:
        typer.echo(f"error: --to {exc}", err=True)
        raise typer.Exit(2) from None


def _calling_ae(aet: str | None, node) -> str:
    """``--aet`` validated (PS3.5 §6.2), or the node's own AE title."""
    from dicomnode.dicom.peers import validate_ae_title

    try:
        return validate_ae_title(aet) if aet is not None else node.node.ae_title
    except ValueError as exc:
        typer.echo(f"error: --aet {exc}", err=True)
        raise typer.Exit(2) from None


_TO_HELP = "Peer as HOST:PORT[:AET] (AET defaults to this node's AE title)."
_TLS_CA = typer.Option(None, "--tls-ca", help="Use TLS, trusting this CA (PEM).")
_TLS_CERT = typer.Option(None, "--tls-cert", help="Use TLS with this client certificate (PEM).")
_TLS_KEY = typer.Option(None, "--tls-key", help="Private key of --tls-cert (PEM).")


@app.command()
def echo(
    to: list[str] = typer.Option([], "--to", help=f"{_TO_HELP} Repeatable. Default: every configured "
                                 "destination and this node itself."),
    config: Path | None = CONFIG,
    aet: str | None = typer.Option(None, "--aet", help="Our calling AE title (default: node.ae_title)."),
    timeout: float = typer.Option(10.0, min=0.1, help="Seconds to wait for each peer."),
    tls_ca: Path | None = _TLS_CA,
    tls_cert: Path | None = _TLS_CERT,
    tls_key: Path | None = _TLS_KEY,
) -> None:
    """C-ECHO (DICOM verification) to peers; exit 1 if any does not answer success."""
    from dicomnode.dicom.peers import Destination
    from dicomnode.dicom.scu import echo as c_echo

    node = node_config(config)
    calling_ae = _calling_ae(aet, node)
    peers = _peers(to, node, tls_ca, tls_cert, tls_key)
    if not peers:
        host = "127.0.0.1" if node.node.host in ("0.0.0.0", "::", "") else node.node.host
        peers = [*node.destinations, Destination(name="this-node", host=host, port=node.node.port,
                                                  ae_title=node.node.ae_title)]
    failed = 0
    for peer in peers:
        result = c_echo(peer, calling_ae=calling_ae, timeout=timeout)
        failed += not result.ok
        typer.echo(f"{'ok  ' if result.ok else 'FAIL'} {peer.name} {peer.ae_title}@{peer.host}:{peer.port} "
                   f"{result.status} {result.detail} ({result.seconds * 1000:.0f} ms)")
    raise typer.Exit(1 if failed else 0)


@app.command()
def send(
    files: list[Path] = typer.Argument(..., help="DICOM files or folders (searched recursively)."),
    to: str = typer.Option(..., "--to", help=_TO_HELP),
    config: Path | None = CONFIG,
    aet: str | None = typer.Option(None, "--aet", help="Our calling AE title (default: node.ae_title)."),
    timeout: float = typer.Option(30.0, min=0.1, help="Seconds to wait for each answer."),
    tls_ca: Path | None = _TLS_CA,
    tls_cert: Path | None = _TLS_CERT,
    tls_key: Path | None = _TLS_KEY,
) -> None:
    """C-STORE files to a peer with a status per file; exit 1 if any file was not stored."""
    from dicomnode.dicom.scu import send_files

    node = node_config(config)
    calling_ae = _calling_ae(aet, node)
    missing = [str(path) for path in files if not path.exists()]
    if missing:
        typer.echo(f"error: no such file or folder: {', '.join(missing)}", err=True)
        raise typer.Exit(2)
    (peer,) = _peers([to], node, tls_ca, tls_cert, tls_key)
    counts = {"stored": 0, "failed": 0, "skipped": 0}

    def show(result) -> None:
        kind = "skipped" if result.skipped else "stored" if result.ok else "failed"
        counts[kind] += 1
        typer.echo(f"[{sum(counts.values())}] {result.status_text} {result.path}: {result.detail}",
                   err=kind == "failed")

    send_files(files, peer, calling_ae=calling_ae, on_result=show, timeout=timeout)
    typer.echo(f"{counts['stored']} stored, {counts['failed']} failed, {counts['skipped']} skipped "
               f"(to {peer.ae_title}@{peer.host}:{peer.port})")
    raise typer.Exit(1 if counts["failed"] else 0)

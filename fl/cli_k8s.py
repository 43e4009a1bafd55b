"""``fedledger k8s render | apply | status``: the federation on Kubernetes.

Each command parses, calls :mod:`fl.kube`, prints (a table, or ``--json``); failures
follow :mod:`fl.cli_output`: 1 the cluster refused (RBAC, invalid object) or not all
workloads are ready, 2 an invalid federation file or overlay, 3 no cluster to talk to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from fl.cli_output import ConfigOpt, ExitCode, JsonOpt, emit, failures, load

__all__ = ["k8s_app"]

k8s_app = typer.Typer(help="The federation on Kubernetes: render, apply (server-side), status.",
                      no_args_is_help=True)

OverlayOpt: Any = typer.Option("local", "--overlay", help="Overlay under k8s/overlays (local, production) or 'none'.")
KubeconfigOpt: Any = typer.Option(None, "--kubeconfig", help="kubeconfig file (default $KUBECONFIG, ~/.kube/config).")
ContextOpt: Any = typer.Option(None, "--context", help="kubeconfig context.")


def _objects(config: Path, overlay: str) -> list[dict[str, Any]]:
    from fl.kube.render import render

    return render(load(config), None if overlay == "none" else overlay)


@k8s_app.command("render")
def render_cmd(
    config: Path = ConfigOpt, overlay: str = OverlayOpt,
    institution: Optional[str] = typer.Option(None, "--institution",
                                              help="Only this participant's node (for its own cluster)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write to this file instead of stdout."),
    as_json: bool = JsonOpt,
) -> None:
    """Render every Kubernetes object of the federation as one YAML stream (``--json``: a JSON list)."""
    from fl.kube.render import institution_objects, to_yaml

    with failures(as_json):
        objects = institution_objects(institution) if institution else _objects(config, overlay)
        text = to_yaml(objects)
    if as_json and out is None:
        emit(True, objects)
    elif out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        typer.echo(f"{len(objects)} objects written to {out}", err=True)


@k8s_app.command("apply")
def apply_cmd(
    config: Path = ConfigOpt, overlay: str = OverlayOpt, kubeconfig: Optional[Path] = KubeconfigOpt,
    context: Optional[str] = ContextOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Server-side dry run: validated, nothing stored."),
    as_json: bool = JsonOpt,
) -> None:
    """Apply the rendered objects server-side (field manager ``fedledger``)."""
    from fl.kube.client import connect
    from fl.kube.deploy import apply_all

    with failures(as_json):
        objects = _objects(config, overlay)
        kube = connect(kubeconfig, context)
        try:
            applied = apply_all(kube, objects, dry_run=dry_run)
        finally:
            kube.close()
    if as_json:
        emit(True, {"dry_run": dry_run, "objects": [a.to_json() for a in applied]})
        return
    for a in applied:
        where = f"{a.namespace}/" if a.namespace else ""
        typer.echo(f"{a.kind:<26} {where}{a.name:<40} {'changed' if a.changed else 'unchanged'}")
    typer.echo(f"{len(applied)} objects applied{' (dry run)' if dry_run else ''}")


@k8s_app.command("status")
def status_cmd(
    config: Path = ConfigOpt, overlay: str = OverlayOpt, kubeconfig: Optional[Path] = KubeconfigOpt,
    context: Optional[str] = ContextOpt, as_json: bool = JsonOpt,
) -> None:
    """Readiness of the federation's workloads; exit 1 unless all are ready."""
    from fl.kube.client import connect
    from fl.kube.deploy import status_of

    with failures(as_json):
        objects = _objects(config, overlay)
        kube = connect(kubeconfig, context)
        try:
            workloads = status_of(kube, objects)
        finally:
            kube.close()
    ready = all(w.is_ready for w in workloads)
    if as_json:
        emit(True, {"ready": ready, "workloads": [w.to_json() for w in workloads]})
    else:
        for w in workloads:
            state = f"{w.ready}/{w.desired} ready" if w.exists else "not applied"
            typer.echo(f"{w.kind:<12} {w.namespace}/{w.name:<40} {state}")
    if not ready:
        raise typer.Exit(ExitCode.FAILED)

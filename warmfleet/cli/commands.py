"""The `warmfleet` command line: start and stop a cluster, run predictions, look at models and nodes.

Settings are built once per process (``CliContext.settings``) from the global flags, the --config
file and ``WARMFLEET_*`` variables, and passed down. Errors the client reports print as one line,
``error: <message>``, with exit code 1.
"""

from __future__ import annotations

import json
import mimetypes
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import click

from warmfleet.cli import accounts, bench, certificates, launch
from warmfleet.cli.inputs import (  # noqa: F401 - parse_input and parse_input_value: the CLI's parsing, here too
    InputParam, inputs_to_dict, parse_input, parse_input_value, read_input_file,
)
from warmfleet.cli.context import (
    CliContext, CliError, WarmfleetGroup, echo_json, pass_cli, print_renderable, show_table, to_jsonable,
)
from warmfleet.client import Client, Event, File, Prediction, WarmfleetClientError
from warmfleet.cluster_state import ClusterState

ECHO_HINT = "predict warmfleet/echo -i text=hello"


# Output


def format_value(value: Any) -> str:
    """An output value for people: text raw, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, indent=2)


def output_file_names(files: list[File]) -> list[str]:
    """Safe, distinct file names for output files: the server's name reduced to its last path part
    (so it cannot escape the output folder), else ``output-<i><ext>``."""
    names: list[str] = []
    for i, f in enumerate(files):
        name = Path(f.name.replace("\\", "/")).name if f.name else ""
        if name in ("", ".", ".."):
            name = f"output-{i}{mimetypes.guess_extension(f.content_type or '') or '.bin'}"
        stem, suffix = Path(name).stem, Path(name).suffix
        candidate, n = name, 1
        while candidate in names:
            candidate, n = f"{stem}-{n}{suffix}", n + 1
        names.append(candidate)
    return names


def save_files(files: list[File], out_dir: Path | None) -> None:
    """Write output files to ``out_dir`` and print their paths; without a folder, say how to get them."""
    if not files:
        return
    names = output_file_names(files)
    if out_dir is None:
        listed = ", ".join(f"{n} ({f.size_bytes} bytes)" for n, f in zip(names, files))
        click.echo(f"{len(files)} output file(s) not saved: {listed}; pass -o DIR to write them", err=True)
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, f in zip(names, files):
        path = out_dir / name
        path.write_bytes(f.data)
        click.echo(str(path))


def finish(prediction: Prediction, out_dir: Path | None, value_shown: bool) -> None:
    """Print a finished prediction's output (or its error, exiting 1)."""
    if not prediction.succeeded:
        if prediction.logs:
            click.echo(prediction.logs, err=True)
        reason = f": {prediction.error}" if prediction.error else ""
        raise CliError(f"prediction {prediction.id} {prediction.status}{reason}")
    if not value_shown and prediction.output is not None:
        click.echo(format_value(prediction.output))
    save_files(prediction.output_files, out_dir)


def _time(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _seconds(value: float | int | None) -> str:
    return f"{value:.3f} s" if value is not None else "-"


def _spinner(message: str) -> Any:
    from rich.console import Console

    return Console(stderr=True).status(message)


# The root group


@click.group(cls=WarmfleetGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", help="The gateway, host:port (default: $WARMFLEET_URL, or what `up` recorded).")
@click.option("--token", help="Access token (default: $WARMFLEET_TOKEN, or the local admin token).")
@click.option("--home", help="warmfleet's home folder (default: $WARMFLEET_HOME, or ~/.warmfleet).")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="A TOML settings file.")
@click.version_option(package_name="warmfleet")
@click.pass_context
def cli(ctx: click.Context, url: str | None, token: str | None, home: str | None, config: str | None) -> None:
    """warmfleet: an inference cluster that keeps models warm."""
    ctx.obj = CliContext(url=url, token=token, home=home, config=config)


# Running the cluster


@cli.command()
@click.option("--grpc-port", type=int, help="Port the gateway serves gRPC on (0 picks a free one).")
@click.option("--address", "ray_address", help="Ray cluster to join (default: start a local Ray).")
@click.option("--tls-cert", "tls_cert_path", help="Serve gRPC and HTTPS with this PEM certificate (chain); "
              "needs --tls-key. A first try: `warmfleet tls self-signed`.")
@click.option("--tls-key", "tls_key_path", help="The certificate's unencrypted PEM private key.")
@click.option("--tls-ca", "tls_ca_path", help="The CA certificate that issued --tls-cert, which this "
              "machine's CLI and clients verify the gateway with (default: --tls-cert itself).")
@pass_cli
def up(obj: CliContext, grpc_port: int | None, ray_address: str | None, tls_cert_path: str | None,
       tls_key_path: str | None, tls_ca_path: str | None) -> None:
    """Start the cluster in the background and wait until it serves."""
    settings = obj.settings(grpc_port=grpc_port, ray_address=ray_address, tls_cert_path=tls_cert_path,
                            tls_key_path=tls_key_path, tls_ca_path=tls_ca_path)
    already = launch.running(settings)
    if settings.cluster_config:  # refuse a bad file here, naming the place, not in the background log
        from warmfleet.cli.cluster_config import load_cluster_config
        from warmfleet.cli.defaults import default_models

        load_cluster_config(settings.cluster_config, default_models(settings))
    if settings.tls_cert_path:  # likewise a key that is not the certificate's
        from gateway.tls import ServerTls

        ServerTls.from_settings(settings)
    with _spinner("starting warmfleet (Ray, controller, gateway)..."):
        state = launch.up(settings)
    verb = "is already up" if already is not None and already.pid == state.pid else "is up"
    click.echo(f"warmfleet {verb} at {state.grpc_target}")
    click.echo(f"  log:         {launch.log_path(settings)}")
    click.echo(f"  admin token: {state.admin_token_path}")
    click.echo(f"  metrics:     {state.metrics_url or 'not served (see the log)'}")
    if state.tls:
        click.echo(f"  tls:         gRPC and HTTPS, verified with {state.tls_ca_path}")
    click.echo(f"try: {obj.command_prefix()} {ECHO_HINT}")


@cli.command()
@pass_cli
def serve(obj: CliContext) -> None:
    """Run the gateway in the foreground (what `up` runs in the background)."""
    from warmfleet.cli.serve import main as serve_main  # imports Ray: only here

    serve_main(obj.settings())


@cli.command()
@pass_cli
def down(obj: CliContext) -> None:
    """Stop the cluster `up` started."""
    with _spinner("stopping warmfleet..."):
        stopped = launch.down(obj.settings())
    click.echo("stopped" if stopped else "nothing was running")


@cli.command()
@pass_cli
def status(obj: CliContext) -> None:
    """Whether the cluster runs, where, what it serves, and (with an admin token) its nodes."""
    settings = obj.settings()
    state = launch.running(settings)
    click.echo(f"process:  pid {state.pid}" if state else f"process:  none started from {settings.home}")
    client = obj.client()
    click.echo(f"gateway:  {client.target}")
    if state is not None:
        click.echo(f"metrics:  {state.metrics_url or 'not served (see the log)'}")
    said = launch.health(client.endpoint)
    if said is None:
        raise CliError(f"no gateway at {client.target}: is `warmfleet up` running?")
    click.echo("health:   serving" if said == launch.SERVING else
               f"health:   not serving: {_why_not_serving(state)}")
    show_table("models", ["name", "runner", "version"],
           [[m.name, m.runner, m.version[:12]] for m in client.models.list()])
    _show_fleet(client)


def _why_not_serving(state: ClusterState | None) -> str:
    """What the gateway's /healthz says (the controller away, the store unable to write...)."""
    if state is None or not state.http_target:
        return "see the gateway's log"
    try:
        with urllib.request.urlopen(f"{state.http_url}/healthz", timeout=2.0,
                                    context=state.ssl_context()) as reply:
            return json.loads(reply.read()).get("reason", "") or "see the gateway's log"
    except urllib.error.HTTPError as err:
        return json.loads(err.read() or b"{}").get("reason", "") or "see the gateway's log"
    except (OSError, ValueError):
        return "see the gateway's log"


def _show_fleet(client: Client) -> None:
    from warmfleet.cli.top import instances_table, nodes_table

    try:
        nodes, instances = client.cluster.nodes(), client.cluster.instances()
    except WarmfleetClientError as err:
        if err.code != "PERMISSION_DENIED":
            raise
        click.echo("(nodes and instances need an admin token)")
        return
    print_renderable(nodes_table(nodes))
    print_renderable(instances_table(instances))


# Nodes, instances and a live view (admin)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_cli
def nodes(obj: CliContext, as_json: bool) -> None:
    """List the nodes: accelerator, memory, utilization, instances (admin)."""
    from warmfleet.cli.top import nodes_table

    _list_or_table(obj.client().cluster.nodes(), nodes_table, as_json)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_cli
def instances(obj: CliContext, as_json: bool) -> None:
    """List the model instances: model, version, node, state, in-flight predictions (admin)."""
    from warmfleet.cli.top import instances_table

    _list_or_table(obj.client().cluster.instances(), instances_table, as_json)


def _list_or_table(found: list, table: Any, as_json: bool) -> None:
    """Print ``found`` as JSON, or as the rich table ``table`` makes of it."""
    if as_json:
        echo_json(found)
    else:
        print_renderable(table(found))


@cli.command()
@click.option("--interval", "interval_s", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="Seconds between refreshes.")
@click.option("--once", is_flag=True, help="Print one frame and exit (1 if the gateway answered an error).")
@click.option("--metrics-url", help="The gateway's Prometheus URL (default: what `up` recorded for it).")
@pass_cli
def top(obj: CliContext, interval_s: float, once: bool, metrics_url: str | None) -> None:
    """A live view of nodes, GPUs, instances and queues, refreshed every --interval seconds until Ctrl-C."""
    from rich.console import Console
    from rich.live import Live

    from warmfleet.cli.top import Snapshot, render, take_snapshot

    client = _top_client(obj, interval_s)
    url = _metrics_url(obj, client) if metrics_url is None else metrics_url
    context = _metrics_context(obj, client)

    def snapshot() -> Snapshot:
        return take_snapshot(client, url, datetime.now().astimezone(), timeout_s=max(interval_s, 1.0),
                             ssl_context=context)

    if once:
        first = snapshot()
        print_renderable(render(first))
        if first.error:
            raise click.exceptions.Exit(1)
        return
    try:
        with Live(render(snapshot()), console=Console(), screen=True, auto_refresh=False) as live:
            while True:
                time.sleep(interval_s)
                live.update(render(snapshot()), refresh=True)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how one leaves `top`


def _top_client(obj: CliContext, interval_s: float) -> Client:
    """A client whose calls give up within a few refreshes, so that a stuck gateway shows as an error."""
    try:
        return Client(url=obj.url, settings=obj.settings(), timeout_s=max(2.0, 2 * interval_s))
    except ValueError as err:  # a malformed --url
        raise CliError(str(err)) from err


def _metrics_url(obj: CliContext, client: Client) -> str:
    """The metrics URL `up` recorded, if the client talks to the gateway `up` started."""
    state = launch.running(obj.settings())
    return state.metrics_url if state is not None and state.grpc_target == client.target else ""


def _metrics_context(obj: CliContext, client: Client) -> Any:
    """How an HTTPS metrics URL is verified: with the CA file `up` recorded for the client's gateway, else
    with the settings' tls_ca_path, else the system's roots."""
    from warmfleet.tls import client_ssl_context

    state = launch.running(obj.settings())
    if state is not None and state.grpc_target == client.target and state.tls:
        return state.ssl_context()
    return client_ssl_context(obj.settings().tls_ca_path)


# Predictions


@cli.command()
@click.argument("model")
@click.option("-i", "--input", "inputs", type=InputParam(), multiple=True, callback=inputs_to_dict,
              help="An input, key=value (JSON if it parses, else text) or key=@path (a file). Repeatable.")
@click.option("--stream", is_flag=True, help="Print output as it comes; logs go to stderr.")
@click.option("--async", "is_async", is_flag=True, help="Print the prediction's id and return at once.")
@click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write output files to this folder.")
@click.option("--wait", "wait_s", type=click.FloatRange(min=0, min_open=True),
              help="Give up waiting after this many seconds (default: wait until it ends).")
@click.option("--deployment", "is_deployment", is_flag=True, help="MODEL names a deployment.")
@pass_cli
def predict(obj: CliContext, model: str, inputs: dict[str, Any], stream: bool, is_async: bool,
            output_dir: Path | None, wait_s: float | None, is_deployment: bool) -> None:
    """Run MODEL ("owner/name" or "owner/name:version", or a deployment with --deployment) on the -i
    inputs and print the output."""
    if stream and is_async:
        raise click.UsageError("--stream and --async do not go together")
    client = obj.client()
    target = {"model": "", "deployment": model} if is_deployment else {"model": model}
    if is_async:
        prediction = client.predictions.create(input=inputs, **target)
        click.echo(f"{prediction.id} {prediction.status}")
        return
    if stream:
        events = client.predictions.create_and_stream(input=inputs, timeout_s=wait_s, **target)
        prediction, shown = _follow(events, wait_s, obj)
    else:
        prediction, shown = _wait(client, target, inputs, wait_s, obj), False
    finish(prediction, output_dir, shown)


def _wait(client: Client, target: dict[str, str], inputs: dict[str, Any], wait_s: float | None,
          obj: CliContext) -> Prediction:
    start = time.monotonic()
    created = client.predictions.create(input=inputs, wait_s=min(wait_s or 60.0, 60.0), **target)
    remaining = None if wait_s is None else max(wait_s - (time.monotonic() - start), 0.001)
    try:
        return client.predictions.wait(created, timeout_s=remaining)
    except WarmfleetClientError as err:
        _raise_if_timed_out(err, created.id, wait_s, obj)
        raise


def _raise_if_timed_out(err: WarmfleetClientError, prediction_id: str, wait_s: float | None,
                        obj: CliContext) -> None:
    """A timeout while waiting says the prediction keeps running, and how to look at it later."""
    if err.code == "DEADLINE_EXCEEDED" and prediction_id:
        raise CliError(f"prediction {prediction_id} has not ended after {wait_s:g} s; it keeps running: "
                       f"`{obj.command_prefix()} predictions get {prediction_id}`") from err


def _follow(events: Iterator[Event], wait_s: float | None, obj: CliContext) -> tuple[Prediction, bool]:
    """Print streamed output to stdout and logs and progress to stderr; the final prediction, and
    whether output was shown."""
    shown, last_text, prediction_id = False, "", ""
    try:
        for event in events:
            prediction_id = event.prediction_id
            if event.kind == "completed":
                if shown and not last_text.endswith("\n"):
                    click.echo()
                return event.data, shown
            if event.kind == "output" and event.data.value is not None:
                last_text = format_value(event.data.value)
                click.echo(last_text, nl=not isinstance(event.data.value, str))
                sys.stdout.flush()
                shown = True
            _echo_side(event)
    except WarmfleetClientError as err:
        _raise_if_timed_out(err, prediction_id, wait_s, obj)
        raise
    raise CliError("the event stream ended before the prediction did")


def _echo_side(event: Event) -> None:
    if event.kind == "log":
        click.echo(event.data, err=True)
    elif event.kind == "progress":
        eta = f", eta {event.data.eta_s:.1f} s" if event.data.eta_s else ""
        click.echo(f"progress {event.data.step}/{event.data.total}{eta}", err=True)


@cli.group()
def predictions() -> None:
    """Look at and cancel predictions."""


@predictions.command("get")
@click.argument("prediction_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_cli
def predictions_get(obj: CliContext, prediction_id: str, as_json: bool) -> None:
    """Show one prediction."""
    prediction = obj.client().predictions.get(prediction_id)
    if as_json:
        echo_json(prediction)
        return
    for label, value in [
        ("id", prediction.id), ("model", f"{prediction.model} ({prediction.version[:12]})"),
        ("status", prediction.status), ("created", _time(prediction.created_at)),
        ("started", _time(prediction.started_at)), ("completed", _time(prediction.completed_at)),
        ("metrics", ", ".join(f"{k}={v:g}" for k, v in prediction.metrics.items()) or "-"),
        ("input", json.dumps(to_jsonable(prediction.input))),
        ("output", "-" if prediction.output is None else format_value(prediction.output)),
        ("files", ", ".join(output_file_names(prediction.output_files)) or "-"),
        ("error", prediction.error or "-"), ("logs", prediction.logs or "-"),
    ]:
        click.echo(f"{label + ':':<11}{value}")


@predictions.command("list")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="Page size.")
@click.option("--cursor", default="", help="The cursor printed after the previous page.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_cli
def predictions_list(obj: CliContext, limit: int, cursor: str, as_json: bool) -> None:
    """List predictions, newest first."""
    page = obj.client().predictions.list(page_size=limit, cursor=cursor)
    if as_json:
        echo_json(page)
        return
    show_table("predictions", ["id", "model", "status", "created", "predict time"], [
        [p.id, p.model, p.status, _time(p.created_at), _seconds(p.metrics.get("predict_time_s"))]
        for p in page.results])
    if page.next_cursor:
        click.echo(f"more: {obj.command_prefix()} predictions list --cursor {page.next_cursor}", err=True)


@predictions.command("cancel")
@click.argument("prediction_id")
@pass_cli
def predictions_cancel(obj: CliContext, prediction_id: str) -> None:
    """Cancel a prediction (one that already ended stays as it is)."""
    prediction = obj.client().predictions.cancel(prediction_id)
    click.echo(f"{prediction.id} {prediction.status}")


# Models and tokens


@cli.group()
def models() -> None:
    """The models the cluster serves."""


@models.command("list")
@pass_cli
def models_list(obj: CliContext) -> None:
    """List the served models."""
    show_table("models", ["name", "runner", "version", "description"],
           [[m.name, m.runner, m.version[:12], m.description] for m in obj.client().models.list()])


@models.command("get")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON, with the full schemas.")
@pass_cli
def models_get(obj: CliContext, name: str, as_json: bool) -> None:
    """Show a model and its inputs."""
    model = obj.client().models.get(name)
    if as_json:
        echo_json(model)
        return
    click.echo(f"{model.name} ({model.runner}, version {model.version})")
    if model.description:
        click.echo(model.description)
    required = set(model.input_schema.get("required", []))
    show_table("inputs", ["name", "type", "required", "default", "description"], [
        [key, str(prop.get("type", "-")), "yes" if key in required else "",
         json.dumps(prop["default"]) if "default" in prop else "", prop.get("description", "")]
        for key, prop in model.input_schema.get("properties", {}).items()])


@models.command("make-tiny")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write (default: <home>/models/tiny-llama).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
@pass_cli
def models_make_tiny(obj: CliContext, out_dir: Path | None, seed: int) -> None:
    """Write a tiny random-weight Llama (tokenizer trained locally, chat template) and print its path.

    It needs no network; a folder that already holds it for the same seed is kept as it is."""
    from runners.tiny_models import make_tiny_llama  # imports torch: only here

    out_dir = out_dir.expanduser() if out_dir else obj.settings().models_path / "tiny-llama"
    with _spinner("writing a tiny Llama..."):
        path = make_tiny_llama(out_dir, seed=seed)
    click.echo(str(path))


@models.command("create")
@click.argument("name")
@click.option("--runner", required=True, help="Runner family: echo, llm, diffusion, upscale.")
@click.option("--weights", default="", help="Where the weights are (a local path).")
@click.option("-O", "--option", "options", type=InputParam(), multiple=True, callback=inputs_to_dict,
              help="A runner option, key=value (JSON if it parses). Repeatable.")
@click.option("--min", "min_instances", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--max", "max_instances", type=click.IntRange(min=1), help="Default: max(1, --min).")
@click.option("--description", default="")
@pass_cli
def models_create(obj: CliContext, name: str, runner: str, weights: str, options: dict[str, Any],
                  min_instances: int, max_instances: int | None, description: str) -> None:
    """Create a model, or a new version of it (admin): the new version rolls out on its route."""
    model = obj.client().models.create(name, runner, weights, options, description=description,
                                       min_instances=min_instances, max_instances=max_instances)
    click.echo(f"{model.name} version {model.version}")


@models.command("delete")
@click.argument("name")
@pass_cli
def models_delete(obj: CliContext, name: str) -> None:
    """Stop serving a model (admin); refused while a deployment serves it."""
    click.echo(f"deleted {obj.client().models.delete(name).name}")


@cli.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("name")
@click.option("--description", default="", help="What the model does (kept on the model).")
@pass_cli
def push(obj: CliContext, directory: Path, name: str, description: str) -> None:
    """Push a Cog model DIRECTORY (cog.yaml and its predictor) as a new version of NAME (owner/name).

    The model is created (private, yours) if it does not exist. The same content is the same version."""
    with _spinner(f"pushing {directory} to {name}..."):
        result = obj.client().models.push(directory, name, description=description)
    if result.created_model:
        click.echo(f"created model {result.model.name} (private, owned by you)")
    state = "new version" if result.new_version else "unchanged: this content is version"
    click.echo(f"{state} {result.version.id}")
    click.echo(f"run it: warmfleet predict {result.model.name}:{result.version.id} -i KEY=VALUE")


@models.command("versions")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON, with the schemas.")
@pass_cli
def models_versions(obj: CliContext, name: str, as_json: bool) -> None:
    """List a model's versions, newest (the latest) first."""
    versions = obj.client().models.versions(name)
    if as_json:
        echo_json(versions)
        return
    show_table(f"versions of {name}", ["id", "created", "runner", "size"],
           [[v.id, _time(v.created_at), v.runner, _bytes(v.bundle_size_bytes)] for v in versions])


@models.command("delete-version")
@click.argument("name")
@click.argument("version")
@pass_cli
def models_delete_version(obj: CliContext, name: str, version: str) -> None:
    """Delete one version of a model; refused while a deployment serves it."""
    click.echo(f"deleted version {obj.client().models.delete_version(name, version).id} of {name}")


def _bytes(size: int) -> str:
    return "-" if not size else f"{size / 1024**2:.1f} MiB" if size >= 1024**2 else f"{size / 1024:.1f} KiB"


# Deployments

_SCALING_OPTIONS = [
    click.option("--min", "min_instances", type=click.IntRange(min=0), help="Fewest instances (0: may scale to zero)."),
    click.option("--max", "max_instances", type=click.IntRange(min=1), help="Most instances."),
    click.option("--hardware", help="Hardware SKU to run on (`warmfleet hardware` lists them)."),
    click.option("--target", "target_ongoing_requests", type=click.FloatRange(min=0, min_open=True),
                 help="Ongoing predictions per instance to aim for."),
    click.option("--upscale-delay", "upscale_delay_s", type=click.FloatRange(min=0), help="Seconds."),
    click.option("--downscale-delay", "downscale_delay_s", type=click.FloatRange(min=0), help="Seconds."),
    click.option("--scale-to-zero-delay", "scale_to_zero_delay_s", type=click.FloatRange(min=0), help="Seconds."),
]


def scaling_options(f: Any) -> Any:
    for option in reversed(_SCALING_OPTIONS):
        f = option(f)
    return f


def _autoscaling(knobs: dict[str, Any]) -> dict[str, float]:
    names = ("target_ongoing_requests", "upscale_delay_s", "downscale_delay_s", "scale_to_zero_delay_s")
    return {k: knobs[k] for k in names if knobs.get(k) is not None}


def _show_deployments(deployments: list[Any]) -> None:
    show_table("deployments", ["name", "model", "version", "release", "instances", "hardware", "autoscaling"], [
        [d.name, d.model, d.version[:12], str(d.current_release),
         f"{d.target_instances} (min {d.min_instances}, max {d.max_instances})", d.hardware or "any",
         ", ".join(f"{k}={v:g}" for k, v in d.autoscaling.items()) or "-"] for d in deployments])


def _wait_warm(client: Client, name: str, count: int, timeout_s: float = 600.0) -> None:
    """Show a progress bar until ``count`` instances of route ``name`` are ready (the operator waits)."""
    from rich.progress import Progress

    deadline = time.monotonic() + timeout_s
    with Progress(transient=True) as progress:
        bar = progress.add_task(f"warming {name}", total=max(count, 1))
        while True:
            ready = sum(1 for i in client.cluster.instances() if i.model == name and i.state in ("idle", "processing"))
            progress.update(bar, completed=min(ready, count))
            if ready >= count:
                return
            if time.monotonic() > deadline:
                raise CliError(f"{name}: {ready} of {count} instances ready after {timeout_s:g} s; "
                               "`warmfleet instances` shows them")
            time.sleep(0.25)


@cli.group()
def deployments() -> None:
    """Named routes to a model version, with their own size and autoscaling."""


@deployments.command("create")
@click.argument("name")
@click.option("--model", required=True, help="The model to deploy, owner/name.")
@click.option("--version", default="", help="The version; default: the model's latest.")
@click.option("--wait", is_flag=True, help="Return once its minimum instances are warm.")
@scaling_options
@pass_cli
def deployments_create(obj: CliContext, name: str, model: str, version: str, wait: bool,
                       min_instances: int | None, max_instances: int | None, hardware: str | None,
                       **knobs: Any) -> None:
    """Create a deployment (admin)."""
    client = obj.client()
    dep = client.deployments.create(name, model, version, hardware=hardware or "",
                                    min_instances=min_instances or 0, max_instances=max_instances,
                                    **_autoscaling(knobs))
    if wait:
        _wait_warm(client, name, dep.min_instances)
    _show_deployments([dep])


@deployments.command("update")
@click.argument("name")
@click.option("--version", help="A new version to roll out (no prediction is dropped).")
@scaling_options
@pass_cli
def deployments_update(obj: CliContext, name: str, version: str | None, min_instances: int | None,
                       max_instances: int | None, hardware: str | None, **knobs: Any) -> None:
    """Change a deployment (admin): a new release."""
    dep = obj.client().deployments.update(name, version=version, hardware=hardware, min_instances=min_instances,
                                          max_instances=max_instances, **_autoscaling(knobs))
    _show_deployments([dep])


@deployments.command("get")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_cli
def deployments_get(obj: CliContext, name: str, as_json: bool) -> None:
    """Show a deployment."""
    dep = obj.client().deployments.get(name)
    echo_json(dep) if as_json else _show_deployments([dep])


@deployments.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_cli
def deployments_list(obj: CliContext, as_json: bool) -> None:
    """List the deployments."""
    deps = obj.client().deployments.list()
    echo_json(deps) if as_json else _show_deployments(deps)


@deployments.command("delete")
@click.argument("name")
@pass_cli
def deployments_delete(obj: CliContext, name: str) -> None:
    """Delete a deployment (admin): its instances drain; predictions queued for it fail with a reason."""
    click.echo(f"deleted {obj.client().deployments.delete(name).name}")


@cli.command()
@click.argument("deployment")
@click.option("--min", "min_instances", type=click.IntRange(min=0))
@click.option("--max", "max_instances", type=click.IntRange(min=1))
@pass_cli
def scale(obj: CliContext, deployment: str, min_instances: int | None, max_instances: int | None) -> None:
    """Set a deployment's instance bounds (admin): `scale acme/app --min 2 --max 4`."""
    if min_instances is None and max_instances is None:
        raise click.UsageError("give --min, --max or both")
    _show_deployments([obj.client().deployments.update(deployment, min_instances=min_instances,
                                                       max_instances=max_instances)])


@cli.command()
@click.argument("node_id")
@click.option("--no-wait", is_flag=True, help="Start the drain and return; run again to see its progress.")
@pass_cli
def drain(obj: CliContext, node_id: str, no_wait: bool) -> None:
    """Drain a node (admin): its instances move elsewhere, finishing their predictions; it takes no new work."""
    client = obj.client()
    status = client.cluster.drain(node_id, wait=False)
    if not no_wait and not status.done:
        from rich.progress import Progress

        with Progress(transient=True) as progress:  # the operator waits: show the instances moving
            bar = progress.add_task(f"draining {node_id}", total=max(status.instances_left, 1))
            while not status.done:
                time.sleep(0.5)
                status = client.cluster.drain(node_id, wait=False)
                progress.update(bar, completed=progress.tasks[0].total - status.instances_left)
    click.echo(f"{node_id}: {'drained' if status.done else f'{status.instances_left} instance(s) left to move'}")


@cli.command()
@pass_cli
def hardware(obj: CliContext) -> None:
    """The hardware SKUs present in the cluster, with how many nodes have each (admin)."""
    counts: dict[str, int] = {}
    for node in obj.client().cluster.nodes():
        counts[node.hardware] = counts.get(node.hardware, 0) + 1
    show_table("hardware", ["sku", "nodes"], [[sku, str(n)] for sku, n in sorted(counts.items())])


# Accounts, organizations and tokens (their own module)

for _command in (accounts.whoami, accounts.accounts, accounts.tokens):
    cli.add_command(_command)
cli.add_command(certificates.tls)  # `warmfleet tls self-signed`
cli.add_command(bench.bench)  # `warmfleet bench`: load any model or deployment (warmfleet/loadgen.py)


def main() -> None:
    """The `warmfleet` console script."""
    cli(prog_name="warmfleet")


"""`crossattn demo`: the Gradio demo, on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

from .common import MODEL_HELP, _port, command


def add(sub) -> None:
    d = command(sub, "demo", "start the Gradio demo (http://127.0.0.1:7860)")
    d.add_argument("--host", default="127.0.0.1", help="interface to bind (127.0.0.1: this machine only)")
    d.add_argument("--port", type=_port, default=7860, help="port to serve on")
    d.add_argument("--model", default=None, help=f"default model: {MODEL_HELP}")
    d.add_argument("--allow-any-model", action="store_true",
                   help="let users type a hub id or a server folder in the Model box")
    d.add_argument("--share", action="store_true", help="create a public gradio.live link (off by default)")
    d.set_defaults(func=run)


def run(args) -> None:
    from ..app import launch

    launch(args.host, args.port, args.model, args.allow_any_model, args.share)

"""Starting the server: the port, the queue's bound under a burst, and Gradio's launch options."""

from __future__ import annotations

import asyncio
import errno
import functools
import socket

import gradio as gr
import torch

from ..errors import InputError
from .limits import MAX_UPLOAD, QUEUE_SIZE, SESSIONS, Models
from .page import DemoApp

# Small images (the shapes models draw 64x64) are shown enlarged with crisp pixels; the data stays as generated.
# Galleries grow with their tiles (Gradio caps them at 550 px with a scroll bar, which hides model-view rows).
CSS = (".pixels img { image-rendering: pixelated; }\n"
       "#generated-image img, #generated-video img, #explain-image img { width: 100%; height: 100%; "
       "object-fit: contain; }\n"
       ".pixels .grid-wrap { max-height: none !important; height: auto !important; }")


def check_port(host: str, port: int) -> None:
    """Fail with one clear line when the port is taken (Gradio's own message points at an environment variable)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
            probe.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise InputError(f"port {port} on {host} is already in use: pick another with --port, "
                             f"e.g. --port {port + 1}") from None
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def one_join_at_a_time(queue) -> None:
    """Make the queue's size limit hold under a burst: Gradio checks the size, awaits the event's validator, and
    only then queues the event, so concurrent requests all pass the check first (26 were queued with a limit of
    20). Validators answer in milliseconds (they load no model), so joining one at a time costs nothing."""
    push, lock = queue.push, asyncio.Lock()

    @functools.wraps(push)
    async def push_alone(*args, **kwargs):
        async with lock:
            return await push(*args, **kwargs)

    queue.push = push_alone


def build_app(models: Models) -> gr.Blocks:
    """The page, not yet queued or served (tests and embedding apps call this)."""
    return DemoApp(models).build()


def launch(host: str = "127.0.0.1", port: int = 7860, model: str | None = None, allow_any_model: bool = False,
           share: bool = False, block: bool = True) -> tuple[gr.Blocks, str]:
    """Build and start the app; returns (app, local URL). With `block`, serve until interrupted."""
    check_port(host, port)
    # Tiny attention probabilities become denormal floats, which CPUs process ~10x slower (see cli.main).
    torch.set_flush_denormal(True)
    app = build_app(Models(model, allow_any_model))
    app.queue(default_concurrency_limit=4, max_size=QUEUE_SIZE)
    one_join_at_a_time(app._queue)
    _, url, _ = app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                           show_error=False, theme=gr.themes.Soft(), footer_links=["api"], css=CSS,
                           max_file_size=MAX_UPLOAD, state_session_capacity=SESSIONS)
    return app, url

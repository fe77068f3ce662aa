"""Errors and stopping: what the page shows for bad input, a stop, or a bug (which only the log details)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import gradio as gr

from ..errors import InputError, one_line

log = logging.getLogger("crossattn.app")  # one logger for the whole app (its callers filter by it)

INTERNAL_ERROR = "Internal error: something went wrong on the server (it is logged there). Please try again."


class Stopped(Exception):
    """The user pressed Stop or went away: the generation ends between two steps."""


def keep_quotes(message: str) -> str:
    """The message as the page should show it: Gradio's page strips a pair of quotes around a whole message,
    which would cut the first and last quote off "'dog' is not a word ...: 'a', 'triangle'"."""
    return message + "." if len(message) > 1 and message[0] == message[-1] and message[0] in "'\"" else message


def friendly(fn: Callable) -> Callable:
    """Bad input becomes its one-line message in the page; a stopped generation changes nothing; anything else a
    generic message in the page and its traceback once in the log (Gradio's own printing is off). The app keeps
    serving either way."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except InputError as exc:
            raise gr.Error(keep_quotes(one_line(exc)), print_exception=False) from None
        except Stopped as exc:  # Stop's own handler says so in the page: no error badge on every panel
            log.info("%s", exc)
            return gr.skip()
        except Exception:
            log.exception("internal error in %s", fn.__name__)
            raise gr.Error(INTERNAL_ERROR, print_exception=False) from None

    return wrapper


def lenient(validator: Callable) -> Callable:
    """A check that fails unexpectedly lets the request through (logged), where the callback reports it as an
    internal error: Gradio would otherwise send the exception's text to the client."""

    @functools.wraps(validator)
    def wrapper(*args, **kwargs):
        try:
            return validator(*args, **kwargs)
        except Exception:
            log.exception("internal error in %s", validator.__name__)
            return []

    return wrapper


def abandoned() -> bool:
    """Whether Gradio has given up on the event this thread serves: Stop cancelled it (Gradio drops it from
    its queue) or its client went away (Gradio marks it not alive). Gradio stops waiting for the event but
    cannot stop the thread computing it: the generation asks here between steps. (`gr.Request` cannot tell:
    its `is_disconnected()` answers for the POST that queued the event, long finished, so always True.)"""
    from gradio.context import LocalContext

    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    queue = getattr(blocks, "_queue", None)
    if queue is None or event_id is None:  # called outside a queued event (tests, scripts)
        return False
    event = queue.event_ids_to_events.get(event_id)
    return event is None or not event.alive


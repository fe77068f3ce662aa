"""The text side of a generation, as the trace sees it: the token ids each text encoder is given, the prompt(s)
the pipeline's `encode_prompt` is given, and the embeddings it returns.

The ids name the maps' words (`crossattn.words`); the embeddings are what `crossattn.rows` matches the denoiser's
text input against to find the prompt's batch rows. Both are only read: the text encoders get a read-only forward
pre-hook, and `encode_prompt` a wrapper that passes its arguments and results through untouched. A modular
pipeline has no `encode_prompt` of its own: its text encoder step has one, which the step calls as
``self.encode_prompt(components, prompt=...)`` — that one is wrapped, on the step.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable


class PromptWatch:
    """One trace's watch on a pipeline's text side; `watch()` installs it, `stop()` gives `encode_prompt` back."""

    def __init__(self, pipe, encoders, before_encoding: Callable[[], None]):
        self.pipe = pipe
        self.encoders = encoders  # the pipeline's attribute names of the text encoders the family reads
        # called before every text encoder or encode_prompt call: the trace ends a finished generation there
        self.before_encoding = before_encoding
        # text encoder -> the token ids of each of its calls (first call = prompts, second = negatives)
        self.calls: dict[str, list[list[list[int]]]] = {name: [] for name in encoders}
        self.encoded: list = []  # what the pipeline's encode_prompt returned in this generation
        self.typed: str | list[str] | None = None  # the prompt(s) encode_prompt was given
        # (owner, its encode_prompt, whether that was an instance attribute) for each owner wrapped (the pipeline,
        # or a modular pipeline's text encoder steps); watching until stop()
        self.originals: list[tuple] = []
        self.watching = False

    def clear(self) -> None:
        """Forget the previous generation's text."""
        self.encoded.clear()
        self.typed = None
        for calls in self.calls.values():
            calls.clear()

    def watch(self, hooks: list) -> None:
        """Wrap `encode_prompt` and hook the text encoders. Each hook goes into `hooks` as it is made, so that the
        trace removes those already made if a later one fails."""
        self._wrap_encode_prompt()
        for name in self.encoders:
            encoder = getattr(self.pipe, name, None)
            if encoder is not None:
                hook = encoder.register_forward_pre_hook(lambda m, a, k, n=name: self._on_text_encoder(n, a, k),
                                                         with_kwargs=True)
                hooks.append(hook)

    def stop(self) -> None:
        """Give `encode_prompt` back (the text encoders' hooks are in the trace's list)."""
        if not self.watching:
            return
        self.watching = False
        for owner, original, own in self.originals:
            current = vars(owner).get("encode_prompt")
            if getattr(current, "crossattn_owner", None) is not self:
                continue  # another trace wrapped ours and is still active: ours is now inert, theirs restores past it
            # skip wrappers of traces that already ended out of order (inert), back to the owner's own
            while (watch := getattr(original, "crossattn_owner", None)) is not None and not watch.watching:
                original, own = next((o, w) for t, o, w in watch.originals if t is owner)
            if own:
                owner.encode_prompt = original
            else:
                vars(owner).pop("encode_prompt", None)

    def _on_text_encoder(self, name: str, args, kwargs) -> None:
        self.before_encoding()
        ids = args[0] if args else kwargs.get("input_ids")
        if ids is not None:
            self.calls[name].append(ids.tolist())

    def _owners(self) -> list:
        """What holds the `encode_prompt` a generation calls: the pipeline, or a modular pipeline's text encoder
        steps (found among its blocks, depth first)."""
        if getattr(self.pipe, "encode_prompt", None) is not None:
            return [self.pipe]
        # `_blocks`: the blocks the pipeline runs (its public `blocks` is a deep copy, made anew on each access)
        owners, stack = [], [getattr(self.pipe, "_blocks", None)]
        while stack:
            block = stack.pop()
            if block is None:
                continue
            if getattr(block, "encode_prompt", None) is not None:
                owners.append(block)
            stack.extend(reversed(list(getattr(block, "sub_blocks", {}).values())))
        return owners

    def _wrap_encode_prompt(self) -> None:
        """Watch what each `encode_prompt` returns (an instance attribute over the class's method)."""
        self.originals = []  # a trace entered again wraps afresh
        for owner in self._owners():
            original = owner.encode_prompt
            self.originals.append((owner, original, "encode_prompt" in vars(owner)))
            owner.encode_prompt = self._wrapper(original)
        self.watching = bool(self.originals)

    def _wrapper(self, original: Callable) -> Callable:
        signature = inspect.signature(original)

        def encode_prompt(*args, **kwargs):
            if self.watching:  # (a wrapper left under another trace's after stop() is inert)
                self.before_encoding()
            returned = original(*args, **kwargs)
            if self.watching:
                if not self.encoded:  # the prompt as typed (the first call encodes prompts, later ones negatives)
                    self.typed = signature.bind_partial(*args, **kwargs).arguments.get("prompt")
                self.encoded.append(returned)
            return returned

        encode_prompt.crossattn_owner = self
        encode_prompt.__wrapped__ = original  # its signature (the prompt found by name under nested traces too)
        return encode_prompt

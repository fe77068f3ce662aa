"""What differs between model families, in one small place per family.

The recorder, heat maps and everything above them are family-blind. A `Family` answers four questions:

1. which attention layers attend to the prompt, and how each lays out text and image positions (`layers`);
2. how large the generated image's token grid is, from the denoiser's inputs (`grid`);
3. what the denoiser's text input is and how long (`text_input`, `text_len`: the rows holding the prompt are found
   by matching that input against the pipeline's prompt embeddings, `crossattn.rows`);
4. which text encoders made the text positions, and where each of their tokens sits (`segments`).

Each family lives in its own module (``unet.py``, ``sd3.py``, ``flux.py``, ``pixart.py``, ...); `family_of`
(in the package) picks one by the pipeline's class.
"""

from __future__ import annotations

import inspect
import re

import torch

from ..capture import Layer
from ..errors import InputError
from ..words import Segment, whole

__all__ = ["Family", "Segment", "numbered_layers", "template_skip", "whole"]


def numbered_layers(denoiser: torch.nn.Module, rules: dict[str, tuple[str, str]]) -> dict[str, Layer]:
    """Module path → Layer for each module whose path fully matches a rule: a regex whose one group is the
    block's number, giving (block name, layout kind). Layers are named "<block>.<number>" ("joint.3")."""
    out = {}
    for path, _ in denoiser.named_modules():
        for pattern, (block, kind) in rules.items():
            if m := re.fullmatch(pattern, path):
                out[path] = Layer(f"{block}.{m.group(1)}", block, kind, True)
    return out


class Family:
    """Defaults fit a diffusers transformer whose text-attending layers are listed by `layers`."""

    name = "?"
    pipelines: tuple[str, ...] = ()  # pipeline class names (or prefixes ending in "*") it covers
    denoiser = "transformer"  # pipeline attribute of the denoiser
    encoders: tuple[str, ...] = ("text_encoder",)  # text encoders whose calls are watched (prompt, negative)
    source = "t5"  # the name of the text the first encoder makes (`maps.word(w, source=...)`)
    resolution_sites = False  # one resolution throughout: sites are named by block ("joint"), not "up.16x16"
    concept_methods: tuple[str, ...] = ()  # `concepts.METHODS` it offers, its default first
    video = False  # makes videos: maps with frames (`HeatMaps.frames`)
    frames_in_batch = False  # a video's frames are rows of the denoiser's batch (AnimateDiff), not tokens
    concept_engine: str | None = None  # "cross" (UNet cross-attention) or "joint" (SD3 blocks): `crossattn.concepts`

    # Which attention modules attend to the text: a regex of the module path (its group: the block's number) →
    # (block name, layout kind); see `numbered_layers`. Families with other layer structures override `layers`.
    layer_rules: dict[str, tuple[str, str]] = {}

    def layers(self, denoiser: torch.nn.Module) -> dict[str, Layer]:
        """Module path → how that attention layer is traced."""
        return numbered_layers(denoiser, self.layer_rules)

    def patch(self, denoiser: torch.nn.Module) -> int:
        """Latent pixels per image token along a side."""
        return getattr(denoiser.config, "patch_size", 1) or 1

    def vae_scale(self, pipe) -> int:
        """Image pixels per latent pixel along a side."""
        return getattr(pipe, "vae_scale_factor", 8)

    def grid(self, denoiser: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[int, int]:
        """(h, w) of the generated image's token grid; default: a (B, C, H, W) latent cut in patches."""
        latent = self.first_input(args, kwargs)
        return latent.shape[-2] // self.patch(denoiser), latent.shape[-1] // self.patch(denoiser)

    def native_size(self, pipe) -> tuple[int, int]:
        """(width, height) the model was built for: its sample size × the VAE factor."""
        side = getattr(pipe, "default_sample_size", None) or getattr(pipe, self.denoiser).config.sample_size
        side = (side if isinstance(side, int) else side[0]) * self.vae_scale(pipe)
        return side, side

    def frames(self, denoiser: torch.nn.Module, args: tuple, kwargs: dict) -> int:
        """Latent frames of a video stacked along `grid`'s height (frame-major, as the denoiser's tokens are); 1
        for an image."""
        return 1

    def output_frames(self, pipe, frames: int) -> list[list[int]] | None:
        """A video: the decoded frames each latent frame covers (a VAE that compresses time makes several of one);
        None for an image."""
        return None

    def timestep(self, args: tuple, kwargs: dict) -> float:
        value = kwargs.get("timestep")
        return float(torch.as_tensor(value).flatten()[0]) if value is not None else 0.0

    def text_input(self, args: tuple, kwargs: dict):
        """The denoiser's text input, one row per batch row: a (batch, tokens, features) tensor (or a list of
        (tokens, features) tensors), as the pipeline's `encode_prompt` made it."""
        return kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)

    def text_len(self, args: tuple, kwargs: dict) -> int:
        return int(self.text_input(args, kwargs).shape[1])

    def first_input(self, args: tuple, kwargs: dict) -> torch.Tensor:
        """The noisy latent the denoiser gets (for the batch size and the CFG duplicate check)."""
        return kwargs.get("hidden_states", kwargs.get("sample", args[0] if args else None))

    def segments(self, pipe, calls: dict[str, list[list[list[int]]]], call: int, prompt: int,
                 text_len: int) -> list[Segment]:
        """The text segments of prompt `prompt` of text-encoder call `call` (0: prompts, 1: negatives), given
        the denoiser's text length. Default: the first encoder's tokens, each at its own index."""
        encoder = self.encoders[0]
        return [whole(self.source, self.tokenizer(pipe, encoder), calls[encoder][call][prompt])]

    def prompt_ids(self, pipe, prompt: str, text_len: int) -> dict[str, list[int]]:
        """Encoder → the ids the pipeline would give it for `prompt` (for maps of a call given embeddings).
        Default: each watched encoder's tokenizer, padded to the text length."""
        out = {}
        for name in self.encoders:
            tokenizer = self.tokenizer(pipe, name)
            if tokenizer is not None and getattr(pipe, name, None) is not None:
                out[name] = tokenizer(prompt, padding="max_length", max_length=text_len, truncation=True).input_ids
        return out

    def tokenizer(self, pipe, encoder: str):
        """The tokenizer that feeds a text encoder (text_encoder_2 → tokenizer_2, ...)."""
        return getattr(pipe, encoder.replace("text_encoder", "tokenizer"), None)

    def encode_texts(self, pipe, texts: list[str]) -> torch.Tensor:
        """The pipeline's text states of `texts` on their own, without guidance (concepts; `crossattn.concepts`)."""
        raise InputError(f"{self.name} cannot encode concepts")

    def default_frames(self, pipe) -> int:
        """How many frames the pipeline makes when not told."""
        frames = inspect.signature(type(pipe).__call__).parameters.get("num_frames")
        if frames is None:  # video-to-video: as many frames as the video it is given
            raise InputError(f"{type(pipe).__name__} makes as many frames as the video it is given: call it yourself "
                             "inside `with crossattn.trace(pipe):` (the maps are the same)")
        return frames.default

    def temporal_factor(self, pipe) -> int:
        """Decoded frames per latent frame: how much the VAE compresses time (1: a frame is a frame)."""
        return getattr(pipe, "vae_scale_factor_temporal", 1)

    def check_frames(self, pipe, frames: int) -> None:
        """Refuse a frame count the pipeline would silently round (a VAE that compresses time makes T·k + 1)."""
        temporal = self.temporal_factor(pipe)
        if not isinstance(frames, int) or isinstance(frames, bool) or frames < 1 or (frames - 1) % temporal:
            allowed = "a whole number from 1" if temporal == 1 else \
                f"{temporal}·k + 1 for this model (1, {temporal + 1}, {2 * temporal + 1}, …)"
            raise InputError(f"frames must be {allowed}; the pipeline's default is {self.default_frames(pipe)}; got "
                             f"{frames!r}")

    def experts(self, pipe) -> list[str]:
        """Pipeline attributes of further denoisers that run some of the steps with the same layers (Wan 2.2's
        low-noise expert); traced like the first."""
        return []

    def refused(self, pipe) -> str | None:
        """Why this pipeline of the family cannot be traced (a variant the family does not describe); None: it can."""
        return None

    def word_tokenizer(self, pipe):
        """The tokenizer whose words the maps are named by (for checking words before generating)."""
        return self.tokenizer(pipe, self.encoders[0])


def template_skip(ids: list[int], template: list[int]) -> frozenset[int]:
    """Indices of the ids that a pipeline's fixed text before the prompt (an instruction, a system prompt) made:
    the common start of `ids` and the template's own ids. Where the template ends in a space, its last token
    merges with the prompt's first ("▁" + "a" → "▁a"), which then differs and stays a word of the prompt."""
    n = 0
    while n < min(len(ids), len(template)) and ids[n] == template[n]:
        n += 1
    return frozenset(range(n))

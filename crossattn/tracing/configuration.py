"""What a trace changes in the pipeline's configuration so that it sees the attention, and what it refuses.

The capture sees a layer's attention only as a call of torch's `scaled_dot_product_attention` made while the
layer's hooks run (`crossattn.capture`). Each configuration that would hide that call is met here, once:

- a denoiser compiled whole, or sharded over devices (context parallelism): refused before anything runs;
- processors that compute plain attention without SDPA: swapped for the same computation through SDPA;
- a diffusers attention backend that bypasses SDPA (flash, flex, sage, xformers, ...): switched to "native";
- blocks compiled with `module.compile()`: run eagerly;
- layers that still never reach SDPA: refused after the first step, or named in a note if only some;
- layers a step cache skipped in some steps: named in a note.

Whatever is switched is written in the maps' notes and given back when the trace stops.
"""

from __future__ import annotations

from ..capture import PlainSDPAProcessor
from ..errors import InputError

# Cross-attention processors that compute plain softmax attention without SDPA: swapped for the trace.
NON_SDPA_PLAIN = {"AttnProcessor", "SlicedAttnProcessor", "XFormersAttnProcessor"}
# diffusers attention backends that run torch's scaled_dot_product_attention (`None`: the process-wide default)
SDPA_BACKENDS = {"native", "_native_cudnn", "_native_efficient", "_native_flash", "_native_math"}


def check_traceable(denoiser, layers) -> None:
    """Configurations the capture cannot follow, refused before anything runs (`layers`: the traced layers' paths,
    whose processors context parallelism would shard)."""
    if hasattr(denoiser, "_orig_mod"):  # torch.compile(model): hooks and modes inside one compiled graph
        raise InputError("a denoiser compiled whole with torch.compile cannot be traced (its attention calls run "
                         "inside one compiled graph): trace before compiling, or compile its repeated blocks "
                         "(denoiser.compile_repeated_blocks()), which crossattn traces exactly")
    for path in layers:
        if getattr(getattr(denoiser.get_submodule(path), "processor", None), "_parallel_config", None) is not None:
            raise InputError("context parallelism (sequences sharded over devices) is not supported: each device "
                             "sees only part of the image and text positions; trace without it")


def processors(denoiser) -> dict:
    """Attention-processor path → processor; from the modules themselves where the model does not list them
    (Z-Image's transformer has no `attn_processors`)."""
    listed = getattr(denoiser, "attn_processors", None)
    if listed is not None:
        return listed
    return {f"{n}.processor": m.processor for n, m in denoiser.named_modules() if hasattr(m, "processor")}


def plain_sdpa_swaps(modules: dict) -> dict:
    """Processor path → the `PlainSDPAProcessor` that stands in, for the traced layers (`modules`: path → module)
    whose processor computes plain attention without SDPA."""
    return {f"{path}.processor": PlainSDPAProcessor() for path, module in modules.items()
            if type(getattr(module, "processor", None)).__name__ in NON_SDPA_PLAIN}


# The two switches below fill `switched` (what to give back) as they go, not when done: a failure half-way still
# leaves the trace able to give back what was already switched.

def use_sdpa_backend(modules: dict, switched: dict) -> list[str]:
    """Traced layers (`modules`: path → module) whose diffusers attention backend would bypass torch's SDPA run
    through SDPA ("native"): `switched` gets processor → its own backend; returns the notes that say so."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry  # only where diffusers is used

    default = str(getattr(_AttentionBackendRegistry._active_backend, "value", "native"))
    counts: dict[str, int] = {}
    for module in modules.values():
        processor = getattr(module, "processor", None)
        if processor is None or not hasattr(processor, "_attention_backend"):
            continue
        own = processor._attention_backend
        backend = str(getattr(own, "value", own)) if own is not None else default
        if backend not in SDPA_BACKENDS:
            switched[processor] = own
            processor._attention_backend = "native"
            counts[backend] = counts.get(backend, 0) + 1
    return [f"the attention backend '{backend}' of {n} traced layer(s) was switched to torch's SDPA ('native') for "
            "the trace, and given back after: the traced image can differ from one made with that backend within "
            "its precision" for backend, n in counts.items()]


def give_back_backends(switched: dict) -> None:
    for processor, backend in switched.items():
        processor._attention_backend = backend
    switched.clear()


def run_compiled_blocks_eagerly(denoiser, layers, switched: dict) -> list[str]:
    """Blocks compiled with `module.compile()` (diffusers' `compile_repeated_blocks`) run their traced layers
    inside a compiled graph, where hooks and the observing mode are not executed: they run eagerly (the same
    weights and processors). `switched` gets module → its compiled forward; returns the note that says so."""
    # only a traced layer and the blocks around it decide whether it runs compiled: the modules on its path,
    # looked up one level at a time (a lookup from the root for each would cost more than the whole walk)
    around = {"": denoiser}
    for path in layers:
        parts = path.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            if name not in around:
                around[name] = around[".".join(parts[:i - 1])].get_submodule(parts[i - 1])
    for module in around.values():
        compiled = getattr(module, "_compiled_call_impl", None)
        if compiled is not None:
            switched[module] = compiled
            module._compiled_call_impl = None
    if not switched:
        return []
    return [f"{len(switched)} compiled block(s) ran uncompiled for the trace (their attention is not observable "
            "inside a compiled graph), and were given back their compiled forward after: the traced image can "
            "differ from the compiled one within float rounding"]


def give_back_compiled(switched: dict) -> None:
    for module, compiled in switched.items():
        module._compiled_call_impl = compiled
    switched.clear()


def unobserved_note(denoiser, observers, coverage: dict) -> str | None:
    """After a generation's first denoiser call: refuse at once if no traced layer that ran was seen attending (an
    attention kernel crossattn cannot observe), rather than after the whole generation; a note naming the layers
    that ran unseen, if only some did."""
    ran = {o.layer.name for o in observers if o.calls}
    if not ran and not coverage:
        raise InputError(f"no traced layer of {type(denoiser).__name__} ran its hooks in the first denoising "
                         "step (compiled code, or a wrapper that skips module hooks?): crossattn cannot see its "
                         "attention; trace the model uncompiled")
    unseen = sorted(ran - set(coverage))
    if ran and len(unseen) == len(ran):
        raise InputError(f"none of the {len(ran)} traced layers of {type(denoiser).__name__} that ran "
                         "reached torch's scaled_dot_product_attention (a custom attention processor or kernel?): "
                         "crossattn cannot see their attention; use diffusers' default processors while tracing")
    if not unseen:
        return None
    return (f"{len(unseen)} traced layer(s) ran without reaching torch's SDPA and are not in the maps: "
            f"{', '.join(unseen[:4])}{' …' if len(unseen) > 4 else ''}")


def skipped_steps_notes(recorder) -> list[str]:
    """Layers that recorded fewer steps than the generation ran (step caches, layer skipping): their maps are
    means over the steps they ran, which the note names."""
    steps = len(recorder.timesteps)
    short = {name: len(ran) for name, ran in recorder.ran_steps.items() if len(ran) < steps}
    if not short:
        return []
    listed = ", ".join(f"{name} {n}/{steps}" for name, n in list(short.items())[:6])
    return [f"{len(short)} layer(s) ran in fewer steps than the generation's {steps} (a step cache or layer "
            f"skipping): their maps average only the steps they ran ({listed}{' …' if len(short) > 6 else ''})"]

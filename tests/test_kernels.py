"""The log-sum-exp path: fused kernels called as SDPA calls them, verified on first use, and the explicit
float32 path wherever a kernel is missing, rejected or switched off (with a note). On the CPU the flash kernel
goes through the same table and verification as the CUDA ones would."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import crossattn
from crossattn.capture import kernels
from tests.helpers import seeded
from tests.reference import expected_token_maps, record_attention

PROMPT = "a red circle left of a cyan square"
CPU_FLASH = ("cpu", int(torch.nn.attention.SDPBackend.FLASH_ATTENTION.value))


@pytest.fixture
def fresh_verdicts(monkeypatch) -> dict:
    """An empty verdict cache, so that this test's calls are verified anew (and other tests' verdicts kept)."""
    verdicts: dict = {}
    monkeypatch.setattr(kernels, "_VERDICTS", verdicts)
    return verdicts


def generate(pipe):
    """A traced 3-step CFG generation, with the independent float64 recomputation of every traced call."""
    with crossattn.trace(pipe) as tr, record_attention(pipe.unet, list(tr.layers)) as calls:
        out = pipe(PROMPT, num_inference_steps=3, generator=seeded(), output_type="latent").images
    return tr, calls, out


def assert_maps_match_the_reference(tr, calls) -> None:
    maps = tr.heat_maps()
    for h, w in maps.resolutions:
        group = [p for p in calls if p.shape[-2] == h * w]
        expected = expected_token_maps(group, slice(1, 2), slice(0, h * w), slice(0, group[0].shape[-1]),
                                       tr.kept_positions)  # CFG: the prompt's row is the second
        got = maps.filter(resolutions=[f"{h}x{w}"]).data.token_maps().reshape(h * w, -1)
        assert torch.allclose(got, expected, atol=1e-6)


def test_cpu_flash_is_verified_once_per_signature_and_then_trusted(tiny_sd, fresh_verdicts, monkeypatch):
    plain = tiny_sd(PROMPT, num_inference_steps=3, generator=seeded(), output_type="latent").images
    kernel = kernels.KERNELS[CPU_FLASH]
    used = []

    def counted(*args):
        used.append(args[0].shape)
        return kernel.call(*args)

    monkeypatch.setitem(kernels.KERNELS, CPU_FLASH, dataclasses.replace(kernel, call=counted))
    tr, calls, out = generate(tiny_sd)
    assert torch.equal(out, plain)  # the kernel's output is SDPA's, bit for bit
    recorded = sum(c["recorded"] for c in tr.recorder.coverage.values())
    assert tr.recorder.lse_sources == {"cpu flash": recorded} and len(used) == recorded
    # verified once per signature (one per resolution and batch layout here), then trusted
    assert fresh_verdicts and set(fresh_verdicts.values()) == {None} and len(fresh_verdicts) < recorded
    assert {signature[0] for signature in fresh_verdicts} == {"cpu flash"}
    assert not any("explicit" in note for note in tr.heat_maps().notes)
    assert_maps_match_the_reference(tr, calls)


def _wrong_output(out, lse):
    out = out.clone()
    out[0, 0, 0, 0] += 1e-3  # one element, slightly: torch.equal must catch it
    return out, lse


def _wrong_lse(out, lse):
    return out, lse / 0.6931471805599453  # a log-sum-exp in base 2


def _failing(out, lse):
    raise RuntimeError("this torch calls the op differently")


@pytest.mark.parametrize(("fault", "reason"), [(_wrong_output, "did not reproduce SDPA's output"),
                                               (_wrong_lse, "gave another log-sum-exp"),
                                               (_failing, "failed (RuntimeError)")], ids=["output", "lse", "exception"])
def test_a_kernel_that_does_not_reproduce_sdpa_is_rejected(tiny_sd, fresh_verdicts, monkeypatch, fault, reason):
    plain = tiny_sd(PROMPT, num_inference_steps=3, generator=seeded(), output_type="latent").images
    kernel = kernels.KERNELS[CPU_FLASH]
    monkeypatch.setitem(kernels.KERNELS, CPU_FLASH,
                        dataclasses.replace(kernel, call=lambda *args: fault(*kernel.call(*args))))
    tr, calls, out = generate(tiny_sd)
    assert torch.equal(out, plain)  # SDPA itself gave every output
    assert fresh_verdicts and set(fresh_verdicts.values()) == {f"cpu flash {reason}"}
    recorded = sum(c["recorded"] for c in tr.recorder.coverage.values())
    assert tr.recorder.lse_sources == {f"explicit: cpu flash {reason}": recorded}
    notes = [n for n in tr.heat_maps().notes if "explicit float32 path" in n]
    assert notes == [f"the explicit float32 path was used for {recorded} of {recorded} recorded attention calls "
                     f"(no fused kernel gave the log-sum-exp here: cpu flash {reason}): the maps are as exact, their "
                     "cost is a second attention pass over all keys"]
    assert_maps_match_the_reference(tr, calls)


def _reference(q, k, mask, causal, scale, rows, images, keys):
    """float64 softmax probabilities of `rows` × `images` queries on `keys`, with SDPA's mask semantics."""
    scores = q.double() @ k.double().mT * scale
    if causal:
        scores = scores.masked_fill(torch.ones(scores.shape[-2:], dtype=torch.bool).tril().logical_not(), -torch.inf)
    elif mask is not None:
        scores = scores.masked_fill(~mask, -torch.inf) if mask.dtype == torch.bool else scores + mask.double()
    return scores.softmax(-1)[rows, :, images][..., keys].float()


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "explicit"])
@pytest.mark.parametrize("masking", ["none", "bool", "float", "causal"])
def test_masks_and_causality_on_both_paths(fresh_verdicts, monkeypatch, fused, masking):
    """SDPA's bool masks become additive ones before the kernel (as SDPA converts them); each path gives SDPA's
    output and the probabilities of a float64 softmax, on a joint sequence whose image queries come last."""
    monkeypatch.setattr(kernels, "_FLASH_LSE", fused)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 12, 8, generator=g) for _ in range(3))
    mask = None
    if masking == "bool":
        mask = torch.rand(2, 1, 12, 12, generator=g) > 0.3
        mask[..., 0] = True  # every query attends somewhere
    elif masking == "float":
        mask = torch.randn(2, 1, 12, 12, generator=g)
    call = dict(attn_mask=mask, dropout_p=0.0, is_causal=masking == "causal", scale=None)
    rows, images = slice(1, 2), slice(5, 12)  # text positions 0-4, image 5-11
    for wanted in (slice(1, 4), torch.tensor([0, 2, 3])):
        out, probs, source = kernels.attention_and_probabilities(q, k, v, call, rows, images, wanted, None)
        assert torch.equal(out, torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                                                 is_causal=masking == "causal"))
        expected = _reference(q, k, mask, masking == "causal", 8**-0.5, rows, images, wanted)
        assert probs.dtype == torch.float32 and torch.allclose(probs, expected, atol=1e-6)
        assert source == ("cpu flash" if fused else "explicit")
    assert set(fresh_verdicts.values()) == ({None} if fused else set())

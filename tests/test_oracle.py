"""crossattn's maps agree with attention-map-diffusers' (an independent implementation, by other authors) on the
same generation: tiny UNet and tiny SD3 pipelines, every layer, per token (see `benchmarks/oracle.py`).

Skipped when the peer is not installed (``pip install --no-deps attention-map-diffusers==1.0.0``)."""

from __future__ import annotations

import pytest

from benchmarks import oracle

pytest.importorskip("attention_map_diffusers")


@pytest.mark.parametrize("family", ["sd1", "sd3"])
def test_maps_agree_with_attention_map_diffusers(family):
    case = oracle.cases()[family]
    result = oracle.compare(case.build(), case.call)
    # both tools leave the generation bit-identical, so they saw the same attention
    assert result["outputs_identical_to_plain"] == {"crossattn": True, "peer": True}
    # same layers, same steps: nothing only one of them captured
    assert result["layers_compared"] == result["layers_crossattn"] == result["layers_peer"] > 0
    steps = case.call["num_inference_steps"]
    assert result["steps"] == {"crossattn": steps, "peer": steps}
    assert len(result["per_token"]) == len(result["tokens"]) >= 9  # start, 8 prompt words (cyan: 2), end
    for token in result["per_token"]:
        assert token["r"] > 0.9999, token
        assert abs(token["mass_ratio"] - 1) < 1e-4, token
    assert abs(result["mass_ratio"] - 1) < 1e-4

"""The shapes world, its trainer, its evaluation, and the shipped model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import crossattn
from crossattn.shapes import evaluate as ev
from crossattn.shapes.model import MODEL_DIR
from crossattn.shapes.train import Recipe, Trainer, scene_batch
from crossattn.shapes.world import BACKGROUND, COLOURS, parse_caption, sample_scene


def test_scenes_are_deterministic_and_masks_match_pixels():
    for seed in range(50):
        a, b = sample_scene(seed), sample_scene(seed)
        assert a.caption == b.caption and np.array_equal(a.image, b.image)
        covered = np.zeros(a.image.shape[:2], bool)
        for obj, mask in zip(a.objects, a.masks):
            assert mask.any() and (a.image[mask] == COLOURS[obj.colour]).all()
            assert not (covered & mask).any()  # objects never overlap
            covered |= mask
        assert (a.image[~covered] == BACKGROUND).all()
    assert sample_scene(1).caption != sample_scene(2).caption


def test_captions_name_objects_and_relations():
    two = [s for s in (sample_scene(i, n_objects=2) for i in range(40))]
    for scene in two:
        pairs, relation = parse_caption(scene.caption)
        assert pairs == [(o.colour, o.shape) for o in scene.objects]
        assert relation == scene.relation
        a, b = scene.objects
        dx, dy = b.cx - a.cx, b.cy - a.cy
        assert {"left_of": dx > 0, "right_of": dx < 0, "above": dy > 0, "below": dy < 0}[relation]
    assert any("cyan" in s.caption for s in two)  # the multi-token colour is in use


def test_segmentation_and_shape_classifier_on_ground_truth():
    right, total = 0, 0
    for seed in range(200):
        scene = sample_scene(seed)
        masks = ev.colour_masks(scene.image)
        for obj, truth in zip(scene.objects, scene.masks):
            blob = ev.largest_blob(masks[obj.colour])
            assert ev.iou(blob, truth) > 0.85
            right += ev.classify_shape(truth) == obj.shape
            total += 1
    assert right / total > 0.97


def test_iou_on_hand_made_masks():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:, :5] = True
    b[:, 2:7] = True
    assert ev.iou(a, b) == pytest.approx(30 / 70)
    assert ev.iou(a, a) == 1 and ev.iou(a, ~a) == 0 and ev.iou(b & False, a & False) == 0


def test_a_few_training_steps_reduce_the_loss(tmp_path):
    torch.manual_seed(0)
    trainer = Trainer(tmp_path, Recipe(batch=4, caption_dropout=0.0))
    x, captions = scene_batch(0, 4)
    params = list(trainer.unet.parameters()) + list(trainer.text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)

    def loss_now() -> float:
        with torch.no_grad():
            return trainer.unet_loss(x, captions, torch.Generator().manual_seed(0)).item()

    before = loss_now()
    for _ in range(15):
        loss = trainer.unet_loss(x, captions, torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss_now() < 0.7 * before


@pytest.fixture(scope="module")
def shipped():
    pipe = crossattn.load_pipeline(device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_shipped_model_is_small_safetensors_and_loads_offline(shipped):
    files = [p for p in MODEL_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 25 * 2**20
    weights = [p.name for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".ckpt")]
    assert weights and all(w.endswith(".safetensors") for w in weights)
    assert type(shipped).__name__ == "StableDiffusionPipeline" and shipped.unet.dtype == torch.float32
    image = shipped("a red circle left of a blue square", num_inference_steps=4,
                    generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)


def test_eval_runs_on_a_handful_of_prompts(shipped):
    result, examples = ev.evaluate(shipped, n=3, steps=6, show=1)
    assert result["prompts"] == 3 and 0 <= result["colour_present"] <= 1
    assert len(examples) == 1 and examples[0][0].size == (64, 64)
    assert set(result["miou"]) == {"colour word", "shape word", "colour+shape", "gaussian", "uniform"}
    assert "mIoU, colour+shape" in ev.format_table(result)

"""Train a shapes-world pipeline from scratch on the CPU (or CUDA when present), resumably.

Two architectures (`model.ARCHITECTURES`): ``unet`` (a StableDiffusionPipeline) and ``mmdit`` (a
StableDiffusion3Pipeline). Two phases, both reproducible from one seed (batch k is always drawn from
seed + k, see `world`'s seed ranges, so a resumed run sees the same data as an uninterrupted one):

1. the VAE (factor 4) learns to reconstruct 64×64 scenes (MSE + a tiny KL term) — skipped when the run
   starts from a pipeline folder (`init_from`), whose VAE it reuses;
2. the denoiser and its text encoder(s) learn to denoise VAE latents given the caption, with 10 % caption
   dropout (for classifier-free guidance), AdamW with warm-up and an EMA of the weights (the EMA weights are
   the ones exported). UNet: v-prediction on a cosine schedule, min-SNR-5 or clamped weighting. MMDiT: flow
   matching (x_t = (1 − σ)·x0 + σ·ε, target ε − x0) with logit-normal σ, as SD3 is trained.

`init_from` names a diffusers folder whose parts the run starts from: all of them for a fine-tune, or, for a
new MMDiT, the UNet model's folder, which lends its VAE and its trained text encoder (the MMDiT's first one).

Checkpoints are safetensors + JSON in the run folder, written every `save_every` steps; a run that is
stopped resumes where its last checkpoint left off. Every invocation appends its options to
``stages.jsonl``. `export` writes a standard diffusers folder. The options are a `recipe.Recipe`;
docs/shapes.md lists the recipes that made the shipped models (``recipes/*.json``, given with ``--recipe``).
Architecture differences (noising, targets, loss weights, text inputs) live in `model.Architecture`.

    crossattn train-shapes --run runs/base --recipe recipes/unet-base.json      # resumable; poll log.txt
    crossattn train-shapes --run runs/base --export runs/base-export
"""

from __future__ import annotations

import copy
import functools
import json
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ..models import EMBEDDED, asset_path
from . import grounding
from .model import ARCHITECTURES, BETA_SCHEDULE, PREDICTION_TYPE, TOKENIZER_DIR, build_vae, load_tokenizer
from .recipe import Recipe
from .world import (
    HELD_OUT_SEED,
    PLACING_SEED,
    SCALING_SEED,
    Scene,
    denoiser_batch_seed,
    in_one_colour,
    naming_one,
    position_phrase,
    resample_layout,
    shapes_differ,
    training_scene,
    vae_batch_seed,
    without_colours,
)

SAMPLE_PROMPTS = [
    "a red circle left of a blue square",
    "a small green triangle above a yellow circle",
    "a blue square on the right",
    "a yellow triangle below a cyan circle",
    "a large cyan square right of a red triangle",
    "a green circle",
    "a red square, a yellow circle and a blue triangle",
    "a blue triangle at the top",
]


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 images (..., H, W, 3) as float (..., 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0).movedim(-1, -3)


def places_objects(scene: Scene) -> bool:
    """Does the caption say where its objects are (a relation, or a single object's position)?"""
    return scene.relation is not None or position_phrase(scene.caption) is not None


def scene_batch(start_seed: int, n: int, placing_share: float = 0.0, same_colour_share: float = 0.0,
                colourless_share: float = 0.0, one_shape_share: float = 0.0) -> tuple[torch.Tensor, list[str],
                                                                                   list[Scene]]:
    """n scenes as a (n, 3, 64, 64) tensor in [-1, 1], their captions, and the scenes themselves; about
    `placing_share` of them drawn among scenes whose caption places its objects, about `same_colour_share` of
    those with several objects redrawn in one colour (`world.in_one_colour`), about `colourless_share` of all
    captioned without colours (`world.without_colours`), and about `one_shape_share` of those of several objects
    of different shapes captioned with one object's shape alone (`world.naming_one`)."""
    scenes = [training_scene(start_seed + i) for i in range(n)]
    if placing_share > 0:
        rng = np.random.default_rng(start_seed)
        for i in np.nonzero(rng.random(n) < placing_share)[0]:
            seed = PLACING_SEED + (start_seed + i) * 8
            while not places_objects(scenes[i]):
                scenes[i] = training_scene(seed)
                seed += 1
    if same_colour_share > 0:  # its own stream: the batch's other draws stay as they were without it
        chosen = np.random.default_rng([start_seed, 1]).random(n) < same_colour_share
        scenes = [in_one_colour(s) if pick and len(s.objects) > 1 else s for s, pick in zip(scenes, chosen)]
    if colourless_share > 0:
        chosen = np.random.default_rng([start_seed, 2]).random(n) < colourless_share
        scenes = [without_colours(s) if pick else s for s, pick in zip(scenes, chosen)]
    if one_shape_share > 0:
        rng = np.random.default_rng([start_seed, 3])
        chosen, which = rng.random(n) < one_shape_share, rng.random(n)
        scenes = [naming_one(s, int(w * len(s.objects))) if pick and len(s.objects) > 1 and shapes_differ(s) else s
                  for s, pick, w in zip(scenes, chosen, which)]
    return to_tensor(np.stack([s.image for s in scenes])), [s.caption for s in scenes], scenes


def reference_batch(scenes: list[Scene], captions: list[str], k: int, seed: int) -> torch.Tensor:
    """(n, k, 3, 64, 64) images in [-1, 1]: k other layouts of each caption (random scenes for a dropped one)."""
    rng = np.random.default_rng(seed)
    refs = [[resample_layout(scene, rng) if caption else training_scene(int(rng.integers(HELD_OUT_SEED)))
             for _ in range(k)] for scene, caption in zip(scenes, captions)]
    return to_tensor(np.stack([[s.image for s in row] for row in refs]))


def _save(path: Path, modules: dict[str, torch.nn.Module], opt: torch.optim.Optimizer | None, state: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for name, module in modules.items():
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, path / f"{name}.safetensors")
    if opt is not None:
        sd = opt.state_dict()
        flat = {f"{i}.{k}": v for i, s in sd["state"].items() for k, v in s.items()}
        save_file(flat, path / "optimizer.safetensors")
        state = {**state, "param_groups": sd["param_groups"]}
    tmp = path / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(path / "state.json")  # state.json last: its presence marks a complete checkpoint


def _load(path: Path, modules: dict[str, torch.nn.Module], opt: torch.optim.Optimizer | None) -> dict:
    state = json.loads((path / "state.json").read_text())
    for name, module in modules.items():
        module.load_state_dict(load_file(path / f"{name}.safetensors"))
    if opt is not None:
        flat = load_file(path / "optimizer.safetensors")
        per_param: dict[int, dict] = {}
        for key, value in flat.items():
            i, k = key.split(".", 1)
            per_param.setdefault(int(i), {})[k] = value
        opt.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})
    return state


class Trainer:
    """Holds the models and the run folder; `train_vae` then `train_denoiser`, each resumable."""

    def __init__(self, run_dir: str | Path, recipe: Recipe, device: str | None = None):
        self.run = Path(run_dir)
        self.recipe = recipe
        self.arch = ARCHITECTURES[recipe.arch]
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch.manual_seed(recipe.seed)
        self.vae = build_vae().to(self.device)
        self.parts = {name: m.to(self.device) for name, m in self.arch.build().items()}
        self.tokenizer = load_tokenizer()
        self.store = grounding.AttentionStore()  # replaced by the training processors' store when installed
        self.step = 0  # the denoiser step being trained (the grounding term depends on it)
        self.noise_sched = DDPMScheduler(beta_schedule=BETA_SCHEDULE, prediction_type=PREDICTION_TYPE)
        alphas = self.noise_sched.alphas_cumprod.to(self.device)
        self.snr = alphas / (1 - alphas)
        self.log_file = self.run / "log.txt"
        self.run.mkdir(parents=True, exist_ok=True)
        saved = self.run / "recipe.json"  # the run's first options: what it is (architecture, starting point)
        first = json.loads(saved.read_text()) if saved.exists() else asdict(recipe)
        for key, before_saved in (("init_from", None), ("arch", "unet")):  # runs saved before `arch` were UNets
            if first.get(key, before_saved) != getattr(recipe, key):
                raise ValueError(f"{self.run} was started with {key}={first.get(key)!r}; resume or export it with "
                                 f"the same (got {getattr(recipe, key)!r})")
        if not saved.exists():
            saved.write_text(json.dumps(first, indent=1))

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.parts[self.arch.denoiser]

    @functools.cached_property
    def live(self):
        """A pipeline around the live (trained) modules: it encodes captions exactly as at inference."""
        return self.arch.assemble(self.vae, self.parts)

    def log(self, msg: str) -> None:
        with open(self.log_file, "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {msg}\n")

    def log_stage(self) -> None:
        """Append this invocation's options to stages.jsonl: the run's full history of options."""
        with open(self.run / "stages.jsonl", "a") as f:
            f.write(json.dumps({"time": time.strftime("%Y-%m-%d %H:%M:%S"), **asdict(self.recipe)}) + "\n")

    # ---- phase 1: VAE -------------------------------------------------------------------------------
    def train_vae(self) -> None:
        r, ckpt = self.recipe, self.run / "vae"
        if r.init_from:  # the VAE comes trained with the initial weights
            return
        opt = torch.optim.AdamW(self.vae.parameters(), lr=r.vae_lr)
        step = _load(ckpt, {"vae": self.vae}, opt)["step"] if (ckpt / "state.json").exists() else 0
        self.vae.train()
        bar = tqdm(range(step, r.vae_steps), initial=step, total=r.vae_steps, desc="vae", mininterval=10)
        for step in bar:
            x, _, _ = scene_batch(vae_batch_seed(r.seed, step, r.vae_batch), r.vae_batch)
            x = x.to(self.device)
            for group in opt.param_groups:  # cosine decay: a constant 1e-3 made the loss spike late in training
                group["lr"] = r.vae_lr * 0.5 * (1 + math.cos(math.pi * step / r.vae_steps))
            posterior = self.vae.encode(x).latent_dist
            recon = self.vae.decode(posterior.sample()).sample
            mse = F.mse_loss(recon, x)
            loss = mse + r.kl_weight * posterior.kl().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.set_postfix(mse=f"{mse.item():.4f}", refresh=False)
            if (step + 1) % 100 == 0:
                self.log(f"vae step {step + 1} mse {mse.item():.5f}")
            if (step + 1) % r.save_every == 0 or step + 1 == r.vae_steps:
                _save(ckpt, {"vae": self.vae}, opt, {"step": step + 1})
        self.vae.eval()
        if "scaling_factor" not in json.loads((ckpt / "state.json").read_text()):
            self._set_scaling_factor(ckpt)

    @torch.no_grad()
    def _set_scaling_factor(self, ckpt: Path) -> None:
        # As in SD: scale latents to unit variance so the noise schedule sees the intended SNRs.
        x, _, _ = scene_batch(SCALING_SEED, 256)
        z = self.vae.encode(x.to(self.device)).latent_dist.sample()
        factor = float(1.0 / z.std())
        self.vae.register_to_config(scaling_factor=factor)
        state = json.loads((ckpt / "state.json").read_text())
        (ckpt / "state.json").write_text(json.dumps({**state, "scaling_factor": factor}, indent=1))
        self.log(f"vae scaling factor {factor:.4f}")

    def _load_trained_vae(self) -> None:
        if self.recipe.init_from:
            self._load_initial_weights("vae", self.vae)
        else:
            state = _load(self.run / "vae", {"vae": self.vae}, None)
            self.vae.register_to_config(scaling_factor=state["scaling_factor"])
        self.vae.eval().requires_grad_(False)

    def _load_initial_weights(self, part: str, module: torch.nn.Module) -> bool:
        """Copy `part` of the `init_from` pipeline into `module` (in fp32); False if that folder lacks it.

        A CLIPTextModel's weights may start a CLIPTextModelWithProjection: only the projection stays new.
        """
        name = self.recipe.init_from
        root = asset_path(name) if name in EMBEDDED else Path(name)
        if not (root / "model_index.json").exists():
            raise FileNotFoundError(f"init_from: {root} is missing or not a diffusers pipeline folder; "
                                    "expected a diffusers pipeline folder")
        folder = root / part
        if not folder.is_dir():
            return False
        weights = next(folder.glob("*.safetensors"), None)
        if weights is None:
            raise FileNotFoundError(f"init_from: no .safetensors weights in {folder} (only safetensors are loaded)")
        state = {k: v.float() for k, v in load_file(weights).items()}
        if hasattr(module, "text_model") and not any(k.startswith("text_model.") for k in state):
            state = {f"text_model.{k}": v for k, v in state.items()}  # a CLIPTextModel saved by transformers 5
        missing, unexpected = module.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("text_projection.") for k in missing):
            raise ValueError(f"init_from: {folder} does not fit {type(module).__name__} (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")
        if part == "vae":
            config = json.loads((folder / "config.json").read_text())
            module.register_to_config(scaling_factor=config["scaling_factor"])
        self.log(f"{part} starts from {folder}" + (f" (new: {', '.join(missing)})" if missing else ""))
        return True

    # ---- phase 2: denoiser + text encoder(s) --------------------------------------------------------
    def load_starting_weights(self) -> None:
        """The trained VAE, and whichever trained parts the `init_from` pipeline has."""
        self._load_trained_vae()
        if self.recipe.init_from:
            for name, module in self.parts.items():
                self._load_initial_weights(name, module)

    def train_denoiser(self) -> None:
        r, ckpt = self.recipe, self.run / "unet"  # "unet" for the MMDiT too: existing runs resume from it
        self.load_starting_weights()  # before the EMA copies, so they start from the initial weights too
        params = [p for m in self.parts.values() for p in m.parameters()]
        opt = torch.optim.AdamW(params, lr=r.lr, weight_decay=r.weight_decay)
        self.ema = {name: copy.deepcopy(m).requires_grad_(False) for name, m in self.parts.items()}
        modules = self._checkpoint_modules()
        step = _load(ckpt, modules, opt)["step"] if (ckpt / "state.json").exists() else 0
        # After the EMA copies: they keep the plain processors for sampling. The MMDiT always needs the training
        # processors (they weigh its one zero row as T5's 256); the UNet only for the grounding term.
        if self.arch.training_sink_logit is not None or r.grounding_weight > 0:
            self.store = grounding.install(self.denoiser, self.arch.training_sink_logit, r.grounding_batch or None)
        for m in self.parts.values():
            m.train()
        bar = tqdm(range(step, r.denoiser_steps), initial=step, total=r.denoiser_steps, desc=self.arch.denoiser,
                   mininterval=10)
        for step in bar:
            gen = torch.Generator(self.device).manual_seed(r.seed * 1_000_003 + step)
            x, captions, scenes = scene_batch(denoiser_batch_seed(r.seed, step, r.batch), r.batch, r.placing_share,
                                              r.same_colour_share, r.colourless_share, r.one_shape_share)
            drop = torch.rand(len(captions), generator=gen, device=self.device) < r.caption_dropout
            captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
            masks = None
            if r.grounding_weight > 0 and step >= r.grounding_start:
                rows = r.grounding_batch or len(scenes)
                masks = grounding.token_masks(scenes[:rows], captions[:rows], self.tokenizer).to(self.device)
            self.step = step
            loss, ground = self.denoiser_loss(x, captions, gen, masks, scenes)
            lr = r.denoiser_lr(step)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            self._ema_update(step)
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
            if (step + 1) % 50 == 0:
                extra = f" grounding {ground.item():.4f}" if masks is not None else ""
                self.log(f"{self.arch.denoiser} step {step + 1} loss {loss.item():.5f} lr {lr:.2e}{extra}")
            if (step + 1) % r.save_every == 0 or step + 1 == r.denoiser_steps:
                _save(ckpt, modules, opt, {"step": step + 1})
            if (step + 1) % r.sample_every == 0:
                self.sample_grid(self.run / "samples" / f"step_{step + 1:06d}.png")

    def sample_timesteps(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """n training timesteps in [0, 999] (float for flow matching): uniform for the UNet, logit-normal
        for flow matching, except a `high_noise_share` drawn from [high_noise_from, 999]."""
        r = self.recipe
        return self.arch.sample_timesteps(n, gen, self.device, self.noise_sched.config.num_train_timesteps,
                                          r.high_noise_from, r.high_noise_share)

    def encode_captions(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """The denoiser's text inputs, computed exactly as the pipeline computes them (with gradients)."""
        return self.arch.encode_captions(self.live, captions, self.device)

    def denoiser_loss(self, x: torch.Tensor, captions: list[str], gen: torch.Generator,
                      masks: torch.Tensor | None = None,
                      scenes: list[Scene] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(total loss, grounding term) on one batch (images in [-1, 1], captions). The grounding term counts
        when per-token object masks are given (see `grounding`). Given the batch's `scenes` and
        `reference_layouts` > 0, the items drawn at t ≥ high_noise_from get the posterior-mean target."""
        r = self.recipe
        latents = self.encode(x, gen)
        noise = torch.randn(latents.shape, generator=gen, device=self.device)
        t = self.sample_timesteps(len(captions), gen)
        noisy, target = self.arch.add_noise(latents, noise, t, self.noise_sched)
        rows = (t >= r.high_noise_from).nonzero().flatten().tolist() if r.reference_layouts > 0 else []
        if scenes is not None and rows:  # only noisy items: at lower noise the weights pick the true layout anyway
            references = reference_batch([scenes[i] for i in rows], [captions[i] for i in rows],
                                         r.reference_layouts, r.seed * 1_000_003 + self.step)
            target[rows] = self._posterior_mean_target(latents[rows], noisy[rows], t[rows], references, gen)
        self.store.probs.clear()
        self.store.active = masks is not None
        pred = self.denoiser(noisy, timestep=t, **self.encode_captions(captions)).sample
        weight = self.arch.loss_weight(t, self.snr, r.weighting, r.min_snr_gamma)
        loss = (weight * ((pred - target) ** 2).mean(dim=(1, 2, 3))).mean()
        ground = torch.zeros(())
        if masks is not None:
            ground = grounding.grounding_loss(self.store.probs, masks, self.step >= r.coverage_start)
            loss = loss + r.grounding_weight * ground
        self.store.probs.clear()
        return loss, ground

    @torch.no_grad()
    def encode(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Scaled VAE latents sampled from the posterior, as the denoiser is trained on."""
        return self.vae.encode(images.to(self.device)).latent_dist.sample(gen) * self.vae.config.scaling_factor

    @torch.no_grad()
    def _posterior_mean_target(self, latents: torch.Tensor, noisy: torch.Tensor, t: torch.Tensor,
                               references: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Targets with E[z0 | z_t, caption] in place of the z0 drawn, estimated from `references`, (n, K, 3,
        H, W) images of K other layouts of each caption, plus the true one."""
        refs = self.encode(references.flatten(0, 1), gen).unflatten(0, references.shape[:2])
        z0 = torch.cat([latents[:, None], refs], dim=1)  # (n, K + 1, C, h, w)
        scale, var = self.arch.noising(t, self.noise_sched)  # z_t ~ N(scale · z0, var · I)
        # each layout's weight is the likelihood of the noisy latent under it
        log_w = -((noisy[:, None] - scale * z0) ** 2).flatten(2).sum(-1) / (2 * var.flatten(1))
        mean = (log_w.softmax(1)[..., None, None, None] * z0).sum(1)
        return self.arch.target_from_clean(noisy, mean, scale, var)  # the target is linear in z0: E[target | z_t]

    def _checkpoint_modules(self) -> dict[str, torch.nn.Module]:
        return dict(self.parts) | {f"ema_{n}": m for n, m in self.ema.items()}

    @torch.no_grad()
    def _ema_update(self, step: int) -> None:
        decay = min(self.recipe.ema_decay, (1 + step) / (10 + step))
        for name, live in self.parts.items():
            for e, p in zip(self.ema[name].parameters(), live.parameters()):
                e.lerp_(p, 1 - decay)

    # ---- outputs --------------------------------------------------------------------------------------
    def pipeline(self):
        """The EMA weights as a pipeline (shares modules with the trainer)."""
        return self.arch.assemble(self.vae, self.ema)

    @torch.no_grad()
    def sample_grid(self, path: Path, steps: int = 20, guidance: float = 4.0) -> None:
        pipe = self.pipeline()
        pipe.set_progress_bar_config(disable=True)
        gen = torch.Generator(self.device).manual_seed(0)
        images = pipe(SAMPLE_PROMPTS, num_inference_steps=steps, guidance_scale=guidance, generator=gen,
                      output_type="np").images
        grid = (np.concatenate(list(images), axis=1) * 255).round().astype(np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(path)
        self.log(f"samples -> {path}")

    def export(self, out_dir: str | Path) -> Path:
        """Write the EMA pipeline as a diffusers folder, weights in fp16 safetensors (≈ half the bytes)."""
        self._load_trained_vae()
        self.ema = {name: copy.deepcopy(m) for name, m in self.parts.items()}
        _load(self.run / "unet", self._checkpoint_modules(), None)
        pipe = self.pipeline().to(torch.float16)
        pipe.save_pretrained(out_dir, safe_serialization=True)
        index = Path(out_dir) / "model_index.json"
        entries = json.loads(index.read_text())
        for name, component in pipe.components.items():  # absent parts (SD3 without T5) must be listed as such,
            if component is None and name not in entries:  # or DiffusionPipeline.from_pretrained refuses the folder
                entries[name] = [None, None]
        index.write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")
        for folder in Path(out_dir).glob("tokenizer*"):  # the BPE files (1.5 MB) instead of tokenizer.json (3.6 MB):
            (folder / "tokenizer.json").unlink(missing_ok=True)  # the same tokens (tested), and the MMDiT has two
            for name in ("vocab.json", "merges.txt"):
                shutil.copyfile(TOKENIZER_DIR / name, folder / name)
        return Path(out_dir)


def train(run_dir: str | Path, recipe: Recipe | None = None, device: str | None = None) -> Trainer:
    """Run (or resume) both phases; returns the trainer, whose `.pipeline()` is the EMA model."""
    torch.set_flush_denormal(True)  # denormals made CPU training ~10x slower when scoping this
    trainer = Trainer(run_dir, recipe or Recipe(), device)
    trainer.log_stage()
    start = time.time()
    trainer.train_vae()
    trainer.train_denoiser()
    trainer.log(f"done in {math.ceil(time.time() - start)} s of this invocation")
    return trainer


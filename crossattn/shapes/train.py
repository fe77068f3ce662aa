"""Train the shapes-world pipeline from scratch on the CPU (or CUDA when present), resumably.

Two phases, both reproducible from one seed (batch k is always drawn from seed + k, so a resumed run sees
the same data as an uninterrupted one):

1. the VAE (factor 4) learns to reconstruct 64×64 scenes (MSE + a tiny KL term);
2. the UNet and the text encoder learn to denoise VAE latents given the caption: v-prediction on a cosine
   schedule, min-SNR-5 loss weighting, 10 % caption dropout (for classifier-free guidance), AdamW with
   warm-up, EMA of the weights (the EMA weights are the ones exported).

A run can instead start from an exported pipeline (`init_from`, e.g. the shipped model): the VAE phase is
skipped and phase 2 continues from those weights, with its own step count and schedule.

Checkpoints are safetensors + JSON in the run folder, written every `save_every` steps; a run that is
stopped resumes where its last checkpoint left off. `export` writes a standard diffusers folder.

    crossattn train-shapes --run runs/shapes --unet-steps 12000   # resumable; poll runs/shapes/log.txt
    crossattn train-shapes --run runs/shapes --export assets/shapes-model
    crossattn train-shapes --run runs/tune --init-from assets/shapes-model --grounding-start 0 --coverage-start 0 \
        --weighting clamped --placing-share 0.8 --high-noise-share 0.6 --high-noise-from 950 --reference-layouts 4
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from . import grounding
from .model import (
    BETA_SCHEDULE,
    PREDICTION_TYPE,
    assemble_pipeline,
    build_text_encoder,
    build_unet,
    build_vae,
    load_tokenizer,
)
from .world import Scene, position_phrase, resample_layout, sample_scene

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


@dataclass
class Recipe:
    seed: int = 0
    vae_steps: int = 2000
    vae_batch: int = 16
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    unet_steps: int = 12000
    batch: int = 32
    lr: float = 5e-4
    warmup: int = 300
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    # "min-snr": min(snr, γ)/(snr+1), min-SNR weighting of the v loss; its weight on the noisiest steps, where
    # the layout is chosen, is ≈ snr ≈ 0. "clamped": min(snr+1, γ)/(snr+1), the plain v loss on noisy steps
    # and min-SNR's cap on clean ones.
    weighting: str = "min-snr"
    init_from: str | None = None  # a diffusers folder whose VAE, UNet and text encoder the run starts from
    grounding_weight: float = 0.05  # weight of the grounding loss (see grounding.py); 0 turns it off
    grounding_start: int = 3750  # step from which it applies (the base run added it at this step)
    coverage_start: int = 7000  # step from which the grounding term also asks for coverage (see grounding.py)
    ground_placing_words: bool = False  # also ground "left", "above", ... on the object they place
    pixel_grounding: bool = False  # add the per-pixel grounding term (see grounding.grounding_loss)
    # Fine-tuning: give the position/relation words fresh embedding rows of this norm (0 keeps them). The base
    # model's text encoder broadcasts the colour words into every later position (hidden norm ~40) while "left" and
    # "right" enter ~0.3 apart, so its outputs for them differ by ~0.5 % (benchmarks/position_probe.py).
    reinit_placing_words: float = 0.0
    # Where the layout is chosen. Sampling starts from pure noise (t = 999, SNR 2e-9), where the best v-prediction
    # is minus the caption's *mean* image; the base model instead drew a sharp object wherever the noise
    # suggested, the same for "left" and "right" (benchmarks/position_probe.py), because min-SNR gave those steps
    # weight ~0 and one training image per caption is a very noisy estimate of that mean. So a share of each
    # batch gets timesteps from [high_noise_from, 999], and with reference_layouts = K > 0 every such item's
    # target uses K other layouts of its caption (world.resample_layout): the posterior mean of the clean latent
    # given the noisy one, estimated by self-normalised importance weights over the K + 1 layouts (the "stable
    # target field" of Xu et al. 2023, here per caption). At high noise that is the caption's mean image; as the
    # noise falls the weights collapse onto the true layout and the target becomes the usual one.
    high_noise_share: float = 0.0
    high_noise_from: int = 700
    reference_layouts: int = 0
    # Share of each batch drawn from scenes whose caption places its objects (a relation or a position phrase),
    # instead of any scene: only those teach where things go, and only ~60 % of scenes have one.
    placing_share: float = 0.0
    save_every: int = 250
    sample_every: int = 1000

    def __post_init__(self) -> None:
        if self.weighting not in ("min-snr", "clamped"):
            raise ValueError(f"weighting must be 'min-snr' or 'clamped', not {self.weighting!r}")
        if not 0 <= self.high_noise_share <= 1 or not 0 <= self.placing_share <= 1:
            raise ValueError(f"high_noise_share and placing_share must be in [0, 1], not {self.high_noise_share} "
                             f"and {self.placing_share}")
        if not 0 <= self.high_noise_from < 1000:
            raise ValueError(f"high_noise_from must be a timestep in [0, 999], not {self.high_noise_from}")


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 images (..., H, W, 3) as float (..., 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0).movedim(-1, -3)


def places_objects(scene: Scene) -> bool:
    """Does the caption say where its objects are (a relation, or a single object's position)?"""
    return scene.relation is not None or position_phrase(scene.caption) is not None


def scene_batch(start_seed: int, n: int, placing_share: float = 0.0) -> tuple[torch.Tensor, list[str], list[Scene]]:
    """n scenes as a (n, 3, 64, 64) tensor in [-1, 1], their captions, and the scenes themselves; about
    `placing_share` of them drawn among scenes whose caption places its objects."""
    scenes = [sample_scene(start_seed + i) for i in range(n)]
    if placing_share > 0:
        rng = np.random.default_rng(start_seed)
        for i in np.nonzero(rng.random(n) < placing_share)[0]:
            seed = 500_000_000 + (start_seed + i) * 8  # its own seed range, below the held-out 10⁹
            while not places_objects(scenes[i]):
                scenes[i] = sample_scene(seed)
                seed += 1
    return to_tensor(np.stack([s.image for s in scenes])), [s.caption for s in scenes], scenes


def reference_batch(scenes: list[Scene], captions: list[str], k: int, seed: int) -> torch.Tensor:
    """(n, k, 3, 64, 64) images in [-1, 1]: k other layouts of each caption (random scenes for a dropped one)."""
    rng = np.random.default_rng(seed)
    # A dropped caption's "layouts" are any scenes; their seeds stay below the held-out ones (evaluate.py).
    refs = [[resample_layout(scene, rng) if caption else sample_scene(int(rng.integers(10**9))) for _ in range(k)]
            for scene, caption in zip(scenes, captions)]
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
    """Holds the models and the run folder; `train_vae` then `train_unet`, each resumable."""

    def __init__(self, run_dir: str | Path, recipe: Recipe, device: str | None = None):
        self.run = Path(run_dir)
        self.recipe = recipe
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch.manual_seed(recipe.seed)
        self.vae = build_vae().to(self.device)
        self.unet = build_unet().to(self.device)
        self.text_encoder = build_text_encoder().to(self.device)
        self.tokenizer = load_tokenizer()
        self.attention_store: list[torch.Tensor] = []  # filled by grounding processors, if installed
        self.last_grounding = torch.zeros(())
        self.step = 0  # the UNet step being trained (the grounding term depends on it)
        self.noise_sched = DDPMScheduler(beta_schedule=BETA_SCHEDULE, prediction_type=PREDICTION_TYPE)
        alphas = self.noise_sched.alphas_cumprod.to(self.device)
        self.snr = alphas / (1 - alphas)
        self.log_file = self.run / "log.txt"
        self.run.mkdir(parents=True, exist_ok=True)
        saved = self.run / "recipe.json"
        started_from = json.loads(saved.read_text()).get("init_from") if saved.exists() else recipe.init_from
        if started_from != recipe.init_from:  # else a resumed fine-tune would train a fresh VAE under its UNet
            raise ValueError(f"{self.run} was started with init_from={started_from!r}; resume or export it with the "
                             f"same (got {recipe.init_from!r})")
        saved.write_text(json.dumps(asdict(recipe), indent=1))

    def log(self, msg: str) -> None:
        with open(self.log_file, "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {msg}\n")

    # ---- phase 1: VAE -------------------------------------------------------------------------------
    def train_vae(self) -> None:
        r, ckpt = self.recipe, self.run / "vae"
        if r.init_from:  # fine-tuning: the VAE comes trained with the initial weights
            return
        opt = torch.optim.AdamW(self.vae.parameters(), lr=r.vae_lr)
        step = _load(ckpt, {"vae": self.vae}, opt)["step"] if (ckpt / "state.json").exists() else 0
        self.vae.train()
        bar = tqdm(range(step, r.vae_steps), initial=step, total=r.vae_steps, desc="vae", mininterval=10)
        for step in bar:
            x, _, _ = scene_batch(r.seed * 10_000_019 + step * r.vae_batch, r.vae_batch)
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
        x, _, _ = scene_batch(123_456_789, 256)
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

    @torch.no_grad()
    def _reinit_placing_words(self, norm: float) -> None:
        table = self.text_encoder.get_input_embeddings().weight
        gen = torch.Generator().manual_seed(self.recipe.seed)
        for word in sorted(grounding.PLACING_WORDS):
            (token,) = self.tokenizer(word, add_special_tokens=False).input_ids
            row = torch.randn(table.shape[1], generator=gen)
            table[token] = (row / row.norm() * norm).to(table)

    def _load_initial_weights(self, part: str, module: torch.nn.Module) -> None:
        """Copy `part` ("vae", "unet", "text_encoder") of the `init_from` pipeline into `module` (in fp32)."""
        folder = Path(self.recipe.init_from) / part
        if not folder.is_dir():
            raise FileNotFoundError(f"init_from: {folder} is missing; expected a diffusers pipeline folder")
        weights = next(folder.glob("*.safetensors"), None)
        if weights is None:
            raise FileNotFoundError(f"init_from: no .safetensors weights in {folder} (only safetensors are loaded)")
        module.load_state_dict({k: v.float() for k, v in load_file(weights).items()})
        if part == "vae":
            config = json.loads((folder / "config.json").read_text())
            module.register_to_config(scaling_factor=config["scaling_factor"])

    # ---- phase 2: UNet + text encoder ---------------------------------------------------------------
    def load_starting_weights(self) -> None:
        """The trained VAE, and the `init_from` pipeline's UNet and text encoder when fine-tuning."""
        r = self.recipe
        self._load_trained_vae()
        if r.init_from:
            self._load_initial_weights("unet", self.unet)
            self._load_initial_weights("text_encoder", self.text_encoder)
            if r.reinit_placing_words > 0:
                self._reinit_placing_words(r.reinit_placing_words)

    def train_unet(self) -> None:
        r, ckpt = self.recipe, self.run / "unet"
        self.load_starting_weights()  # before the EMA copies, so they start from the initial weights too
        params = list(self.unet.parameters()) + list(self.text_encoder.parameters())
        opt = torch.optim.AdamW(params, lr=r.lr, weight_decay=r.weight_decay)
        self.ema_unet = copy.deepcopy(self.unet).requires_grad_(False)
        self.ema_text_encoder = copy.deepcopy(self.text_encoder).requires_grad_(False)
        modules = self._unet_modules()
        step = _load(ckpt, modules, opt)["step"] if (ckpt / "state.json").exists() else 0
        if r.grounding_weight > 0:  # after the EMA copies: they keep the plain processors for sampling
            self.attention_store = grounding.install(self.unet)
        self.unet.train()
        self.text_encoder.train()
        bar = tqdm(range(step, r.unet_steps), initial=step, total=r.unet_steps, desc="unet", mininterval=10)
        for step in bar:
            gen = torch.Generator(self.device).manual_seed(r.seed * 1_000_003 + step)
            x, captions, scenes = scene_batch(r.seed * 10_000_019 + 7_777_777 + step * r.batch, r.batch,
                                              r.placing_share)
            drop = torch.rand(len(captions), generator=gen, device=self.device) < r.caption_dropout
            captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
            masks = None
            if r.grounding_weight > 0 and step >= r.grounding_start:
                masks = grounding.token_masks(scenes, captions, self.tokenizer, r.ground_placing_words)
                masks = masks.to(self.device)
            self.step = step
            loss = self.unet_loss(x, captions, gen, masks, scenes)
            lr = r.lr * min(1.0, (step + 1) / r.warmup)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            self._ema_update(step)
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
            if (step + 1) % 50 == 0:
                extra = f" grounding {self.last_grounding.item():.4f}" if masks is not None else ""
                self.log(f"unet step {step + 1} loss {loss.item():.5f} lr {lr:.2e}{extra}")
            if (step + 1) % r.save_every == 0 or step + 1 == r.unet_steps:
                _save(ckpt, modules, opt, {"step": step + 1})
            if (step + 1) % r.sample_every == 0:
                self.sample_grid(self.run / "samples" / f"step_{step + 1:06d}.png")

    def sample_timesteps(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """n training timesteps: uniform, except a `high_noise_share` drawn from [high_noise_from, 999]."""
        r, top = self.recipe, self.noise_sched.config.num_train_timesteps
        t = torch.randint(0, top, (n,), generator=gen, device=self.device)
        if r.high_noise_share == 0:  # draw nothing more, so the default recipe's random stream is unchanged
            return t
        high = torch.randint(r.high_noise_from, top, (n,), generator=gen, device=self.device)
        pick = torch.rand(n, generator=gen, device=self.device) < r.high_noise_share
        return torch.where(pick, high, t)

    def unet_loss(self, x: torch.Tensor, captions: list[str], gen: torch.Generator,
                  masks: torch.Tensor | None = None, scenes: list[Scene] | None = None) -> torch.Tensor:
        """Weighted v-prediction loss on one batch (images in [-1, 1], captions), plus the grounding loss
        (weighted) when per-token object masks are given (see `grounding`). Given the batch's `scenes` and
        `reference_layouts` > 0, the items drawn at t ≥ high_noise_from get the posterior-mean target."""
        r = self.recipe
        ids = self.tokenizer(captions, padding="max_length", max_length=77, truncation=True,
                             return_tensors="pt").input_ids.to(self.device)
        latents = self.encode(x, gen)
        noise = torch.randn(latents.shape, generator=gen, device=self.device)
        t = self.sample_timesteps(len(captions), gen)
        noisy = self.noise_sched.add_noise(latents, noise, t)
        target = self.noise_sched.get_velocity(latents, noise, t)
        rows = (t >= r.high_noise_from).nonzero().flatten().tolist() if r.reference_layouts > 0 else []
        if scenes is not None and rows:  # only noisy items: at lower noise the weights pick the true layout anyway
            references = reference_batch([scenes[i] for i in rows], [captions[i] for i in rows],
                                         r.reference_layouts, r.seed * 1_000_003 + self.step)
            target[rows] = self._posterior_mean_v(latents[rows], noisy[rows], t[rows], references, gen)
        self.attention_store.clear()
        pred = self.unet(noisy, t, self.text_encoder(ids)[0]).sample
        snr = self.snr[t]
        if r.weighting == "clamped":
            weight = (snr + 1).clamp(max=r.min_snr_gamma) / (snr + 1)
        else:  # "min-snr": min-SNR-γ for v-prediction
            weight = snr.clamp(max=r.min_snr_gamma) / (snr + 1)
        loss = (weight * ((pred - target) ** 2).mean(dim=(1, 2, 3))).mean()
        if masks is not None:
            coverage = self.step >= r.coverage_start
            self.last_grounding = grounding.grounding_loss(self.attention_store, masks, coverage, r.pixel_grounding)
            loss = loss + r.grounding_weight * self.last_grounding
        self.attention_store.clear()
        return loss

    @torch.no_grad()
    def encode(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Scaled VAE latents sampled from the posterior, as the UNet is trained on."""
        return self.vae.encode(images.to(self.device)).latent_dist.sample(gen) * self.vae.config.scaling_factor

    @torch.no_grad()
    def _posterior_mean_v(self, latents: torch.Tensor, noisy: torch.Tensor, t: torch.Tensor,
                          references: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """v targets with E[z0 | z_t, caption] in place of the z0 drawn, estimated from `references`, (n, K, 3,
        H, W) images of K other layouts of each caption, plus the true one."""
        refs = self.encode(references.flatten(0, 1), gen).unflatten(0, references.shape[:2])
        z0 = torch.cat([latents[:, None], refs], dim=1)  # (n, K + 1, C, h, w)
        a = self.noise_sched.alphas_cumprod.to(self.device)[t].view(-1, 1, 1, 1, 1)
        zt = noisy[:, None]
        # z_t ~ N(√a z0, (1 − a) I): each layout's weight is the likelihood of the noisy latent under it.
        log_w = -((zt - a.sqrt() * z0) ** 2).flatten(2).sum(-1) / (2 * (1 - a.flatten(1)))
        mean = (log_w.softmax(1)[..., None, None, None] * z0).sum(1)
        a = a[:, 0]
        return (a.sqrt() * noisy - mean) / (1 - a).sqrt()  # v = (√a z_t − z0) / √(1 − a)

    def _unet_modules(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet, "text_encoder": self.text_encoder,
                "ema_unet": self.ema_unet, "ema_text_encoder": self.ema_text_encoder}

    @torch.no_grad()
    def _ema_update(self, step: int) -> None:
        decay = min(self.recipe.ema_decay, (1 + step) / (10 + step))
        for ema, live in ((self.ema_unet, self.unet), (self.ema_text_encoder, self.text_encoder)):
            for e, p in zip(ema.parameters(), live.parameters()):
                e.lerp_(p, 1 - decay)

    # ---- outputs --------------------------------------------------------------------------------------
    def pipeline(self):
        """The EMA weights as a StableDiffusionPipeline (shares modules with the trainer)."""
        return assemble_pipeline(self.vae, self.ema_unet, self.ema_text_encoder)

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
        self.ema_unet = copy.deepcopy(self.unet)
        self.ema_text_encoder = copy.deepcopy(self.text_encoder)
        _load(self.run / "unet", self._unet_modules(), None)
        pipe = self.pipeline().to(torch.float16)
        pipe.save_pretrained(out_dir, safe_serialization=True)
        return Path(out_dir)


def train(run_dir: str | Path, recipe: Recipe | None = None, device: str | None = None) -> Trainer:
    """Run (or resume) both phases; returns the trainer, whose `.pipeline()` is the EMA model."""
    torch.set_flush_denormal(True)  # denormals made CPU training ~10x slower when scoping this
    trainer = Trainer(run_dir, recipe or Recipe(), device)
    start = time.time()
    trainer.train_vae()
    trainer.train_unet()
    trainer.log(f"done in {math.ceil(time.time() - start)} s of this invocation")
    return trainer

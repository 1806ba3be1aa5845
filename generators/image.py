"""Images for under-represented groups: a built-in conditional diffusion model (a local
diffusers img2img / inpainting pipeline is in generators/img2img.py).

Built in (offline, for small images): `ConditionalDiffusion`, a diffusers `UNet2DModel` conditioned
on the sum of a label embedding and a group embedding (each with an "unconditional" entry, used
together 10% of the time in training so sampling can use classifier-free guidance). Factorised on
purpose: the cells a rebalance fills are the rare ones (a label on its uncommon background, a few
images), and a joint per-cell embedding learnt from those few images came out in the label's
common colour on some seeds; the sum composes a rare cell from a label and a group each seen in
many images. It is trained with the DDPM
objective (noise prediction, cosine schedule) on the dataset's own images, resized to `size`
(default 16 on CPU, 32 on GPU), with batches drawn so that rare cells are seen more often
(probability proportional to the square root of the cell size), and an exponential moving
average of the weights for sampling. Samples come from DDIM (`inference_steps`, deterministic for a
seed) and are resized back to the dataset's image size. The model is saved beside the store as
safetensors (`<db>.datacure/models/diffusion-<fingerprint>/`, never a pickle) and reused when the
same rows, labels, groups and options come again.

It runs on the GPU when present. Every output is verified by the caller.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np

from ..store.errors import InputError

MODEL_FILE = "diffusion_pytorch_model.safetensors"
CONDITION_FILE = "datacure_condition.safetensors"


def condition_module(num_labels: int, num_groups: int, dim: int):
    """torch module: cell index (label * num_groups + group; num_labels * num_groups is the
    unconditional cell) -> label embedding + group embedding, [n, dim]."""
    import torch

    class FactorisedCondition(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.label = torch.nn.Embedding(num_labels + 1, dim)  # last entry: unconditional
            self.group = torch.nn.Embedding(num_groups + 1, dim)

        def forward(self, cells):
            null = cells == num_labels * num_groups
            lab = torch.where(null, num_labels, cells // num_groups)
            grp = torch.where(null, num_groups, cells % num_groups)
            return self.label(lab) + self.group(grp)

    return FactorisedCondition()


def load_images(paths, size: int | None = None) -> np.ndarray:
    """uint8 [n, s, s, 3] from image files (RGB), resized to `size` (area filter) if given."""
    from PIL import Image

    out = []
    for p in paths:  # one decode per file: I/O bound, no vectorised alternative
        with Image.open(p) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BOX)
            out.append(np.asarray(im, dtype=np.uint8))
    if not out:
        return np.zeros((0, size or 0, size or 0, 3), np.uint8)
    return np.stack(out)


def resize_batch(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 [n, h, w, 3] -> [n, size, size, 3] (bilinear up, area down), vectorised in torch."""
    import torch
    import torch.nn.functional as F

    if images.shape[1] == size and images.shape[2] == size:
        return images
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    mode = "area" if images.shape[1] > size else "bilinear"
    kw = {} if mode == "area" else {"align_corners": False}
    y = F.interpolate(x, size=(size, size), mode=mode, **kw)
    return y.clamp(0, 255).round().byte().permute(0, 2, 3, 1).numpy()


@contextlib.contextmanager
def torch_threads(device: str, deterministic: bool = False):
    """On CPU, torch limited to `store.knn.num_threads()` (one thread on an oversubscribed machine:
    on a loaded box, threads that spin while they wait for each other slow training down many
    times over). `deterministic`: a thread count that does not depend on the machine's load,
    `DATACURE_THREADS` when set, else one: a float sum split over another number of threads
    rounds differently, and a thousand training steps turn that into another model."""
    import os

    import torch

    from ..store.knn import num_threads

    if device != "cpu":
        yield
        return
    before = torch.get_num_threads()
    if deterministic:
        torch.set_num_threads(max(1, int(os.environ.get("DATACURE_THREADS") or 1)))
    else:
        torch.set_num_threads(num_threads())
    try:
        yield
    finally:
        torch.set_num_threads(before)


def default_size(image_size: int, device: str) -> int:
    cap = 32 if device.startswith("cuda") else 16
    s = min(cap, image_size)
    return max(8, s - s % 4)  # three resolution levels: divisible by 4


def _draw_weights(cells: np.ndarray, num_cells: int) -> np.ndarray:
    """Each image's chance to be drawn into a batch: a cell is drawn ~ sqrt(its size)."""
    counts = np.bincount(cells, minlength=num_cells).astype(np.float64)
    p = 1.0 / np.sqrt(np.maximum(counts[cells], 1))
    return p / p.sum()


def _optimiser(net, lr: float, steps: int):
    """AdamW with a linear warm-up (a tenth of the steps, at most 100) into a cosine decay."""
    import torch

    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    warm = min(100, max(1, steps // 10))
    lr_at = lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * s / steps))  # noqa: E731
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_at)


def _ema_update(ema, net, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * net, parameter by parameter."""
    import torch

    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), net.parameters()):
            pe.mul_(decay).add_(pm.detach(), alpha=1 - decay)


class ConditionalDiffusion:
    """Class x group conditional DDPM on small RGB images."""

    def __init__(
        self,
        labels: list[str],
        groups: list[str],
        size: int = 16,
        channels: tuple[int, ...] = (32, 64, 64),
        layers_per_block: int = 1,
        unet=None,
        condition=None,
        seed: int = 0,
    ):
        import torch

        self.labels = [str(v) for v in labels]
        self.groups = [str(v) for v in groups]
        self.size = int(size)
        self.channels = tuple(int(c) for c in channels)
        self.num_cells = len(self.labels) * len(self.groups)
        self.null_class = self.num_cells
        # initial weights from `seed`, not from whatever the process drew before (the global
        # generator is restored afterwards)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            self._build(unet, condition, layers_per_block)
        self.train_info: dict = {}

    def _build(self, unet, condition, layers_per_block: int) -> None:
        from diffusers import UNet2DModel

        groups_norm = 8 if min(self.channels) % 8 == 0 else 1
        self.unet = unet or UNet2DModel(
            sample_size=self.size,
            in_channels=3,
            out_channels=3,
            layers_per_block=layers_per_block,
            block_out_channels=self.channels,
            down_block_types=("DownBlock2D",) * len(self.channels),
            up_block_types=("UpBlock2D",) * len(self.channels),
            norm_num_groups=groups_norm,
            class_embed_type="identity",  # the condition module below gives the embedding
        )
        dim = self.unet.time_embedding.linear_2.out_features
        self.condition = condition or condition_module(len(self.labels), len(self.groups), dim)

    @property
    def num_parameters(self) -> int:
        return int(sum(p.numel() for p in self._modules().parameters()))

    def _modules(self):
        """UNet and condition as one module (optimiser, EMA, gradient clipping, device)."""
        import torch

        return torch.nn.ModuleDict({"unet": self.unet, "condition": self.condition})

    def cell(self, labels, groups) -> np.ndarray:
        """Class index of each (label, group) pair; unknown pairs raise."""
        li = {v: i for i, v in enumerate(self.labels)}
        gi = {v: i for i, v in enumerate(self.groups)}
        try:
            a = np.array([li[str(v)] for v in labels], dtype=np.int64)
            b = np.array([gi[str(v)] for v in groups], dtype=np.int64)
        except KeyError as exc:
            raise InputError(
                f"the diffusion model was not trained on label/group {exc.args[0]!r}",
                "train it on data that contains that label and group",
            ) from None
        return a * len(self.groups) + b

    @staticmethod
    def _scheduler():
        from diffusers import DDPMScheduler

        return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")

    def fit(self, images: np.ndarray, cells: np.ndarray, device: str = "cpu", **kw) -> dict:
        """Train on uint8 images [n, s, s, 3] with class indices `cells` (see `_fit`); on CPU the
        same seed gives the same weights on any machine and load (see `torch_threads`)."""
        with torch_threads(device, deterministic=True):
            return self._fit(images, cells, device=device, **kw)

    def _fit(
        self,
        images: np.ndarray,
        cells: np.ndarray,
        steps: int = 1500,
        batch_size: int = 64,
        lr: float = 2e-3,
        seed: int = 0,
        device: str = "cpu",
        cond_dropout: float = 0.1,
        ema_decay: float = 0.995,
        progress=None,
    ) -> dict:
        """Train on uint8 images [n, s, s, 3] (already at `size`) with class indices `cells`."""
        import copy

        import torch

        if images.shape[1] != self.size:
            images = resize_batch(images, self.size)
        # every random draw from generators seeded here: batches (numpy), noise, timesteps and
        # condition dropout (torch, on the CPU so a GPU run draws the same numbers)
        rng = np.random.default_rng(seed)
        gen = torch.Generator().manual_seed(int(seed))
        x_all = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        c_all = torch.from_numpy(np.asarray(cells, dtype=np.int64))
        p = _draw_weights(cells, self.num_cells)
        sched = self._scheduler()
        net = self._modules().to(device).train()
        unet, cond = net["unet"], net["condition"]
        ema = copy.deepcopy(net).eval().requires_grad_(False)
        opt, lrs = _optimiser(net, lr, steps)
        t0, losses = time.perf_counter(), []
        alphas = sched.alphas_cumprod.to(device)
        for step in range(steps):
            idx = torch.from_numpy(rng.choice(len(x_all), size=batch_size, p=p))
            x0, c = x_all[idx].to(device), c_all[idx].to(device)
            drop = (torch.rand(batch_size, generator=gen) < cond_dropout).to(device)
            c = torch.where(drop, torch.full_like(c, self.null_class), c)
            noise = torch.randn(x0.shape, generator=gen).to(device)
            T = sched.config.num_train_timesteps
            t = torch.randint(0, T, (batch_size,), generator=gen).to(device)
            a = alphas[t].view(-1, 1, 1, 1)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
            loss = torch.nn.functional.mse_loss(unet(xt, t, class_labels=cond(c)).sample, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            lrs.step()
            _ema_update(ema, net, min(ema_decay, (1 + step) / (10 + step)))
            losses.append(float(loss.detach()))
            if progress and (step + 1) % max(1, steps // 10) == 0:
                progress(
                    f"diffusion: step {step + 1}/{steps}, loss {np.mean(losses[-50:]):.4f}, "
                    f"{(step + 1) / (time.perf_counter() - t0):.2f} steps/s"
                )
        ema = ema.cpu() if device != "cpu" else ema
        self.unet, self.condition = ema["unet"], ema["condition"]
        secs = time.perf_counter() - t0
        self.train_info = {
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "seconds": round(secs, 2),
            "steps_per_s": round(steps / max(secs, 1e-9), 3),
            "final_loss": float(np.mean(losses[-50:])) if losses else None,
            "num_images": int(len(images)),
            "device": device,
            "num_parameters": self.num_parameters,
        }
        return self.train_info

    def sample(self, cells: np.ndarray, device: str = "cpu", **kw) -> np.ndarray:
        """Images for class indices `cells` (see `_sample`)."""
        with torch_threads(device, deterministic=True):
            return self._sample(cells, device=device, **kw)

    def _sample(
        self,
        cells: np.ndarray,
        seed: int = 0,
        inference_steps: int = 50,
        guidance: float = 2.0,
        out_size: int | None = None,
        device: str = "cpu",
        batch_size: int = 256,
    ) -> np.ndarray:
        """uint8 [n, out_size, out_size, 3], one image per class index in `cells`; DDIM (eta 0),
        deterministic for a seed; classifier-free guidance when `guidance` > 0."""
        import torch
        from diffusers import DDIMScheduler

        cells = np.asarray(cells, dtype=np.int64)
        net = self._modules().to(device).eval()
        unet, cond = net["unet"], net["condition"]
        ddim = DDIMScheduler.from_config(self._scheduler().config)
        out = []
        gen = torch.Generator().manual_seed(int(seed))
        for s in range(0, len(cells), batch_size):
            c = torch.from_numpy(cells[s : s + batch_size]).to(device)
            n = len(c)
            x = torch.randn((n, 3, self.size, self.size), generator=gen).to(device)
            ddim.set_timesteps(inference_steps)
            with torch.no_grad():
                for t in ddim.timesteps:
                    tt = torch.full((n,), int(t), device=device, dtype=torch.long)
                    if guidance > 0:
                        both = unet(
                            torch.cat([x, x]),
                            torch.cat([tt, tt]),
                            class_labels=cond(torch.cat([c, torch.full_like(c, self.null_class)])),
                        ).sample
                        eps_c, eps_u = both[:n], both[n:]
                        eps = eps_u + (1.0 + guidance) * (eps_c - eps_u)
                    else:
                        eps = unet(x, tt, class_labels=cond(c)).sample
                    x = ddim.step(eps, t, x).prev_sample
            img = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
            out.append(img)
        imgs = np.concatenate(out) if out else np.zeros((0, self.size, self.size, 3), np.uint8)
        return resize_batch(imgs, out_size) if out_size and out_size != self.size else imgs

    # --- persistence (safetensors + JSON, never pickle) ---------------------------------------
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        from safetensors.torch import save_file

        self.unet.save_pretrained(str(folder), safe_serialization=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.condition.state_dict().items()}
        save_file(state, str(folder / CONDITION_FILE))
        meta = {
            "labels": self.labels,
            "groups": self.groups,
            "size": self.size,
            "channels": list(self.channels),
            "train": self.train_info,
        }
        (folder / "datacure_diffusion.json").write_text(json.dumps(meta, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ConditionalDiffusion:
        from diffusers import UNet2DModel
        from safetensors.torch import load_file

        folder = Path(folder)
        meta = json.loads((folder / "datacure_diffusion.json").read_text())
        unet = UNet2DModel.from_pretrained(str(folder), use_safetensors=True, local_files_only=True)
        m = cls(meta["labels"], meta["groups"], meta["size"], tuple(meta["channels"]), unet=unet)
        m.condition.load_state_dict(load_file(str(folder / CONDITION_FILE)))
        m.train_info = meta.get("train", {})
        return m

    @staticmethod
    def saved(folder: str | Path) -> bool:
        folder = Path(folder)
        return all(
            (folder / name).exists()
            for name in (MODEL_FILE, CONDITION_FILE, "datacure_diffusion.json")
        )


def fingerprint(row_ids: np.ndarray, labels, groups, options: dict) -> str:
    h = hashlib.sha1(json.dumps(options, sort_keys=True, default=str).encode())
    h.update(np.asarray(row_ids, dtype=np.int64).tobytes())
    h.update("\x00".join(map(str, labels)).encode())
    h.update("\x00".join(map(str, groups)).encode())
    return h.hexdigest()[:16]


def train_or_load(
    folder_root: Path,
    row_ids: np.ndarray,
    image_paths,
    labels,
    groups,
    opts,
    seed: int,
    device: str,
    progress=None,
) -> tuple[ConditionalDiffusion, bool, Path]:
    """The built-in model for these rows: loaded when trained before, else trained and saved.
    Returns (model, reused, folder)."""
    labels = np.asarray(labels).astype(str)
    groups = np.asarray(groups).astype(str)
    first = load_images(image_paths[:1])
    if first.shape[0] == 0:
        raise InputError("no images to train the diffusion model on", "check the image column")
    size = opts.size or default_size(int(first.shape[1]), device)
    steps = opts.steps or (4000 if device.startswith("cuda") else 1500)
    options = {
        "size": size,
        "steps": steps,
        "batch_size": opts.batch_size,
        "lr": opts.lr,
        "channels": list(opts.channels),
        "seed": seed,
        "version": 3,  # 2: factorised label + group conditioning; 3: seeded init and draws
    }
    fp = fingerprint(row_ids, labels, groups, options)
    folder = Path(folder_root) / f"diffusion-{fp}"
    if ConditionalDiffusion.saved(folder):
        if progress:
            progress(f"reusing the diffusion model in {folder}")
        return ConditionalDiffusion.load(folder), True, folder
    model = ConditionalDiffusion(
        sorted(set(labels)), sorted(set(groups)), size, tuple(opts.channels), seed=seed
    )
    if progress:
        progress(
            f"training the built-in diffusion model ({model.num_parameters / 1e3:.0f}k parameters, "
            f"{size}x{size}, {steps} steps on {device}) on {len(labels)} images"
        )
    imgs = load_images(image_paths, size)
    model.fit(
        imgs,
        model.cell(labels, groups),
        steps=steps,
        batch_size=opts.batch_size,
        lr=opts.lr,
        seed=seed,
        device=device,
        progress=progress,
    )
    model.train_info["image_size"] = int(first.shape[1])
    model.save(folder)
    return model, False, folder


def save_png(images: np.ndarray, paths: list[Path]) -> None:
    from PIL import Image

    for arr, p in zip(images, paths):  # one file per image: unavoidable I/O
        Image.fromarray(arr).save(p)

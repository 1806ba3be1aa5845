"""Images for under-represented groups from a local diffusers pipeline: `DiffusersEditor` loads a
Stable-Diffusion-family img2img or inpainting pipeline (`local_files_only`), and edits a parent
image of the same label and another group with a prompt from the template (default "a photo of a
{label} with {attribute} {value}"), at the pipeline's own resolution unless a working size is
given; an inpainting pipeline needs a mask (`load_mask`).

It runs on the GPU when present. Every output is verified by the caller.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..store.errors import InputError, MissingDependencyError
from .image import resize_batch


class DiffusersEditor:
    """A local Stable-Diffusion-family img2img or inpainting pipeline."""

    def __init__(self, path: str, device: str | None = None):
        p = Path(path)
        if not (p / "model_index.json").exists():
            raise InputError(
                f"no diffusers pipeline at {path}",
                "pass --local-model a folder saved with `pipeline.save_pretrained` "
                "(model_index.json)",
            )
        try:
            import diffusers
        except ImportError as exc:
            raise MissingDependencyError(
                "diffusers is not installed", "pip install diffusers"
            ) from exc
        from .common import torch_device

        cls_name = json.loads((p / "model_index.json").read_text()).get("_class_name", "")
        self.inpaint = "Inpaint" in cls_name
        auto = (
            diffusers.AutoPipelineForInpainting
            if self.inpaint
            else diffusers.AutoPipelineForImage2Image
        )
        try:
            self.pipe = auto.from_pretrained(str(p), local_files_only=True, safety_checker=None)
        except Exception as exc:  # noqa: BLE001 - diffusers raises unrelated types for a bad folder
            raise InputError(
                f"cannot load the diffusers pipeline at {path}: {str(exc)[:200]}",
                "check that it is an img2img or inpainting pipeline",
            ) from None
        self.device = torch_device(device)
        self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.model = str(p)
        self.backend = "diffusers-inpaint" if self.inpaint else "diffusers-img2img"

    @property
    def native_size(self) -> int:
        """The side the pipeline was trained at (UNet sample size x VAE scale), 512 if unknown:
        a Stable Diffusion checkpoint run far below it (64 px) makes noise, not edits."""
        unet = getattr(self.pipe, "unet", None)
        sample = getattr(getattr(unet, "config", None), "sample_size", None)
        scale = getattr(self.pipe, "vae_scale_factor", 8)
        return int(sample * scale) if isinstance(sample, int) else 512

    def edit(
        self,
        images: np.ndarray,
        prompts: list[str],
        seed: int = 0,
        strength: float = 0.6,
        steps: int = 20,
        work_size: int | None = None,
        mask: np.ndarray | None = None,
    ) -> np.ndarray:
        """Edited copies of uint8 images [n, h, w, 3] (same size out), one prompt each, run at
        `work_size` (default: the pipeline's native size). An inpainting pipeline repaints the
        white part of `mask` (uint8 [mh, mw], resized to the working size) and needs one: an
        all-white mask would repaint everything, which is img2img under another name."""
        import torch
        from PIL import Image

        if self.inpaint and mask is None:
            raise InputError(
                f"{self.model} is an inpainting pipeline and no mask was given",
                "set image_mask in the repair policy to a grayscale image (white: the region "
                "to repaint), or pass an img2img pipeline",
            )
        h = images.shape[1]
        ws = int(math.ceil((work_size or self.native_size) / 8) * 8)
        mask_img = None
        if mask is not None:
            mask_img = Image.fromarray(np.asarray(mask, np.uint8)).convert("L")
            mask_img = mask_img.resize((ws, ws), Image.Resampling.NEAREST)
        out = []
        for i, (img, prompt) in enumerate(zip(images, prompts)):  # one pipeline call per edit
            pil = Image.fromarray(img).resize((ws, ws), Image.Resampling.BICUBIC)
            gen = torch.Generator().manual_seed(int(seed) + i)
            kw = {
                "prompt": prompt,
                "image": pil,
                "strength": strength,
                "num_inference_steps": steps,
                "generator": gen,
                "output_type": "np",
            }
            if self.inpaint:
                kw.update(mask_image=mask_img, height=ws, width=ws)
            res = self.pipe(**kw).images[0]
            arr = (np.clip(res, 0, 1) * 255).round().astype(np.uint8)
            out.append(arr)
        return resize_batch(np.stack(out), h) if out else np.zeros((0, h, h, 3), np.uint8)


def load_mask(path: str | Path) -> np.ndarray:
    """uint8 [h, w] from a grayscale (or any) image file: white marks the region to repaint."""
    from PIL import Image

    p = Path(path)
    if not p.is_file():
        raise InputError(f"mask image {p} does not exist", "check image_mask in the repair policy")
    with Image.open(p) as im:
        arr = np.asarray(im.convert("L"), dtype=np.uint8)
    if not (arr > 127).any():
        raise InputError(f"mask image {p} has no white pixels", "paint the region to repaint white")
    return arr

"""Concept discovery without labels: non-negative matrix factorisation of a layer's activations.

After a ReLU, a layer's activations are non-negative: at every position of every image, a vector of
``C`` channel values. Stack them into a matrix ``A`` of shape ``(N*h*w, C)`` and factorise
``A ~ W H`` with ``W, H >= 0`` (Lee & Seung, 1999; used for concepts by Collins et al., 2018 and
CRAFT, Fel et al., 2023):

* each of the ``k`` rows of ``H`` is a **concept**: a non-negative combination of channels;
* ``W`` says how much of each concept is present at each position: reshaped to ``(N, k, h, w)`` it is
  a **heat map** of every concept on every image;
* the positions where a concept is strongest give its **top image patches**, for a human to name;
* its **importance** for a class: the logit's gradient along the concept direction (how fast the
  logit rises as more of the concept appears), and the logit's drop when the concept's part
  ``W[:, c] H[c]`` is taken out of the activations.

    >>> dc = discover_concepts(model, images, layer="features.3", k=6)
    >>> dc.heatmaps(upsample=True).shape        # (N, 6, H, W)
    >>> dc.top_patches(0, n=8)                  # [(image index, y0, x0, crop), ...]
    >>> dc.importance(model, target="malignant")
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ._layers import _batches, get_module, layer_activations, layer_gradients, model_device, resolve_target, \
    to_model_input


def nmf_concepts(activations, k: int, seed: int = 0, max_iter: int = 400):
    """Factorise non-negative ``activations`` (M, C) into ``W`` (M, k) and ``H`` (k, C); returns the
    fitted ``sklearn.decomposition.NMF`` too: ``(W, H, nmf)``."""
    from sklearn.decomposition import NMF

    a = np.asarray(activations, np.float64)
    if a.ndim != 2:
        raise ValueError(f"activations must be a (positions, channels) matrix, got shape {a.shape}")
    if a.min() < 0:
        raise ValueError(f"NMF needs non-negative activations (min {a.min():.3g}); take a layer after a ReLU")
    if not 1 <= k <= min(a.shape):
        raise ValueError(f"k must be between 1 and min(positions, channels) = {min(a.shape)}, got {k}")
    nmf = NMF(n_components=k, init="nndsvda", max_iter=max_iter, random_state=seed)
    w = nmf.fit_transform(a)
    return w, nmf.components_, nmf


@dataclass
class DiscoveredConcepts:
    """The result of :func:`discover_concepts`: concepts (rows of ``H``) and where they are (``W``)."""

    layer: str
    components: np.ndarray      # (k, C) concept directions in channel space, non-negative
    maps: np.ndarray            # (N, k, h, w) how much of each concept at each position
    images: np.ndarray          # the images they were found in (uint8 (N, H, W, C) or normalised tensors)
    nmf: object                 # the fitted sklearn NMF (to place new images in the same concepts)

    @property
    def k(self) -> int:
        return len(self.components)

    def heatmaps(self, upsample: bool = True) -> np.ndarray:
        """(N, k, h, w) at the layer's resolution, or bilinearly resized to the images (N, k, H, W)."""
        if not upsample:
            return self.maps
        size = tuple(np.shape(self.images)[1:3]) if isinstance(self.images, np.ndarray) and \
            self.images.dtype == np.uint8 else tuple(np.shape(self.images)[-2:])
        up = torch.nn.functional.interpolate(torch.from_numpy(self.maps).float(), size=size, mode="bilinear",
                                             align_corners=False)
        return up.numpy()

    def top_patches(self, concept: int, n: int = 8, patch: int | None = None) -> list:
        """The ``n`` images where ``concept`` peaks highest (one patch each): ``(index, y0, x0, crop)``.

        ``patch`` (px, default twice the layer's stride) is the side of the crop around the peak.
        """
        if not 0 <= concept < self.k:
            raise ValueError(f"concept must be 0..{self.k - 1}, got {concept}")
        pix = np.asarray(self.images) if isinstance(self.images, np.ndarray) else None
        if pix is None or pix.dtype != np.uint8:
            raise ValueError("top_patches needs the uint8 images the concepts were found in")
        n_img, (h, w) = len(pix), pix.shape[1:3]
        mh, mw = self.maps.shape[-2:]
        side = patch or max(2, 2 * h // mh)
        flat = self.maps[:, concept].reshape(n_img, -1)
        best = np.argsort(-flat.max(1))[:n]
        out = []
        for i in best:
            py, px = np.unravel_index(flat[i].argmax(), (mh, mw))
            cy, cx = int((py + 0.5) * h / mh), int((px + 0.5) * w / mw)
            y0, x0 = int(np.clip(cy - side // 2, 0, h - side)), int(np.clip(cx - side // 2, 0, w - side))
            out.append((int(i), y0, x0, pix[i, y0:y0 + side, x0:x0 + side]))
        return out

    def importance(self, model, target, images=None, batch_size: int | None = None) -> dict:
        """Per concept: ``gradient`` = mean over images and positions of d logit / d A . (H_c / |H_c|), and
        ``drop`` = mean fall of the logit when ``W[:, c] H[c]`` is removed from the layer's output."""
        imgs = self.images if images is None else images
        k_t = resolve_target(model, target)
        x = to_model_input(model, imgs)
        acts, grads = layer_gradients(model, x, self.layer, k_t, batch_size)
        dirs = self.components / np.linalg.norm(self.components, axis=1, keepdims=True).clip(1e-12)
        g = grads.double().numpy()                                          # (N, C, h, w)
        gradient = np.einsum("nchw,kc->k", g, dirs) / (g.shape[0] * g.shape[2] * g.shape[3])
        w_maps = self.maps if images is None else self._transform(acts.numpy())
        base = self._logits(model, x, k_t, None, batch_size)
        drop = np.array([base - self._logits(model, x, k_t, (w_maps[:, c], self.components[c]), batch_size)
                         for c in range(self.k)]).mean(1)
        return {"gradient": gradient, "drop": drop}

    def _transform(self, acts: np.ndarray) -> np.ndarray:
        n, c, h, w = acts.shape
        return self.nmf.transform(acts.transpose(0, 2, 3, 1).reshape(-1, c).astype(np.float64)) \
            .reshape(n, h, w, self.k).transpose(0, 3, 1, 2)

    def _logits(self, model, x, k_t, remove, batch_size) -> np.ndarray:
        """Logit ``k_t`` per image, with the concept part ``maps (N, h, w) x direction (C,)`` removed."""
        handle, out = None, []
        state = {}
        if remove is not None:
            maps, comp = torch.from_numpy(remove[0]).float(), torch.from_numpy(remove[1]).float()

            def hook(m, i, o):
                part = maps[state["sl"]][:, None] * comp[None, :, None, None]
                return (o - part.to(o.device, o.dtype)).clamp_min(0)
            handle = get_module(model, self.layer).register_forward_hook(hook)
        try:
            with torch.no_grad():
                for sl in _batches(x, batch_size):
                    state["sl"] = sl
                    out.append(model(x[sl].to(model_device(model)))[:, k_t].double().cpu())
        finally:
            if handle is not None:
                handle.remove()
        return torch.cat(out).numpy()


def discover_concepts(model, images, layer: str, k: int = 6, seed: int = 0, batch_size: int | None = None,
                      max_iter: int = 400) -> DiscoveredConcepts:
    """Find ``k`` concepts in ``layer``'s activations of ``images`` by NMF (see the module docstring)."""
    x = to_model_input(model, images)
    acts = layer_activations(model, x, layer, batch_size)
    if acts.ndim != 4:
        raise ValueError(f"layer {layer!r} gives outputs of shape {tuple(acts.shape)}; pick a convolutional "
                         "layer with (N, C, h, w) outputs")
    if acts.min() < -1e-6:
        raise ValueError(f"layer {layer!r} has negative activations (min {float(acts.min()):.3g}); NMF needs a "
                         "layer after a ReLU (in small_cnn: 'features.3', the end of a block)")
    n, c, h, w = acts.shape
    a = acts.clamp_min(0).permute(0, 2, 3, 1).reshape(-1, c).double().numpy()
    wmat, hmat, nmf = nmf_concepts(a, k, seed, max_iter)
    maps = wmat.reshape(n, h, w, k).transpose(0, 3, 1, 2)
    return DiscoveredConcepts(layer=layer, components=hmat, maps=np.ascontiguousarray(maps), images=images, nmf=nmf)


__all__ = ["nmf_concepts", "discover_concepts", "DiscoveredConcepts"]

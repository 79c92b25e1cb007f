"""ZCA whitening (fit / whiten / inverse) through kornia, as MTT/DATM/PAD use it.

The released code fits ``kornia.enhance.ZCAWhitening(eps=0.1, compute_inv=True)``
on the (normalised) training images and whitens train and test alike; synthetic
images live in the whitened space and are mapped back with the inverse transform
to be viewed or saved. :class:`ZCA` keeps the three fitted tensors so a fit can be
written next to an output (``state_dict``) and reused by a later stage.
"""
from __future__ import annotations

import os

import torch

ZCA_EPS = 0.1  # the released code's eps


class ZCA:
    def __init__(self, mean: torch.Tensor, transform: torch.Tensor, inverse: torch.Tensor, eps: float = ZCA_EPS):
        self.mean, self.transform, self.inverse_matrix, self.eps = mean, transform, inverse, float(eps)

    @classmethod
    def fit(cls, images: torch.Tensor, eps: float = ZCA_EPS) -> ZCA:
        """Fit on NCHW images (samples on dim 0; kornia's unbiased covariance)."""
        from kornia.enhance import zca_mean

        transform, mean, inverse = zca_mean(images.detach().float().cpu(), dim=0, unbiased=True, eps=float(eps),
                                            return_inverse=True)
        return cls(mean, transform, inverse, eps)

    def _apply(self, x: torch.Tensor, matrix: torch.Tensor, subtract: bool) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(shape[0], -1)
        m = matrix.to(flat.device, flat.dtype)
        mean = self.mean.to(flat.device, flat.dtype)
        out = (flat - mean) @ m if subtract else flat @ m + mean
        return out.reshape(shape)

    def whiten(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) @ W`` per flattened image; differentiable in ``x``."""
        return self._apply(x, self.transform, subtract=True)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """``z @ W^-1 + mean``: back to the space the fit was made in."""
        return self._apply(z, self.inverse_matrix, subtract=False)

    def state_dict(self) -> dict:
        return {"mean": self.mean.cpu(), "transform": self.transform.cpu(), "inverse": self.inverse_matrix.cpu(),
                "eps": self.eps}

    @classmethod
    def from_state_dict(cls, sd: dict) -> ZCA:
        return cls(sd["mean"], sd["transform"], sd["inverse"], sd.get("eps", ZCA_EPS))

    def save(self, path: str | os.PathLike) -> None:
        from common.run.atomic import atomic_torch_save

        atomic_torch_save(self.state_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ZCA:
        return cls.from_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def read_zca(path: str | os.PathLike, what: str = "ZCA file", fix: str = "", features: int | None = None) -> ZCA:
    """A saved fit, loaded weights-only and checked (three finite tensors of one size, ``features`` when given);
    one ``error:`` line for an unsafe, unreadable or wrong file."""
    from common.run.safe_load import require, safe_torch_load

    sd = safe_torch_load(path, what=what, advice=fix)
    keys = ("mean", "transform", "inverse")
    ok = isinstance(sd, dict) and all(isinstance(sd.get(k), torch.Tensor) for k in keys)
    if ok:
        d = sd["transform"].shape[0] if sd["transform"].ndim == 2 else -1
        ok = (d > 0 and tuple(sd["transform"].shape) == (d, d) == tuple(sd["inverse"].shape)
              and sd["mean"].numel() == d and (features is None or d == features)
              and all(bool(torch.isfinite(sd[k]).all()) for k in keys))
    require(ok, path, what, "is not a ZCA fit for these images (mean, transform and inverse of one size, finite)",
            fix)
    return ZCA.from_state_dict(sd)

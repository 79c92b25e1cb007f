"""MoCo v2 on any registry backbone, built from lightly's parts.

- views: lightly's ``MoCoV2Transform`` (random resized crop, flip, colour jitter 0.4/0.4/0.4/0.1
  with p 0.8, grayscale p 0.2, Gaussian blur p 0.5), sized for the input: the blur sigma
  range (0.1, 2.0) is MoCo's for 224 px and is scaled by ``input_size / 224`` (a 2-pixel
  blur erases a 32-pixel image);
- every view is a pure function of ``(seed, epoch, image index, view)``: :class:`TwoViews`
  seeds python, numpy and torch for each view and restores the global generators
  afterwards, so the pair differs per view, does not depend on worker count or order,
  and an interrupted run resumes exactly;
- query encoder = backbone + lightly's ``MoCoProjectionHead`` (MoCo v2's 2-layer MLP);
  key encoder = a momentum copy (lightly's ``update_momentum``);
- loss: lightly's ``NTXentLoss`` with a memory bank of negatives (the MoCo queue),
  i.e. InfoNCE of each query against its key and the queue, temperature 0.2.
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
from torch import nn

from common.train.seed import seeded

MOCO_V2_BLUR_SIGMAS = (0.1, 2.0)  # at 224 px


def view_transform(input_size: int, mean: Sequence[float], std: Sequence[float], min_scale: float = 0.2,
                   blur_prob: float = 0.5) -> Callable:
    """One MoCo v2 view (lightly's transform), blur scaled to the input size."""
    from lightly.transforms import MoCoV2Transform

    k = input_size / 224.0
    sigmas = (MOCO_V2_BLUR_SIGMAS[0] * k, MOCO_V2_BLUR_SIGMAS[1] * k)
    two = MoCoV2Transform(input_size=input_size, min_scale=min_scale, gaussian_blur=blur_prob, sigmas=sigmas,
                          normalize={"mean": list(mean), "std": list(std)})
    return two.transforms[0]  # MoCoV2Transform holds the same view transform twice


def view_seed(seed: int, epoch: int, index: int, view: int) -> int:
    return (((seed * 1_000_003 + epoch) * 10_000_019 + index) * 4 + view) % (2**63 - 1)


class TwoViews(torch.utils.data.Dataset):
    """``(view_0, view_1, label)`` of image ``i``, each view seeded from (seed, epoch, i, view)."""

    def __init__(self, base, view: Callable, seed: int = 0):
        self.base, self.view, self.seed, self.epoch = base, view, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        img, label = self.base.load(i), self.base.samples[i][1]
        views = []
        for v in (0, 1):
            with seeded(view_seed(self.seed, self.epoch, i, v)):
                views.append(self.view(img))
        return views[0], views[1], label


class MoCo(nn.Module):
    """Query encoder (backbone + projection head), its momentum copy, and the loss with the queue."""

    def __init__(self, backbone: nn.Module, feature_dim: int, hidden_dim: int = 2048, out_dim: int = 128,
                 queue_size: int = 65536, temperature: float = 0.2, gather_distributed: bool = False):
        super().__init__()
        from lightly.loss import NTXentLoss
        from lightly.models.modules import MoCoProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        self.backbone = backbone
        self.projection_head = MoCoProjectionHead(feature_dim, hidden_dim, out_dim)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        # gather_distributed: under torchrun the keys of every process enter the queue (the same queue everywhere)
        self.criterion = NTXentLoss(temperature=temperature, memory_bank_size=(queue_size, out_dim),
                                    gather_distributed=gather_distributed)

    def query(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(torch.flatten(self.backbone(x), 1))

    @torch.no_grad()
    def key(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head_momentum(torch.flatten(self.backbone_momentum(x), 1)).detach()

    @torch.no_grad()
    def momentum_update(self, m: float) -> None:
        from lightly.models.utils import update_momentum

        update_momentum(self.backbone, self.backbone_momentum, m)
        update_momentum(self.projection_head, self.projection_head_momentum, m)

    def forward(self, x_q: torch.Tensor, x_k: torch.Tensor) -> torch.Tensor:
        """InfoNCE of the queries against their keys and the queue; enqueues the keys."""
        return self.criterion(self.query(x_q), self.key(x_k))

    # the queue lives in non-persistent buffers of lightly's memory bank: saved explicitly for exact resume
    def queue_state(self) -> dict[str, torch.Tensor]:
        bank = self.criterion.memory_bank
        return {"bank": bank.bank.detach().cpu().clone(), "bank_ptr": bank.bank_ptr.detach().cpu().clone()}

    def load_queue_state(self, state: dict[str, torch.Tensor]) -> None:
        bank = self.criterion.memory_bank
        if tuple(state["bank"].shape) != tuple(bank.bank.shape):
            raise ValueError(f"queue shape {tuple(state['bank'].shape)} != {tuple(bank.bank.shape)}")
        bank.bank.copy_(state["bank"])
        bank.bank_ptr.copy_(state["bank_ptr"])


def train_step(model: MoCo, x_q: torch.Tensor, x_k: torch.Tensor, optimizer, momentum: float) -> torch.Tensor:
    """One MoCo step: momentum update of the key encoder, then loss, backward and SGD step
    (``model`` may be wrapped in DistributedDataParallel)."""
    getattr(model, "module", model).momentum_update(momentum)
    loss = model(x_q, x_k)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


@torch.no_grad()
def extract_features(backbone: nn.Module, batches, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened backbone features and labels of ``(x, y)`` batches (backbone in eval mode)."""
    was = backbone.training
    backbone.eval()
    feats, labels = [], []
    for x, y in batches:
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        feats.append(torch.flatten(backbone(x), 1).float().cpu())
        labels.append(y)
    backbone.train(was)
    return torch.cat(feats), torch.cat(labels)


def knn_scores(val_f: torch.Tensor, train_f: torch.Tensor, train_y: torch.Tensor, num_classes: int,
               k: int = 200, t: float = 0.1) -> torch.Tensor:
    """Weighted kNN class scores (InstDisc, Wu et al. 2018; the rule lightly's ``knn_predict`` implements):
    cosine similarities to the k nearest training features, weights ``exp(sim / t)``, summed per class.
    (Written here because importing lightly's benchmarking module pulls in pytorch-lightning: seconds per run.)"""
    bank = nn.functional.normalize(train_f, dim=1)
    val = nn.functional.normalize(val_f, dim=1)
    sim, idx = (val @ bank.t()).topk(min(k, bank.shape[0]), dim=1)
    onehot = nn.functional.one_hot(train_y[idx], num_classes).to(sim.dtype)
    return (onehot * (sim / t).exp().unsqueeze(-1)).sum(dim=1)


def knn_top1(train_f: torch.Tensor, train_y: torch.Tensor, val_f: torch.Tensor, val_y: torch.Tensor,
             num_classes: int, k: int = 200, t: float = 0.1) -> float:
    """Weighted kNN accuracy on L2-normalised features, percent."""
    correct = 0
    for i in range(0, len(val_f), 256):
        pred = knn_scores(val_f[i:i + 256], train_f, train_y, num_classes, k, t).argmax(dim=1)
        correct += int((pred == val_y[i:i + 256]).sum())
    return 100.0 * correct / max(len(val_f), 1)

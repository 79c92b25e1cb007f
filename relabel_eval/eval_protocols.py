"""The evaluation protocols ``python -m relabel_eval --protocol NAME`` knows (torch-free).

A protocol is the set of choices a released evaluation makes beyond the shared loop
(``relabel_eval.train``): extra per-image augmentation, how the crop scale is set,
and whether the released loop's second BatchNorm update per batch is reproduced.
Adding one is adding an entry to ``PROTOCOLS`` (and, if it needs a new kind of
step, a field here and the code that reads it).

- ``delt``: DELT's evaluation (``evaluation/validation/main.py`` of VILA-Lab/DELT),
  the default.
- ``rded``: RDED's evaluation (``validation/main.py`` of LINs-lab/RDED): ShufflePatches
  (the image cut into ``--factor`` vertical strips that are shuffled, then into
  ``--factor`` horizontal strips that are shuffled) before RandomResizedCrop, whose
  scale is ``(1 / factor, --max-scale-crops)``; no RandAugment in the release.
- ``pad``: the MTT/DATM/PAD evaluation (``evaluate_synset`` of NUS-HPC-AI-Lab/PAD), a loop of
  its own in ``relabel_eval.pad_protocol``: the set's learned soft labels (``<set>.labels.pt``)
  and lr (``<set>.lr.pt``), SGD momentum 0.9, weight decay 5e-4, lr / 10 after half the
  epochs, DSA, hard-label val top-1; no teacher.
- ``edc``: the EDC evaluation, which FADRM also reports under (shaoshitong/EDC,
  ``Branch_full_ImageNet_1k/train/train_FKD_parallel.py`` with ``train.sh``'s ResNet-18 flags
  ``--loss-type mse_gt --ce-weight 0.025 --st 2 --ema-dr 0.99 --batch-size 100``): the student learns
  the teacher's raw logits with MSE (mean over every element, no temperature) plus 0.025 x CE on each
  image's own class label (not the CutMix-mixed one); batch 100; RandomResizedCrop scale (0.5, 1);
  one student forward per step (no BN double update: its loop is the SRe2L/FKD one); an EMA of the
  parameters (decay 0.99, every optimiser step; BN buffers not averaged, the live ones used) is
  validated beside the weights. Its "smoothing lr" ``0.5 (1 + cos(pi e / (st E)))`` with ``st = 2``
  is the half cosine every protocol here already uses, so ``--lr-stretch`` stays 1. AdamW 1e-3 /
  0.01 and CutMix (alpha 1, every batch) as ``delt``. Its teachers (four torchvision models in eval
  mode, logits averaged) are ``--teacher-path`` flags, not part of the protocol; it trains in fp32
  (``--no-amp`` on a GPU to match).

Both released loops run an extra no-grad student forward in train mode on every
batch (to log train accuracy). Their CutMix mixes in place, so that forward sees the
same mixed batch with the same weights as the training forward that follows, and the
student's BatchNorm running statistics are updated twice per batch: with momentum
``m`` that is exactly one update with momentum ``1 - (1 - m)^2`` (0.19 for 0.1).
``bn_double_update`` reproduces that without the forward.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class EvalProtocol:
    name: str
    source: str                     # the released code the protocol follows
    bn_double_update: bool = True   # default of --bn-double-update: BN momentum 1 - (1 - m)^2
    shuffle_patches: bool = False   # ShufflePatches(--factor) on the image before RandomResizedCrop
    scale_from_factor: bool = False  # RandomResizedCrop scale (1 / --factor, --max-scale-crops)
    default_min_scale: float = 0.08  # RandomResizedCrop min scale when --min-scale-crops is not given
    kd_loss: str = "kl"             # default of --kd-loss: kl | mse | mse+ce
    ce_weight: float = 0.0          # default of --ce-weight (the CE term of mse+ce)
    lr_stretch: float = 1.0         # default of --lr-stretch: schedule over lr_stretch x the epochs run
    ema_decay: float = 0.0          # default of --ema-decay: 0 = no EMA weights
    batch_size: int = 0             # batch size when --re-batch-size is not given; 0 = DELT's table

    @property
    def needs_factor(self) -> bool:
        return self.shuffle_patches or self.scale_from_factor

    def to_dict(self) -> dict:
        return asdict(self)


PROTOCOLS: dict[str, EvalProtocol] = {
    "delt": EvalProtocol("delt", "VILA-Lab/DELT evaluation/validation/main.py"),
    "rded": EvalProtocol("rded", "LINs-lab/RDED validation/main.py", shuffle_patches=True, scale_from_factor=True),
    # its own loop (relabel_eval.pad_protocol): learned soft labels and lr, DSA, no teacher
    "pad": EvalProtocol("pad", "NUS-HPC-AI-Lab/PAD utils/utils_baseline.py evaluate_synset", bn_double_update=False),
    "edc": EvalProtocol("edc", "shaoshitong/EDC Branch_full_ImageNet_1k/train/train_FKD_parallel.py, as FADRM "
                               "reports it", bn_double_update=False, default_min_scale=0.5, kd_loss="mse+ce",
                        ce_weight=0.025, ema_decay=0.99, batch_size=100),
}
DEFAULT_PROTOCOL = "delt"


def protocol_name(v) -> str:
    s = str(v).strip().lower()
    if s not in PROTOCOLS:
        raise argparse.ArgumentTypeError(f"--protocol {v}: choose one of {', '.join(PROTOCOLS)}")
    return s


def get_protocol(name: str | None) -> EvalProtocol:
    return PROTOCOLS[name or DEFAULT_PROTOCOL]


@dataclass(frozen=True)
class ResolvedAug:
    """What a protocol and the flags settle for the per-image augmentation."""

    min_scale: float
    max_scale: float
    shuffle_factor: int  # 1: no ShufflePatches


def resolve_aug(protocol: EvalProtocol, factor: int | None, min_scale: float | None,
                max_scale: float) -> ResolvedAug:
    """Crop scale and ShufflePatches factor; raises ``ValueError`` with the flag to fix."""
    if protocol.needs_factor:
        if factor is None:
            raise ValueError(f"--protocol {protocol.name} needs --factor (the factor the set was made with: "
                             f"1 for CIFAR / Tiny-ImageNet, 2 at ImageNet scale)")
        if factor < 1:
            raise ValueError(f"--factor {factor}: must be at least 1")
    if protocol.scale_from_factor:
        if min_scale is not None:
            raise ValueError(f"--min-scale-crops: --protocol {protocol.name} sets the crop scale to "
                             f"(1/--factor, --max-scale-crops); drop the flag")
        min_scale = 1.0 / factor
    elif min_scale is None:
        min_scale = protocol.default_min_scale
    if not 0 < min_scale <= max_scale <= 1:
        raise ValueError(f"--min-scale-crops {min_scale:g} / --max-scale-crops {max_scale:g}: "
                         f"need 0 < min <= max <= 1")
    return ResolvedAug(float(min_scale), float(max_scale), int(factor) if protocol.shuffle_patches else 1)


def double_update_momentum(momentum: float) -> float:
    """The single-update BN momentum equal to two updates with ``momentum`` on the same batch statistics."""
    return 1.0 - (1.0 - momentum) ** 2

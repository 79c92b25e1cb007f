"""squeeze.linear_probe: a linear classifier on a frozen self-supervised backbone (SC-DD's teacher).

    python -m squeeze.linear_probe --backbone runs/ssl_conv3.pth --data-path DATA --output runs/scdd_teacher.pth
    python -m squeeze.linear_probe --backbone moco_v2_800ep_pretrain.pth.tar --arch-name resnet50 \\
        --dataset imagenet-1k --data-path IMAGENET --output runs/mocov2_r50_probe.pth
    python -m squeeze.linear_probe --backbone dino_resnet50_pretrain.pth --linear-path \\
        dino_resnet50_linearweights.pth --arch-name resnet50 --data-path IMAGENET --output runs/dino_r50.pth

The backbone is ``python -m squeeze.ssl`` output or a released MoCo v2/v3, SwAV or DINO file
(key mapping in ``models/external_ssl.py``). It stays in eval mode and frozen throughout,
so its BatchNorm running statistics -- what recovery matches -- stay the self-supervised
ones, bit for bit (checked before writing). The classifier is trained with SGD (momentum
0.9, no weight decay, cosine, weights from N(0, 0.01) as MoCo's ``main_lincls.py``), or
taken from a released linear classifier (``--linear-path``, or the ``fc`` a MoCo ``lincls``
file carries). ``--train-aug none`` computes the frozen features once and trains on them
(the same result as running the frozen backbone every epoch on unaugmented images, in a
fraction of the time). Under torchrun the processes share the frozen backbone's work (feature
extraction, each step's batch, validation) and every one takes the same step on the gathered
features: the classifier is the one process's with the same ``--batch-size`` (the global batch;
see ``squeeze/probe.py``). A trained classifier is checkpointed every epoch in
``<output>.state/probe.pt`` (common.run.state): the same command continues a killed run.

The output is a normal teacher checkpoint (``"model"`` + ``"meta"``, with
``meta["teacher_kind"] = "ssl-linear-probe"`` and ``meta["ssl_method"]``): rank_select,
recover, relabel_eval and squeeze.evaluate take it as they take a supervised teacher.
"""
from __future__ import annotations

if __name__ == "__main__":  # --help, argument errors and missing paths before torch is imported (common.cli.entry)
    import sys

    from common.cli.entry import run_stage

    sys.exit(run_stage("squeeze.args:linear_probe_parser", "squeeze.linear_probe"))

from pathlib import Path

from common.cli.paths import check_output_file
from squeeze.args import check_linear_probe, linear_probe_parser

get_args_parser = linear_probe_parser  # torch-free, in squeeze.args


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)  # every numeric flag's range is checked here (common.cli.argtypes)
    check_linear_probe(args)
    check_output_file(args.output, "--output")
    check_output_file(Path(args.output).with_suffix(".json"), "--output's report")
    from common.cli.flags import device_spec
    from common.compute.distributed import cleanup, init_distributed
    from squeeze.probe import train_probe

    ctx = init_distributed(device_spec(args))  # torchrun: one device per process, a gloo/NCCL group
    try:
        return train_probe(args, ctx)
    finally:
        cleanup()

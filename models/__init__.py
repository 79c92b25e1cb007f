"""Architectures and checkpoint IO."""
from models.checkpoint import checkpoint_meta, load_model, make_meta, read_checkpoint, save_checkpoint, strip_prefixes
from models.convnet import ConvNet
from models.registry import (
    build_backbone,
    build_model,
    canonical_arch,
    capture_penultimate,
    check_arch,
    classifier_layer,
    classifier_name,
    has_batchnorm,
    list_archs,
    penultimate_features,
    strip_classifier,
)

__all__ = ["ConvNet", "build_backbone", "build_model", "canonical_arch", "capture_penultimate", "check_arch",
           "checkpoint_meta", "classifier_layer",
           "classifier_name", "has_batchnorm", "list_archs", "load_model", "make_meta", "penultimate_features",
           "read_checkpoint", "save_checkpoint", "strip_classifier", "strip_prefixes"]

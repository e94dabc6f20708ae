"""Recognition models: backbones, input standardisation, margin heads, and the recogniser.

``FaceRecognizer`` = privacy frontend -> ``ChannelStandardize`` -> backbone (IResNet or
MobileFaceNet with an any-channel stem). Training heads (``build_head``) put ArcFace/CosFace
margins on cosine logits, over a full softmax or sharded Partial FC.
"""

from facepriv.models.backbones import build_backbone, count_parameters
from facepriv.models.checkpoint import CheckpointError, UnsafeCheckpointError, read_checkpoint
from facepriv.models.heads import (
    ArcFaceLoss,
    CombinedMarginLoss,
    CosFaceLoss,
    CosineClassifier,
    MarginLoss,
    PartialFC,
    SoftmaxHead,
    build_head,
    build_margin,
    cosine_classifier_grad_sample,
)
from facepriv.models.input_norm import ChannelStandardize, PerSampleStandardize, build_input_norm
from facepriv.models.iresnet import IResNet
from facepriv.models.mobilefacenet import MobileFaceNet
from facepriv.models.recognizer import FaceRecognizer

__all__ = [
    "ArcFaceLoss",
    "ChannelStandardize",
    "PerSampleStandardize",
    "build_input_norm",
    "CheckpointError",
    "CombinedMarginLoss",
    "CosFaceLoss",
    "CosineClassifier",
    "FaceRecognizer",
    "IResNet",
    "MarginLoss",
    "MobileFaceNet",
    "PartialFC",
    "SoftmaxHead",
    "UnsafeCheckpointError",
    "build_backbone",
    "build_head",
    "build_margin",
    "count_parameters",
    "cosine_classifier_grad_sample",
    "read_checkpoint",
]

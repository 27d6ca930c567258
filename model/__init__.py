"""eDifFIQA models: backbones, the quality head, the wrapper and the variant registry."""
from model.ediffiqa import EDifFIQA
from model.iresnet import IResNet, iresnet18, iresnet34, iresnet50, iresnet100, iresnet200
from model.mlp import MLP
from model.mobilefacenet import MobileFaceNet, mobilefacenet
from model.registry import (
                            BACKBONES,
                            VARIANTS,
                            Variant,
                            build_backbone,
                            build_model,
                            create_model,
                            identify_variant,
                            load_weights,
                            read_state_dict,
)

__all__ = ["EDifFIQA", "IResNet", "MLP", "MobileFaceNet", "BACKBONES", "VARIANTS", "Variant", "build_backbone",
           "build_model", "create_model", "identify_variant", "iresnet18", "iresnet34", "iresnet50", "iresnet100",
           "iresnet200", "load_weights", "mobilefacenet", "read_state_dict"]

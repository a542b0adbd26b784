"""EVL ("Frozen CLIP Models are Efficient Video Learners") for Hugging Face Transformers.

Importing the package registers EVL with the Auto classes, so `AutoConfig`, `AutoModelForVideoClassification`,
`AutoVideoProcessor`, `AutoImageProcessor` and `pipeline("video-classification")` load EVL checkpoints.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForVideoClassification, AutoVideoProcessor

from .configuration_evl import EVLConfig
from .image_processing_evl import EVLImageProcessor
from .modeling_evl import EVLForVideoClassification, EVLModel, EVLPreTrainedModel
from .video_processing_evl import EVLVideoProcessor


__version__ = "0.1.0"

AutoConfig.register(EVLConfig.model_type, EVLConfig, exist_ok=True)
AutoModel.register(EVLConfig, EVLModel, exist_ok=True)
AutoModelForVideoClassification.register(EVLConfig, EVLForVideoClassification, exist_ok=True)
AutoVideoProcessor.register(EVLConfig, EVLVideoProcessor, exist_ok=True)
AutoImageProcessor.register(EVLConfig, image_processor_classes={"torchvision": EVLImageProcessor}, exist_ok=True)

# Saved folders carry the module files and an `auto_map`, so they also load with `trust_remote_code=True` where
# evl_hf is not installed.
EVLConfig.register_for_auto_class()
EVLModel.register_for_auto_class("AutoModel")
EVLForVideoClassification.register_for_auto_class("AutoModelForVideoClassification")
EVLVideoProcessor.register_for_auto_class("AutoVideoProcessor")
EVLImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = [
    "EVLConfig",
    "EVLPreTrainedModel",
    "EVLModel",
    "EVLForVideoClassification",
    "EVLVideoProcessor",
    "EVLImageProcessor",
]

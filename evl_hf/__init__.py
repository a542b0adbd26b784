"""EVL ("Frozen CLIP Models are Efficient Video Learners") for Hugging Face Transformers.

Importing the package registers EVL with the Auto classes, so `AutoConfig`, `AutoModelForVideoClassification`,
`AutoVideoProcessor`, `AutoImageProcessor` and `pipeline("video-classification")` load EVL checkpoints.
"""

from transformers import AutoConfig, AutoModel, AutoModelForVideoClassification

from .configuration_evl import EVLConfig
from .modeling_evl import EVLForVideoClassification, EVLModel, EVLPreTrainedModel


__version__ = "0.1.0"

AutoConfig.register(EVLConfig.model_type, EVLConfig, exist_ok=True)
AutoModel.register(EVLConfig, EVLModel, exist_ok=True)
AutoModelForVideoClassification.register(EVLConfig, EVLForVideoClassification, exist_ok=True)

# Saved folders carry the module files and an `auto_map`, so they also load with `trust_remote_code=True` where
# evl_hf is not installed.
EVLConfig.register_for_auto_class()
EVLModel.register_for_auto_class("AutoModel")
EVLForVideoClassification.register_for_auto_class("AutoModelForVideoClassification")

__all__ = ["EVLConfig", "EVLPreTrainedModel", "EVLModel", "EVLForVideoClassification"]

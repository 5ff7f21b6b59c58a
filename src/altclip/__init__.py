"""altclip: AltCLIP and CLIP in PyTorch, from inference to training.

from altclip import AltCLIPModel, AltCLIPProcessor
model = AltCLIPModel.from_pretrained("BAAI/AltCLIP")
"""

from altclip.config import (
    AltCLIPConfig,
    AltCLIPTextConfig,
    AltCLIPVisionConfig,
    CLIPConfig,
    CLIPTextConfig,
    CLIPVisionConfig,
)
from altclip.models import (
    AltCLIPModel,
    AltCLIPTextModel,
    AltCLIPVisionModel,
    CLIPModel,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
)
from altclip.outputs import AltCLIPOutput, BaseModelOutputWithPooling, CLIPOutput

__version__ = "0.1.0"

__all__ = [
    "AltCLIPConfig",
    "AltCLIPModel",
    "AltCLIPOutput",
    "AltCLIPTextConfig",
    "AltCLIPTextModel",
    "AltCLIPVisionConfig",
    "AltCLIPVisionModel",
    "BaseModelOutputWithPooling",
    "CLIPConfig",
    "CLIPModel",
    "CLIPOutput",
    "CLIPTextConfig",
    "CLIPTextModel",
    "CLIPTextModelWithProjection",
    "CLIPVisionConfig",
    "CLIPVisionModel",
    "CLIPVisionModelWithProjection",
]

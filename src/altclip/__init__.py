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
from altclip.image import CLIPImageProcessor
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
from altclip.processor import AltCLIPProcessor, CLIPProcessor
from altclip.tokenization import BatchEncoding, CLIPTokenizer, XLMRobertaTokenizer

__version__ = "0.1.0"

__all__ = [
    "AltCLIPConfig",
    "AltCLIPModel",
    "AltCLIPOutput",
    "AltCLIPProcessor",
    "AltCLIPTextConfig",
    "AltCLIPTextModel",
    "AltCLIPVisionConfig",
    "AltCLIPVisionModel",
    "BaseModelOutputWithPooling",
    "BatchEncoding",
    "CLIPConfig",
    "CLIPImageProcessor",
    "CLIPModel",
    "CLIPOutput",
    "CLIPProcessor",
    "CLIPTextConfig",
    "CLIPTextModel",
    "CLIPTextModelWithProjection",
    "CLIPTokenizer",
    "CLIPVisionConfig",
    "CLIPVisionModel",
    "CLIPVisionModelWithProjection",
    "XLMRobertaTokenizer",
]

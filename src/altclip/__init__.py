"""altclip: AltCLIP and CLIP in PyTorch, from inference to training. This module holds the Hugging Face-compatible
public names only; the rest lives in the packages the README's "Layout" lists.

from altclip import AltCLIPModel, AltCLIPProcessor
model = AltCLIPModel.from_pretrained("BAAI/AltCLIP")
"""

from altclip.modeling.config import (
    AltCLIPConfig,
    AltCLIPTextConfig,
    AltCLIPVisionConfig,
    CLIPConfig,
    CLIPTextConfig,
    CLIPVisionConfig,
)
from altclip.modeling.models import (
    AltCLIPModel,
    AltCLIPTextModel,
    AltCLIPVisionModel,
    CLIPModel,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
)
from altclip.modeling.outputs import AltCLIPOutput, BaseModelOutputWithPooling, CLIPOutput
from altclip.processing.image import CLIPImageProcessor
from altclip.processing.processor import AltCLIPProcessor, CLIPProcessor
from altclip.processing.tokenization import BatchEncoding, CLIPTokenizer, XLMRobertaTokenizer

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

"""Finetuning (chapters 6, 7 and appendix E): a spam classifier, instruction following, LoRA, DPO.

>>> from gpt_components import finetune
>>> isinstance(finetune.__all__, list)
True
"""

from . import classification, dpo, instructions, loop, lora, spam_data
from .classification import *
from .dpo import *
from .instructions import *
from .loop import *
from .lora import *
from .spam_data import *

__all__ = [*classification.__all__, *dpo.__all__, *instructions.__all__, *lora.__all__,
           *loop.__all__, *spam_data.__all__]

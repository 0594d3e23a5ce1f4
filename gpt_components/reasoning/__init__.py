"""From a model to a reasoning model (the sequel, "Build a Reasoning Model (From Scratch)").

Verifiable answers graded on MATH-500 (``grade_answer`` and the sequel's chapter-3 names),
inference-time scaling (temperature, top-p, self-consistency, best-of-N, self-refinement) and
reinforcement learning with verifiable rewards (GRPO), under the sequel's names. Every module
here is imported and its ``__all__`` exported without a list.

>>> import gpt_components.reasoning as reasoning
>>> isinstance(reasoning.__all__, list)
True
"""

from ..machinery.chapter import import_chapter

_EXPORTS = import_chapter(__name__)
__all__ = list(_EXPORTS)
globals().update(_EXPORTS)

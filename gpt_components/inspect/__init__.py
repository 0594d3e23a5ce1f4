"""Looking inside a model (past the book): traces, the logit lens, the inspection report.

- ``trace``: ``ModelTrace``, one forward pass laid open (every block's input, the attention
  probabilities, the logits); every model family implements ``model.trace(idx)``.
- ``inspection``: what ``gpt-components inspect`` computes from a trace (next-token
  candidates, the logit lens, the size of each stage).
- ``inspection_report``: draws an ``Inspection`` as one self-contained HTML page or PNGs.

The folder shares its name with the standard library's ``inspect``; that is harmless because
the package imports absolutely, but do not run a script from inside ``gpt_components/``
itself (its folder would then come first on ``sys.path``).

>>> import torch
>>> from gpt_components import GPTConfig, GPTModel
>>> trace = GPTModel(GPTConfig.from_name("gpt-nano", vocab_size=50)).trace(torch.tensor([[1, 2]]))
>>> len(trace.residuals), trace.attentions[0].shape
(4, torch.Size([1, 3, 2, 2]))
"""

"""The modern decoder (past the book): the components today's open models are built from.

>>> from gpt_components.modern.sliding_window import window_mask
>>> import torch
>>> window_mask(torch.arange(3), torch.arange(3), window=1).int().diagonal().tolist()
[1, 1, 1]
"""

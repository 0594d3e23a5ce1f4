"""The machinery every chapter shares: files, runs, families, loading.

Not a chapter of its own: the modules here are what the chapters stand on.

- ``resources``: the files that ship inside the package (GPT-2's BPE tables, the corpora).
- ``tensor_files``: the one safetensors reader, with the state-dict check every loader uses.
- ``checkpoint``: a training run's checkpoints, written atomically, and the run's lock.
- ``metrics``: the run's ``metrics.jsonl`` and its loss plot.
- ``distributed``: torchrun (DDP and FSDP2) for the training loop.
- ``registry``: every model family by name; ``pretrained``: Hugging Face directories of any
  family; ``sources``: a model and the tokenizer it comes with, from a run or a directory.

Every public name is importable from ``gpt_components`` itself.

>>> from gpt_components.machinery import resources
>>> resources.resource_path("the-verdict.txt").name
'the-verdict.txt'
"""

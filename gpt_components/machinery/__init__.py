"""The machinery every chapter shares: files, runs, families, loading.

Not a chapter of its own: the modules here are what the chapters stand on.

- ``checks``: the one argument check; every error it raises names its ``parameter``.
- ``language_model``: ``LanguageModel``, what every model family shares (input and cache
  checks, the weight layout for training or decoding, ``trace``, ``new_kv_cache``).
- ``resources``: the files that ship inside the package (GPT-2's BPE tables, the corpora).
- ``tensor_files``: the one safetensors reader, with the state-dict check every loader uses.
- ``atomic``: writes that a kill or a full disk cannot tear (fsync, rename, directory swap).
- ``rundir``: the owner of a training run's directory (``config.json``, the resume arithmetic,
  memory sizing, the lock); ``checkpoint``: its checkpoints; ``metrics``: its
  ``metrics.jsonl`` and loss plot.
- ``distributed``: torchrun (DDP and FSDP2) for the training loop.
- ``registry``: every model family by name (a family registers itself by being declared);
  ``pretrained``: the one Hugging Face loading mechanism (a layout per family); ``sources``: a
  model and the tokenizer it comes with, from a run, a model directory or a GPT-2 name.

Every public name is importable from ``gpt_components`` itself.

>>> from gpt_components.machinery import resources
>>> resources.resource_path("the-verdict.txt").name
'the-verdict.txt'
"""

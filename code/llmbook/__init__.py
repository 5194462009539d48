"""llmbook: the code of *Build a Large Language Model from Scratch*.

Modules are organised by concept, not by chapter: ``data`` and ``batches`` (Chapter 1),
``tokenizers`` (Chapter 2), ``attention`` and ``flash`` (Chapter 3), ``model``, ``layers``,
``generate`` and ``costs`` (Chapter 4), ``objectives``, ``optim``, ``ngram`` and the
``train`` package (Chapter 5). ``measure`` times and sizes what the code costs; ``profiles``
holds the named configurations (``cpu``, ``gpu``) that size every experiment, and
``artifacts`` caches what one chapter builds for the next.
"""

__version__ = "0.1.0"

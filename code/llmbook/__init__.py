"""llmbook: the code of *Build a Large Language Model from Scratch*.

Modules are organised by concept, not by chapter: ``data`` and ``batches`` (Chapter 1),
``tokenizers`` (Chapter 2), ``attention`` and ``flash`` (Chapter 3), ``model``, ``layers``,
``generate``, ``costs`` and ``norm_sweep`` (Chapter 4), ``objectives``, ``optim``, ``ngram``
and the ``train`` package (Chapter 5), ``memory``, ``precision``, ``comm``, ``planner`` and
the ``parallel`` package (Chapter 6), the ``scaling`` package (Chapter 7) and the
``align`` package with ``chat`` (Chapter 8). ``measure`` times and sizes what the code
costs; ``profiles`` holds the named configurations (``cpu``, ``gpu``) that size every
experiment, and ``artifacts`` caches what one chapter builds for the next.
"""

__version__ = "0.1.0"

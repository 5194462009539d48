"""llmbook: the code of *Build a Large Language Model from Scratch*.

Modules are organised by concept, not by chapter: ``data`` (Chapter 1), ``tokenizers`` (Chapter 2),
``attention`` (Chapter 3), ``model`` (Chapter 4), ``train`` (Chapter 5). ``profiles`` holds the named
configurations (``cpu``, ``gpu``) that size every experiment, and ``artifacts`` caches what one chapter
builds for the next.
"""

__version__ = "0.1.0"

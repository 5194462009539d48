"""Compute budgeting with scaling laws: how big a model and how many tokens for a
budget, what loss to expect, and how sure we can be. Chapter 7.

- :mod:`~llmbook.scaling.laws`: the Chinchilla law, its compute-optimal frontier,
  and the published constants and tables as cited data;
- :mod:`~llmbook.scaling.accounting`: training FLOPs and what counts as N;
- :mod:`~llmbook.scaling.fit`: Hoffmann et al.'s three approaches and bootstrap
  intervals; :mod:`~llmbook.scaling.synthetic`: runs drawn from a known law;
- :mod:`~llmbook.scaling.budget`: budget tables, the data-constrained law and
  inference-aware budgeting;
- :mod:`~llmbook.scaling.sweep`: the book's IsoFLOP sweep, each run a cached artifact;
  :mod:`~llmbook.scaling.book`: Chapter 5's budget spent on the law's shape;
- ``python -m llmbook.scaling``: the budget calculator.
"""

"""Post-training (Chapter 8): the chat format, tasks with checkable answers, the loss
pieces of SFT, reward modelling, DPO and GRPO, and their measurement.

- :mod:`~llmbook.align.chat`: role markers, ``render_conversation`` -> (ids, mask), its
  inverse, growing a model's vocabulary;
- :mod:`~llmbook.align.scenes`: the plays cut into scenes, scenes dealt into splits;
- :mod:`~llmbook.align.tasks`: speaker, play, finish-the-line and meter items and their
  checks;
- :mod:`~llmbook.align.meter`: a syllable counter and a meter reward guarded against
  hacking;
- :mod:`~llmbook.align.losses`: log-probabilities, masked means, advantages, policy,
  DPO, Bradley-Terry and KL pieces;
- :mod:`~llmbook.align.rewards`: the reward model (a GPT with a scalar head);
- :mod:`~llmbook.align.evaluate`: bootstrap confidence intervals.
"""

"""Parallel training from scratch and with torch.distributed. Chapter 6.

``dist``: process groups, free ports, N gloo workers; ``ddp``: data parallelism
(bucketed, overlapped gradient all-reduce) and FSDP2; ``zero``: a ZeRO-1 sharded AdamW;
``tensor``: Megatron-style tensor parallelism; ``pipeline``: GPipe and 1F1B schedules,
simulated and run; ``experiments``: the chapter's comparisons as functions every rank
runs (the tests run them too).
"""

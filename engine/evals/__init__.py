"""Evaluation: did the adapter learn, and by how much? One module a metric family.

Every eval writes one record per example and side (`engine.evals.records`); every aggregate,
interval and test is recomputed from those records, which ship with the report. The modules:

| module | what it measures or does |
|---|---|
| `records` | the per-example record, `records.jsonl`, stable example ids |
| `loss` | held-out NLL: corpus perplexity, bits per byte, per register and per field |
| `reversibility` | text → scene → text through the bridge adapter: chrF++ and exact match |
| `density` | content units per 100 tokens, structure size against text size |
| `associativity` | recall@k and MRR of linked scenes in memory search |
| `registers` | register agreement of generated answers |
| `testsets` | the shipped held-out sets and the manual test file format |
| `judge`, `human` | automatic pairwise judges (both orders) and people's blind A/B ratings |
| `stats`, `ranking` | paired bootstrap, BCa, McNemar, Wilcoxon; Bradley–Terry |
| `sides` | one base loaded once, adapters switched on it, checked to differ |
| `compare`, `report`, `run` | the A/B run, its report, and the job entry point |

This package knows nothing of the daemon or the console.
"""

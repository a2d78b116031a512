"""hyperlex front ends: the Textual console (`hyperlex-console`) and the `hyperlex` CLI."""

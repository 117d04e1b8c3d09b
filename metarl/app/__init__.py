"""The command layer behind the CLI, one module per job: train, evaluate, report (text tables)
and demo. The rest of metarl does not import it; a run's config is resolved and loaded back by
metarl.run_config, which the Meta-World agent loader shares with `metarl eval`."""

"""Task registry, loaders, data modules and evaluators for GLUE, SQuAD, summarization and decoder-only (causal LM) tasks.

Layout: ``tasks`` (the registry, standard library only), ``factory`` (task config -> data module), ``base`` (what
the data modules share), ``evaluator`` (the evaluator interface), ``splits`` (data.source choice, seeded subsets,
carving), ``jsonl`` (the JSON-lines reader), ``resumable`` (train / eval loaders); per family ``glue`` + ``metrics``,
``squad`` + ``squad_processing`` + ``squad_metrics``, ``summarization``, ``causal_lm``.

Submodules are imported explicitly (e.g. ``from dcft_lab.data.tasks import get_task``) so that
looking up a task spec does not pull in torch, datasets or Lightning.
"""

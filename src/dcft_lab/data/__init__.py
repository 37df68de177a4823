"""Task registry, loaders, data modules and evaluators for GLUE, SQuAD and summarization.

Submodules are imported explicitly (e.g. ``from dcft_lab.data.tasks import get_task``) so that
looking up a task spec does not pull in torch, datasets or Lightning.
"""

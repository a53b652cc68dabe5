"""One module per durable primitive, named after its docs page (``docs/primitives/``).

Each opens with a table of what the command yields, what the interpreter records, what the
runtime answers and what the workflow receives, and ends with the ``SCHEDULERS`` (command
type -> scheduler) and ``HANDLERS`` (history event type -> handler) that
``ironflow.interpreter.core`` merges into its dispatch tables at import.
"""

"""The render stage: templates (sandboxed Jinja2, and the compiled Polars fast path for plain ones),
SMS segments, and the preparation chain that runs load -> validate -> render over an audience in
batches (in one process, in chunks, or by id) and writes accepted.parquet and the rejects.

Preparation lives here, the last stage it runs, because it calls both audience/ and render/; placed
in audience/ it would make an earlier stage import a later one.

Hands to estimate and dispatch: accepted.parquet (rendered text, template parameters, segments)
and rejects.parquet / rejects.csv.
"""

"""Case studies run end to end on the default model (emotion, multi-hop), with reports and a CLI.

Built on `attribution` and `graphs` (issue 5); this package holds no code yet. Until then the main job is
`python -m attribution run`.
"""

"""Sources read resources from the outside world and publish `Change`s.

Each source (`files.FileSource`, `kubernetes.KubernetesSource`) implements
`changes.Source`: its changes, its own metrics, its own problems for /readyz, the same
way whatever it reads. Sources do I/O only; applying changes is `building.py`'s, and
choosing which sources run is the command line's (`cli.sources_for`).
"""
